"""`socketlab speed`: one-way bulk transfers swept over buffer and chunk sizes, as a table, JSON or a plot."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from typing import TYPE_CHECKING, Any, TextIO

from socketlab.cli import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from socketlab.errors import ConfigError, SocketlabError
from socketlab.i18n import _
from socketlab.units import (
    format_duration,
    format_rate,
    format_size,
    parse_duration,
    parse_rate,
    parse_size,
    parse_size_list,
)

if TYPE_CHECKING:
    from socketlab.tools.speed import Point, PointResult, RunResult, SpeedResult

DEFAULT_CHUNK = "64K"
# Bounds that keep a typing mistake from starting a run that never ends.
MAX_DURATION = 3600.0  # seconds per run
MAX_RECV_DELAY = 1.0  # seconds per recv()


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "speed",
        help=_("measure what socket buffer and chunk sizes do to throughput and latency"),
        description=_(
            "One-way bulk transfer from a sender to a receiver, both on this machine (loopback) unless "
            "--to names a remote 'socketlab serve --service discard'. Each point of the sweep reports the "
            "buffer sizes asked for and given by the kernel, throughput, system calls, the latency of small "
            "probes sent behind the bulk data and, for UDP, datagrams lost. Sizes take units (4K, 1M) and "
            "lists or doubling ranges (4K,64K,1M or 1..64K)."
        ),
    )
    p.add_argument("--proto", choices=("tcp", "udp"), default="tcp", help=_("transport (default: tcp)"))
    p.add_argument(
        "--to",
        metavar="HOST:PORT",
        help=_("send to a remote discard server instead of a local receiver (its side is then unknown)"),
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help=_("loopback address of the local receiver: 127.0.0.1 or ::1 (default: 127.0.0.1)"),
    )
    p.add_argument(
        "--buf",
        metavar="SIZES",
        help=_("SO_SNDBUF and SO_RCVBUF together, e.g. 4K..4M; 'auto' leaves the kernel's choice"),
    )
    p.add_argument("--sndbuf", metavar="SIZES", default="auto", help=_("SO_SNDBUF sweep (default: auto)"))
    p.add_argument("--rcvbuf", metavar="SIZES", default="auto", help=_("SO_RCVBUF sweep (default: auto)"))
    p.add_argument(
        "--chunk",
        metavar="SIZES",
        default=DEFAULT_CHUNK,
        help=_(
            "bytes per send() and recv() (UDP: per datagram), e.g. 1..1M; 'all' sends --bytes in one "
            "call (default: 64K)"
        ),
    )
    p.add_argument("--recv-chunk", metavar="SIZE", help=_("bytes per recv(), if not the same as --chunk"))
    p.add_argument(
        "--duration",
        metavar="TIME",
        default="1s",
        help=_("sending time per run, e.g. 1s, 500ms (default: 1s)"),
    )
    p.add_argument("--bytes", metavar="SIZE", help=_("stop each run after this many bytes, if sooner"))
    p.add_argument("--repeat", type=int, default=1, metavar="N", help=_("runs per point (default: 1)"))
    p.add_argument(
        "--rate",
        metavar="RATE",
        help=_("UDP sending rate: datagrams/s (20000), bytes/s (10MB/s) or bits/s (100Mbit/s)"),
    )
    p.add_argument(
        "--recv-delay",
        metavar="TIME",
        default="0",
        help=_("the receiver sleeps this long after each recv(): a slow application (e.g. 100us)"),
    )
    p.add_argument(
        "--probe-interval",
        metavar="TIME",
        default="50ms",
        help=_("time between latency probes; 0 for none (default: 50ms)"),
    )
    p.add_argument(
        "--netns",
        metavar="RATE",
        help=_(
            "Linux, root: run the receiver in a network namespace behind a veth link limited to RATE "
            "(e.g. 100Mbit/s, 10MB/s), so the medium is the bottleneck"
        ),
    )
    p.add_argument(
        "--netns-delay",
        metavar="TIME",
        default="0",
        help=_("with --netns: delay added on the way back, i.e. the round-trip time (e.g. 10ms)"),
    )
    p.add_argument(
        "--json", action="store_true", help=_("print the results as JSON (schema in docs/speed.md)")
    )
    p.add_argument(
        "--plot", metavar="FILE.png", help=_("draw throughput and latency against size (matplotlib)")
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=_("a progress line on stderr (default: when stderr is a terminal)"),
    )
    p.set_defaults(func=handle)


def _sizes(text: str, keyword: str) -> list[int | None]:
    """A size list where `keyword` (auto, all) stands for None."""
    out: list[int | None] = []
    for item in text.split(","):
        if item.strip().lower() == keyword:
            out.append(None)
        else:
            out.extend(parse_size_list(item))
    return out


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(_("--to needs HOST:PORT (or [IPv6]:PORT), not {text!r}").format(text=text))
    return host, int(port)


def build_config(args: argparse.Namespace) -> Any:
    from socketlab.tools.speed import SpeedConfig, make_points  # noqa: PLC0415 - start-up time

    if args.repeat < 1:
        raise ConfigError(_("--repeat must be at least 1"))
    duration = parse_duration(args.duration)
    if duration <= 0:
        raise ConfigError(_("--duration must be above zero"))
    if duration > MAX_DURATION:
        raise ConfigError(
            _("--duration is per run: at most {limit}").format(limit=format_duration(MAX_DURATION))
        )
    recv_delay = parse_duration(args.recv_delay)
    if recv_delay > MAX_RECV_DELAY:
        raise ConfigError(_("--recv-delay is per recv() call: at most {limit}").format(limit="1s"))
    max_bytes = parse_size(args.bytes) if args.bytes else None
    if args.buf is not None and (args.sndbuf != "auto" or args.rcvbuf != "auto"):
        raise ConfigError(_("--buf sets both buffers: use it or --sndbuf/--rcvbuf, not both"))
    if args.rate is not None and args.proto != "udp":
        raise ConfigError(_("--rate paces UDP datagrams; TCP is paced by the receiver"))
    if args.to is not None and (args.buf is not None or args.rcvbuf != "auto"):
        raise ConfigError(
            _("with --to the receive buffer is the server's own: sweep --sndbuf, not --buf or --rcvbuf")
        )
    netns = None
    if args.netns is not None:
        netns = _link(args.netns, args.netns_delay)
        if args.to is not None:
            raise ConfigError(_("--netns runs its own receiver: it cannot go with --to"))
    elif args.netns_delay != "0":
        raise ConfigError(_("--netns-delay needs --netns"))
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        raise ConfigError(_("the local receiver listens on loopback only (127.0.0.1 or ::1)"))
    points = make_points(
        args.proto,
        _sizes(args.sndbuf, "auto"),
        _sizes(args.rcvbuf, "auto"),
        _sizes(args.chunk, "all"),
        bufs=_sizes(args.buf, "auto") if args.buf is not None else None,
        recv_chunk=parse_size(args.recv_chunk) if args.recv_chunk else None,
        max_bytes=max_bytes,
    )
    return SpeedConfig(
        points=points,
        proto=args.proto,
        duration=duration,
        repeat=args.repeat,
        max_bytes=max_bytes,
        rate=parse_rate(args.rate) if args.rate else None,
        recv_delay=recv_delay,
        to=_address(args.to) if args.to else None,
        host="127.0.0.1" if args.host == "localhost" else args.host,
        probe_interval=parse_duration(args.probe_interval),
        netns=netns,
    )


def _link(rate_text: str, delay_text: str) -> Any:
    from socketlab.tools.speed import Link  # noqa: PLC0415 - start-up time

    rate = parse_rate(rate_text)
    if rate.unit != "bytes":
        raise ConfigError(_("--netns takes a link rate in bits or bytes per second (100Mbit/s, 10MB/s)"))
    delay = parse_duration(delay_text)
    return Link(rate_bits=round(rate.per_second * 8), delay=delay)


def handle(args: argparse.Namespace) -> int:
    try:
        config = build_config(args)
    except ConfigError as exc:
        print(f"socketlab speed: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if config.netns is not None:
        from socketlab.tools.speed.netns import unavailable_reason  # noqa: PLC0415 - Linux only

        reason = unavailable_reason()
        if reason is not None:
            print(_("socketlab speed: skipped: {reason}").format(reason=reason), file=sys.stderr)
            return EXIT_FAILURE
    if args.plot:
        try:
            import matplotlib  # noqa: F401, PLC0415 - only --plot needs it
        except ImportError:
            print(
                _("socketlab speed: --plot needs matplotlib (pip install 'socketlab[plot]')"), file=sys.stderr
            )
            return EXIT_USAGE
    from socketlab.tools.speed import new_result, run_speed  # noqa: PLC0415 - start-up time

    show_progress = sys.stderr.isatty() if args.progress is None else args.progress
    result = new_result(config)
    code = EXIT_OK
    try:
        run_speed(config, _progress_printer(sys.stderr) if show_progress else None, result)
    except KeyboardInterrupt:
        result.interrupted = True
        code = EXIT_INTERRUPTED
    except SocketlabError as exc:
        code = EXIT_FAILURE
        error = str(exc)
    finally:
        if show_progress:
            sys.stderr.write("\r\033[K")
    result.points = [p for p in result.points if p.runs]
    if code == EXIT_FAILURE and not result.points:
        print(f"socketlab speed: {error}", file=sys.stderr)
        return code
    if args.json:
        json.dump(result.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_report(result, sys.stdout)
    if code == EXIT_FAILURE:
        print(f"socketlab speed: {error}", file=sys.stderr)
    if args.plot and result.points:
        from socketlab.tools.speed.plot import plot_speed  # noqa: PLC0415 - imports matplotlib

        try:
            info = plot_speed(result, args.plot)
        except OSError as exc:
            print(
                _("socketlab speed: cannot write {path}: {error}").format(path=args.plot, error=exc),
                file=sys.stderr,
            )
            return EXIT_FAILURE
        print(_("plot written to {path}").format(path=info.path), file=sys.stderr)
    if code == EXIT_INTERRUPTED:
        print(_("interrupted: the results above are the runs finished so far"), file=sys.stderr)
    return code


def _progress_printer(stream: TextIO) -> Any:
    def progress(done: int, total: int, point: Point, repeat: int, run: RunResult | None) -> None:
        last = ""
        if run is not None and run.throughput is not None:
            last = "  " + _("last: {rate}").format(rate=format_rate(run.throughput))
        stream.write(
            f"\r\033[K[{done}/{total}] sndbuf={_size(point.sndbuf)} rcvbuf={_size(point.rcvbuf)} "
            f"chunk={format_size(point.chunk)} " + _("run {n}").format(n=repeat + 1) + last
        )
        stream.flush()

    return progress


def format_bits(bits_per_second: int) -> str:
    for factor, prefix in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if bits_per_second >= factor:
            return f"{bits_per_second / factor:g} {prefix}bit/s"
    return f"{bits_per_second} bit/s"


def _size(value: int | None) -> str:
    return "auto" if value is None else format_size(value)


def _buffer(asked: int | None, given: int | None, end: int | None) -> str:
    text = f"{_size(asked)}→{'?' if given is None else format_size(given)}"
    if end is not None and end != given:
        text += f"({format_size(end)})"
    return text


def _point_row(p: PointResult, udp: bool) -> list[str]:
    runs = p.runs
    snd_end = max((r.sndbuf.end for r in runs if r.sndbuf.end is not None), default=None)
    rcv_end = max((r.rcvbuf.end for r in runs if r.rcvbuf.end is not None), default=None)
    t = p.throughput
    throughput = "?" if t is None else format_rate(t["median"])
    if t is not None and len(runs) > 1:
        throughput += f" ±{(t['max'] - t['min']) / 2 / t['median'] * 100:.0f}%" if t["median"] else ""
    send_calls = sum(r.send_calls for r in runs)
    sent = sum(r.sent_bytes for r in runs)
    recv_calls = [r.recv_calls for r in runs if r.recv_calls is not None]
    received = sum(r.received_bytes or 0 for r in runs)
    lat = p.probe_latency
    latency = "?" if lat is None else f"{format_duration(lat['median'])}/{format_duration(lat['p90'])}"
    row = [
        _buffer(p.point.sndbuf, runs[0].sndbuf.given, snd_end),
        _buffer(p.point.rcvbuf, runs[0].rcvbuf.given, rcv_end),
        format_size(p.point.chunk),
        throughput,
        f"{send_calls // len(runs)}",
        f"{sent / send_calls:.0f}" if send_calls else "?",
        f"{sum(recv_calls) // len(recv_calls)}" if recv_calls else "?",
        f"{received / sum(recv_calls):.0f}" if recv_calls and sum(recv_calls) else "?",
        latency,
    ]
    if udp:
        u = p.udp
        assert u is not None
        lost = "?" if u.lost is None else f"{u.lost} ({100 * u.lost / u.sent:.1f}%)" if u.sent else "0"
        row += [
            str(u.sent),
            "?" if u.received is None else str(u.received),
            lost,
            "?" if u.reordered is None else str(u.reordered),
            "?" if u.duplicated is None else str(u.duplicated),
            "?" if u.kernel_drops is None else str(u.kernel_drops),
        ]
    return row


def print_report(result: SpeedResult, out: TextIO) -> None:
    config = result.config
    udp = config.proto == "udp"
    headers = [
        _("sndbuf"),
        _("rcvbuf"),
        _("chunk"),
        _("throughput"),
        _("sends"),
        _("B/send"),
        _("recvs"),
        _("B/recv"),
        _("probe p50/p90"),
    ]
    if udp:
        headers += [_("sent"), _("received"), _("lost"), _("reord."), _("dup."), _("kernel drops")]
    rows = [_point_row(p, udp) for p in result.points]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)), file=out)
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)), file=out)
    print(file=out)
    for note in report_notes(result):
        print(textwrap.fill(note, width=100, subsequent_indent="  "), file=out)


def report_notes(result: SpeedResult) -> list[str]:
    """What a reader needs to read the table right: the kernel's rules and what is unknown."""
    from socketlab.tools.speed.ends import GIVE_UP  # noqa: PLC0415 - start-up time

    config = result.config
    k = result.kernel
    notes = [
        _(
            "buffers: asked→given by getsockopt (in brackets: at the end of the run, when autotuning grew "
            "it); 'auto' = not set, the kernel autotunes. calls are per run; throughput is what the "
            "receiving application read per second{spread}."
        ).format(
            spread=_(", median ± half the range over {n} runs").format(n=config.repeat)
            if config.repeat > 1
            else ""
        )
    ]
    if "net.core.wmem_max" in k and "net.core.rmem_max" in k:
        notes.append(
            _(
                "Linux doubles every SO_SNDBUF/SO_RCVBUF asked for (the extra half pays for its own "
                "bookkeeping) after capping the request at net.core.wmem_max = {w} and net.core.rmem_max = "
                "{r} (read from /proc/sys/net/core); an unset TCP buffer starts at tcp_wmem/tcp_rmem's "
                "middle value and grows up to their last ({tw} / {tr})."
            ).format(
                w=format_size(k["net.core.wmem_max"][0]),
                r=format_size(k["net.core.rmem_max"][0]),
                tw=format_size(k["net.ipv4.tcp_wmem"][-1]) if "net.ipv4.tcp_wmem" in k else "?",
                tr=format_size(k["net.ipv4.tcp_rmem"][-1]) if "net.ipv4.tcp_rmem" in k else "?",
            )
        )
    else:
        notes.append(_("the kernel's buffer limits are unknown here (no /proc/sys/net/core)."))
    if config.to is not None:
        notes.append(
            _(
                "the receiver is remote: what it received, datagrams lost and probe latencies are "
                "unknown (?); TCP throughput counts until the server closed after reading everything."
            )
        )
        if any(not r.end_confirmed for p in result.points for r in p.runs):
            notes.append(
                _("some runs were not confirmed by the server closing: their throughput is unknown.")
            )
    if config.netns is not None:
        delay = config.netns.delay
        notes.append(
            _(
                "medium: the receiver ran in its own network namespace behind a veth pair limited to "
                "{rate} by tc (tbf){delay}. UDP datagrams lost but not in 'kernel drops' were dropped in "
                "the link's queue, before the receiving socket."
            ).format(
                rate=format_bits(config.netns.rate_bits),
                delay=_(", with {delay} added on the way back").format(delay=format_duration(delay))
                if delay
                else "",
            )
        )
    if config.probe_interval > 0:
        notes.append(
            _(
                "probe: a {n}-byte message sent every {every} in the same connection (UDP: a datagram), "
                "behind the bulk data; its latency is the time the bytes ahead of it spent in the buffers."
            ).format(n=16, every=format_duration(config.probe_interval))
        )
    if any(r.receiver_gave_up for p in result.points for r in p.runs):
        notes.append(
            _(
                "in some runs the receiver gave up {limit} after the sending window with data still "
                "on the way: their counts stop there (a slower link needs smaller buffers or --bytes)."
            ).format(limit=format_duration(GIVE_UP))
        )
    if any(r.drain_capped for p in result.points for r in p.runs):
        notes.append(
            _(
                "in some runs the slow receiver stopped sleeping after the window, to drain the "
                "buffers in time."
            )
        )
    return notes
