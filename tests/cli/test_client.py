"""`socketlab client` run the way a user runs it: a real process, through pipes, against real servers.

The servers are the small thread servers of tests/transports (each shaped like one kind of server the
client must cope with), on 127.0.0.1:0 or [::1]:0.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO

import pytest

from tests.conftest import HAS_IPV6, needs_ipv6
from tests.helpers import cli_env, start_serve
from tests.transports.test_tcp_client import (
    TcpServer,
    closing_server,
    latin1_server,
    recording_server,
    silent_server,
    upper_server,
)
from tests.transports.test_udp_client import UdpServer, dropping, java_padding, never, upper_policy

CLIENT = [sys.executable, "-m", "socketlab", "client"]


def run_client(
    args: Sequence[str], stdin: bytes = b"", timeout: float = 20
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*CLIENT, *args], input=stdin, capture_output=True, timeout=timeout, env=cli_env(), check=False
    )


def assert_one_error_line(stderr: bytes, *fragments: str) -> None:
    text = stderr.decode()
    assert "Traceback" not in text
    assert len(text.splitlines()) == 1, text
    for fragment in fragments:
        assert fragment in text, text


@pytest.fixture
def upper() -> Iterator[TcpServer]:
    with upper_server() as server:
        yield server


@pytest.mark.timeout(60)
def test_100000_piped_lines_come_back_in_order(upper: TcpServer) -> None:
    lines = [f"{i} ação\n".encode() for i in range(100_000)]
    result = run_client(["tcp", "127.0.0.1", str(upper.port)], b"".join(lines), timeout=50)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    assert result.stdout.splitlines() == [f"{i} AÇÃO".encode() for i in range(100_000)]


@pytest.mark.timeout(20)
def test_messages_are_sent_instead_of_standard_input(upper: TcpServer) -> None:
    result = run_client(
        ["tcp", "127.0.0.1", str(upper.port), "-m", "ação", "--message", "straße", "-m", "x y"],
        stdin=b"not sent\n",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == "AÇÃO\nSTRASSE\nX Y\n"


@pytest.mark.timeout(20)
def test_input_bytes_are_sent_as_they_are() -> None:
    with recording_server() as server:
        result = run_client(["tcp", "127.0.0.1", str(server.port)], b"a\r\n\nc\xe7")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"ok\nok\nok\n"
    assert bytes(server.received) == b"a\r\n\nc\xe7\n"


@pytest.mark.timeout(20)
def test_latin1_answers_are_shown_as_text() -> None:
    # The lecture's Java TCPServer answers Portuguese one byte per char.
    with latin1_server() as server:
        result = run_client(["tcp", "127.0.0.1", str(server.port), "-m", "ação", "-m", "pão"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == "AÇÃO\nPÃO\n"


@pytest.mark.timeout(20)
def test_empty_input_is_success_with_no_output(upper: TcpServer) -> None:
    result = run_client(["tcp", "127.0.0.1", str(upper.port)])
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


@pytest.mark.timeout(20)
def test_connection_refused_exits_1_with_one_line() -> None:
    with socket.socket() as holder:  # bound, not listening: refuses, and keeps the port ours
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        result = run_client(["tcp", "127.0.0.1", str(port), "-m", "x"])
    assert result.returncode == 1
    assert result.stdout == b""
    assert_one_error_line(result.stderr, "could not connect", f"127.0.0.1 port {port}", "refused")


@pytest.mark.timeout(20)
def test_a_server_closing_midway_exits_1_after_the_answers_it_gave() -> None:
    with closing_server(answers=2) as server:
        result = run_client(["tcp", "127.0.0.1", str(server.port)], b"a\nb\nc\nd\n")
    assert result.returncode == 1
    assert result.stdout == b"A\nB\n"
    assert_one_error_line(result.stderr, "connection lost", "owed")


@pytest.mark.timeout(20)
def test_a_silent_server_exits_1_after_the_timeout() -> None:
    stop = threading.Event()
    server = silent_server(stop)
    try:
        result = run_client(["tcp", "127.0.0.1", str(server.port), "--timeout", "0.3", "-m", "x"])
    finally:
        stop.set()
        server.close()
    assert result.returncode == 1
    assert_one_error_line(result.stderr, "no answer for 0.3 s")


@pytest.mark.timeout(20)
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_localhost_reaches_a_server_on_127_0_0_1_only(proto: str) -> None:
    server: TcpServer | UdpServer = upper_server() if proto == "tcp" else UdpServer()
    with server:
        result = run_client([proto, "localhost", str(server.port), "-m", "v4"])
    assert (result.returncode, result.stdout) == (0, b"V4\n"), result.stderr


@needs_ipv6
@pytest.mark.timeout(20)
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_localhost_reaches_a_server_on_ipv6_loopback_only(proto: str) -> None:
    server: TcpServer | UdpServer = upper_server("::1") if proto == "tcp" else UdpServer(host="::1")
    with server:
        result = run_client([proto, "localhost", str(server.port), "-m", "v6"])
    assert (result.returncode, result.stdout) == (0, b"V6\n"), result.stderr


@pytest.mark.timeout(20)
def test_udp_sends_each_line_as_one_datagram_without_its_newline() -> None:
    received: list[bytes] = []

    def policy(number: int, data: bytes) -> tuple[bytes, float] | None:
        received.append(data)
        return upper_policy(number, data)

    with UdpServer(policy) as server:
        result = run_client(["udp", "127.0.0.1", str(server.port)], "a\r\nação\n\nlast".encode())
    assert result.returncode == 0, result.stderr
    assert received == [b"a", "ação".encode(), b"", b"last"]
    assert result.stdout.decode() == "A\nAÇÃO\n\nLAST\n"


@pytest.mark.timeout(20)
def test_udp_retries_lost_datagrams() -> None:
    with UdpServer(dropping(2)) as server:
        result = run_client(["udp", "127.0.0.1", str(server.port), "--timeout", "0.1", "-m", "a", "-m", "b"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"A\nB\n"


@pytest.mark.timeout(20)
def test_udp_requests_without_answer_are_reported_and_exit_3() -> None:
    with UdpServer(never) as server:
        args = ["udp", "127.0.0.1", str(server.port), "--timeout", "0.1", "--retries", "1"]
        result = run_client([*args, "-m", "first", "-m", "second"])
        assert server.count == 4
    assert result.returncode == 3
    assert result.stdout == b""
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 2
    assert "lost" in lines[0]
    assert "first" in lines[0]
    assert "2 attempts" in lines[0]
    assert "second" in lines[1]


@pytest.mark.timeout(20)
def test_udp_some_lost_some_answered_exits_3_with_the_answers_on_stdout() -> None:
    with UdpServer(dropping(1)) as server:
        args = ["udp", "127.0.0.1", str(server.port), "--timeout", "0.1", "--retries", "0"]
        result = run_client([*args, "-m", "lost", "-m", "kept"])
    assert result.returncode == 3
    assert result.stdout == b"KEPT\n"
    assert "lost" in result.stderr.decode()


@pytest.mark.timeout(20)
def test_udp_nul_padding_of_the_java_server_is_not_shown() -> None:
    with UdpServer(java_padding) as server:
        result = run_client(["udp", "127.0.0.1", str(server.port), "-m", "hello", "-m", "ação"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == "HELLO\nAÇÃO\n"


@pytest.mark.timeout(20)
def test_udp_with_nothing_listening_exits_1() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        # Connected elsewhere, the socket keeps the port ours and the kernel refuses the client.
        holder.bind(("127.0.0.1", 0))
        holder.connect(("127.0.0.1", 9))
        result = run_client(["udp", "127.0.0.1", str(holder.getsockname()[1]), "-m", "x"])
    assert result.returncode == 1
    assert_one_error_line(result.stderr, "nothing listens")


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "args",
    [
        [],
        ["tcp", "127.0.0.1"],
        ["sctp", "127.0.0.1", "9"],
        ["tcp", "127.0.0.1", "http"],
        ["tcp", "127.0.0.1", "70000"],
        ["udp", "127.0.0.1", "9", "--timeout", "0"],
        ["udp", "127.0.0.1", "9", "--retries", "-1"],
        ["tcp", "127.0.0.1", "9", "--trace-format", "xml"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = run_client(args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr.decode()
    assert "usage:" in result.stderr.decode()


@pytest.mark.timeout(20)
def test_help_documents_the_exit_codes() -> None:
    result = run_client(["--help"])
    assert result.returncode == 0
    text = " ".join(result.stdout.decode().split())
    for code in ("0 every line answered", "1 could not connect", "2 usage", "3 some UDP", "130"):
        assert code in text


@pytest.mark.timeout(20)
def test_ctrl_c_exits_130_without_a_traceback() -> None:
    stop = threading.Event()
    server = silent_server(stop)
    connected = threading.Event()
    handle = server.handle

    def watch(conn: socket.socket) -> None:
        connected.set()
        handle(conn)

    server.handle = watch
    # Standard input stays open: the client waits for more lines, with one answer owed.
    proc = subprocess.Popen(
        [*CLIENT, "tcp", "127.0.0.1", str(server.port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"hello\n")
        proc.stdin.flush()
        assert connected.wait(10)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        stop.set()
        server.close()
    assert proc.returncode == 130
    assert b"Traceback" not in err


@pytest.mark.timeout(20)
def test_a_reader_that_leaves_early_is_no_error(upper: TcpServer) -> None:
    # `socketlab client ... | head -1`
    proc = subprocess.Popen(
        [*CLIENT, "tcp", "127.0.0.1", str(upper.port)],
        bufsize=0,  # unbuffered pipes: a write to a gone reader fails in write(), not in a later close()
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is not None
    writer = threading.Thread(target=_feed, args=(proc.stdin, b"x\n" * 200_000), daemon=True)
    writer.start()
    assert proc.stdout.readline() == b"X\n"
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(10) == 0
    writer.join(10)
    assert b"Traceback" not in err
    assert err == b""


def _feed(stream: IO[bytes], data: bytes) -> None:
    try:
        stream.write(data)
    except BrokenPipeError:
        pass  # the client may exit before reading everything; that is what this test causes
    finally:
        stream.close()


def _read_terminal(master: int, done: Callable[[bytes], bool], limit: float = 10) -> bytes:
    """What the program wrote to the terminal, read until `done(text)` or `limit` seconds pass."""
    text = b""
    deadline = time.monotonic() + limit
    while not done(text) and time.monotonic() < deadline:
        ready, _w, _x = select.select([master], [], [], deadline - time.monotonic())
        if not ready:
            break
        try:
            text += os.read(master, 4096)
        except OSError:  # EIO: the program has exited and closed the terminal
            break
    return text


@pytest.mark.skipif(os.name != "posix", reason="needs a pseudo-terminal")
@pytest.mark.timeout(20)
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_on_a_terminal_each_prompt_comes_after_the_previous_answer(proto: str) -> None:
    import pty  # noqa: PLC0415 - POSIX only
    import termios  # noqa: PLC0415

    server: TcpServer | UdpServer = upper_server() if proto == "tcp" else UdpServer()
    master, slave = pty.openpty()
    attrs = termios.tcgetattr(slave)
    attrs[3] &= ~termios.ECHO  # what we type is not shown back: the screen holds only the program's output
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    proc = subprocess.Popen(
        [*CLIENT, proto, "127.0.0.1", str(server.port)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=cli_env(),
    )
    os.close(slave)
    try:
        assert _read_terminal(master, lambda t: b"> " in t) == b"> "
        os.write(master, "ação\n".encode())
        screen = _read_terminal(master, lambda t: t.endswith(b"> "))
        assert screen.decode() == "AÇÃO\r\n> "
        os.write(master, b"\x04")  # Ctrl-D: end of input
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        os.close(master)
        server.close()


@pytest.mark.timeout(20)
def test_trace_goes_to_stderr_and_leaves_stdout_to_the_answers(upper: TcpServer) -> None:
    import socketlab.tracing  # noqa: PLC0415

    if not hasattr(socketlab.tracing, "make_tracer"):
        pytest.skip("the tracer is not written yet (socketlab.tracing.make_tracer)")
    for fmt in ("text", "jsonl"):
        result = run_client(
            ["tcp", "127.0.0.1", str(upper.port), "--trace", "--trace-format", fmt, "-m", "x"]
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"X\n"
        assert b"connect" in result.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("proto", "host"), [("tcp", "127.0.0.1"), ("udp", "127.0.0.1"), ("tcp", "::1")])
def test_against_socketlab_serve_through_a_pipe(proto: str, host: str) -> None:
    pytest.importorskip("socketlab.cli.serve", reason="`socketlab serve` is not written yet")
    if ":" in host and not HAS_IPV6:
        pytest.skip("this machine has no IPv6 loopback (::1)")
    lines = [f"{i} ação\n".encode() for i in range(100 if proto == "udp" else 20_000)]
    with start_serve([proto, "--service", "upper", "--host", host, "--port", "0"]) as server:
        result = run_client([proto, "localhost", str(server.port(proto))], b"".join(lines), timeout=40)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == [line.decode().strip().upper() for line in lines]
