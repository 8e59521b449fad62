"""UDP that cannot be turned against others: reflection ports, broadcast sources, amplification, a
spoofed-source flood against the rate limit, the access list.

Servers run in-process (tests.transports.serving.server_thread) so the tests can read the drop counters.
A datagram is known to have been handled when a later probe from a normal port is answered: one
socket delivers datagrams in order, so no test waits for "no answer".
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any

import pytest

from socketlab.config import Access, Limits, Listener, ServerConfig
from socketlab.core.guards import RateLimiter, UdpGuard, UdpSourceGuard
from socketlab.core.services import make_service
from socketlab.transports.server import RunningServer
from socketlab.transports.udp_server import UdpEndpoint
from tests.hardening.support import figure
from tests.transports.serving import LOOPS, server_thread

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


def _config(service: str = "upper", **limits: Any) -> ServerConfig:
    return ServerConfig(listeners=(Listener("udp", service, "127.0.0.1", 0),), limits=Limits(**limits))


def _udp(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.bind((host, port))
    return s


def _probe(server_port: int) -> None:
    """A datagram from an ordinary port, answered: everything sent before it has been handled."""
    with _udp() as s:
        s.sendto(b"probe", ("127.0.0.1", server_port))
        assert s.recvfrom(2048)[0] == b"PROBE"


def _nothing_waiting(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        s.recv(2048)
    except BlockingIOError:
        return True
    return False


def _kernel_udp_drops() -> int:
    """Datagrams the kernel dropped for full receive buffers, machine-wide (0 where unknown)."""
    try:
        with open("/proc/net/snmp") as f:
            rows = [line.split() for line in f if line.startswith("Udp:")]
    except OSError:
        return 0
    header, values = rows[0], rows[1]
    return int(values[header.index("RcvbufErrors")]) if "RcvbufErrors" in header else 0


def _drops(running: RunningServer) -> dict[str, int]:
    udp = running.stats()["udp"]
    assert isinstance(udp, dict)
    counts = next(iter(udp.values()))
    assert isinstance(counts, dict)
    return counts


@pytest.mark.skipif(not ROOT, reason="binding source ports 7 and 19 needs root")
@pytest.mark.timeout(20)
@pytest.mark.parametrize("loop", LOOPS)
def test_datagrams_from_echo_and_chargen_ports_are_dropped(loop: str) -> None:
    with server_thread(_config(), loop) as running:
        port = running.listeners[0].port
        with _udp(port=7) as echo, _udp(port=19) as chargen:
            echo.sendto(b"loop me", ("127.0.0.1", port))
            chargen.sendto(b"loop me", ("127.0.0.1", port))
            _probe(port)
            assert _nothing_waiting(echo)
            assert _nothing_waiting(chargen)
        drops = _drops(running)
    assert drops["reflection_port"] == 2
    figure(f"udp reflection ({loop})", "datagrams from 127.0.0.1:7 and :19 dropped unanswered, counted 2")


@pytest.mark.timeout(20)
def test_privileged_source_ports_dropped_when_asked() -> None:
    if not ROOT:
        pytest.skip("binding a source port below 1024 needs root")
    with server_thread(_config(udp_drop_privileged_ports=True)) as running:
        port = running.listeners[0].port
        with _udp(port=1000) as low:
            low.sendto(b"x", ("127.0.0.1", port))
            _probe(port)
            assert _nothing_waiting(low)
        assert _drops(running)["privileged_port"] == 1


class _RecordingTransport:
    """Stands in for the socket only to see what the real endpoint would send, and to whom."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))

    def set_write_buffer_limits(self, high: int) -> None:
        del high


@pytest.mark.timeout(10)
def test_broadcast_and_multicast_sources_are_dropped_by_the_real_endpoint() -> None:
    # A broadcast or multicast source cannot be forged on loopback without raw sockets, so the real
    # protocol object is fed such source addresses directly; only its transport is a recorder.
    async def main() -> tuple[list[tuple[bytes, Any]], dict[str, int]]:
        guard = UdpGuard(source=UdpSourceGuard(broadcast_addresses=["192.168.1.255"]), rate=RateLimiter())
        endpoint = UdpEndpoint(make_service("upper"), logging.getLogger("test"), "udp upper", guard)
        transport = _RecordingTransport()
        endpoint.connection_made(transport)  # type: ignore[arg-type]
        for source in ("255.255.255.255", "192.168.1.255", "224.0.0.1", "ff02::1", "0.0.0.0", "::"):
            endpoint.datagram_received(b"reflect me", (source, 5000))
        endpoint.datagram_received(b"fine", ("192.168.1.7", 5000))
        endpoint.datagram_received(b"fine", ("::ffff:10.0.0.7", 5000))
        return transport.sent, dict(guard.stats())

    sent, stats = asyncio.run(main())
    assert sent == [(b"FINE", ("192.168.1.7", 5000)), (b"FINE", ("::ffff:10.0.0.7", 5000))]
    assert stats["bad_source"] == 6
    figure("udp broadcast", "6 broadcast/multicast/unspecified sources dropped (in-process, fake sources)")


@pytest.mark.timeout(20)
@pytest.mark.parametrize("loop", LOOPS)
def test_no_answer_is_larger_than_its_request(loop: str) -> None:
    # ŉ is 2 bytes in UTF-8, its upper case ʼN is 3: upper grows such text by half.
    listeners = (
        Listener("udp", "upper", "127.0.0.1", 0),
        Listener("udp", "tests.cli.user_service:shout", "127.0.0.1", 0),
    )
    with server_thread(ServerConfig(listeners=listeners), loop) as running:
        upper, shout = (b.port for b in running.listeners)
        with _udp() as s:
            s.sendto("ŉ".encode() * 10, ("127.0.0.1", upper))  # 20 bytes, answer would be 30
            big = s.recvfrom(2048)[0]
            s.sendto("ŉ".encode(), ("127.0.0.1", upper))  # 2 bytes: even the error is too long
            s.sendto("olá".encode(), ("127.0.0.1", shout))  # a user function adding a '!'
            s.sendto("ação".encode(), ("127.0.0.1", upper))  # same length: answered
            answers = [s.recvfrom(2048)[0]]
            _probe(upper)
            # The shout listener has a socket of its own, so the probe above says nothing about it.
            deadline = time.monotonic() + 5
            while running.stats()["udp"]["udp tests.cli.user_service:shout"]["amplification"] < 1:
                assert time.monotonic() < deadline, "the shout listener never saw its datagram"
                time.sleep(0.01)
            assert _nothing_waiting(s)
        stats = running.stats()["udp"]
    assert big == b"ERR too large"
    assert answers == ["AÇÃO".encode()]
    assert stats["udp upper"]["amplification"] == 2
    assert stats["udp tests.cli.user_service:shout"]["amplification"] == 1
    figure(
        f"udp amplification ({loop})",
        "3 requests whose answer would grow: 1 answered 'ERR too large' (13 of 20 bytes), 2 unanswered",
    )


@pytest.mark.slow
@pytest.mark.timeout(30)
@pytest.mark.parametrize("loop", LOOPS)
def test_a_flood_from_spoofed_loopback_sources_is_cut_to_the_rate(loop: str) -> None:
    # Loopback is exempt unless asked; here it is asked, and 127.0.0.2-5 stand for forged sources.
    sources = [f"127.0.0.{i}" for i in range(2, 6)]
    per_source = 1000
    with server_thread(_config(limit_loopback=True), loop) as running:
        port = running.listeners[0].port
        socks = [_udp(host) for host in sources]
        kernel_drops = _kernel_udp_drops()
        started = time.monotonic()
        for n in range(per_source):
            for s in socks:
                s.sendto(b"flood %d" % n, ("127.0.0.1", port))
            if n % 10 == 9:
                time.sleep(0.002)  # keep the kernel's receive buffer from dropping them for us
        elapsed = time.monotonic() - started
        _probe_from = _udp("127.0.0.9")
        _probe_from.sendto(b"still here", ("127.0.0.1", port))
        bystander = _probe_from.recvfrom(2048)[0]
        _probe_from.close()
        answered = []
        for s in socks:
            count = 0
            s.settimeout(0.3)
            try:
                while s.recv(2048):
                    count += 1
            except TimeoutError:
                pass  # no more answers
            answered.append(count)
            s.close()
        drops = _drops(running)
        kernel_drops = _kernel_udp_drops() - kernel_drops
    ceiling = 200 + 100 * (elapsed + 0.5)  # burst + rate x time, with room for the clock's grain
    assert bystander == b"STILL HERE"
    assert all(count <= ceiling for count in answered)
    # The rest were cut by the guard, except those the kernel dropped first when a buffer was full
    # (counted machine-wide, so other traffic can only make this bound looser).
    assert drops["rate_limited"] >= len(sources) * per_source - sum(answered) - kernel_drops
    figure(
        f"udp flood ({loop})",
        f"{len(sources)} sources x {per_source} datagrams in {elapsed:.2f} s: answered {answered} "
        f"(ceiling burst 200 + 100/s), {drops['rate_limited']} dropped as rate_limited; a bystander "
        "source was answered",
    )


@pytest.mark.timeout(20)
def test_loopback_is_exempt_from_the_rate_by_default() -> None:
    with server_thread(_config()) as running:
        port = running.listeners[0].port
        with _udp("127.0.0.2") as s:
            answered = 0
            for n in range(400):  # twice the burst, each waiting for its answer
                s.sendto(b"n%d" % n, ("127.0.0.1", port))
                if s.recvfrom(2048)[0] == b"N%d" % n:
                    answered += 1
        assert answered == 400
        assert _drops(running)["rate_limited"] == 0


@pytest.mark.timeout(20)
def test_a_denied_source_is_dropped_silently() -> None:
    config = ServerConfig(
        listeners=(Listener("udp", "upper", "127.0.0.1", 0),),
        access=Access(allow=("127.0.0.0/8",), deny=("127.0.0.2",)),
    )
    with server_thread(config) as running:
        port = running.listeners[0].port
        with _udp("127.0.0.2") as denied:
            denied.sendto(b"let me in", ("127.0.0.1", port))
            _probe(port)
            assert _nothing_waiting(denied)
        assert _drops(running)["denied"] == 1


@pytest.mark.timeout(10)
def test_answers_are_dropped_and_counted_while_the_send_buffer_is_full() -> None:
    # A loopback UDP socket's send buffer does not fill (the kernel drops at the receiver instead),
    # so the real endpoint is told what its transport would say: above the cap, then below again.
    async def main() -> tuple[list[tuple[bytes, Any]], int]:
        guard = UdpGuard()
        endpoint = UdpEndpoint(make_service("upper"), logging.getLogger("test"), "udp upper", guard, 1024)
        transport = _RecordingTransport()
        endpoint.connection_made(transport)  # type: ignore[arg-type]
        endpoint.datagram_received(b"um", ("127.0.0.1", 5000))
        endpoint.pause_writing()
        endpoint.datagram_received(b"dois", ("127.0.0.1", 5000))
        endpoint.resume_writing()
        endpoint.datagram_received(b"tres", ("127.0.0.1", 5000))
        return transport.sent, endpoint.send_drops

    sent, dropped = asyncio.run(main())
    assert [data for data, _addr in sent] == [b"UM", b"TRES"]
    assert dropped == 1
