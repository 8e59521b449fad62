"""`socketlab check tcp|udp HOST PORT`: probe a running server for the lecture's classic bugs.

Prints one block per check as the run goes (or one JSON object at the end with --json) and exits 0
when no check failed (warnings allowed), 1 when one did, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import textwrap
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from socketlab.cli import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from socketlab.cli.argtypes import remote_port
from socketlab.i18n import _, ngettext, setup
from socketlab.tools.check import DEFAULT_TIMEOUT, SERVICES, TCP_CHECK_IDS, UDP_CHECK_IDS

if TYPE_CHECKING:
    from socketlab.tools.check.runner import CheckResult, Status

# Reports wrap at the terminal's width, but never wider than this: long lines are hard to read.
MAX_WIDTH = 100
LABEL_WIDTH = 10


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(_("not a number of seconds: {text!r}").format(text=text)) from None
    if not 0 < value <= 600:
        raise argparse.ArgumentTypeError(_("the timeout must be above 0 and at most 600 seconds"))
    return value


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "check",
        help=_("probe a running TCP or UDP server for the classic bugs of the lecture's servers"),
        description=_(
            "Probe a running server (yours, a classmate's, socketlab's) and report, check by check, "
            "what was sent, what came back, what it means and how to fix it. The expected answers are "
            "those of socketlab's own services."
        ),
        epilog=_(
            "TCP checks: {tcp}. UDP checks: {udp}. Exit status: 0 when no check failed (warnings "
            "allowed), 1 when a check failed or the host is unknown, 2 for bad arguments. "
            "See docs/check.md."
        ).format(tcp=", ".join(TCP_CHECK_IDS), udp=", ".join(UDP_CHECK_IDS)),
    )
    parser.add_argument("proto", choices=("tcp", "udp"), help=_("the server's transport protocol"))
    parser.add_argument("host", help=_("the server's host name or IP address"))
    parser.add_argument("port", type=remote_port, help=_("the server's port"))
    parser.add_argument(
        "--service",
        choices=SERVICES,
        default="upper",
        help=_("what the server is meant to answer (default: upper, the lecture's servers)"),
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        metavar=_("SECONDS"),
        help=_("the longest a check waits (default: {seconds:g})").format(seconds=DEFAULT_TIMEOUT),
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar=_("IDS"),
        help=_("run only these checks (comma-separated, or repeat the option)"),
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar=_("IDS"),
        help=_("do not run these checks (comma-separated, or repeat the option)"),
    )
    parser.add_argument(
        "--json", action="store_true", help=_("print one JSON object for programs (see docs/check.md)")
    )
    parser.set_defaults(func=handle_check)


def _ids(values: list[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def handle_check(args: argparse.Namespace) -> int:
    from socketlab.errors import ConfigError, ConnectError  # noqa: PLC0415 - start-up time
    from socketlab.tools.check.runner import run_checks  # noqa: PLC0415 - start-up time

    if args.json and getattr(args, "lang", None) is None:
        # JSON is read by programs: its texts are English unless --lang asks otherwise, whatever
        # the grader's LANG happens to be.
        setup("en")
    printer = None if args.json else _HumanPrinter(sys.stdout, args)

    def on_result(result: CheckResult) -> None:
        if printer is not None:
            printer.result(result)

    try:
        report = run_checks(
            args.proto,
            args.host,
            args.port,
            service=args.service,
            timeout=args.timeout,
            only=_ids(args.only),
            skip=_ids(args.skip),
            on_result=on_result,
        )
    except ConfigError as exc:
        print(_("socketlab check: {error}").format(error=exc), file=sys.stderr)
        return EXIT_USAGE
    except ConnectError as exc:
        print(_("socketlab check: {error}").format(error=exc), file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(_("socketlab check: interrupted"), file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.json:
        json.dump(report.to_json(), sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
    elif printer is not None:
        printer.summary(report.count, len(report.results))
    return EXIT_FAILURE if report.failed else EXIT_OK


class _HumanPrinter:
    def __init__(self, out: TextIO, args: argparse.Namespace) -> None:
        self.out = out
        self.args = args
        self.width = min(MAX_WIDTH, shutil.get_terminal_size((MAX_WIDTH, 24)).columns)
        self.started = False

    def _print(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def header(self) -> None:
        # Printed with the first result, once the arguments are known to be good.
        args = self.args
        self._print(
            _(
                "Checking the {proto} server at {host} port {port} "
                "(service {service}, at most {seconds:g} s per check)"
            ).format(
                proto=args.proto.upper(),
                host=args.host,
                port=args.port,
                service=args.service,
                seconds=args.timeout,
            )
        )

    def _field(self, label: str, text: str) -> None:
        if not text:
            return
        indent = " " * LABEL_WIDTH
        first = f"{indent}{label:<{LABEL_WIDTH}}"
        rest = " " * (2 * LABEL_WIDTH)
        self._print(
            textwrap.fill(
                text,
                width=max(self.width, 3 * LABEL_WIDTH),
                initial_indent=first,
                subsequent_indent=rest,
                break_long_words=False,
                break_on_hyphens=False,
            )
        )

    def result(self, result: CheckResult) -> None:
        from socketlab.tools.check.runner import Status  # noqa: PLC0415 - start-up time

        if not self.started:
            self.started = True
            self.header()
        word = {Status.PASS: _("PASS"), Status.WARNING: _("WARNING"), Status.FAIL: _("FAIL")}[result.status]
        self._print()
        self._print(f"{word:<{LABEL_WIDTH}}{result.id}  ({result.seconds:.2f} s)")
        self._field(_("sent:"), result.sent)
        self._field(_("received:"), result.received)
        self._field(_("means:"), result.explanation)
        self._field(_("fix:"), result.fix)

    def summary(self, count: Callable[[Status], int], total: int) -> None:
        from socketlab.tools.check.runner import Status  # noqa: PLC0415 - start-up time

        self._print()
        self._print(
            ngettext(
                "{total} check: {passed} passed, {warnings} with a warning, {failed} failed.",
                "{total} checks: {passed} passed, {warnings} with a warning, {failed} failed.",
                total,
            ).format(
                total=total,
                passed=count(Status.PASS),
                warnings=count(Status.WARNING),
                failed=count(Status.FAIL),
            )
        )
