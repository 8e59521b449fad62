"""`socketlab bench tcp|udp HOST PORT` (closed-loop load) and `socketlab bench compare` (side by side).

Only argument parsing, printing and exit codes live here; the load generator is socketlab.tools.bench and
the comparison socketlab.tools.compare, both imported inside the handlers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import signal
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from socketlab.cli.argtypes import at_least, duration, size
from socketlab.i18n import _
from socketlab.transports.binding import format_address

if TYPE_CHECKING:
    from socketlab.tools.bench import BenchResult, Progress


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM stops a run as Ctrl-C does, so the servers and client processes it started are stopped too
    (the default SIGTERM would end this process at once and leave them running)."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (a test calling main()): signals are not ours to take
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help=_("load a server and measure requests/s and latency, or compare servers"),
        description=_(
            "Closed-loop load against a line server: each connection keeps --pipeline requests in flight, "
            "checks every answer and sends the next request. Reports requests/s, MB/s, latency "
            "percentiles and wrong answers. Every run stops by itself after --warmup + --duration."
        ),
    )
    kinds = parser.add_subparsers(dest="bench_kind", metavar="tcp|udp|compare", required=True)
    for proto in ("tcp", "udp"):
        sub = kinds.add_parser(
            proto,
            help=_("load a {proto} server").format(proto=proto.upper()),
            description=_("Closed-loop {proto} load against HOST PORT.").format(proto=proto.upper()),
        )
        sub.add_argument("host", metavar="HOST", help=_("server name or address"))
        sub.add_argument("port", metavar="PORT", type=int, help=_("server port"))
        _add_load_options(sub, proto)
        sub.set_defaults(func=handle_bench, proto=proto)

    cmp = kinds.add_parser(
        "compare",
        help=_("run the same load against several servers and write a report"),
        description=_(
            "Start each server in turn on 127.0.0.1, run the same load against each, several rounds, and "
            "write a Markdown table (medians, ratios to the C reference server) and a PNG chart."
        ),
    )
    cmp.add_argument(
        "--rounds", type=at_least(1), default=3, help=_("rounds of every measurement (default: 3)")
    )
    cmp.add_argument(
        "--duration", type=duration, default=5.0, help=_("measured seconds per load run (default: 5)")
    )
    cmp.add_argument("--warmup", type=duration, default=1.0, help=_("warm-up seconds (default: 1)"))
    cmp.add_argument(
        "--scenarios",
        default="all",
        help=_("comma-separated: tcp16, tcp256, udp16, bulk, idle, startup (default: all)"),
    )
    cmp.add_argument(
        "--servers",
        default="all",
        help=_(
            "comma-separated, from: socketlab, socketlab-asyncio, socketlab-workers2, socketlab-iterative, "
            "socketlab-threads, socketlab-selectors, uvloop-minimal, asyncio-streams, threading, "
            "udp-blocking; cserver, the reference, is always included (default: all)"
        ),
    )
    cmp.add_argument(
        "--bulk-total",
        type=size,
        default=1024**3,
        help=_("bytes through the bulk round trip (default: 1G)"),
    )
    cmp.add_argument(
        "--idle-conns",
        type=at_least(1),
        default=10_000,
        help=_("idle TCP connections for the memory measurement (default: 10000)"),
    )
    cmp.add_argument(
        "--startup-runs", type=at_least(1), default=10, help=_("client start-up runs (default: 10)")
    )
    cmp.add_argument(
        "--generator",
        choices=("auto", "loadgen", "socketlab"),
        default="auto",
        help=_("load generator: the C loadgen when it builds (auto), or socketlab bench"),
    )
    cmp.add_argument("--cbench", metavar="DIR", help=_("the C reference programs (default: ../shared/bench)"))
    cmp.add_argument("--no-pin", action="store_true", help=_("do not pin server and generator to cores"))
    cmp.add_argument(
        "--output",
        default="docs/performance.md",
        help=_("Markdown report to write; '-' for none (default: docs/performance.md)"),
    )
    cmp.add_argument(
        "--chart",
        default="docs/img/performance.png",
        help=_("PNG chart to write; '-' for none (default: docs/img/performance.png)"),
    )
    cmp.add_argument("--json", metavar="FILE", help=_("also write every measurement as JSON to FILE"))
    cmp.set_defaults(func=handle_compare)


def _add_load_options(sub: argparse.ArgumentParser, proto: str) -> None:
    what = _("connections") if proto == "tcp" else _("sockets")
    sub.add_argument(
        "-c",
        "--connections",
        type=at_least(1),
        default=16,
        help=_("concurrent {what} (default: 16)").format(what=what),
    )
    sub.add_argument(
        "-s",
        "--size",
        type=size,
        default=64,
        help=_("bytes per request line, newline included (default: 64)"),
    )
    sub.add_argument(
        "-d", "--duration", type=duration, default=10.0, help=_("measured seconds (default: 10)")
    )
    sub.add_argument(
        "-w",
        "--warmup",
        type=duration,
        default=1.0,
        help=_("seconds of load before measuring (default: 1)"),
    )
    sub.add_argument(
        "-k",
        "--pipeline",
        type=at_least(1),
        default=1,
        help=_("requests in flight per connection (default: 1)"),
    )
    # No -p: `serve` and `client` use -p for the port, which bench takes as an argument.
    sub.add_argument(
        "--procs",
        type=at_least(1),
        default=1,
        help=_("client processes sharing the connections (default: 1)"),
    )
    sub.add_argument(
        "--service",
        choices=("upper", "echo", "ack"),
        default="upper",
        help=_("the service the server runs; every answer is checked against it (default: upper)"),
    )
    sub.add_argument(
        "--payload",
        choices=("ascii", "utf8"),
        default="ascii",
        help=_(
            "request text: lowercase ASCII as the C loadgen sends, or Portuguese in UTF-8 (default: ascii)"
        ),
    )
    sub.add_argument("--json", action="store_true", help=_("print the result as one JSON object"))
    sub.add_argument(
        "--progress",
        action="store_true",
        help=_("show the live progress line even when stderr is not a terminal"),
    )


def handle_bench(args: argparse.Namespace) -> int:
    from socketlab.cli import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE  # noqa: PLC0415
    from socketlab.errors import ConfigError, SocketlabError  # noqa: PLC0415
    from socketlab.tools.bench import BenchSpec, run_bench  # noqa: PLC0415

    spec = BenchSpec(
        proto=args.proto,
        host=args.host,
        port=args.port,
        connections=args.connections,
        size=args.size,
        duration=args.duration,
        warmup=args.warmup,
        pipeline=args.pipeline,
        procs=args.procs,
        service=args.service,
        payload=args.payload,
    )
    show = args.progress or sys.stderr.isatty()
    try:
        with sigterm_interrupts():
            result = run_bench(spec, progress=_ProgressLine() if show else None)
    except ConfigError as exc:
        _clear_progress(show)
        print(_("socketlab bench: {error}").format(error=exc), file=sys.stderr)
        return EXIT_USAGE
    except SocketlabError as exc:
        _clear_progress(show)
        print(_("socketlab bench: {error}").format(error=exc), file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        _clear_progress(show)
        print(_("socketlab bench: {error}").format(error=exc.strerror or exc), file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        _clear_progress(show)
        return EXIT_INTERRUPTED
    _clear_progress(show)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(format_result(result))
    if result.tally.connected == 0 or result.tally.requests == 0 or result.errors:
        return EXIT_FAILURE
    return EXIT_OK


class _ProgressLine:
    """The live line on stderr: elapsed time, phase, answers so far and the rate since the last line."""

    def __init__(self) -> None:
        self._last = (0.0, 0)
        self._rate = 0.0

    def __call__(self, p: Progress) -> None:
        last_t, last_n = self._last
        # Several load processes report moments apart: a rate over milliseconds would be noise.
        if p.elapsed - last_t >= 0.3:
            self._rate = (p.answers - last_n) / (p.elapsed - last_t)
            self._last = (p.elapsed, p.answers)
        rate = self._rate
        phase = _("warm-up") if p.warming_up else _("measuring")
        sys.stderr.write(
            "\r\033[K"
            + _("{elapsed:5.1f} s  {phase}  {answers:,} answers  ~{rate:,.0f}/s  {errors:,} errors").format(
                elapsed=p.elapsed, phase=phase, answers=p.answers, rate=rate, errors=p.errors
            )
        )
        sys.stderr.flush()


def _clear_progress(shown: bool) -> None:
    if shown:
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()


def format_result(r: BenchResult) -> str:
    s, t = r.spec, r.tally
    lat = r.latency
    lines = [
        _(
            "{proto} {service} at {where}: {conns} {what} x {k} in flight, {size}-byte lines, "
            "{procs} process(es), {dur:g} s measured after {warm:g} s warm-up"
        ).format(
            what=_("connections") if s.proto == "tcp" else _("sockets"),
            proto=s.proto,
            service=s.service,
            # An IPv6 address needs brackets before its port, as in a URL.
            where=format_address(s.host, s.port),
            conns=t.connected,
            k=s.pipeline,
            size=s.size,
            procs=s.procs,
            dur=t.window_s,
            warm=s.warmup,
        ),
        _("requests   {n:,}   {rps:,.1f} req/s   {mb:.2f} MB/s (requests and answers)").format(
            n=t.requests, rps=r.rps, mb=r.mb_per_s
        ),
    ]
    if lat:
        lines.append(
            _(
                "latency    p50 {p50:,.0f} µs   p90 {p90:,.0f} µs   p99 {p99:,.0f} µs   "
                "p99.9 {p999:,.0f} µs   max {max:,.0f} µs   ({kind})"
            ).format(
                p50=lat["p50"],
                p90=lat["p90"],
                p99=lat["p99"],
                p999=lat["p99.9"],
                max=lat["max"],
                kind=_("HDR histogram") if r.histogram == "hdr" else _("exact"),
            )
        )
    errors = _("errors     {wrong:,} wrong answers, {conn:,} connection errors").format(
        wrong=t.wrong_answers, conn=t.connection_errors
    )
    if s.proto == "udp":
        errors += _(", {lost:,} datagrams unanswered in {ms:.0f} ms, {late:,} late").format(
            lost=t.udp_timeouts, ms=200, late=t.udp_stale
        )
    lines.append(errors)
    m = r.machine
    lines.append(
        _("machine    {cpu}, {cores} cores, {system} {kernel}, {python}, generator {gen}").format(
            cpu=m["cpu"],
            cores=m["cores"],
            system=m["system"],
            kernel=m["kernel"],
            python=m["python"],
            gen=m["generator"],
        )
    )
    return "\n".join(lines)


# Where the results go, not what is measured: left out of the command a report gives for reproducing it.
OUTPUT_OPTIONS = ("--json", "--output", "--chart")


def reproducible_args(argv: list[str]) -> list[str]:
    """`argv` without the output options (and their values), for the report's "reproduce" command."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in OUTPUT_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{o}=" for o in OUTPUT_OPTIONS)):
            kept.append(arg)
    return kept


def handle_compare(args: argparse.Namespace) -> int:
    import time  # noqa: PLC0415

    from socketlab.cli import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE  # noqa: PLC0415
    from socketlab.errors import ConfigError, SocketlabError  # noqa: PLC0415
    from socketlab.tools import compare  # noqa: PLC0415

    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    try:
        options = compare.CompareOptions(
            rounds=args.rounds,
            duration=args.duration,
            warmup=args.warmup,
            scenarios=compare.parse_list(args.scenarios, compare.SCENARIOS),
            servers=None if args.servers == "all" else tuple(args.servers.split(",")),
            bulk_total=args.bulk_total,
            idle_conns=args.idle_conns,
            startup_runs=args.startup_runs,
            generator=args.generator,
            cbench=args.cbench,
            pin=not args.no_pin,
            command="socketlab " + shlex.join(reproducible_args(sys.argv[1:])),
        )
        with sigterm_interrupts():
            report = compare.run_compare(options, log)
    except ConfigError as exc:
        print(_("socketlab bench compare: {error}").format(error=exc), file=sys.stderr)
        return EXIT_USAGE
    except (SocketlabError, OSError) as exc:
        print(_("socketlab bench compare: {error}").format(error=exc), file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    print(compare.render_table(report))
    if args.output != "-":
        compare.write_markdown(report, args.output, None if args.chart == "-" else args.chart)
        print(_("wrote {path}").format(path=args.output), file=sys.stderr)
    if args.chart != "-" and compare.write_chart(report, args.chart):
        print(_("wrote {path}").format(path=args.chart), file=sys.stderr)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report.to_json(), f, indent=1)
    return EXIT_OK if report.measurements else EXIT_FAILURE
