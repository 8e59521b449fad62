"""`socketlab serve`: the lecture's servers, as one command.

With no arguments it runs the lecture's whole system (TCP upper 6789, UDP upper 9876, TCP ack 9898);
`socketlab serve tcp|udp --service NAME [--host H] [--port P]` runs one listener. These forms are part
of the interface. Each listener is announced on standard output, flushed at once, as
`tcp upper listening on 127.0.0.1:43567` (tests and scripts parse that line); log lines go to standard
error. The server code is imported inside the handler, so other commands do not pay for it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import queue
import sys
import textwrap
import threading
import time
from typing import Any, TextIO

from socketlab.cli import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from socketlab.cli.argtypes import at_least, duration, listen_port, positive_size
from socketlab.config import (
    GRACE,
    IDLE_TIMEOUT,
    LINE_DEADLINE,
    MAX_CONNECTIONS,
    MAX_LINE,
    MAX_PER_ADDRESS,
    SEND_TIMEOUT,
    STATS_INTERVAL,
    TCP_UPPER_PORT,
    UDP_BURST,
    UDP_RATE,
    UDP_UPPER_PORT,
    Access,
    Limits,
    Listener,
    ServerConfig,
    Tls,
    lecture_listeners,
)
from socketlab.errors import BindError, ConfigError
from socketlab.i18n import _
from socketlab.transports.binding import format_address

MODELS = ("asyncio", "iterative", "threads", "selectors")
LOOPS = ("auto", "asyncio", "uvloop")
PROG = "socketlab serve"


def _rate(text: str) -> float:
    """Datagrams per second: `100`, `100/s`; 0 turns the limit off."""
    body = text.strip().removesuffix("/s")
    try:
        value = float(body)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(
            _("not a rate in datagrams per second (like 100 or 100/s, 0 for no limit): {text!r}").format(
                text=text
            )
        )
    return value


def _network(text: str) -> str:
    from socketlab.core.guards import canonical_network  # noqa: PLC0415 - start-up time

    try:
        canonical_network(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            _("not an address or network (like 10.0.0.0/8, 192.168.1.7 or 2001:db8::/32): {text!r}").format(
                text=text
            )
        ) from None
    return text


class _HelpFormatter(argparse.HelpFormatter):
    """Fills paragraphs to the terminal's width but keeps indented lines (the examples) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for para in text.split("\n\n"):
            if any(line.startswith("  ") for line in para.splitlines()):
                paragraphs.append(textwrap.indent(para, indent))
            else:
                paragraphs.append(
                    textwrap.fill(
                        " ".join(para.split()), width, initial_indent=indent, subsequent_indent=indent
                    )
                )
        return "\n\n".join(paragraphs)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help=_("run the lecture's servers (TCP and UDP upper, TCP ack), or one server of your choice"),
        description=_(
            "Run line servers. With no arguments: the lecture's whole system, TCP upper on port "
            "{tcp}, UDP upper on {udp} and TCP ack on 9898, on every interface (IPv4 and IPv6). "
            "With tcp or udp: one listener. Each listener prints one line saying where it listens; "
            "each client connecting and leaving is logged on standard error (each line too, with -v). "
            "Ctrl-C or SIGTERM stops it after answering what was received."
        ).format(tcp=TCP_UPPER_PORT, udp=UDP_UPPER_PORT),
        epilog=_(
            "examples:\n"
            "  socketlab serve                                 the lecture's system\n"
            "  socketlab serve tcp --service upper --port 0    one TCP server on a free port\n"
            "  socketlab serve udp --service echo --host ::1 --port 7007\n"
            "  socketlab serve tcp --service mymodule:shout    your own str -> str function, per line\n"
            "  socketlab serve tcp --model threads --trace     a blocking server, each socket call shown\n"
            "\n"
            "exit codes: 0 stopped by Ctrl-C or SIGTERM; 1 could not listen (port busy, permission "
            "denied); 2 usage error; 130 stopped by a second Ctrl-C before every client was done."
        ),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "proto",
        nargs="?",
        choices=("tcp", "udp"),
        help=_("run one listener of this protocol (default: the lecture's three listeners)"),
    )
    parser.add_argument(
        "-s",
        "--service",
        metavar="NAME",
        help=_(
            "upper, echo, ack, discard, or package.module:function, a function from str to str "
            "applied to each line (default: upper; needs tcp or udp)"
        ),
    )
    parser.add_argument(
        "--host",
        help=_("address or name to listen on (default: every interface, IPv4 and IPv6)"),
    )
    parser.add_argument(
        "-p",
        "--port",
        type=listen_port,
        help=_(
            "port to listen on, 0 for any free port (default: tcp {tcp}, udp {udp}; needs tcp or udp)"
        ).format(tcp=TCP_UPPER_PORT, udp=UDP_UPPER_PORT),
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help=_("also log each line received, with its sender")
    )
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default="auto",
        help=_("event loop: uvloop is faster, asyncio runs everywhere (default: auto, uvloop if installed)"),
    )
    parser.add_argument(
        "--udp-io",
        choices=("thread", "loop"),
        default="thread",
        help=_(
            "how UDP sockets are served: a thread blocking in recvfrom (faster, see docs/performance.md) "
            "or the event loop's datagram protocol (default: thread)"
        ),
    )
    parser.add_argument(
        "--workers",
        type=at_least(1),
        default=1,
        metavar="N",
        help=_(
            "serve from N processes sharing the port (SO_REUSEPORT where the system has it), "
            "for more than one core; asyncio model only (default: 1)"
        ),
    )
    parser.add_argument(
        "--grace",
        type=duration,
        default=GRACE,
        metavar="SECONDS",
        help=_("after Ctrl-C, how long clients get to collect their answers (default: %(default)g)"),
    )
    parser.add_argument(
        "--max-line",
        type=positive_size,
        default=MAX_LINE,
        metavar="SIZE",
        help=_(
            "longest line accepted, in bytes (16K, 1M...); a longer one is answered "
            "'ERR line too long' and the connection closed (default: 16K, as Twisted and h11)"
        ),
    )
    parser.add_argument(
        "--idle-timeout",
        type=duration,
        default=IDLE_TIMEOUT,
        metavar="SECONDS",
        help=_("close TCP clients silent this long, 0 for never (default: %(default)g)"),
    )
    limits = parser.add_argument_group(
        _("limits (0 turns a limit off)"),
        _("Defaults come from servers that face the internet; docs/reliability.md gives each source."),
    )
    limits.add_argument(
        "--line-deadline",
        type=duration,
        default=LINE_DEADLINE,
        metavar="SECONDS",
        help=_(
            "close a client whose line has not ended this long after it began, however slowly its "
            "bytes keep coming (slowloris) (default: %(default)g)"
        ),
    )
    limits.add_argument(
        "--send-timeout",
        type=duration,
        default=SEND_TIMEOUT,
        metavar="SECONDS",
        help=_("disconnect a client that leaves its answers unread this long (default: %(default)g)"),
    )
    limits.add_argument(
        "--max-connections",
        type=at_least(0),
        default=MAX_CONNECTIONS,
        metavar="N",
        help=_(
            "TCP clients served at once; more get 'ERR busy' and are closed (default: %(default)d, "
            "lowered with a warning if the file-descriptor limit, ulimit -n, is too small)"
        ),
    )
    limits.add_argument(
        "--max-per-address",
        type=at_least(0),
        default=MAX_PER_ADDRESS,
        metavar="N",
        help=_("TCP clients at once from one address, loopback exempt (default: %(default)d)"),
    )
    limits.add_argument(
        "--udp-rate",
        type=_rate,
        default=UDP_RATE,
        metavar="PER_SECOND",
        help=_(
            "UDP datagrams a second answered per source address, loopback exempt; the rest are "
            "dropped (default: %(default)g)"
        ),
    )
    limits.add_argument(
        "--udp-burst",
        type=at_least(0),
        default=UDP_BURST,
        metavar="N",
        help=_("UDP datagrams a source may send at once above its rate (default: %(default)d)"),
    )
    limits.add_argument(
        "--limit-loopback",
        action="store_true",
        help=_("apply --max-per-address and --udp-rate to loopback clients too"),
    )
    limits.add_argument(
        "--udp-drop-privileged-ports",
        action="store_true",
        help=_(
            "drop UDP datagrams from source ports below 1024 (ports 0, 7, 13, 19 and 37 are always "
            "dropped: answering them feeds echo/chargen loops)"
        ),
    )
    limits.add_argument(
        "--stats",
        action="store_true",
        help=_(
            "log a statistics line (clients, refusals, drops, as JSON) every --stats-interval and at exit"
        ),
    )
    limits.add_argument(
        "--stats-interval",
        type=duration,
        default=STATS_INTERVAL,
        metavar="SECONDS",
        help=_("how often drops are summed up in the log (default: %(default)g)"),
    )
    access = parser.add_argument_group(
        _("access control and TLS"),
        _(
            "ncat's rules: with any --allow, only those addresses may connect; --deny wins over "
            "--allow. A refused TCP client is closed before any byte is read; a refused UDP datagram "
            "is dropped silently."
        ),
    )
    access.add_argument(
        "--allow",
        action="append",
        type=_network,
        default=[],
        metavar="CIDR",
        help=_("allow this address or network (repeatable)"),
    )
    access.add_argument(
        "--deny",
        action="append",
        type=_network,
        default=[],
        metavar="CIDR",
        help=_("deny this address or network (repeatable)"),
    )
    access.add_argument(
        "--allow-file",
        action="append",
        default=[],
        metavar="FILE",
        help=_("allow the networks listed in FILE (blanks or commas between them, # comments)"),
    )
    access.add_argument(
        "--deny-file", action="append", default=[], metavar="FILE", help=_("deny the networks listed in FILE")
    )
    access.add_argument(
        "--tls-cert", metavar="FILE", help=_("serve TCP over TLS with this PEM certificate chain")
    )
    access.add_argument("--tls-key", metavar="FILE", help=_("the private key of --tls-cert (PEM)"))
    parser.add_argument(
        "--model",
        choices=MODELS,
        default="asyncio",
        help=_(
            "how clients are served: asyncio (the fast one), or the teaching models iterative "
            "(one client at a time, as the slides), threads (one thread per client) and selectors "
            "(one thread watching every client with select()) (default: asyncio)"
        ),
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help=_("show each socket system call as it happens (needs --model iterative, threads or selectors)"),
    )
    parser.add_argument(
        "--trace-format",
        choices=("text", "jsonl"),
        default="text",
        help=_("how --trace writes calls on standard error: text for people, jsonl for programs"),
    )
    parser.set_defaults(func=handle)


class UsageError(Exception):
    """Arguments that parse but do not make sense together."""


def build_config(
    args: argparse.Namespace, allow_texts: tuple[str, ...] = (), deny_texts: tuple[str, ...] = ()
) -> ServerConfig:
    """The server configuration the arguments ask for (no I/O: tests call this directly).

    `allow_texts`/`deny_texts` are the contents of --allow-file/--deny-file, read by the caller.
    """
    if args.proto is None:
        if args.service is not None or args.port is not None:
            raise UsageError(_("--service and --port need tcp or udp (e.g. socketlab serve tcp --port 0)"))
        listeners = lecture_listeners(args.host)
    else:
        service = args.service or "upper"
        port = args.port
        if port is None:
            port = _lecture_port(args.proto, service, args.host)
        listeners = (Listener(args.proto, service, args.host, port),)
    limits = Limits(
        max_line=args.max_line,
        idle_timeout=args.idle_timeout,
        line_deadline=getattr(args, "line_deadline", LINE_DEADLINE),
        send_timeout=getattr(args, "send_timeout", SEND_TIMEOUT),
        max_connections=getattr(args, "max_connections", MAX_CONNECTIONS),
        max_per_address=getattr(args, "max_per_address", MAX_PER_ADDRESS),
        limit_loopback=getattr(args, "limit_loopback", False),
        udp_rate=getattr(args, "udp_rate", UDP_RATE),
        udp_burst=max(1, getattr(args, "udp_burst", UDP_BURST)),
        udp_drop_privileged_ports=getattr(args, "udp_drop_privileged_ports", False),
    )
    cert, key = getattr(args, "tls_cert", None), getattr(args, "tls_key", None)
    if (cert is None) != (key is None):
        raise UsageError(_("--tls-cert and --tls-key go together"))
    if cert is not None and args.proto == "udp":
        raise UsageError(_("TLS is for TCP: --tls-cert needs tcp (or no protocol, for the TCP listeners)"))
    access = Access(
        allow=tuple(getattr(args, "allow", ())),
        deny=tuple(getattr(args, "deny", ())),
        allow_texts=allow_texts,
        deny_texts=deny_texts,
    )
    return ServerConfig(
        listeners=listeners,
        limits=limits,
        loop=args.loop,
        udp_io=args.udp_io,
        grace=args.grace,
        verbose=args.verbose,
        access=access,
        tls=Tls(cert, key) if cert is not None and key is not None else None,
        stats=getattr(args, "stats", False),
        stats_interval=getattr(args, "stats_interval", STATS_INTERVAL) or STATS_INTERVAL,
    )


def _read_access_files(args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The text of each --allow-file and --deny-file; OSError becomes UsageError naming the file."""

    def read(paths: list[str]) -> tuple[str, ...]:
        texts = []
        for path in paths:
            try:
                with open(path, encoding="utf-8") as f:
                    texts.append(f.read())
            except (OSError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "strerror", None) or str(exc)
                raise UsageError(_("cannot read {path}: {reason}").format(path=path, reason=reason)) from exc
        return tuple(texts)

    return read(getattr(args, "allow_file", [])), read(getattr(args, "deny_file", []))


def _lecture_port(proto: str, service: str, host: str | None) -> int:
    # The port the lecture uses for this protocol and service, else the lecture's port for the protocol.
    for listener in lecture_listeners(host):
        if listener.proto == proto and listener.service == service:
            return listener.port
    return TCP_UPPER_PORT if proto == "tcp" else UDP_UPPER_PORT


def print_listening(proto: str, service: str, host: str, port: int) -> None:
    """The line that announces a listener: part of the interface (see tests/helpers.py LISTENING)."""
    print(
        _("{proto} {service} listening on {address}").format(
            proto=proto, service=service, address=format_address(host, port)
        ),
        flush=True,
    )


class BackgroundLogHandler(logging.Handler):
    """Writes log lines from a thread of its own, so a slow or full standard error never stalls the loop.

    With `socketlab serve 2>&1 | less` paused, or a parent process that stops reading the pipe, a plain
    StreamHandler blocks in write() inside the event loop and every client freezes. Here the loop only
    formats and queues; the queue is bounded, and lines that do not fit are dropped and counted. The
    thread writes to the file descriptor itself, not through sys.stderr, so a write still blocked at
    exit holds no lock the interpreter needs to shut down.
    """

    QUEUE_LINES = 10_000  # about 1 MB of log lines

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):
            self._fd = None  # not a real file (a test's capture): write through the stream
        self._lines: queue.Queue[str | None] = queue.Queue(self.QUEUE_LINES)
        self.dropped = 0
        self._thread = threading.Thread(target=self._write_lines, name="socketlab-log", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:  # noqa: BLE001 - logging's own convention: report, never raise
            self.handleError(record)
            return
        try:
            self._lines.put_nowait(line)
        except queue.Full:
            self.dropped += 1

    def _write_lines(self) -> None:
        reported = 0
        while (line := self._lines.get()) is not None:
            if self.dropped > reported:
                missing = self.dropped - reported
                reported = self.dropped
                note = _("({count} log lines dropped: standard error was not being read)")
                line = note.format(count=missing) + "\n" + line
            self._write(line)

    def _write(self, text: str) -> None:
        if self._fd is None:
            self._stream.write(text)
            self._stream.flush()
            return
        data = text.encode("utf-8", "replace")
        while data:
            data = data[os.write(self._fd, data) :]

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued, waiting at most `timeout` for a reader; then give up on the rest."""
        deadline = time.monotonic() + timeout
        # Full for the whole timeout: nobody reads our standard error, what is queued cannot be written.
        with contextlib.suppress(queue.Full):
            self._lines.put(None, timeout=timeout)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        super().close()


def configure_logging(verbose: bool, *, background: bool = True) -> logging.Handler:
    """Log lines (clients coming and going, -v lines) to standard error, with the time.

    `background`: through `BackgroundLogHandler`, for the event loop; the blocking teaching models
    write directly, so their log lines stay in order with a --trace written to the same stream.
    """
    handler: logging.Handler = (
        BackgroundLogHandler(sys.stderr) if background else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    log = logging.getLogger("socketlab")
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
    return handler


def _fail(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def handle(args: argparse.Namespace) -> int:
    try:
        config = build_config(args, *_read_access_files(args))
    except UsageError as exc:
        _fail(str(exc))
        return EXIT_USAGE
    if args.model != "asyncio" and (config.tls is not None or config.access != Access()):
        _fail(_("TLS and access lists need the asyncio model (the teaching models stay minimal)"))
        return EXIT_USAGE
    if args.trace and args.model == "asyncio":
        _fail(
            _(
                "--trace needs a blocking model: add --model iterative, --model threads or "
                "--model selectors. The asyncio server's socket calls are made by the event loop "
                "itself, inside uvloop or asyncio, "
                "where they cannot be observed one by one."
            )
        )
        return EXIT_USAGE
    if args.workers > 1 and args.model != "asyncio":
        _fail(_("--workers needs the asyncio model"))
        return EXIT_USAGE
    # With workers, the parent writes its few lines directly: a log thread would not survive fork.
    handler = configure_logging(args.verbose, background=args.model == "asyncio" and args.workers == 1)
    try:
        if args.model != "asyncio":
            return _run_blocking(config, args)
        if args.workers > 1:
            from socketlab.transports.workers import run_workers  # noqa: PLC0415 - start-up time

            def in_worker() -> None:
                configure_logging(args.verbose, background=True)

            return run_workers(config, args.workers, on_listening=print_listening, in_worker=in_worker)
        from socketlab.transports.server import run_server  # noqa: PLC0415 - start-up time

        result = run_server(config, on_listening=print_listening)
    except BindError as exc:
        _fail(str(exc))
        return EXIT_FAILURE
    except ConfigError as exc:
        _fail(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        # Ctrl-C before the server was ready to catch it (while importing or binding).
        return EXIT_INTERRUPTED
    finally:
        logging.getLogger("socketlab").removeHandler(handler)
        handler.close()
    return EXIT_INTERRUPTED if result.forced else EXIT_OK


def _run_blocking(config: ServerConfig, args: argparse.Namespace) -> int:
    from socketlab.models import run_blocking_server  # noqa: PLC0415 - start-up time

    tracer = None
    if args.trace:
        from socketlab.tracing import make_tracer  # noqa: PLC0415

        tracer = make_tracer(args.trace_format, sys.stderr)
    return run_blocking_server(config, model=args.model, tracer=tracer, on_listening=print_listening)
