"""The teaching models (iterative, threads, selectors) with real clients on loopback sockets."""

from __future__ import annotations

import logging
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from socketlab.config import Limits, Listener, ServerConfig
from socketlab.errors import BindError, ConfigError
from socketlab.models import MODELS, bind_addresses, run_blocking_server
from socketlab.tracing import RecordingTracer
from tests.conftest import needs_ipv6
from tests.helpers import LISTENING, cli_env
from tests.models.server import read_line, read_lines, running_server

# How long a client waits to be sure it is NOT being answered: long enough for a server that would
# answer to do so many times over on loopback; not a measure of speed.
NOT_ANSWERED_WAIT = 0.5
CLIENT_TIMEOUT = 10.0


def connect(address: tuple[str, int]) -> socket.socket:
    return socket.create_connection(address, timeout=CLIENT_TIMEOUT)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("model", MODELS)
def test_upper_over_tcp_answers_each_line_in_order(model: str) -> None:
    with (
        running_server((Listener("tcp", "upper", "127.0.0.1", 0),), model=model) as server,
        connect(server.address()) as client,
    ):
        # Sent in pieces that cut a UTF-8 character in two, and two lines in one piece.
        for piece in (b"a\xc3", b"\xa7\xc3\xa3o\nstra", b"\xc3\x9fe\r\nlast\n"):
            client.sendall(piece)
        answers = read_lines(client, 3)
    assert answers == "AÇÃO\nSTRASSE\r\nLAST\n".encode()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(
    ("service", "sent", "expected"), [("ack", b"Echo\n", b"ok\n"), ("echo", b"hi", b"hi")]
)
def test_other_services_over_tcp(model: str, service: str, sent: bytes, expected: bytes) -> None:
    with (
        running_server((Listener("tcp", service, "127.0.0.1", 0),), model=model) as server,
        connect(server.address()) as client,
    ):
        client.sendall(sent)
        client.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := client.recv(4096):
            received += chunk
    assert received == expected


@pytest.mark.timeout(30)
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("host", ["127.0.0.1", pytest.param("::1", marks=needs_ipv6)])
def test_udp_answers_one_datagram_with_one_datagram(model: str, host: str) -> None:
    with running_server((Listener("udp", "upper", host, 0),), model=model) as server:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as client:
            client.settimeout(CLIENT_TIMEOUT)
            client.sendto("ação".encode(), server.address("udp"))
            answer, _ = client.recvfrom(65535)
    # Nothing added: no newline for a datagram that had none (the Java UDPClient's case).
    assert answer == "AÇÃO".encode()


@pytest.mark.timeout(30)
def test_iterative_makes_a_second_client_wait_while_the_first_stays_connected() -> None:
    with (
        running_server((Listener("tcp", "upper", "127.0.0.1", 0),), model="iterative") as server,
        connect(server.address()) as first,
        connect(server.address()) as second,
    ):
        first.sendall(b"first\n")
        assert read_line(first) == b"FIRST\n"  # the server is now serving `first`, which goes idle
        # The kernel completed the second connection (listen queue); nobody reads its line yet.
        second.sendall(b"second\n")
        second.settimeout(NOT_ANSWERED_WAIT)
        with pytest.raises(TimeoutError):
            second.recv(4096)
        first.close()
        second.settimeout(CLIENT_TIMEOUT)
        assert read_line(second) == b"SECOND\n"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("model", ["threads", "selectors"])
def test_a_second_client_is_answered_at_once_while_the_first_stays_connected(model: str) -> None:
    with (
        running_server((Listener("tcp", "upper", "127.0.0.1", 0),), model=model) as server,
        connect(server.address()) as first,
        connect(server.address()) as second,
    ):
        first.sendall(b"first\n")
        assert read_line(first) == b"FIRST\n"
        second.sendall(b"second\n")
        assert read_line(second) == b"SECOND\n"
        first.sendall(b"still here\n")
        assert read_line(first) == b"STILL HERE\n"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("model", MODELS)
def test_a_line_too_long_gets_one_error_line_and_the_connection_closes(model: str) -> None:
    limits = Limits(max_line=100)
    with (
        running_server((Listener("tcp", "upper", "127.0.0.1", 0),), model=model, limits=limits) as server,
        connect(server.address()) as client,
    ):
        client.sendall(b"fine\n" + b"x" * 500 + b"\nnever answered\n")
        received = b""
        while chunk := client.recv(4096):
            received += chunk
    assert received == b"FINE\nERR line too long\n"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("model", MODELS)
def test_an_idle_client_is_closed_after_the_idle_timeout(model: str) -> None:
    limits = Limits(idle_timeout=0.2)
    with (
        running_server((Listener("tcp", "upper", "127.0.0.1", 0),), model=model, limits=limits) as server,
        connect(server.address()) as client,
    ):
        client.sendall(b"hello\n")
        assert read_line(client) == b"HELLO\n"
        assert client.recv(4096) == b""  # closed by the server, not by us


@pytest.mark.timeout(30)
@pytest.mark.parametrize("model", MODELS)
def test_stopping_answers_what_was_received_and_closes_the_listening_socket(model: str) -> None:
    with running_server((Listener("tcp", "ack", "127.0.0.1", 0),), model=model) as server:
        client = connect(server.address())
        client.sendall(b"one\n")
        assert read_line(client) == b"ok\n"
        address = server.address()
    # running_server has stopped the server with the client still connected, and checked it returned 0.
    with client:
        assert client.recv(4096) == b""
    with pytest.raises(ConnectionRefusedError), socket.create_connection(address, timeout=CLIENT_TIMEOUT):
        pass


@pytest.mark.timeout(30)
def test_a_busy_port_raises_bind_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = ServerConfig(listeners=(Listener("tcp", "upper", "127.0.0.1", taken.getsockname()[1]),))
        with pytest.raises(BindError, match=r"127\.0\.0\.1"):
            run_blocking_server(config, model="iterative")


def test_an_unknown_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="iterative"):
        run_blocking_server(ServerConfig(listeners=()), model="fork-bomb")


@pytest.mark.timeout(30)
def test_the_server_session_is_the_lecture_diagram() -> None:
    """socket, bind, listen, accept (a new socket), recv, send, ..., close."""
    tracer = RecordingTracer()
    with (
        running_server(
            (Listener("tcp", "upper", "127.0.0.1", 0),), model="iterative", tracer=tracer
        ) as server,
        connect(server.address()) as client,
    ):
        client.sendall(b"hello\n")
        assert read_line(client) == b"HELLO\n"
        client_port = client.getsockname()[1]
        client.close()
        deadline = time.monotonic() + CLIENT_TIMEOUT
        while "close" not in tracer.names and time.monotonic() < deadline:
            time.sleep(0.01)
    listening = tracer.events[0]
    assert listening.name == "socket"
    setup = [e.name for e in tracer.for_fd(listening.fd)][:4]
    assert setup == ["socket", "setsockopt", "bind", "listen"]
    accept = next(e for e in tracer.events if e.name == "accept")
    assert accept.fd == listening.fd
    assert accept.result is not None
    # The new socket, and the client's source port, which tells clients apart.
    assert accept.result["peer"] == f"127.0.0.1:{client_port}"
    conn_fd = accept.result["fd"]
    assert conn_fd != listening.fd
    session = tracer.events[tracer.events.index(accept) + 1 :]
    assert [(e.name, e.fd) for e in session[:4]] == [
        ("recv", conn_fd),
        ("sendall", conn_fd),
        ("recv", conn_fd),
        ("close", conn_fd),
    ]
    recv, sendall, eof = session[:3]
    assert recv.data == b"hello\n"
    assert recv.result == {"bytes": 6}
    assert sendall.data == b"HELLO\n"
    assert eof.result == {"bytes": 0}
    assert tracer.for_fd(listening.fd)[-1].name == "close"


SIGNAL_SCRIPT = textwrap.dedent(
    """
    import sys
    from socketlab.config import Listener, ServerConfig
    from socketlab.models import run_blocking_server

    config = ServerConfig(listeners=(Listener("tcp", "upper", "127.0.0.1", 0),))

    def announce(proto, service, host, port):
        print(f"{proto} {service} listening on {host}:{port}", flush=True)

    code = run_blocking_server(config, model=sys.argv[1], on_listening=announce)
    print("exit", code, flush=True)
    sys.exit(code)
    """
)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_and_sigterm_stop_the_server_with_exit_code_0(model: str, sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGNAL_SCRIPT, model],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=cli_env(),
        text=True,
    )
    try:
        assert proc.stdout is not None
        match = LISTENING.match(proc.stdout.readline())
        assert match is not None
        # A client connected and idle: the iterative server is blocked in its recv().
        with connect(("127.0.0.1", int(match[4]))) as client:
            client.sendall(b"hi\n")
            assert read_line(client) == b"HI\n"
            proc.send_signal(sig)
            assert client.recv(4096) == b""
            out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "exit 0" in out
    assert "Traceback" not in out


@pytest.mark.timeout(30)
@pytest.mark.parametrize("model", MODELS)
def test_each_client_is_logged_coming_and_leaving_with_the_reason(
    model: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="socketlab.models")
    # Straight to the models' logger: the CLI, run in this process by other tests, stops
    # "socketlab" records from propagating to the root logger where caplog listens.
    models_log = logging.getLogger("socketlab.models")
    models_log.addHandler(caplog.handler)
    try:
        peer = _send_a_line_too_long(model, caplog)
    finally:
        models_log.removeHandler(caplog.handler)
    assert f"tcp upper: {peer} connected" in caplog.messages
    assert f"tcp upper: {peer} left (line too long: over 10 bytes)" in caplog.messages


def _send_a_line_too_long(model: str, caplog: pytest.LogCaptureFixture) -> str:
    limits = Limits(max_line=10)
    listener = Listener("tcp", "upper", "127.0.0.1", 0)
    with running_server((listener,), model=model, limits=limits) as server:
        with connect(server.address()) as client:
            client.sendall(b"much too long for ten\n")
            assert read_line(client) == b"ERR line too long\n"
            peer = f"127.0.0.1:{client.getsockname()[1]}"
        deadline = time.monotonic() + CLIENT_TIMEOUT
        while "left" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
    return peer


@pytest.mark.timeout(60)
@pytest.mark.parametrize("model", MODELS)
def test_a_client_that_does_not_read_stops_being_read_and_loses_nothing(model: str) -> None:
    """Backpressure: the server stops reading a client that does not read its answers."""
    line = b"x" * 1023 + b"\n"
    chunk = line * 64
    sent = 0
    with (
        running_server((Listener("tcp", "upper", "127.0.0.1", 0),), model=model) as server,
        connect(server.address()) as client,
    ):
        client.settimeout(NOT_ANSWERED_WAIT)
        # Bounded: far more than every socket buffer on the way can hold (a few MiB each).
        while sent < 256 * 1024 * 1024:
            try:
                sent += client.send(chunk[sent % len(chunk) :])
            except TimeoutError:
                break  # the server stopped reading: everything on the way is full
        else:
            pytest.fail("the server kept reading from a client that reads nothing")
        client.shutdown(socket.SHUT_WR)
        client.settimeout(CLIENT_TIMEOUT)
        received = 0
        while chunk_back := client.recv(1024 * 1024):
            assert chunk_back.strip(b"X\n") == b""
            received += len(chunk_back)
    assert received == sent


@pytest.mark.timeout(30)
def test_the_selectors_model_waits_in_select_and_then_calls_return_at_once() -> None:
    tracer = RecordingTracer()
    with (
        running_server(
            (Listener("tcp", "upper", "127.0.0.1", 0),), model="selectors", tracer=tracer
        ) as server,
        connect(server.address()) as first,
        connect(server.address()) as second,
    ):
        first.sendall(b"one\n")
        assert read_line(first) == b"ONE\n"
        second.sendall(b"two\n")
        assert read_line(second) == b"TWO\n"
    names = tracer.names
    assert names.count("accept") >= 2
    # Every accept and recv comes right after a select said its socket was ready.
    for index, event in enumerate(tracer.events):
        if event.name in ("accept", "recv") and event.error is None:
            previous = [e for e in tracer.events[:index] if e.name == "select"]
            assert previous, names
            assert previous[-1].result is not None
            assert event.fd in previous[-1].result["ready"] or event.name == "accept"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("model", MODELS)
def test_a_user_function_that_fails_answers_that_line_with_an_error_and_goes_on(model: str) -> None:
    listener = Listener("tcp", "tests.models.user_functions:fragile", "127.0.0.1", 0)
    with running_server((listener,), model=model) as server, connect(server.address()) as client:
        client.sendall(b"one\nboom\r\nthree\n")
        assert read_lines(client, 3) == b"ONE\nERR ValueError: boom\r\nTHREE\n"


def test_every_interface_means_ipv4_and_ipv6_side_by_side() -> None:
    everywhere = Listener("tcp", "upper", None, 6789)
    expected = [(socket.AF_INET, "0.0.0.0")]
    if socket.has_ipv6:
        expected.append((socket.AF_INET6, "::"))
    assert list(bind_addresses(everywhere, socket.SOCK_STREAM)) == expected
    loopback = Listener("udp", "upper", "127.0.0.1", 0)
    assert list(bind_addresses(loopback, socket.SOCK_DGRAM)) == [(socket.AF_INET, "127.0.0.1")]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("model", MODELS)
def test_many_clients_sending_in_random_pieces_all_get_every_answer_in_order(model: str) -> None:
    clients, lines_each = 20, 200
    failures: list[str] = []

    def one_client(index: int, address: tuple[str, int]) -> None:
        rng = random.Random(index)
        lines = [f"client {index} line {n} ação\n".encode() for n in range(lines_each)]
        data = b"".join(lines)
        expected = b"".join(line.decode().upper().encode() for line in lines)
        with connect(address) as sock:
            sent = 0
            while sent < len(data):
                piece = rng.randint(1, 300)
                sock.sendall(data[sent : sent + piece])
                sent += piece
            sock.shutdown(socket.SHUT_WR)
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        if received != expected:
            failures.append(f"client {index}: {len(received)} of {len(expected)} bytes right")

    with running_server((Listener("tcp", "upper", "127.0.0.1", 0),), model=model) as server:
        threads = [threading.Thread(target=one_client, args=(i, server.address())) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(CLIENT_TIMEOUT * 4)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
