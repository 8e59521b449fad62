"""`socketlab client tcp|udp HOST PORT`: the lecture's TCPClient and UDPClient as one tool.

Answers go to standard output, one per line and nothing else, so the command pipes; prompts, lost
requests and errors go to standard error. Start-up time matters here (a student runs it once per
line in shell loops): the socket code is imported inside the handler, never asyncio.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

from socketlab.cli import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNANSWERED, EXIT_USAGE
from socketlab.cli.argtypes import remote_port
from socketlab.i18n import _, ngettext

if TYPE_CHECKING:
    from socketlab.tracing import Tracer

# One read of standard input; blocks of this size keep a pipe of short lines fast (one send per block,
# not per line) while bounding memory.
INPUT_CHUNK = 64 * 1024


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(_("not a positive number of seconds: {text!r}").format(text=text))
    return value


def _retries(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(_("not a count of retries (0 or more): {text!r}").format(text=text))
    return value


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "client",
        help=_("send lines to a server and print its answers (the lecture's TCPClient/UDPClient)"),
        description=_(
            "Send lines to a TCP or UDP line server and print each answer on standard output. "
            "Lines come from --message, else from standard input (with a prompt on a terminal). "
            "Over TCP, piped input is pipelined; over UDP each line is one datagram, retried when "
            "no answer comes."
        ),
        epilog=_(
            "exit codes: 0 every line answered; 1 could not connect or connection lost; "
            "2 usage error; 3 some UDP requests went unanswered; 130 interrupted (Ctrl-C)."
        ),
    )
    parser.add_argument("proto", choices=("tcp", "udp"), help=_("transport protocol"))
    parser.add_argument("host", help=_("server name or address (localhost tries ::1 and 127.0.0.1)"))
    parser.add_argument("port", type=remote_port, help=_("server port"))
    parser.add_argument(
        "-m",
        "--message",
        action="append",
        metavar="TEXT",
        help=_("send TEXT as one line instead of reading standard input (repeatable)"),
    )
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        metavar="SECONDS",
        help=_(
            "TCP: give up after this long without a byte while answers are owed (default 10); "
            "UDP: wait this long for each answer before retrying (default 1)"
        ),
    )
    parser.add_argument(
        "--retries",
        type=_retries,
        default=3,
        metavar="N",
        help=_("UDP: send a request again up to N times before reporting it lost (default 3)"),
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help=_("TCP: speak TLS (1.2 or later), checking the server's certificate"),
    )
    parser.add_argument(
        "--ca",
        metavar="FILE",
        help=_("with --tls: trust the certificate authority in FILE (PEM) instead of the system's"),
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help=_("with --tls: do not check the server's certificate (encrypted, but not authenticated)"),
    )
    parser.add_argument(
        "--trace", action="store_true", help=_("show each socket system call on standard error")
    )
    parser.add_argument(
        "--trace-format",
        choices=("text", "jsonl"),
        default="text",
        help=_("how --trace writes: text for people, jsonl for programs (default text)"),
    )
    parser.set_defaults(func=handler)


def _encode_message(text: str) -> bytes:
    # Arguments that were not valid UTF-8 arrive as lone surrogates; surrogateescape gives back the
    # bytes the user typed, so a Latin-1 terminal sends Latin-1 as the Java client would.
    return text.encode("utf-8", "surrogateescape")


def _input_blocks(fd: int, prompt: Callable[[], None] | None) -> Iterator[bytes]:
    """Standard input as blocks of complete lines, the last one possibly without its LF.

    os.read, not sys.stdin: the TCP sender thread may still be blocked reading when the client
    exits on an error, and a daemon thread holding the lock of sys.stdin's buffer makes Python abort
    at shutdown ("could not acquire lock ... at interpreter shutdown").
    """
    tail = bytearray()
    while True:
        if prompt is not None and not tail:
            prompt()
        chunk = os.read(fd, INPUT_CHUNK)
        if not chunk:
            break
        end = chunk.rfind(b"\n")
        if end < 0:
            tail += chunk
            continue
        block = bytes(tail) + chunk[: end + 1] if tail else chunk[: end + 1]
        tail[:] = chunk[end + 1 :]
        yield block
    if tail:
        yield bytes(tail)


def _split_lines(blocks: Iterator[bytes]) -> Iterator[bytes]:
    """Blocks of lines into lines without their terminators (UDP sends no newline)."""
    for block in blocks:
        lines = block.split(b"\n")
        if block.endswith(b"\n"):
            lines.pop()
        for line in lines:
            yield line.removesuffix(b"\r")


class _Output:
    """Answers to standard output: one line each, shown as text (see core.text.to_display)."""

    def __init__(self, stream: Any) -> None:
        from socketlab.core.text import to_display  # noqa: PLC0415 - only the handler needs it

        self._display = to_display
        if stream is None:  # standard output closed (`>&-`): the answers go nowhere, as asked
            stream = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
        self._stream = stream  # kept: the text wrapper closes its buffer when collected
        self._buffer: BinaryIO = stream.buffer
        self._encoding: str = stream.encoding or "utf-8"

    def write(self, answers: list[bytes]) -> None:
        text = "".join(self._display(answer) + "\n" for answer in answers)
        # "replace": a terminal that cannot show a character gets "?", not a crash.
        self._buffer.write(text.encode(self._encoding, "replace"))
        self._buffer.flush()


def _prompt() -> None:
    sys.stderr.write("> ")
    sys.stderr.flush()


def _stdin() -> tuple[Iterator[bytes], bool]:
    """Standard input as blocks of lines, and whether it is a terminal (then with prompts)."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):
        return iter(()), False  # closed (`<&-`) or replaced by something without a fd: no lines
    interactive = os.isatty(fd)
    return _input_blocks(fd, _prompt if interactive else None), interactive


def _interactive() -> bool:
    try:
        return os.isatty(sys.stdin.fileno())
    except (AttributeError, OSError, ValueError):
        return False


def _error(message: str) -> None:
    sys.stderr.write(_("socketlab client: {message}").format(message=message) + "\n")
    sys.stderr.flush()


def _run_tcp(args: argparse.Namespace, tracer: Tracer | None, out: _Output) -> int:
    from socketlab.config import PIPELINE_WINDOW  # noqa: PLC0415 - kept out of start-up
    from socketlab.transports.tcp_client import ANSWER_TIMEOUT, Pipeline, connect_tcp  # noqa: PLC0415

    items: Iterator[bytes] | list[bytes]
    window = PIPELINE_WINDOW
    if args.message is not None:
        items = [_encode_message(text) + b"\n" for text in args.message]
    else:
        items, interactive = _stdin()
        if interactive:
            window = 1  # one line at a time, so each prompt comes after the previous answer
    timeout = args.timeout if args.timeout is not None else ANSWER_TIMEOUT
    sock = connect_tcp(args.host, args.port, tracer=tracer)
    if args.tls:
        from socketlab.config import CONNECT_TIMEOUT  # noqa: PLC0415
        from socketlab.transports.tls import client_context, open_tls_pipe  # noqa: PLC0415

        sock = open_tls_pipe(sock, client_context(args.ca, args.insecure), args.host, CONNECT_TIMEOUT)
    with sock:
        pipeline = Pipeline(sock, items, window=window, timeout=timeout, peer=f"{args.host} port {args.port}")
        for batch in pipeline.answers():
            out.write(batch)
    return EXIT_OK


def _run_udp(args: argparse.Namespace, tracer: Tracer | None, out: _Output) -> int:
    from socketlab.config import UDP_TIMEOUT  # noqa: PLC0415 - kept out of start-up
    from socketlab.core.text import to_display  # noqa: PLC0415
    from socketlab.transports.udp_client import exchange_udp  # noqa: PLC0415

    requests: Iterator[bytes] | list[bytes]
    if args.message is not None:
        requests = [_encode_message(text) for text in args.message]
    else:
        requests = _split_lines(_stdin()[0])
    timeout = args.timeout if args.timeout is not None else UDP_TIMEOUT
    lost = 0
    results = exchange_udp(
        args.host, args.port, requests, timeout=timeout, retries=args.retries, tracer=tracer
    )
    for number, result in enumerate(results, 1):
        if result.answer is not None:
            # One answer per output line: a server that ends its answer with a newline gets no blank line.
            answer = result.answer
            answer = answer[:-2] if answer.endswith(b"\r\n") else answer.removesuffix(b"\n")
            out.write([answer])
            continue
        lost += 1
        shown = to_display(result.request)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        if result.attempts == 0:
            _error(
                _("request {n} is too long for one datagram, not sent: {text!r}").format(n=number, text=shown)
            )
        else:
            _error(
                ngettext(
                    "request {n} lost: no answer after {attempts} attempt: {text!r}",
                    "request {n} lost: no answer after {attempts} attempts: {text!r}",
                    result.attempts,
                ).format(n=number, attempts=result.attempts, text=shown)
            )
    return EXIT_UNANSWERED if lost else EXIT_OK


def handler(args: argparse.Namespace) -> int:
    from socketlab.errors import SocketlabError  # noqa: PLC0415 - kept out of start-up

    tracer: Tracer | None = None
    if args.trace:
        from socketlab.tracing import make_tracer  # noqa: PLC0415

        tracer = make_tracer(args.trace_format, sys.stderr)
    if args.proto == "udp" and (args.tls or args.ca or args.insecure):
        _error(_("--tls, --ca and --insecure are for tcp"))
        return EXIT_USAGE
    if (args.ca or args.insecure) and not args.tls:
        _error(_("--ca and --insecure go with --tls"))
        return EXIT_USAGE
    try:
        out = _Output(sys.stdout)
        if args.proto == "tcp":
            return _run_tcp(args, tracer, out)
        return _run_udp(args, tracer, out)
    except SocketlabError as exc:
        _error(str(exc))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        if _interactive():
            sys.stderr.write("\n")  # leave the shell's prompt on a line of its own
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Whoever read our output has gone (`| head`): stop quietly, as `cat` would. Point stdout at
        # devnull so the interpreter's final flush does not fail once more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_OK
