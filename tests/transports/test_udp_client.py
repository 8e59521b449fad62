"""The UDP client library against small real datagram servers on 127.0.0.1:0 and [::1]:0.

The servers are threads with blocking sockets that lose, delay or pad answers on purpose: the lecture's
Java UDPServer pads every answer with NULs to 1024 bytes. tests/cli/test_client.py reuses them.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

import pytest

from socketlab.core.services import make_service
from socketlab.errors import ConnectError
from socketlab.transports.udp_client import UdpClient, exchange_udp, lost_count, strip_padding
from tests.conftest import needs_ipv6

# Given the number of the datagram (from 1) and its payload: the answer and how long to wait before
# sending it, or None to drop the datagram.
Policy = Callable[[int, bytes], tuple[bytes, float] | None]


def upper_policy(_number: int, data: bytes) -> tuple[bytes, float] | None:
    answer = make_service("upper").answer_datagram(data)
    return None if answer is None else (answer, 0.0)


class UdpServer:
    """Receives on `host`:0 in a thread and answers each datagram as `policy` says."""

    def __init__(self, policy: Policy = upper_policy, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.port: int = self.sock.getsockname()[1]
        self.policy = policy
        self.count = 0
        self._timers: list[threading.Timer] = []
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(65536)
            except OSError:
                return  # the test closed the socket
            if peer is None:
                return  # shut down by close(): recvfrom returns with no sender
            self.count += 1
            decision = self.policy(self.count, data)
            if decision is None:
                continue
            answer, delay = decision
            if delay > 0:
                timer = threading.Timer(delay, self._send, (answer, peer))
                self._timers.append(timer)
                timer.start()
            else:
                self._send(answer, peer)

    def _send(self, answer: bytes, peer: tuple[str, int]) -> None:
        # A failure means the test closed the socket, or the client's port is gone: a lost answer,
        # as UDP allows.
        with contextlib.suppress(OSError):
            self.sock.sendto(answer, peer)

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        # shutdown wakes the thread blocked in recvfrom(); close alone would not, on Linux. Linux
        # reports ENOTCONN for an unconnected UDP socket, yet wakes the reader.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(5)

    def __enter__(self) -> UdpServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def dropping(first: int) -> Policy:
    """Loses the first `first` datagrams, answers the rest in upper case."""

    def policy(number: int, data: bytes) -> tuple[bytes, float] | None:
        return None if number <= first else upper_policy(number, data)

    return policy


def never(_number: int, _data: bytes) -> tuple[bytes, float] | None:
    return None


def java_padding(_number: int, data: bytes) -> tuple[bytes, float] | None:
    """The lecture's UDPServer: the upper-cased 1024-byte receive buffer, NULs and all."""
    return data.decode("utf-8", "replace").upper().encode().ljust(1024, b"\0"), 0.0


@pytest.mark.timeout(10)
def test_each_request_gets_its_answer() -> None:
    with UdpServer() as server:
        results = list(exchange_udp("127.0.0.1", server.port, ["ação".encode(), b"", b"x y"]))
    assert [r.answer for r in results] == ["AÇÃO".encode(), b"", b"X Y"]
    assert [r.attempts for r in results] == [1, 1, 1]
    assert lost_count(results) == 0


@pytest.mark.timeout(10)
def test_nul_padding_is_stripped() -> None:
    with UdpServer(java_padding) as server:
        results = list(exchange_udp("127.0.0.1", server.port, [b"hello"]))
        raw = list(exchange_udp("127.0.0.1", server.port, [b"hello"], unpad=False))
    assert results[0].answer == b"HELLO"
    assert raw[0].answer == b"HELLO".ljust(1024, b"\0")
    assert strip_padding(b"ok\0\0") == b"ok"


@pytest.mark.timeout(10)
def test_lost_datagrams_are_retried() -> None:
    with UdpServer(dropping(2)) as server:
        results = list(exchange_udp("127.0.0.1", server.port, [b"a", b"b"], timeout=0.1, retries=2))
    assert [(r.answer, r.attempts) for r in results] == [(b"A", 3), (b"B", 1)]


@pytest.mark.timeout(10)
def test_a_request_is_lost_after_every_retry_and_the_next_one_still_goes() -> None:
    with UdpServer(dropping(2)) as server:
        results = list(exchange_udp("127.0.0.1", server.port, [b"a", b"b"], timeout=0.1, retries=1))
        assert server.count == 3
    assert [(r.answer, r.attempts) for r in results] == [(None, 2), (b"B", 1)]
    assert results[0].lost
    assert lost_count(results) == 1


@pytest.mark.timeout(10)
def test_a_server_that_never_answers_loses_every_request() -> None:
    with UdpServer(never) as server:
        results = list(exchange_udp("127.0.0.1", server.port, [b"a", b"b"], timeout=0.1, retries=0))
    assert [r.lost for r in results] == [True, True]


@pytest.mark.timeout(10)
def test_a_late_answer_to_a_retried_request_is_not_taken_for_the_next_answer() -> None:
    # Datagram 1 ("first") is answered late, after the client has retried it (datagram 2, answered at
    # once) and sent "second" (datagram 3, answered after a while): the late "FIRST" arrives while
    # "second" waits, and must not be taken for its answer.
    def policy(number: int, data: bytes) -> tuple[bytes, float] | None:
        delay = {1: 0.5, 3: 0.5}.get(number, 0.0)
        return data.upper(), delay

    with UdpServer(policy) as server:
        results = list(exchange_udp("127.0.0.1", server.port, [b"first", b"second"], timeout=0.3))
    assert [r.answer for r in results] == [b"FIRST", b"SECOND"]
    assert results[0].attempts == 2


@pytest.mark.timeout(10)
def test_stale_answers_are_drained_before_the_next_request() -> None:
    # A server that answers twice: the duplicate must not become the next request's answer.
    def policy(_number: int, data: bytes) -> tuple[bytes, float] | None:
        return data.upper(), 0.0

    with UdpServer(policy) as server:
        client = UdpClient("127.0.0.1", server.port, timeout=2)
        with client:
            assert client.request(b"one").answer == b"ONE"
            # Stand in for the duplicate: a second copy of the answer reaches the client's port.
            sock = client._socket()
            # Over loopback, sendto has queued the datagram at the client before it returns.
            server.sock.sendto(b"ONE", sock.getsockname())
            assert client.request(b"two").answer == b"TWO"


@pytest.mark.timeout(10)
def test_a_request_too_long_for_a_datagram_is_reported_not_sent() -> None:
    with UdpServer() as server:
        results = list(exchange_udp("127.0.0.1", server.port, [b"x" * 70_000, b"ok"]))
    assert [(r.answer, r.attempts) for r in results] == [(None, 0), (b"OK", 1)]


@pytest.mark.timeout(10)
def test_nothing_listening_is_a_connect_error() -> None:
    # A UDP socket bound to the port keeps it ours; connected elsewhere, it takes no datagram from
    # the client, so the kernel answers ICMP port unreachable, which a connected client sees as refused.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.connect(("127.0.0.1", 9))
        port = holder.getsockname()[1]
        with pytest.raises(ConnectError, match="nothing listens"):
            list(exchange_udp("127.0.0.1", port, [b"x"], timeout=2))


@pytest.mark.timeout(10)
def test_localhost_reaches_a_server_on_127_0_0_1_only() -> None:
    with UdpServer() as server:
        assert [r.answer for r in exchange_udp("localhost", server.port, [b"v4"])] == [b"V4"]


@needs_ipv6
@pytest.mark.timeout(10)
def test_localhost_reaches_a_server_on_ipv6_loopback_only() -> None:
    with UdpServer(host="::1") as server:
        assert [r.answer for r in exchange_udp("localhost", server.port, [b"v6", b"again"])] == [
            b"V6",
            b"AGAIN",
        ]
