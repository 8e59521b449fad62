"""`socketlab serve` run the way a user runs it: a real process, real signals, real sockets.

`serve` with no arguments takes the lecture's fixed ports, which may be busy on a test machine, so
the processes here run single listeners on port 0; the no-argument form is checked through the
configuration it builds.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from socketlab.cli import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, build_parser, main
from socketlab.cli.argtypes import positive_size as parse_size
from socketlab.cli.serve import BackgroundLogHandler, build_config
from socketlab.config import KiB, MiB, lecture_listeners
from tests.helpers import LISTENING, ServerProcess, cli_env, start_serve
from tests.transports.serving import LOOPS

HERE = Path(__file__).resolve().parent
LOOPBACK = ["--host", "127.0.0.1", "--port", "0"]


def _wait_for_output(server: ServerProcess, text: str, timeout: float = 10.0) -> None:
    """Read the server's output until a line contains `text` (its log shares the pipe)."""
    assert server.proc.stdout is not None
    fd = server.proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    pending = b""
    while not any(text in line for line in server.output):
        left = deadline - time.monotonic()
        assert left > 0, f"never saw {text!r} in {server.output}"
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        assert chunk, f"the server exited before saying {text!r}: {server.output}"
        pending += chunk
        *lines, pending = pending.split(b"\n")
        server.output.extend(line.decode("utf-8", "replace") for line in lines)


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


# -- arguments, without starting anything


def test_no_arguments_is_the_lectures_whole_system() -> None:
    config = build_config(_args())
    assert config.listeners == lecture_listeners()
    assert [(lst.proto, lst.service, lst.port) for lst in config.listeners] == [
        ("tcp", "upper", 6789),
        ("udp", "upper", 9876),
        ("tcp", "ack", 9898),
    ]
    assert all(lst.host is None for lst in config.listeners)


def test_one_listener_defaults_to_the_lectures_port_for_it() -> None:
    assert build_config(_args("tcp")).listeners[0].port == 6789
    assert build_config(_args("udp")).listeners[0].port == 9876
    assert build_config(_args("tcp", "--service", "ack")).listeners[0].port == 9898
    config = build_config(
        _args("udp", "-s", "echo", "--host", "::1", "-p", "0", "--max-line", "1M", "--idle-timeout", "0")
    )
    (listener,) = config.listeners
    assert (listener.proto, listener.service, listener.host, listener.port) == ("udp", "echo", "::1", 0)
    assert config.limits.max_line == MiB
    assert config.limits.idle_timeout == 0


def test_sizes_take_units() -> None:
    assert parse_size("16384") == 16 * KiB
    assert parse_size("16K") == parse_size("16k") == parse_size("16KiB") == parse_size("16KB") == 16 * KiB
    assert parse_size("2M") == 2 * MiB
    assert parse_size("1.5K") == 1536  # socketlab.units' grammar, the same for every command
    for bad in ("", "0", "-1", "16X", "K"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_size(bad)


def test_service_or_port_without_a_protocol_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--port", "0"]) == EXIT_USAGE
    assert "need tcp or udp" in capsys.readouterr().err


def test_trace_needs_a_blocking_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "tcp", "--trace", "--port", "0"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--model iterative" in err
    assert "event loop" in err


def test_help_has_examples_and_exit_codes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "socketlab", "serve", "--help"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=30,
        check=True,
    )
    assert "socketlab serve tcp --service upper --port 0" in result.stdout
    assert "exit codes: 0" in result.stdout


# -- real processes


@pytest.mark.timeout(30)
@pytest.mark.parametrize("loop", LOOPS)
def test_ctrl_c_answers_the_lines_already_received_and_exits_0(loop: str) -> None:
    lines = [f"linha {i}: ação\n" for i in range(200)]
    with start_serve(["tcp", "--service", "upper", "-v", "--loop", loop, *LOOPBACK]) as server:
        assert server.output[0] == f"tcp upper listening on 127.0.0.1:{server.port()}"
        with socket.create_connection(("127.0.0.1", server.port()), timeout=10) as sock:
            sock.sendall("".join(lines).encode())
            # -v logs each line as the server reads it: once the last is logged, all were received.
            _wait_for_output(server, "'linha 199: ação")
            assert any(line.endswith(f"event loop: {loop}") for line in server.output)
            server.proc.send_signal(signal.SIGINT)
            assert _read_all(sock) == "".join(lines).upper().encode()
        assert server.proc.wait(15) == EXIT_OK


@pytest.mark.timeout(30)
def test_sigterm_stops_it_cleanly_and_each_client_is_logged_with_its_source_port() -> None:
    with start_serve(["tcp", "--service", "ack", *LOOPBACK]) as server:
        with socket.create_connection(("127.0.0.1", server.port()), timeout=10) as sock:
            source = f"127.0.0.1:{sock.getsockname()[1]}"
            sock.sendall(b"Echo\n")
            assert sock.recv(10) == b"ok\n"
        _wait_for_output(server, f"{source} left")
        assert any(f"tcp ack: {source} connected" in line for line in server.output)
        assert server.stop(signal.SIGTERM) == EXIT_OK


@pytest.mark.timeout(30)
def test_udp_listener_answers_without_adding_a_newline() -> None:
    with start_serve(["udp", "--service", "upper", *LOOPBACK]) as server:
        assert LISTENING.match(server.output[0])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.sendto("coração".encode(), ("127.0.0.1", server.port("udp")))
            assert sock.recv(65535) == "CORAÇÃO".encode()
        assert server.stop() == EXIT_OK


@pytest.mark.timeout(30)
def test_a_failing_user_function_answers_that_line_with_an_error_and_goes_on() -> None:
    env = cli_env(PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])))
    with start_serve(["tcp", "--service", "user_service:shout", *LOOPBACK], env=env) as server:
        with socket.create_connection(("127.0.0.1", server.port()), timeout=10) as sock:
            sock.sendall("olá\nboom\nde novo\n".encode())
            sock.shutdown(socket.SHUT_WR)
            assert _read_all(sock) == "OLÁ!\nERR ValueError: no booms here\nDE NOVO!\n".encode()
        _wait_for_output(server, "no booms here")
        assert server.stop() == EXIT_OK
    assert not any("Traceback" in line for line in server.output)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_a_busy_port_is_one_line_on_stderr_and_exit_1(proto: str) -> None:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as taken:
        taken.bind(("127.0.0.1", 0))
        if proto == "tcp":
            taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "socketlab", "serve", proto, "--host", "127.0.0.1", "--port", str(port)],
            capture_output=True,
            text=True,
            env=cli_env(),
            timeout=20,
            check=False,
        )
    assert result.returncode == EXIT_FAILURE
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert f"127.0.0.1:{port}" in result.stderr
    assert "already in use" in result.stderr


def _fill_without_reading(port: int) -> socket.socket:
    """A client that sends until nothing more fits and reads nothing: the server owes it answers."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    block = b"x" * 1023 + b"\n"
    sent, deadline = 0, time.monotonic() + 10
    idle_since = None
    while time.monotonic() < deadline and sent < 512 * MiB:
        try:
            sent += sock.send(block[sent % len(block) :])
            idle_since = None
        except BlockingIOError:
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > 0.3:
                break  # the server has stopped reading: its buffers are full of answers for us
            time.sleep(0.01)
    return sock


@pytest.mark.timeout(30)
def test_a_second_ctrl_c_stops_at_once() -> None:
    with (
        start_serve(["tcp", "--service", "upper", "--grace", "60", *LOOPBACK]) as server,
        _fill_without_reading(server.port()),
    ):
        server.proc.send_signal(signal.SIGINT)
        _wait_for_output(server, "waiting up to 60 s for 1 client")
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(10) == EXIT_INTERRUPTED


@pytest.mark.timeout(30)
def test_the_grace_period_ends_with_the_stragglers_dropped_and_exit_0() -> None:
    with start_serve(["tcp", "--service", "upper", "--grace", "0.5", *LOOPBACK]) as server:
        with _fill_without_reading(server.port()):
            server.proc.send_signal(signal.SIGINT)
            assert server.proc.wait(10) == EXIT_OK
        _wait_for_output(server, "dropped 1 client")


@pytest.mark.timeout(30)
def test_a_teaching_model_announces_its_listener_the_same_way() -> None:
    with start_serve(["tcp", "--model", "threads", "--service", "upper", *LOOPBACK]) as server:
        assert server.output[0] == f"tcp upper listening on 127.0.0.1:{server.port()}"
        with socket.create_connection(("127.0.0.1", server.port()), timeout=10) as sock:
            sock.sendall(b"threads\n")
            assert sock.recv(100) == b"THREADS\n"
        assert server.stop() == EXIT_OK


@pytest.mark.timeout(30)
def test_a_stopped_server_restarts_on_the_same_port_at_once() -> None:
    # The server closes first on Ctrl-C, so its side of each connection waits in TIME_WAIT; without
    # SO_REUSEADDR the port would stay taken for a minute or two.
    with start_serve(["tcp", "--service", "upper", *LOOPBACK]) as server:
        port = server.port()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"primeira\n")
            assert sock.recv(100) == b"PRIMEIRA\n"
            server.proc.send_signal(signal.SIGINT)
            assert sock.recv(100) == b""  # the server's FIN: it closed first
        assert server.proc.wait(15) == EXIT_OK
    with start_serve(["tcp", "--service", "upper", "--host", "127.0.0.1", "--port", str(port)]) as again:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"segunda\n")
            assert sock.recv(100) == b"SEGUNDA\n"
        assert again.stop() == EXIT_OK


@pytest.mark.timeout(60)
def test_a_log_nobody_reads_does_not_stall_the_server() -> None:
    # Each client is two log lines; past the pipe's 64 KiB a plain log handler would block the event
    # loop in write() and every client would freeze. Nobody reads this server's output after start.
    clients = 1200
    with start_serve(["tcp", "--service", "ack", *LOOPBACK]) as server:
        port = server.port()
        for i in range(clients):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"linha %d\n" % i)
                assert sock.recv(10) == b"ok\n"
        assert server.stop() == EXIT_OK


@pytest.mark.timeout(20)
def test_log_lines_that_do_not_fit_are_dropped_counted_and_said() -> None:
    class TinyQueue(BackgroundLogHandler):
        QUEUE_LINES = 3

    read_fd, write_fd = os.pipe()
    chunks: list[bytes] = []
    stream, reader = os.fdopen(write_fd, "w"), os.fdopen(read_fd, "rb")
    handler = TinyQueue(stream)
    log = logging.getLogger("socketlab.test.background")
    log.propagate = False
    log.addHandler(handler)
    try:
        big = "x" * 100_000  # larger than the pipe: the writer blocks on it until someone reads
        log.warning(big)
        for i in range(50):
            log.warning("line %d", i)  # the loop's side never blocks: these queue or are dropped
        dropped = handler.dropped
        assert dropped >= 50 - TinyQueue.QUEUE_LINES
        drain = threading.Thread(target=lambda: chunks.extend(iter(lambda: reader.read(65536), b"")))
        drain.start()
        handler.close()
    finally:
        log.removeHandler(handler)
        stream.close()
    drain.join(10)
    reader.close()
    lines = b"".join(chunks).decode().splitlines()
    # The note comes before the first line written after the drops (which may be the long one).
    note = f"({dropped} log lines dropped: standard error was not being read)"
    assert lines.count(note) == 1
    assert [line for line in lines if line != note] == [big] + [f"line {i}" for i in range(50 - dropped)]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("udp_io", ["thread", "loop"])
def test_udp_io_choices_both_answer_and_stop(udp_io: str) -> None:
    with start_serve(["udp", "--service", "upper", "--udp-io", udp_io, *LOOPBACK]) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.sendto("ação".encode(), ("127.0.0.1", server.port("udp")))
            assert sock.recv(100) == "AÇÃO".encode()
        assert server.stop(signal.SIGINT) == 0
