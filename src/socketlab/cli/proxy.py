"""`socketlab proxy tcp|udp --listen PORT --to HOST:PORT`: a relay that misbehaves on purpose.

For UDP it loses, duplicates, reorders and delays datagrams (each way, seeded); for TCP it delays,
throttles, slices the stream and resets connections. It announces itself on standard output as
`udp proxy listening on 127.0.0.1:40000`, logs each event with -v on standard error, and prints a
summary of what it did when stopped (Ctrl-C or SIGTERM), or as one JSON object with --json.
The proxy itself is imported inside the handler, so other commands do not pay for asyncio.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import TYPE_CHECKING, Any

from socketlab.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from socketlab.cli.argtypes import at_least, checked, listen_port, remote_port
from socketlab.errors import ConfigError, SocketlabError
from socketlab.i18n import _, ngettext

if TYPE_CHECKING:
    from socketlab.tools.proxy.common import ProxyEvent

PROG = "socketlab proxy"


def parse_host_port(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[IPv6]:PORT`, or a bare `PORT` (meaning 127.0.0.1)."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise argparse.ArgumentTypeError(_("write an IPv6 address in brackets: [::1]:9876"))
    if not host:
        raise argparse.ArgumentTypeError(_("not HOST:PORT: {text!r}").format(text=text))
    return host, remote_port(port_text)


def add_parser(subparsers: Any) -> None:
    # The option parsers are pure and cheap to import; the proxy itself is not imported here.
    from socketlab.tools.proxy.faults import (  # noqa: PLC0415 - keeps `socketlab --help` fast
        parse_bandwidth,
        parse_delay,
        parse_probability,
    )
    from socketlab.units import parse_size  # noqa: PLC0415

    parser = subparsers.add_parser(
        "proxy",
        help=_("relay to a server, losing, reordering, delaying or cutting traffic on purpose"),
        description=_(
            "A proxy between clients and one server that injects faults: for UDP it loses, duplicates, "
            "reorders and delays datagrams, both ways; for TCP it delays, throttles and slices the byte "
            "stream, or resets the connection. See how UDP suffers and how TCP still delivers every byte "
            "in order. Stop it with Ctrl-C: it prints what it did."
        ),
    )
    kinds = parser.add_subparsers(dest="proxy_kind", metavar="tcp|udp", required=True)
    for proto in ("udp", "tcp"):
        sub = kinds.add_parser(
            proto,
            help=_("proxy {proto}").format(proto=proto.upper()),
            description=_("Relay {proto} from --listen to --to, with the faults asked for.").format(
                proto=proto.upper()
            ),
        )
        sub.add_argument(
            "--listen",
            metavar="PORT",
            type=listen_port,
            required=True,
            help=_("port to listen on (0: any free port, printed at start)"),
        )
        sub.add_argument(
            "--listen-host",
            metavar="HOST",
            default="127.0.0.1",
            help=_("address to listen on (default: 127.0.0.1, this machine only)"),
        )
        sub.add_argument(
            "--to",
            metavar="HOST:PORT",
            type=parse_host_port,
            required=True,
            help=_("the server to relay to"),
        )
        sub.add_argument(
            "--delay",
            metavar="MS[±JITTER]",
            type=checked(parse_delay),
            default=(0.0, 0.0),
            help=_("added delay each way, in ms unless a unit is given: 50, 50ms, 50±10, 50+-10"),
        )
        if proto == "udp":
            for name, what in (
                ("--loss", _("datagrams lost")),
                ("--dup", _("datagrams sent twice")),
                ("--reorder", _("datagrams held back and overtaken by the next one")),
            ):
                sub.add_argument(
                    name,
                    metavar="P",
                    type=checked(parse_probability),
                    default=0.0,
                    help=_("share of {what}, each way: 0.1 or 10%% (default: 0)").format(what=what),
                )
        else:
            sub.add_argument(
                "--bandwidth",
                metavar="RATE",
                type=checked(parse_bandwidth),
                default=0.0,
                help=_("bytes per second each way: 50000, 64K, 1MiB/s, 8Mbit/s (default: no limit)"),
            )
            sub.add_argument(
                "--slice",
                metavar="N",
                type=at_least(1),
                default=0,
                help=_("write every chunk in pieces of N bytes, each sent on its own (TCP_NODELAY)"),
            )
            sub.add_argument(
                "--reset-after",
                metavar="BYTES",
                type=checked(parse_size),
                default=0,
                help=_("reset each connection (RST) after this many bytes forwarded, both ways together"),
            )
        sub.add_argument(
            "--seed",
            type=at_least(0),
            help=_("seed of the dice: the same seed gives the same faults again (default: random, printed)"),
        )
        sub.add_argument("-v", "--verbose", action="store_true", help=_("log every event on standard error"))
        sub.add_argument("--json", action="store_true", help=_("print the summary as one JSON object"))
        sub.add_argument(
            "--loop",
            choices=("auto", "asyncio", "uvloop"),
            default="auto",
            help=_("event loop (default: auto, uvloop when installed)"),
        )
        sub.set_defaults(func=handle, proto=proto)


def _fail(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def handle(args: argparse.Namespace) -> int:
    from socketlab.transports.loop import run  # noqa: PLC0415 - start-up time

    try:
        stats = run(_serve(args), loop=args.loop)
    except ConfigError as exc:
        _fail(str(exc))
        return EXIT_USAGE
    except SocketlabError as exc:
        _fail(str(exc))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        # Ctrl-C before the proxy was ready to catch it (while starting): nothing was done.
        return EXIT_OK
    if args.json:
        print(json.dumps(stats), flush=True)
    else:
        print(format_summary(stats), flush=True)
    return EXIT_OK


async def _serve(args: argparse.Namespace) -> dict[str, Any]:
    import asyncio  # noqa: PLC0415 - start-up time
    import signal  # noqa: PLC0415

    from socketlab.tools.proxy.faults import TcpFaults, UdpFaults  # noqa: PLC0415
    from socketlab.tools.proxy.tcp import open_tcp_proxy  # noqa: PLC0415
    from socketlab.tools.proxy.udp import open_udp_proxy  # noqa: PLC0415
    from socketlab.transports.binding import format_peer  # noqa: PLC0415

    delay, jitter = args.delay
    on_event = _print_event if args.verbose else None
    listen = (args.listen_host, args.listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # No signal handlers on Windows: there Ctrl-C raises KeyboardInterrupt instead.
        with contextlib.suppress(NotImplementedError, AttributeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    proxy: Any
    if args.proto == "udp":
        faults: Any = UdpFaults(args.loss, args.dup, args.reorder, delay, jitter)
        opener: Any = open_udp_proxy(args.to, faults, listen=listen, seed=args.seed, on_event=on_event)
    else:
        faults = TcpFaults(delay, jitter, args.bandwidth, args.slice, args.reset_after)
        opener = open_tcp_proxy(args.to, faults, listen=listen, seed=args.seed, on_event=on_event)
    async with opener as proxy:
        host, port = proxy.address
        address = format_peer((host, port))
        print(_("{proto} proxy listening on {address}").format(proto=args.proto, address=address), flush=True)
        print(
            _("relaying to {target}: {faults}; seed {seed}").format(
                target=format_peer(args.to), faults=describe_faults(args.proto, faults), seed=proxy.seed
            ),
            flush=True,
        )
        await stop.wait()
    stats: dict[str, Any] = proxy.stats()
    return stats


def describe_faults(proto: str, faults: Any) -> str:
    """The faults in force, in words, for the start-up line."""
    parts = []
    if proto == "udp":
        for name, label in (("loss", _("loss")), ("dup", _("dup")), ("reorder", _("reorder"))):
            value = getattr(faults, name)
            if value:
                parts.append(f"{label} {value * 100:.4g}%")
    if faults.delay or faults.jitter:
        delay = f"{faults.delay * 1000:g}"
        if faults.jitter:
            delay += f"±{faults.jitter * 1000:g}"
        parts.append(_("delay {ms} ms").format(ms=delay))
    if proto == "tcp":
        if faults.bandwidth:
            parts.append(_("bandwidth {rate:g} bytes/s").format(rate=faults.bandwidth))
        if faults.slice:
            parts.append(_("{n}-byte slices").format(n=faults.slice))
        if faults.reset_after:
            parts.append(_("reset after {n} bytes").format(n=faults.reset_after))
    return ", ".join(parts) if parts else _("no faults")


PREVIEW = 32  # bytes of each datagram shown with -v
# Control characters shown as escapes, so one event stays one line (accents stay as they are).
_CONTROLS = {c: f"\\x{c:02x}" for c in range(32)} | {10: "\\n", 13: "\\r", 9: "\\t", 127: "\\x7f"}


def _preview(data: bytes) -> str:
    from socketlab.core.text import to_display  # noqa: PLC0415 - start-up time

    text = to_display(data[:PREVIEW]).translate(_CONTROLS)
    return f"'{text}'" + ("..." if len(data) > PREVIEW else "")


def _print_event(event: ProxyEvent) -> None:
    from socketlab.transports.binding import format_peer  # noqa: PLC0415 - already imported by now

    client = format_peer(event.client)
    where = f"{client} {event.direction.value}" if event.direction is not None else client
    text = f"{where} {event.kind}"
    if event.number:
        text += f" #{event.number}"
    if event.data:
        text += " " + _preview(event.data)
    if event.size:
        text += " " + _("{n} bytes").format(n=event.size)
    if event.delay:
        text += " " + _("after {ms:.1f} ms").format(ms=event.delay * 1000)
    if event.detail:
        text += f" ({event.detail})"
    print(text, file=sys.stderr, flush=True)


UDP_COLUMNS = ("received", "forwarded", "dropped", "duplicated", "reordered", "delayed", "overflow")


def format_summary(stats: dict[str, Any]) -> str:
    """What the proxy did, for people: one table for UDP, two lines for TCP."""
    from socketlab.transports.binding import format_peer  # noqa: PLC0415 - already imported by now

    listen = format_peer((stats["listen"][0], stats["listen"][1]))
    target = format_peer((stats["target"][0], stats["target"][1]))
    head = _("{proto} proxy {listen} -> {target}, seed {seed}").format(
        proto=stats["proto"], listen=listen, target=target, seed=stats["seed"]
    )
    directions = (("to_server", "client->server"), ("to_client", "server->client"))
    if stats["proto"] == "udp":
        n = stats["clients"]
        lines = [head + ", " + ngettext("{n} client", "{n} clients", n).format(n=n)]
        widths = [max(len(name), 9) for name in UDP_COLUMNS]
        lines.append(" " * 16 + " ".join(name.rjust(w) for name, w in zip(UDP_COLUMNS, widths, strict=True)))
        for key, label in directions:
            row = stats[key]
            cells = " ".join(str(row[name]).rjust(w) for name, w in zip(UDP_COLUMNS, widths, strict=True))
            lines.append(f"{label:<16}{cells}")
        if stats["unreachable"]:
            lines.append(_("server unreachable {n} time(s) (ICMP)").format(n=stats["unreachable"]))
        return "\n".join(lines)
    n = stats["connections"]
    counts = ngettext("{n} connection", "{n} connections", n).format(n=n)
    resets = _("{refused} refused by the server, {resets} reset by the proxy, {passed} resets passed on")
    resets = resets.format(refused=stats["refused"], resets=stats["resets"], passed=stats["resets_forwarded"])
    counts += ", " + resets
    lines = [f"{head}, {counts}"]
    for key, label in directions:
        row = stats[key]
        lines.append(
            f"{label:<16}"
            + _("{bytes} bytes in {writes} write(s), {delayed} chunk(s) delayed").format(
                bytes=row["bytes"], writes=row["writes"], delayed=row["delayed"]
            )
        )
    return "\n".join(lines)
