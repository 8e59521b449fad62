"""The TCP client library against small real servers on 127.0.0.1:0 and [::1]:0.

The servers here are threads with blocking sockets, each shaped like one kind of server the client
must cope with (the lecture's Java TCPServer that answers one line, the lecture's Python server that
answers "ok" without a newline, servers that close or fall silent). tests/cli/test_client.py reuses them.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from socketlab.core.services import make_service
from socketlab.core.session import StreamSession
from socketlab.errors import ConnectError, ConnectionLost
from socketlab.transports.tcp_client import Pipeline, client_addresses, connect_tcp, exchange_tcp
from tests.conftest import needs_ipv6

Handler = Callable[[socket.socket], None]


class TcpServer:
    """Accepts on `host`:0 in a thread and runs `handle(conn)` for each connection in its own thread."""

    def __init__(self, handle: Handler, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.host = host
        self.port: int = self.sock.getsockname()[1]
        self.handle = handle
        self.received = bytearray()  # what handlers chose to record
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept_loop, daemon=True)
        self._accepter.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                return  # the test closed the listening socket
            thread = threading.Thread(target=self._run, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):  # a client that resets is not the server's failure
            self.handle(conn)

    def close(self) -> None:
        # shutdown wakes the thread blocked in accept(); close alone would not, on Linux.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._accepter.join(5)
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> TcpServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_session(conn: socket.socket, service: str = "upper") -> None:
    """Our own server's behaviour, through the core: answer each line; at end of input, the rest."""
    session = StreamSession(make_service(service))
    while data := conn.recv(65536):
        conn.sendall(session.receive_data(data))
    conn.sendall(session.end_of_input())


def upper_server(host: str = "127.0.0.1") -> TcpServer:
    return TcpServer(serve_session, host)


def latin1_server() -> TcpServer:
    """The lecture's Java TCPServer answering Portuguese: one byte per char (writeBytes)."""

    def handle(conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        for line in reader:
            text = line.decode("utf-8").rstrip("\n").upper()
            conn.sendall(text.encode("latin-1") + b"\n")

    return TcpServer(handle)


def closing_server(answers: int) -> TcpServer:
    """Answers `answers` lines, then closes the connection."""

    def handle(conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        for _ in range(answers):
            line = reader.readline()
            if not line:
                return
            conn.sendall(line.upper())
        reader.close()

    return TcpServer(handle)


def silent_server(stop: threading.Event) -> TcpServer:
    """Reads and records everything, answers nothing, keeps the connection open until `stop`."""

    def handle(conn: socket.socket) -> None:
        conn.settimeout(0.05)
        while not stop.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            if not data:
                stop.wait()
                return
            server.received += data

    server = TcpServer(handle)
    return server


def recording_server() -> TcpServer:
    """Records the bytes received and answers each line with "ok" (the lecture's port 9898 idea)."""

    def handle(conn: socket.socket) -> None:
        session = StreamSession(make_service("ack"))
        while data := conn.recv(65536):
            server.received += data
            conn.sendall(session.receive_data(data))
        conn.sendall(session.end_of_input())

    server = TcpServer(handle)
    return server


@pytest.fixture
def upper() -> Iterator[TcpServer]:
    with upper_server() as server:
        yield server


@pytest.mark.timeout(20)
def test_answers_come_back_in_order_for_many_single_lines(upper: TcpServer) -> None:
    lines = [f"line {i} ação".encode() for i in range(20_000)]
    answers = exchange_tcp("127.0.0.1", upper.port, lines, window=7)
    assert answers == [f"LINE {i} AÇÃO".encode() for i in range(20_000)]


@pytest.mark.timeout(20)
def test_items_may_be_blocks_of_lines_larger_than_the_window(upper: TcpServer) -> None:
    block = b"".join(b"x%d\n" % i for i in range(1000))
    answers = exchange_tcp("127.0.0.1", upper.port, [block, b"last without newline"], window=16)
    assert answers == [b"X%d" % i for i in range(1000)] + [b"LAST WITHOUT NEWLINE"]


@pytest.mark.timeout(10)
def test_no_lines_means_no_answers(upper: TcpServer) -> None:
    assert exchange_tcp("127.0.0.1", upper.port, []) == []


@pytest.mark.timeout(10)
def test_bytes_are_sent_as_given_adding_a_newline_only_where_missing() -> None:
    with recording_server() as server:
        answers = exchange_tcp("127.0.0.1", server.port, [b"a\r\n", b"b", b"", "ç".encode("latin-1")])
    assert answers == [b"ok", b"ok", b"ok", b"ok"]
    assert bytes(server.received) == b"a\r\nb\n\n\xe7\n"


@pytest.mark.timeout(10)
def test_latin1_answers_are_returned_as_bytes() -> None:
    with latin1_server() as server:
        assert exchange_tcp("127.0.0.1", server.port, ["ação".encode()]) == ["AÇÃO".encode("latin-1")]


@pytest.mark.timeout(10)
def test_the_window_bounds_the_lines_in_flight() -> None:
    stop = threading.Event()
    server = silent_server(stop)
    try:
        lines = [b"%d" % i for i in range(1000)]
        with pytest.raises(ConnectionLost, match="no answer"):
            exchange_tcp("127.0.0.1", server.port, lines, window=5, timeout=0.3)
    finally:
        stop.set()
        server.close()
    # The server never answered, so the client cannot have sent more than one window of lines.
    assert bytes(server.received) == b"0\n1\n2\n3\n4\n"


@pytest.mark.timeout(10)
def test_a_server_that_closes_midway_is_a_lost_connection() -> None:
    with closing_server(answers=2) as server, pytest.raises(ConnectionLost, match="owed"):
        exchange_tcp("127.0.0.1", server.port, [b"a", b"b", b"c", b"d"])


@pytest.mark.timeout(10)
def test_pipeline_yields_answers_before_the_connection_is_lost() -> None:
    got: list[bytes] = []

    def collect(sock: socket.socket) -> None:
        for batch in Pipeline(sock, [b"a", b"b", b"c"], window=1).answers():
            got.extend(batch)

    with (
        closing_server(answers=2) as server,
        connect_tcp("127.0.0.1", server.port) as sock,
        pytest.raises(ConnectionLost),
    ):
        collect(sock)
    assert got == [b"A", b"B"]


@pytest.mark.timeout(10)
def test_a_server_that_answers_one_line_and_never_closes_is_enough_for_one_line() -> None:
    # The lecture's Java TCPServer reads one line, answers, and goes back to accept() without closing.
    stop = threading.Event()

    def handle(conn: socket.socket) -> None:
        line = conn.makefile("rb").readline()
        conn.sendall(line.upper())
        stop.wait(10)

    with TcpServer(handle) as server:
        try:
            assert exchange_tcp("127.0.0.1", server.port, [b"hello"], timeout=5) == [b"HELLO"]
            with pytest.raises(ConnectionLost, match="no answer"):
                exchange_tcp("127.0.0.1", server.port, [b"one", b"two"], timeout=0.3)
        finally:
            stop.set()


@pytest.mark.timeout(10)
def test_an_answer_without_newline_counts_when_the_server_closes() -> None:
    # The lecture's Python server: sendall(b"ok") per recv, no newline, and it ends at our EOF.
    def handle(conn: socket.socket) -> None:
        while conn.recv(1024):
            conn.sendall(b"ok")

    with TcpServer(handle) as server:
        assert exchange_tcp("127.0.0.1", server.port, [b"Echo"]) == [b"ok"]


@pytest.mark.timeout(10)
def test_connection_refused_is_a_connect_error() -> None:
    # A bound socket that does not listen refuses connections, and keeps the port ours.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        with pytest.raises(ConnectError, match=r"127\.0\.0\.1 port \d+: .*refused"):
            exchange_tcp("127.0.0.1", port, [b"x"])


def test_an_unknown_host_is_a_connect_error() -> None:
    with pytest.raises(ConnectError, match="cannot resolve"):
        client_addresses("no-such-host.invalid", 1, socket.SOCK_STREAM)


def test_localhost_includes_both_loopbacks() -> None:
    addresses = [address[0] for _family, address in client_addresses("localhost", 7, socket.SOCK_STREAM)]
    assert "127.0.0.1" in addresses
    if socket.has_ipv6:
        assert "::1" in addresses


@pytest.mark.timeout(10)
def test_localhost_reaches_a_server_on_127_0_0_1_only(upper: TcpServer) -> None:
    assert exchange_tcp("localhost", upper.port, [b"v4"]) == [b"V4"]


@needs_ipv6
@pytest.mark.timeout(10)
def test_localhost_reaches_a_server_on_ipv6_loopback_only() -> None:
    with upper_server("::1") as server:
        assert exchange_tcp("localhost", server.port, [b"v6"]) == [b"V6"]
        assert exchange_tcp("::1", server.port, [b"v6"]) == [b"V6"]
