"""UDP sockets served by a thread of their own (`udp_io="thread"`, the default) and by the event loop."""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest

from socketlab.config import Limits, Listener, ServerConfig
from socketlab.core.guards import UdpGuard
from socketlab.core.services import Service, make_service
from socketlab.transports.udp_server import UdpEndpoint, UdpThread, serve_in_threads
from tests.transports.serving import LOOPS, server_thread

UDP_IOS = ("thread", "loop")


def _client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(5)
    return sock


def _udp_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("udp ")]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("udp_io", UDP_IOS)
@pytest.mark.parametrize("loop", LOOPS)
def test_both_ways_of_serving_answer_and_stop_cleanly(loop: str, udp_io: str) -> None:
    config = ServerConfig(listeners=(Listener("udp", "upper", "127.0.0.1", 0),), udp_io=udp_io)
    with server_thread(config, loop) as running, _client() as client:
        port = running.listeners[0].port
        for i in range(50):
            client.sendto(f"ação {i}".encode(), ("127.0.0.1", port))
            assert client.recvfrom(100)[0] == f"AÇÃO {i}".encode()
        assert len(_udp_threads()) == (1 if udp_io == "thread" else 0)
    assert _udp_threads() == []  # the serving thread ended with the server
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", port))  # and its socket is closed: the port is free


@pytest.mark.timeout(20)
@pytest.mark.parametrize("udp_io", UDP_IOS)
def test_the_rate_limit_counts_the_same_either_way(udp_io: str) -> None:
    # One token in 1000 s: the burst is all a source gets during the test, however slow the machine.
    limits = Limits(udp_rate=0.001, udp_burst=5, limit_loopback=True)
    listeners = (Listener("udp", "upper", "127.0.0.1", 0),)
    with server_thread(ServerConfig(listeners=listeners, limits=limits, udp_io=udp_io)) as running:
        port = running.listeners[0].port
        with _client() as client:
            for _ in range(10):
                client.sendto(b"x", ("127.0.0.1", port))
            answered = 0
            client.settimeout(1)
            try:
                while answered < 10:
                    client.recvfrom(10)
                    answered += 1
            except TimeoutError:
                pass  # no more answers
        stats = running.stats()["udp"]["udp upper"]
    assert answered == 5
    assert stats["rate_limited"] == 5


class _Fragile(Service):
    name = "fragile"

    def answer_datagram(self, data: bytes) -> bytes | None:
        if data == b"break":
            raise RuntimeError("broken on purpose")
        return data.upper()


@pytest.mark.timeout(20)
def test_a_failing_datagram_is_logged_and_the_thread_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.udp.thread")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    (thread,) = serve_in_threads([sock], lambda: UdpEndpoint(_Fragile(), log, "udp fragile", UdpGuard()))
    try:
        with caplog.at_level(logging.ERROR, logger="test.udp.thread"), _client() as client:
            client.sendto(b"break", ("127.0.0.1", port))
            client.sendto(b"still here", ("127.0.0.1", port))
            assert client.recvfrom(100)[0] == b"STILL HERE"
    finally:
        thread.close()
    assert "udp fragile" in caplog.text
    assert "broken on purpose" in caplog.text


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("family", "host"), [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")])
def test_close_wakes_a_thread_bound_to_every_interface(family: int, host: str) -> None:
    # The wake-up datagram goes to loopback when the socket is bound to the unspecified address.
    if family == socket.AF_INET6 and not socket.has_ipv6:
        pytest.skip("no IPv6")
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((host, 0))
    except OSError:
        sock.close()
        pytest.skip(f"cannot bind {host}")
    endpoint = UdpEndpoint(make_service("upper"), logging.getLogger("test"), "udp upper", UdpGuard())
    thread = UdpThread(sock, endpoint, threading.Lock())
    thread.start()
    assert len(_udp_threads()) == 1
    thread.close()  # with no traffic at all: only the wake-up datagram can end recvfrom
    assert _udp_threads() == []
    assert sock.fileno() == -1
    assert endpoint.send_drops == 0


SAMPLES = [b"x", b"abc", b"abc\n", b"line\r\n", b"", "ação".encode(), b"boom and more padding", b"\xff\xfe"]


@pytest.mark.parametrize("spec", ["upper", "ack", "echo", "discard", "tests.cli.user_service:shout"])
def test_the_fast_path_answers_what_the_endpoint_answers(spec: str) -> None:
    # The thread's shortcut (FastPath) must never differ from UdpEndpoint.answer, amplification rule
    # included: ack answers "x" with "ok", a byte more than it was sent.
    endpoint = UdpEndpoint(make_service(spec), logging.getLogger("test.udp.fast"), f"udp {spec}", UdpGuard())
    endpoint._time = time.monotonic  # as a transport or a thread would set it
    fast = endpoint.fast_path()
    assert fast is not None
    source = ("127.0.0.1", 40000)
    endpoint.answer(b"vet me", source)  # the first datagram vets the source
    assert source[0] in fast.vetted
    taken = 0
    for data in SAMPLES:
        expected = endpoint.answer(data, source)
        if source[1] not in fast.bad_ports and data.isascii():
            answer = fast.answer_ascii(data)
            if answer is not None and len(answer) <= len(data):
                taken += 1
                assert answer == expected, data
    assert taken > 0 or spec in ("discard", "tests.cli.user_service:shout")


@pytest.mark.timeout(20)
def test_a_vetted_source_still_gets_no_answer_larger_than_its_request() -> None:
    config = ServerConfig(listeners=(Listener("udp", "ack", "127.0.0.1", 0),))  # served by a thread
    with server_thread(config) as running, _client() as client:
        address = ("127.0.0.1", running.listeners[0].port)
        client.sendto(b"first\n", address)
        assert client.recvfrom(100)[0] == b"ok\n"  # the source is vetted now
        client.sendto(b"x", address)  # "ok" would be a byte larger than "x"
        client.sendto(b"last\n", address)
        assert client.recvfrom(100)[0] == b"ok\n"  # the answer to "x" would have come first
        assert running.stats()["udp"]["udp ack"]["amplification"] == 1
