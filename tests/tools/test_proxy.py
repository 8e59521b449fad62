"""`socketlab proxy`: the seeded fault decisions (pure), the UDP and TCP relays on real loopback sockets,
and the command as a user runs it. Nothing here asserts on time: delays are checked through ordering
and counters."""

from __future__ import annotations

import asyncio
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from socketlab.core.services import make_service
from socketlab.core.session import StreamSession
from socketlab.errors import ConfigError
from socketlab.tools.proxy.common import ProxyEvent
from socketlab.tools.proxy.faults import (
    Direction,
    FaultPlan,
    FaultyLink,
    TcpFaults,
    UdpFaults,
    parse_bandwidth,
    parse_delay,
    parse_probability,
)
from socketlab.tools.proxy.tcp import open_tcp_proxy
from socketlab.tools.proxy.udp import open_udp_proxy
from socketlab.transports.loop import available_loops
from socketlab.transports.loop import run as run_loop
from socketlab.transports.udp_client import exchange_udp
from tests.conftest import needs_ipv6
from tests.helpers import cli_env, start_serve

Address = tuple[str, int]
UPPER = make_service("upper")

# --- the pure part: fates ---------------------------------------------------------------------------


def _run_link(link: FaultyLink, datagrams: list[bytes]) -> list[bytes]:
    """Everything the link sends for `datagrams`, in order, delays ignored, held one released at the end."""
    out = [d.data for datagram in datagrams for d in link.push(datagram).sends]
    return out + [d.data for d in link.release_held()]


def _numbered(n: int) -> list[bytes]:
    return [b"datagram %d" % i for i in range(n)]


def test_no_faults_pass_everything_in_order() -> None:
    link = FaultPlan(UdpFaults(), seed=1).link(Direction.TO_SERVER, 0)
    data = _numbered(100)
    assert _run_link(link, data) == data
    c = link.counters
    assert (c.received, c.forwarded, c.dropped, c.duplicated, c.reordered, c.delayed) == (
        100,
        100,
        0,
        0,
        0,
        0,
    )


def test_loss_one_drops_everything() -> None:
    link = FaultPlan(UdpFaults(loss=1.0), seed=1).link(Direction.TO_SERVER, 0)
    assert _run_link(link, _numbered(100)) == []
    assert link.counters.dropped == 100
    assert link.counters.forwarded == 0


def test_dup_one_sends_everything_twice() -> None:
    link = FaultPlan(UdpFaults(dup=1.0), seed=1).link(Direction.TO_SERVER, 0)
    data = _numbered(10)
    assert _run_link(link, data) == [d for d in data for _ in (0, 1)]
    assert link.counters.duplicated == 10


def test_reorder_one_swaps_pairs() -> None:
    # Every datagram that is not overtaking is held; the next one overtakes it.
    link = FaultPlan(UdpFaults(reorder=1.0), seed=1).link(Direction.TO_SERVER, 0)
    data = _numbered(7)
    assert _run_link(link, data) == [data[i] for i in (1, 0, 3, 2, 5, 4, 6)]
    assert link.counters.reordered == 3


def test_a_held_datagram_followed_by_a_lost_one_goes_out_in_order() -> None:
    link = FaultyLink(UdpFaults(loss=0.5, reorder=1.0), _ScriptedRandom([0.9, 0, 0, 0, 0, 0.1, 0, 0, 0, 0]))
    assert link.push(b"a").held
    fate = link.push(b"b")
    assert fate.lost
    assert [d.data for d in fate.sends] == [b"a"]
    assert link.counters.reordered == 0
    assert not link.holding


class _ScriptedRandom(random.Random):
    """A stand-in for random.Random that returns the draws it is given (to pick each fate by hand)."""

    def __init__(self, draws: list[float]) -> None:
        super().__init__()
        self.draws = iter(draws)

    def random(self) -> float:
        return next(self.draws)


def test_jitter_stays_within_bounds() -> None:
    link = FaultPlan(UdpFaults(delay=0.05, jitter=0.02), seed=3).link(Direction.TO_CLIENT, 0)
    delays = [d.delay for datagram in _numbered(500) for d in link.push(datagram).sends]
    assert all(0.03 <= d <= 0.07 for d in delays)
    assert len(set(delays)) > 400  # drawn, not constant
    wide = FaultPlan(UdpFaults(delay=0.01, jitter=0.05), seed=3).link(Direction.TO_CLIENT, 0)
    assert min(d.delay for datagram in _numbered(200) for d in wide.push(datagram).sends) == 0.0


def test_same_seed_same_fates_and_streams_are_independent() -> None:
    faults = UdpFaults(loss=0.3, dup=0.2, reorder=0.2, delay=0.01, jitter=0.01)
    data = _numbered(300)

    def fates(seed: int, direction: Direction, flow: int) -> list[tuple[bytes, float]]:
        link = FaultPlan(faults, seed).link(direction, flow)
        return [(d.data, d.delay) for datagram in data for d in link.push(datagram).sends]

    assert fates(42, Direction.TO_SERVER, 0) == fates(42, Direction.TO_SERVER, 0)
    assert fates(42, Direction.TO_SERVER, 0) != fates(43, Direction.TO_SERVER, 0)
    assert fates(42, Direction.TO_SERVER, 0) != fates(42, Direction.TO_CLIENT, 0)
    assert fates(42, Direction.TO_SERVER, 0) != fates(42, Direction.TO_SERVER, 1)


def test_fate_does_not_depend_on_content() -> None:
    faults = UdpFaults(loss=0.3, dup=0.3, reorder=0.3)
    a = FaultPlan(faults, 9).link(Direction.TO_SERVER, 0)
    b = FaultPlan(faults, 9).link(Direction.TO_SERVER, 0)
    for i in range(200):
        fa, fb = a.push(b"x" * i), b.push(b"other")
        assert (fa.lost, fa.duplicated, fa.held, fa.overtook) == (
            fb.lost,
            fb.duplicated,
            fb.held,
            fb.overtook,
        )


probabilities = st.floats(min_value=0, max_value=1)


@settings(max_examples=200, deadline=None)
@given(
    loss=probabilities,
    dup=probabilities,
    reorder=probabilities,
    seed=st.integers(min_value=0, max_value=2**32),
    n=st.integers(min_value=0, max_value=60),
)
def test_counters_add_up(loss: float, dup: float, reorder: float, seed: int, n: int) -> None:
    link = FaultPlan(UdpFaults(loss, dup, reorder), seed).link(Direction.TO_SERVER, 0)
    data = _numbered(n)
    out = _run_link(link, data)
    c = link.counters
    assert c.received == n
    assert c.forwarded + c.dropped == n
    assert len(out) == c.forwarded + c.duplicated
    assert c.reordered <= c.forwarded
    # Nothing is invented, nothing is sent more than twice.
    assert all(out.count(d) <= 2 for d in data)
    assert set(out) <= set(data)
    if loss == 0 and dup == 0:
        assert sorted(out) == sorted(data)
    if reorder == 0:
        assert out == sorted(out, key=data.index)


def test_parse_probability() -> None:
    assert parse_probability("10%") == pytest.approx(0.1)
    assert parse_probability("0.25") == 0.25
    assert parse_probability(" 100 % ") == 1.0
    assert parse_probability("0") == 0.0
    for bad in ("", "x", "-0.1", "1.5", "150%", "nan", "inf"):
        with pytest.raises(ConfigError):
            parse_probability(bad)


def test_parse_delay() -> None:
    assert parse_delay("50") == (0.05, 0.0)
    assert parse_delay("50ms") == (0.05, 0.0)
    assert parse_delay("50±10") == (0.05, 0.01)
    assert parse_delay("50+-10") == (0.05, 0.01)
    assert parse_delay("1s±20ms") == (1.0, 0.02)
    for bad in ("", "±10", "50±", "fast", "-5", "50±10±3"):
        with pytest.raises(ConfigError):
            parse_delay(bad)


def test_parse_bandwidth() -> None:
    assert parse_bandwidth("50000") == 50000
    assert parse_bandwidth("64K") == 65536
    assert parse_bandwidth("1MiB/s") == 1024 * 1024
    assert parse_bandwidth("8Mbit/s") == 1_000_000
    for bad in ("", "fast", "0", "-1K"):
        with pytest.raises(ConfigError):
            parse_bandwidth(bad)


def test_fault_settings_are_checked() -> None:
    with pytest.raises(ConfigError):
        UdpFaults(loss=1.5)
    with pytest.raises(ConfigError):
        UdpFaults(delay=-1)
    with pytest.raises(ConfigError):
        TcpFaults(slice=-1)


# --- UDP on real sockets ----------------------------------------------------------------------------


@dataclass
class Endpoint:
    """A UDP socket on loopback that keeps what it receives."""

    transport: asyncio.DatagramTransport
    received: list[tuple[bytes, Address]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def address(self) -> Address:
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    @property
    def payloads(self) -> list[bytes]:
        return [data for data, _addr in self.received]


class _Recorder(asyncio.DatagramProtocol):
    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.endpoint: Endpoint | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's own datagram transport does not subclass DatagramTransport (3.11), hence the cast.
        self.endpoint = Endpoint(cast(asyncio.DatagramTransport, transport))

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        assert self.endpoint is not None
        self.endpoint.received.append((data, (addr[0], addr[1])))
        self.endpoint.arrived.set()
        if self.answer:
            answer = UPPER.answer_datagram(data)
            assert answer is not None
            self.endpoint.transport.sendto(answer, addr)


async def open_endpoint(answer: bool = False, host: str = "127.0.0.1") -> Endpoint:
    """`answer`: a tiny upper-case UDP server built on the core service; otherwise a client."""
    loop = asyncio.get_running_loop()
    _transport, protocol = await loop.create_datagram_endpoint(
        lambda: _Recorder(answer), local_addr=(host, 0)
    )
    assert protocol.endpoint is not None
    return protocol.endpoint


async def wait_until(condition: Callable[[], bool], limit: float = 10.0) -> None:
    """Let the loop run until `condition` holds; fail (not hang) after `limit` seconds."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.002)


async def wait_for_len(items: list[Any], n: int) -> None:
    """Let the loop run until `items` holds `n` things."""
    await wait_until(lambda: len(items) == n)


def run_test(main: Coroutine[Any, Any, None], loop_name: str, limit: float = 15.0) -> None:
    """Run a test's coroutine on the loop named, with a deadline inside the loop as well.

    pytest-timeout's SIGALRM cannot interrupt uvloop while it waits (its handler never gets to raise),
    so a hung test would hang the whole run; asyncio.wait_for works on both loops.
    """
    run_loop(asyncio.wait_for(main, limit), loop_name)


@pytest.fixture(params=available_loops())
def loop_name(request: pytest.FixtureRequest) -> str:
    """Every socket test runs on each event loop installed: asyncio, and uvloop when present."""
    name: str = request.param
    return name


@pytest.mark.timeout(20)
def test_udp_loss_one_drops_everything(loop_name: str) -> None:
    async def main() -> None:
        server = await open_endpoint(answer=True)
        async with open_udp_proxy(server.address, UdpFaults(loss=1.0), seed=5) as proxy:
            client = await open_endpoint()
            for i in range(50):
                client.transport.sendto(b"lost %d" % i, proxy.address)
            await wait_until(lambda: proxy.counters(Direction.TO_SERVER).received == 50)
            sent = proxy.counters(Direction.TO_SERVER)
            assert (sent.dropped, sent.forwarded) == (50, 0)
            stats = proxy.stats()
        assert server.received == []
        assert client.received == []
        assert stats["to_server"]["dropped"] == 50
        assert stats["to_client"]["received"] == 0
        assert stats["clients"] == 1
        client.transport.close()
        server.transport.close()

    run_test(main(), loop_name)


# A socket's default receive buffer holds about 250 small datagrams; tests send in bursts well below
# that, so that only the proxy loses datagrams, never the kernel.
BURST = 50


@pytest.mark.timeout(20)
def test_udp_no_faults_forward_everything_in_order(loop_name: str) -> None:
    async def main() -> None:
        server = await open_endpoint(answer=True)
        async with open_udp_proxy(server.address, UdpFaults(loss=0.0)) as proxy:
            client = await open_endpoint()
            requests = [b"request %d" % i for i in range(300)]
            for start in range(0, len(requests), BURST):
                for request in requests[start : start + BURST]:
                    client.transport.sendto(request, proxy.address)
                await wait_for_len(client.received, start + BURST)
            assert client.payloads == [r.upper() for r in requests]
            # Answers come back from the proxy's address, as if it were the server.
            assert {addr for _data, addr in client.received} == {proxy.address}
            for direction in Direction:
                c = proxy.counters(direction)
                assert (c.received, c.forwarded, c.dropped) == (300, 300, 0)
        client.transport.close()
        server.transport.close()

    run_test(main(), loop_name)


@pytest.mark.timeout(20)
def test_udp_same_seed_same_fates_as_predicted(loop_name: str) -> None:
    faults = UdpFaults(loss=0.3, dup=0.2, reorder=0.2)
    requests = [b"seeded %d" % i for i in range(150)]

    async def once(seed: int) -> tuple[list[bytes], list[bytes]]:
        server = await open_endpoint(answer=True)
        # A long hold: no pause of a loaded machine can release a held datagram before the next one.
        async with open_udp_proxy(server.address, faults, seed=seed, reorder_hold=1.0) as proxy:
            client = await open_endpoint()
            # The fates the seed promises, computed apart from the proxy, burst by burst.
            to_server = proxy.plan.link(Direction.TO_SERVER, 0)
            to_client = proxy.plan.link(Direction.TO_CLIENT, 0)
            at_server: list[bytes] = []
            at_client: list[bytes] = []
            for start in range(0, len(requests), BURST):
                burst = requests[start : start + BURST]
                for request in burst:
                    client.transport.sendto(request, proxy.address)
                more = [d.data for request in burst for d in to_server.push(request).sends]
                at_server += more
                await wait_for_len(server.received, len(at_server))
                at_client += [d.data for answer in more for d in to_client.push(answer.upper()).sends]
                await wait_for_len(client.received, len(at_client))
            # A datagram still held is let go by the timer. (What becomes of its answer races with
            # the timer of an answer held on the way back, so the client's tail is not predicted.)
            at_server += [d.data for d in to_server.release_held()]
            await wait_until(lambda: len(server.received) == len(at_server))
            assert proxy.counters(Direction.TO_SERVER).reordered == to_server.counters.reordered
        client.transport.close()
        server.transport.close()
        assert server.payloads == at_server
        assert client.payloads[: len(at_client)] == at_client
        return server.payloads, at_client

    async def main() -> None:
        first = await once(2024)
        assert await once(2024) == first
        assert await once(2025) != first

    run_test(main(), loop_name)


@pytest.mark.timeout(20)
def test_udp_dup_and_reorder_are_counted_each_way(loop_name: str) -> None:
    async def main() -> None:
        server = await open_endpoint(answer=True)
        events: list[ProxyEvent] = []
        faults = UdpFaults(dup=1.0)
        async with open_udp_proxy(server.address, faults, seed=1, on_event=events.append) as proxy:
            client = await open_endpoint()
            for i in range(10):
                client.transport.sendto(b"twice %d" % i, proxy.address)
            # Each request twice at the server, each of its 20 answers twice at the client.
            await wait_until(lambda: len(client.received) == 40)
            assert proxy.counters(Direction.TO_SERVER).duplicated == 10
            assert proxy.counters(Direction.TO_CLIENT).duplicated == 20
        client.transport.close()
        assert server.payloads == [b"twice %d" % i for i in range(10) for _ in (0, 1)]
        assert sum(1 for e in events if e.kind == "dup") == 30

        server.received.clear()
        async with open_udp_proxy(server.address, UdpFaults(reorder=1.0), seed=1, reorder_hold=1.0) as proxy:
            client = await open_endpoint()
            for i in range(10):
                client.transport.sendto(b"%d" % i, proxy.address)
            await wait_until(lambda: len(server.received) == 10)
            assert server.payloads == [b"%d" % i for i in (1, 0, 3, 2, 5, 4, 7, 6, 9, 8)]
            await wait_until(lambda: len(client.received) == 10)
            # The answers came in swapped; swapped again on the way back, they arrive in order.
            assert client.payloads == [b"%d" % i for i in range(10)]
            assert proxy.counters(Direction.TO_SERVER).reordered == 5
            assert proxy.counters(Direction.TO_CLIENT).reordered == 5
        client.transport.close()
        server.transport.close()

    run_test(main(), loop_name)


@pytest.mark.timeout(20)
def test_udp_delay_keeps_order_without_jitter_and_counts(loop_name: str) -> None:
    async def main() -> None:
        server = await open_endpoint(answer=True)
        async with open_udp_proxy(server.address, UdpFaults(delay=0.02)) as proxy:
            client = await open_endpoint()
            requests = [b"late %d" % i for i in range(100)]
            for request in requests:
                client.transport.sendto(request, proxy.address)
            await wait_until(lambda: len(client.received) == 100)
            assert client.payloads == [r.upper() for r in requests]
            assert proxy.counters(Direction.TO_SERVER).delayed == 100
            assert proxy.counters(Direction.TO_CLIENT).delayed == 100
        client.transport.close()
        async with open_udp_proxy(server.address, UdpFaults(delay=0.02, jitter=0.02), seed=8) as proxy:
            client = await open_endpoint()
            for request in requests:
                client.transport.sendto(request, proxy.address)
            await wait_until(lambda: len(client.received) == 100)
            assert sorted(client.payloads) == sorted(r.upper() for r in requests)
        client.transport.close()
        server.transport.close()

    run_test(main(), loop_name)


@pytest.mark.timeout(20)
def test_udp_queue_is_bounded(loop_name: str) -> None:
    async def main() -> None:
        server = await open_endpoint()
        async with open_udp_proxy(server.address, UdpFaults(delay=0.05), max_queued=10) as proxy:
            client = await open_endpoint()
            for i in range(60):
                client.transport.sendto(b"queued %d" % i, proxy.address)
            await wait_until(lambda: proxy.counters(Direction.TO_SERVER).received == 60)
            c = proxy.counters(Direction.TO_SERVER)
            assert c.overflow >= 50  # at most 10 wait at once
            await wait_until(lambda: len(server.received) == 60 - c.overflow)
            assert proxy.budget.used == 0
        client.transport.close()
        server.transport.close()

    run_test(main(), loop_name)


@pytest.mark.timeout(20)
def test_udp_each_client_gets_its_own_answers_and_flows_are_bounded(loop_name: str) -> None:
    async def main() -> None:
        server = await open_endpoint(answer=True)
        async with open_udp_proxy(server.address, max_flows=2) as proxy:
            clients = [await open_endpoint() for _ in range(3)]
            for i, client in enumerate(clients):
                for j in range(20):
                    client.transport.sendto(b"client %d line %d" % (i, j), proxy.address)
                await wait_for_len(client.received, 20)
            for i, client in enumerate(clients):
                assert client.payloads == [b"CLIENT %d LINE %d" % (i, j) for j in range(20)]
            # Each client reached the server from its own upstream socket.
            assert len({addr for _data, addr in server.received}) == 3
            assert len(proxy.flows) <= 2
            assert proxy.stats()["clients"] == 3
            assert proxy.counters(Direction.TO_CLIENT).forwarded == 60
            for client in clients:
                client.transport.close()
        server.transport.close()

    run_test(main(), loop_name)


@pytest.mark.timeout(20)
def test_udp_server_down_is_counted_not_fatal(loop_name: str) -> None:
    async def main() -> None:
        # A port nobody listens on: the kernel answers with ICMP port unreachable.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            closed_port = probe.getsockname()[1]
        events: list[ProxyEvent] = []
        async with open_udp_proxy(("127.0.0.1", closed_port), on_event=events.append) as proxy:
            client = await open_endpoint()
            for i in range(1, 4):
                client.transport.sendto(b"anyone? %d" % i, proxy.address)
                await wait_until(partial(lambda n: proxy.unreachable_errors >= n, i))
            assert proxy.stats()["unreachable"] >= 3
            assert proxy.counters(Direction.TO_SERVER).forwarded == 3
            client.transport.close()
        assert any(e.kind == "unreachable" for e in events)

    run_test(main(), loop_name)


# --- TCP on real sockets ----------------------------------------------------------------------------


class _UpperServer(asyncio.Protocol):
    """A tiny TCP upper server on the core session; records how it ended."""

    ended: list[BaseException | None]

    def __init__(self, ended: list[BaseException | None]) -> None:
        self.ended = ended
        self.session = StreamSession(UPPER)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(self.session.receive_data(data))

    def eof_received(self) -> bool:
        assert self.transport is not None
        self.transport.write(self.session.end_of_input())
        self.transport.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended.append(exc)


async def open_upper_server() -> tuple[asyncio.AbstractServer, Address, list[BaseException | None]]:
    ended: list[BaseException | None] = []
    server = await asyncio.get_running_loop().create_server(lambda: _UpperServer(ended), "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    return server, (host, port), ended


async def exchange(address: Address, payload: bytes) -> bytes:
    """Send everything, half-close, read until the server closes."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(payload)
    await writer.drain()
    writer.write_eof()
    answer = await reader.read()
    writer.close()
    return answer


def _lines(n: int) -> bytes:
    return b"".join(b"line %d of the stream, ol\xc3\xa1\n" % i for i in range(n))


@pytest.mark.timeout(20)
def test_tcp_slice_one_delivers_everything_in_order(loop_name: str) -> None:
    async def main() -> None:
        server, address, ended = await open_upper_server()
        payload = _lines(200)
        async with open_tcp_proxy(address, TcpFaults(slice=1)) as proxy:
            answer = await exchange(proxy.address, payload)
            await wait_until(lambda: proxy.stats()["open"] == 0)
            stats = proxy.stats()
        assert answer == UPPER.answer_block(payload)
        # One write per byte, each way.
        for key in ("to_server", "to_client"):
            assert stats[key]["bytes"] == len(payload)
            assert stats[key]["writes"] == len(payload)
        assert ended == [None]
        server.close()

    run_test(main(), loop_name)


@pytest.mark.timeout(20)
def test_tcp_delay_and_bandwidth_keep_every_byte_in_order(loop_name: str) -> None:
    async def main() -> None:
        server, address, _ended = await open_upper_server()
        payload = _lines(300)
        faults = TcpFaults(delay=0.02, jitter=0.01, bandwidth=400_000, slice=100)
        async with open_tcp_proxy(address, faults, seed=3) as proxy:
            answers = await asyncio.gather(*(exchange(proxy.address, payload) for _ in range(3)))
            stats = proxy.stats()
        assert answers == [UPPER.answer_block(payload)] * 3
        assert stats["connections"] == 3
        assert stats["to_server"]["delayed"] >= 3
        assert stats["to_server"]["writes"] >= 3 * len(payload) // 100
        server.close()

    run_test(main(), loop_name)


@pytest.mark.timeout(20)
def test_tcp_reset_after_closes_with_a_reset(loop_name: str) -> None:
    async def main() -> None:
        server, address, ended = await open_upper_server()
        events: list[ProxyEvent] = []
        async with open_tcp_proxy(address, TcpFaults(reset_after=1000), on_event=events.append) as proxy:
            reader, writer = await asyncio.open_connection(*proxy.address)
            received = bytearray()

            async def talk() -> None:
                for i in range(1000):
                    writer.write(b"line %d\n" % i)
                    await writer.drain()
                    received.extend(await reader.read(65536))

            with pytest.raises(ConnectionResetError):
                await talk()
            writer.close()
            await wait_until(lambda: bool(ended))
            stats = proxy.stats()
        # The bytes before the limit arrived, in order; nothing after it did.
        assert stats["resets"] == 1
        assert stats["to_server"]["bytes"] + stats["to_client"]["bytes"] == 1000
        assert UPPER.answer_block(b"".join(b"line %d\n" % i for i in range(1000))).startswith(received)
        assert isinstance(ended[0], ConnectionResetError)
        assert [e.kind for e in events][-1] == "reset"
        server.close()

    run_test(main(), loop_name)


@pytest.mark.timeout(20)
def test_tcp_server_reset_is_passed_on_and_refusal_too(loop_name: str) -> None:
    class Rude(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            transport.abort()  # type: ignore[attr-defined]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        rude = await loop.create_server(Rude, "127.0.0.1", 0)
        host, port = rude.sockets[0].getsockname()[:2]
        async with open_tcp_proxy((host, port)) as proxy:
            reader, writer = await asyncio.open_connection(*proxy.address)
            with pytest.raises(ConnectionResetError):
                await reader.read()
            writer.close()
            assert proxy.stats()["resets_forwarded"] == 1
        rude.close()
        # A bound socket that does not listen refuses connections, and stays ours for the test.
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            async with open_tcp_proxy(closed.getsockname()) as proxy:
                reader, writer = await asyncio.open_connection(*proxy.address)
                with pytest.raises(ConnectionResetError):
                    await reader.read()
                writer.close()
                assert proxy.stats()["refused"] == 1

    run_test(main(), loop_name)


@pytest.mark.timeout(20)
def test_tcp_server_that_speaks_first(loop_name: str) -> None:
    # The greeting may arrive before the proxy has finished connecting: it must wait, not vanish.
    class Greeter(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            cast(asyncio.Transport, transport).write(b"220 hello\n")
            cast(asyncio.Transport, transport).close()

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Greeter, "127.0.0.1", 0)
        host, port = server.sockets[0].getsockname()[:2]
        async with open_tcp_proxy((host, port), TcpFaults(delay=0.01)) as proxy:
            for _ in range(20):
                reader, writer = await asyncio.open_connection(*proxy.address)
                assert await reader.read() == b"220 hello\n"
                writer.close()
            assert proxy.stats()["to_client"]["bytes"] == 20 * len(b"220 hello\n")
        server.close()

    run_test(main(), loop_name)


@needs_ipv6
@pytest.mark.timeout(20)
def test_ipv6_both_ways(loop_name: str) -> None:
    async def main() -> None:
        server = await open_endpoint(answer=True, host="::1")
        async with open_udp_proxy(server.address, listen=("::1", 0)) as proxy:
            assert proxy.address[0] == "::1"
            client = await open_endpoint(host="::1")
            client.transport.sendto(b"over ipv6", proxy.address)
            await wait_for_len(client.received, 1)
            assert client.payloads == [b"OVER IPV6"]
            client.transport.close()
        server.transport.close()
        ended: list[BaseException | None] = []
        loop = asyncio.get_running_loop()
        tcp_server = await loop.create_server(lambda: _UpperServer(ended), "::1", 0)
        host, port = tcp_server.sockets[0].getsockname()[:2]
        async with open_tcp_proxy((host, port), TcpFaults(slice=2), listen=("::1", 0)) as tcp_proxy:
            assert await exchange(tcp_proxy.address, b"ol\xc3\xa1\n") == "OLÁ\n".encode()
        tcp_server.close()

    run_test(main(), loop_name)


# --- the command, as a user runs it -----------------------------------------------------------------


@dataclass
class ProxyProcess:
    proc: subprocess.Popen[bytes]
    port: int
    lines: list[str]

    def read_stderr_until(self, predicate: Callable[[list[str]], bool], limit: float = 10.0) -> list[str]:
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        buf = b""
        lines: list[str] = []
        deadline = time.monotonic() + limit
        while not predicate(lines):
            left = deadline - time.monotonic()
            assert left > 0, f"stderr so far: {lines}"
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                assert chunk, f"the proxy closed stderr: {lines}"
                buf += chunk
                *done, buf = buf.split(b"\n")
                lines += [line.decode() for line in done]
        return lines

    def stop(self) -> tuple[int, str]:
        """Ctrl-C, then the exit code and the rest of standard output."""
        self.proc.send_signal(signal.SIGINT)
        try:
            out, _err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _err = self.proc.communicate(timeout=5)
        return self.proc.returncode, out.decode()


@contextmanager
def proxy_process(args: list[str]) -> Iterator[ProxyProcess]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "socketlab", "proxy", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=cli_env(),
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        buf = b""
        deadline = time.monotonic() + 15
        while len(lines) < 2:  # "udp proxy listening on ...", then what it relays
            assert time.monotonic() < deadline, f"proxy did not start: {lines}"
            assert proc.poll() is None, f"proxy exited: {lines}"
            # Raw reads: a buffered readline could swallow the second line where select cannot see it.
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                buf += os.read(proc.stdout.fileno(), 65536)
                *done, buf = buf.split(b"\n")
                lines += [line.decode() for line in done]
        assert " proxy listening on 127.0.0.1:" in lines[0]
        yield ProxyProcess(proc, int(lines[0].rsplit(":", 1)[1]), lines)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.timeout(60)
def test_udp_client_through_ten_percent_loss_each_way_gets_answers() -> None:
    requests = [b"request %d" % i for i in range(1000)]
    with (
        start_serve(["udp", "--host", "127.0.0.1", "--port", "0"]) as server,
        proxy_process(
            [
                "udp",
                "--listen",
                "0",
                "--to",
                f"127.0.0.1:{server.port('udp')}",
                "--loss",
                "10%",
                "--seed",
                "7",
            ]
        ) as proxy,
    ):
        # A short timeout keeps the test quick; a late answer is still taken as the answer.
        results = list(exchange_udp("127.0.0.1", proxy.port, requests, timeout=0.02, retries=8))
        code, out = proxy.stop()
    answered = [r for r in results if not r.lost]
    assert len(answered) >= 0.999 * len(requests)
    assert all(r.answer == r.request.upper() for r in answered)
    retried = sum(1 for r in results if r.attempts > 1)
    assert retried > 50  # the loss was real: about one request in five needs a second try
    assert code == 0
    assert "client->server" in out
    assert "dropped" in out


@pytest.mark.timeout(30)
def test_cli_verbose_loss_and_summary() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as target:
        target.bind(("127.0.0.1", 0))
        args = ["udp", "--listen", "0", "--to", f"127.0.0.1:{target.getsockname()[1]}", "--loss", "1", "-v"]
        with proxy_process(args) as proxy, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            assert "loss 100%" in proxy.lines[1]
            for i in range(5):
                client.sendto(b"hello %d\n" % i, ("127.0.0.1", proxy.port))
            lines = proxy.read_stderr_until(lambda lines: sum(" drop " in line for line in lines) == 5)
            code, out = proxy.stop()
    drops = [line for line in lines if " drop " in line]
    assert "client->server drop #1 'hello 0\\n' 8 bytes" in drops[0]
    assert code == 0
    table = {line.split()[0]: line.split()[1:] for line in out.splitlines() if "->server" in line}
    # received forwarded dropped ...
    assert table["client->server"][:3] == ["5", "0", "5"]


@pytest.mark.timeout(30)
def test_cli_tcp_json_summary() -> None:
    with start_serve(["tcp", "--host", "127.0.0.1", "--port", "0"]) as server:
        args = ["tcp", "--listen", "0", "--to", f"127.0.0.1:{server.port('tcp')}", "--slice", "3", "--json"]
        with proxy_process(args) as proxy:
            assert "3-byte slices" in proxy.lines[1]
            payload = _lines(50)
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
            code, out = proxy.stop()
    assert answer == UPPER.answer_block(payload)
    assert code == 0
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["proto"] == "tcp"
    assert stats["connections"] == 1
    assert stats["to_server"]["bytes"] == len(payload)
    assert stats["to_server"]["writes"] == -(-len(payload) // 3)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "args",
    [
        ["udp", "--listen", "0", "--to", "127.0.0.1:9", "--loss", "150%"],
        ["udp", "--listen", "0", "--to", "127.0.0.1:9", "--delay", "soon"],
        ["udp", "--listen", "70000", "--to", "127.0.0.1:9"],
        ["udp", "--listen", "0", "--to", "::1:9"],
        ["tcp", "--listen", "0", "--to", "127.0.0.1:9", "--loss", "0.1"],
        ["tcp", "--listen", "0", "--to", "127.0.0.1:9", "--bandwidth", "fast"],
    ],
)
def test_cli_usage_errors(args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "socketlab", "proxy", *args],
        check=False,
        capture_output=True,
        env=cli_env(),
        timeout=20,
    )
    assert result.returncode == 2
    assert result.stderr


@pytest.mark.timeout(30)
def test_cli_port_in_use_fails_cleanly() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "socketlab", "proxy", "udp", "--listen", str(port), "--to", "127.0.0.1:9"],
            check=False,
            capture_output=True,
            env=cli_env(),
            timeout=20,
        )
    assert result.returncode == 1
    assert b"cannot listen on 127.0.0.1:%d" % port in result.stderr
    assert b"Traceback" not in result.stderr
