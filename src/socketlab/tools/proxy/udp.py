"""The UDP proxy: relays datagrams between clients and one server, losing, duplicating, reordering
and delaying them as asked, each way.

Every client gets its own upstream socket, connected to the server, so each answer goes back to the
client that asked, as through a NAT. The decisions come from `faults.FaultyLink`; this module only
moves datagrams and keeps time. Memory is bounded: at most `max_flows` clients are remembered (the
idle and then the oldest are forgotten), and datagrams waiting out a delay are capped in number and
bytes (beyond that they are dropped and counted as overflow, as a router's full queue would).
"""

from __future__ import annotations

import asyncio
import heapq
import socket
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

from socketlab.tools.proxy.common import (
    Address,
    EventCallback,
    ProxyEvent,
    bind_error,
    resolve_target,
    short_address,
)
from socketlab.tools.proxy.faults import Departure, Direction, Fate, FaultPlan, LinkCounters, UdpFaults

# A client silent this long is forgotten and its upstream socket closed. RFC 4787 (REQ-5) asks NATs to
# keep a UDP mapping at least two minutes; a proxy standing in for the network should do no worse.
FLOW_IDLE_TIMEOUT = 120.0  # seconds
MAX_FLOWS = 1024  # clients remembered at once: one socket each
# Datagrams waiting out a delay, per direction of one client, and in bytes for the whole proxy.
MAX_QUEUED = 1024
MAX_QUEUED_BYTES = 16 * 1024 * 1024
# How long a datagram held back for reordering waits for another to overtake it. Long enough for a
# client that sends in bursts; short enough that a lone request is merely late.
REORDER_HOLD = 0.1  # seconds


class _Budget:
    """Bytes waiting in every delay line of the proxy, against one limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give_back(self, n: int) -> None:
        self.used -= n


class _DelayLine:
    """Sends each datagram when its delay is over; ties go out in the order they came."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, send: Callable[[bytes], None], budget: _Budget, capacity: int
    ) -> None:
        self._loop = loop
        self._send = send
        self._budget = budget
        self._capacity = capacity
        self._heap: list[tuple[float, int, bytes]] = []
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def add(self, departures: Iterable[Departure]) -> int:
        """Send or schedule each departure; return how many were dropped for lack of room."""
        overflow = 0
        now = self._loop.time()
        for d in departures:
            if d.delay <= 0:
                self._send(d.data)
                continue
            if len(self._heap) >= self._capacity or not self._budget.take(len(d.data)):
                overflow += 1
                continue
            self._seq += 1
            heapq.heappush(self._heap, (now + d.delay, self._seq, d.data))
        self._arm()
        return overflow

    def _arm(self) -> None:
        if not self._heap:
            return
        due = self._heap[0][0]
        if self._timer is not None:
            if self._timer_at <= due:
                return
            self._timer.cancel()
        self._timer = self._loop.call_at(due, self._fire)
        self._timer_at = due

    def _fire(self) -> None:
        self._timer = None
        # The loop may run a timer up to its clock resolution early; a millisecond covers that.
        now = self._loop.time() + 0.001
        heap = self._heap
        while heap and heap[0][0] <= now:
            _due, _seq, data = heapq.heappop(heap)
            self._budget.give_back(len(data))
            self._send(data)
        self._arm()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for _due, _seq, data in self._heap:
            self._budget.give_back(len(data))
        self._heap.clear()


class _Flow:
    """One client: its upstream socket and the faulty links and delay lines of both directions."""

    def __init__(self, proxy: UdpProxy, client: Address, index: int) -> None:
        self.proxy = proxy
        self.client = client
        self.index = index
        self.last_seen = proxy.loop.time()
        self.upstream: asyncio.DatagramTransport | None = None
        self.waiting: list[bytes] = []
        self.closed = False
        self.links = {d: proxy.plan.link(d, index) for d in Direction}
        senders = {Direction.TO_SERVER: self._send_upstream, Direction.TO_CLIENT: self._send_to_client}
        self.lines = {
            d: _DelayLine(proxy.loop, senders[d], proxy.budget, proxy.max_queued) for d in Direction
        }
        self.hold_timers: dict[Direction, asyncio.TimerHandle | None] = dict.fromkeys(Direction)

    def _send_upstream(self, data: bytes) -> None:
        # Before the upstream socket is ready (a loop iteration or two), datagrams wait, within the
        # same bounds as delayed ones.
        if self.upstream is not None:
            self.upstream.sendto(data)
        elif len(self.waiting) < self.proxy.max_queued and self.proxy.budget.take(len(data)):
            self.waiting.append(data)
        else:
            self.proxy.count_overflow(self, Direction.TO_SERVER, data)

    def _send_to_client(self, data: bytes) -> None:
        listener = self.proxy.listener
        if listener is not None:
            listener.sendto(data, self.client)

    def upstream_ready(self, transport: asyncio.DatagramTransport) -> None:
        if self.closed:
            transport.close()
            return
        self.upstream = transport
        waiting, self.waiting = self.waiting, []
        for data in waiting:
            self.proxy.budget.give_back(len(data))
            transport.sendto(data)

    def close(self) -> None:
        self.closed = True
        for line in self.lines.values():
            line.close()
        for timer in self.hold_timers.values():
            if timer is not None:
                timer.cancel()
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None
        for data in self.waiting:
            self.proxy.budget.give_back(len(data))
        self.waiting.clear()


class _ListenProtocol(asyncio.DatagramProtocol):
    def __init__(self, proxy: UdpProxy) -> None:
        self.proxy = proxy

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.proxy.from_client(data, short_address(addr))

    def error_received(self, exc: Exception) -> None:
        # An ICMP error about an earlier answer to a client that has gone: nothing to do but go on.
        pass


class _UpstreamProtocol(asyncio.DatagramProtocol):
    def __init__(self, flow: _Flow) -> None:
        self.flow = flow

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.flow.proxy.from_server(self.flow, data)

    def error_received(self, exc: Exception) -> None:
        # On a connected UDP socket, the server's port being closed comes back as ECONNREFUSED.
        self.flow.proxy.unreachable(self.flow, exc)


class UdpProxy:
    """A running UDP proxy; made by `open_udp_proxy`, which also stops it."""

    def __init__(
        self,
        target: Address,
        faults: UdpFaults,
        *,
        seed: int | None = None,
        on_event: EventCallback | None = None,
        max_flows: int = MAX_FLOWS,
        flow_idle_timeout: float = FLOW_IDLE_TIMEOUT,
        max_queued: int = MAX_QUEUED,
        max_queued_bytes: int = MAX_QUEUED_BYTES,
        reorder_hold: float = REORDER_HOLD,
    ) -> None:
        self.target = target
        self.faults = faults
        self.plan = FaultPlan(faults) if seed is None else FaultPlan(faults, seed)
        self.on_event = on_event
        self.max_flows = max_flows
        self.flow_idle_timeout = flow_idle_timeout
        self.max_queued = max_queued
        self.budget = _Budget(max_queued_bytes)
        self.reorder_hold = reorder_hold
        self.address: Address = ("", 0)
        self.listener: asyncio.DatagramTransport | None = None
        self.flows: OrderedDict[Address, _Flow] = OrderedDict()
        self.flows_seen = 0
        self.unreachable_errors = 0
        self._retired = {d: LinkCounters() for d in Direction}
        self._target_family: int = socket.AF_INET
        self._target_addr: Address = target
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def seed(self) -> int:
        return self.plan.seed

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "the proxy is not running"
        return self._loop

    async def start(self, host: str, port: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._target_family, self._target_addr = await resolve_target(*self.target, socket.SOCK_DGRAM)
        try:
            transport, _protocol = await self.loop.create_datagram_endpoint(
                lambda: _ListenProtocol(self), local_addr=(host, port)
            )
        except OSError as exc:
            raise bind_error(host, port, exc) from exc
        self.listener = transport
        self.address = short_address(transport.get_extra_info("sockname"))

    async def stop(self) -> None:
        for flow in self.flows.values():
            self._retire(flow)
        self.flows.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.listener is not None:
            self.listener.close()
            self.listener = None

    # --- the two directions ---------------------------------------------------------------------

    def from_client(self, data: bytes, client: Address) -> None:
        flow = self.flows.get(client)
        if flow is None:
            flow = self._new_flow(client)
        else:
            self.flows.move_to_end(client)
        flow.last_seen = self.loop.time()
        self._pass(flow, Direction.TO_SERVER, data)

    def from_server(self, flow: _Flow, data: bytes) -> None:
        if flow.closed:
            return
        flow.last_seen = self.loop.time()
        self._pass(flow, Direction.TO_CLIENT, data)

    def _pass(self, flow: _Flow, direction: Direction, data: bytes) -> None:
        link = flow.links[direction]
        fate = link.push(data)
        overflow = flow.lines[direction].add(fate.sends)
        if overflow:
            link.counters.overflow += overflow
        timer = flow.hold_timers[direction]
        if timer is not None:
            timer.cancel()
            flow.hold_timers[direction] = None
        if link.holding:
            flow.hold_timers[direction] = self.loop.call_later(
                self.reorder_hold, self._release_held, flow, direction
            )
        if self.on_event is not None:
            self._report(flow, direction, data, fate)
            if overflow:
                self._emit("overflow", flow, direction, data)

    def _release_held(self, flow: _Flow, direction: Direction) -> None:
        flow.hold_timers[direction] = None
        if flow.closed:
            return
        sends = flow.links[direction].release_held()
        flow.links[direction].counters.overflow += flow.lines[direction].add(sends)
        if self.on_event is not None and sends:
            self._emit("forward", flow, direction, sends[0].data, delay=sends[0].delay, detail="released")

    def _report(self, flow: _Flow, direction: Direction, data: bytes, fate: Fate) -> None:
        number = flow.links[direction].counters.received
        if fate.lost:
            self._emit("drop", flow, direction, data, number=number)
            for d in fate.sends:  # a datagram held back goes on, in order, since nothing overtook it
                self._emit("forward", flow, direction, d.data, delay=d.delay, detail="released")
        elif fate.held:
            self._emit("hold", flow, direction, data, number=number)
        else:
            sends = fate.sends
            self._emit("forward", flow, direction, data, number=number, delay=sends[0].delay)
            if fate.duplicated:
                self._emit("dup", flow, direction, data, number=number, delay=sends[1].delay)
            if fate.overtook:
                self._emit("reorder", flow, direction, sends[-1].data, delay=sends[-1].delay)

    def _emit(
        self,
        kind: str,
        flow: _Flow,
        direction: Direction | None,
        data: bytes = b"",
        *,
        number: int = 0,
        delay: float = 0.0,
        detail: str = "",
    ) -> None:
        if self.on_event is not None:
            event = ProxyEvent(kind, flow.client, direction, len(data), delay, detail, number, data)
            self.on_event(event)

    def count_overflow(self, flow: _Flow, direction: Direction, data: bytes) -> None:
        flow.links[direction].counters.overflow += 1
        self._emit("overflow", flow, direction, data)

    def unreachable(self, flow: _Flow, exc: Exception) -> None:
        self.unreachable_errors += 1
        self._emit("unreachable", flow, Direction.TO_SERVER, detail=str(exc))

    # --- flows ------------------------------------------------------------------------------------

    def _new_flow(self, client: Address) -> _Flow:
        now = self.loop.time()
        flows = self.flows
        while flows:
            oldest = next(iter(flows.values()))
            if len(flows) < self.max_flows and oldest.last_seen + self.flow_idle_timeout > now:
                break
            del flows[oldest.client]
            self._retire(oldest)
        flow = _Flow(self, client, self.flows_seen)
        self.flows_seen += 1
        flows[client] = flow
        sock = socket.socket(self._target_family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            # Connected: the kernel drops datagrams from anyone but the server, and reports its
            # port being closed (ICMP) as an error on this socket.
            sock.connect(self._target_addr)
        except OSError as exc:
            sock.close()
            self.unreachable(flow, exc)
            return flow
        task = self.loop.create_task(self._open_upstream(flow, sock))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._emit("flow", flow, None)
        return flow

    async def _open_upstream(self, flow: _Flow, sock: socket.socket) -> None:
        try:
            transport, _protocol = await self.loop.create_datagram_endpoint(
                lambda: _UpstreamProtocol(flow), sock=sock
            )
        except OSError as exc:
            sock.close()
            self.unreachable(flow, exc)
            return
        except asyncio.CancelledError:
            sock.close()  # the proxy is stopping
            raise
        flow.upstream_ready(transport)

    def _retire(self, flow: _Flow) -> None:
        for direction, link in flow.links.items():
            self._retired[direction].add(link.counters)
            link.counters = LinkCounters()
        flow.close()
        self._emit("flow-end", flow, None)

    # --- what it did ------------------------------------------------------------------------------

    def counters(self, direction: Direction) -> LinkCounters:
        """Everything done to datagrams going `direction`, over every client so far."""
        total = LinkCounters()
        total.add(self._retired[direction])
        for flow in self.flows.values():
            total.add(flow.links[direction].counters)
        return total

    def stats(self) -> dict[str, Any]:
        """The summary as plain data (for --json and tests)."""
        return {
            "proto": "udp",
            "listen": list(self.address),
            "target": list(self.target),
            "seed": self.seed,
            "faults": {
                "loss": self.faults.loss,
                "dup": self.faults.dup,
                "reorder": self.faults.reorder,
                "delay": self.faults.delay,
                "jitter": self.faults.jitter,
            },
            "clients": self.flows_seen,
            "unreachable": self.unreachable_errors,
            "to_server": self.counters(Direction.TO_SERVER).to_json(),
            "to_client": self.counters(Direction.TO_CLIENT).to_json(),
        }


@asynccontextmanager
async def open_udp_proxy(
    target: Address,
    faults: UdpFaults | None = None,
    *,
    listen: Address = ("127.0.0.1", 0),
    seed: int | None = None,
    on_event: EventCallback | None = None,
    **options: Any,
) -> AsyncIterator[UdpProxy]:
    """A UDP proxy from `listen` to `target`, running while the block runs; `.address` is where it
    listens (port 0: the system picks one). `options` are UdpProxy's limits (max_flows, ...)."""
    proxy = UdpProxy(target, faults or UdpFaults(), seed=seed, on_event=on_event, **options)
    await proxy.start(*listen)
    try:
        yield proxy
    finally:
        await proxy.stop()
