"""The `socketlab` command: the only layer that parses argv, prints for people and picks exit codes.

Each subcommand lives in its own module here (`cli/serve.py`, `cli/client.py`, ...) with two functions:
`add_parser(subparsers)` declares its arguments, and the handler it sets as `func` does the work and
returns the exit code. Subcommand modules import their library code inside the handler, so
`socketlab client` does not pay for importing the server, matplotlib or asyncio.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from socketlab import __version__
from socketlab.i18n import _, setup

# Exit codes shared by every subcommand (documented in README and --help).
EXIT_OK = 0
EXIT_FAILURE = 1  # could not connect, connection lost, bind failed, a check failed...
EXIT_USAGE = 2  # bad arguments (argparse's own convention)
EXIT_UNANSWERED = 3  # client: some UDP requests went unanswered
EXIT_INTERRUPTED = 130  # Ctrl-C in a client: 128 + SIGINT, as shells report it

COMMANDS = ("serve", "client", "check", "bench", "speed", "proxy")


def _language_from_argv(argv: Sequence[str]) -> str | None:
    # --lang must be known before any help text is built, so it is read ahead of argparse.
    for i, arg in enumerate(argv):
        if arg == "--lang" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--lang="):
            return arg.partition("=")[2]
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="socketlab",
        description=_(
            "The client-server socket programs of the lecture, as real tools: "
            "a server, a client, and tools to check, load and measure servers."
        ),
        epilog=_(
            "exit codes: 0 success; 1 failure (could not connect, connection lost, port busy, "
            "a check failed); 2 usage error; 3 some UDP requests went unanswered; 130 interrupted."
        ),
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"socketlab {__version__}",
        help=_("show the version of socketlab and exit"),
    )
    parser.add_argument(
        "--lang", choices=("en", "pt"), help=_("language of messages (default: from LANG/LC_ALL)")
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title=_("commands"))
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"socketlab.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"socketlab.cli.{name}":
                raise
            continue  # a command not written yet
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    setup(_language_from_argv(args_list))
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    code: int = args.func(args)
    return code


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
