"""The TCP proxy: relays each client's connection to the server, delaying, throttling, slicing or
resetting the byte stream as asked, each way.

TCP keeps its promise through all of it: every byte arrives, in order, or the connection is reset.
What changes is when the bytes come and in how many pieces, which is what a line framer must cope
with. Each connection has one pump task per direction; a direction holds at most `MAX_PIPE_BYTES`
before the proxy stops reading from its sender, so memory stays bounded however fast a peer writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any, cast

from socketlab.tools.proxy.common import (
    Address,
    EventCallback,
    ProxyEvent,
    bind_error,
    resolve_target,
    short_address,
)
from socketlab.tools.proxy.faults import Direction, TcpFaults
from socketlab.transports.binding import format_peer

# Bytes waiting in one direction of one connection before the proxy stops reading from the sender;
# with --delay this also caps throughput at MAX_PIPE_BYTES / delay, as a real path's window would.
MAX_PIPE_BYTES = 1024 * 1024
# With --bandwidth, bytes go out in pieces of at most this many milliseconds' worth, so the rate is
# smooth instead of one big write and a long silence.
PACING_SLICE = 0.01  # seconds
# Before the reset, how long to wait for the bytes already written to reach the peer: a RST makes the
# kernel discard whatever it has not sent yet.
RESET_FLUSH_TIMEOUT = 2.0  # seconds
# A pump gives other connections a turn after this many pieces (slicing a large write into 1-byte
# pieces would otherwise hold the loop for the whole write).
PIECES_PER_TURN = 64

_LINGER_ZERO = struct.pack("ii", 1, 0)


def _socket_of(transport: asyncio.BaseTransport) -> Any:
    return transport.get_extra_info("socket")


def _set_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = _socket_of(transport)
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):  # best effort: a socket already closing refuses options
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def reset(transport: asyncio.Transport) -> None:
    """Close with a RST rather than a FIN: SO_LINGER with a zero timeout, then abort."""
    sock = _socket_of(transport)
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed: there is nothing left to reset
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    transport.abort()


def _unsent_bytes(transport: asyncio.BaseTransport) -> int:
    """Bytes written but not yet acknowledged by the peer (Linux's SIOCOUTQ); 0 where unknown."""
    try:
        import fcntl  # noqa: PLC0415 - Unix only, and only needed for --reset-after
        import termios  # noqa: PLC0415
    except ImportError:
        return 0
    sock = _socket_of(transport)
    if sock is None or not hasattr(termios, "TIOCOUTQ"):
        return 0
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return 0
    value: int = struct.unpack("i", raw)[0]
    return value


class _Side(asyncio.Protocol):
    """One socket of a proxied connection: the client's or the server's."""

    def __init__(self, conn: _Connection | None, name: str) -> None:
        self.conn = conn
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self.lost = False
        self.lost_exc: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports do not subclass asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        _set_nodelay(transport)

    def data_received(self, data: bytes) -> None:
        assert self.conn is not None
        self.conn.pipe_from(self).feed(data)

    def eof_received(self) -> bool:
        assert self.conn is not None
        self.conn.pipe_from(self).feed_eof()
        return True  # keep the other half open: the answer may still be on its way

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.lost_exc = exc
        self.writable.set()  # wake a pump waiting to write here, so it can see the side is gone
        if self.conn is not None:
            self.conn.side_lost(self, exc)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()


class _ClientSide(_Side):
    def __init__(self, proxy: TcpProxy) -> None:
        super().__init__(None, "client")
        self.proxy = proxy

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.pause_reading()  # until the server is connected
        self.conn = _Connection(self.proxy, self)


class _Pipe:
    """One direction of a connection: bytes from `src` wait their turn, then go to `dst`."""

    def __init__(self, conn: _Connection, direction: Direction, src: _Side, dst: _Side) -> None:
        self.conn = conn
        self.direction = direction
        self.src = src
        self.dst = dst
        self.queue: deque[tuple[float, bytes] | None] = deque()  # None: end of input
        self.queued = 0
        self.paused_src = False
        self.eof = False
        self.done = False
        self.wake = asyncio.Event()
        self.last_due = 0.0
        self.next_send = 0.0  # pacing, with --bandwidth
        self.task: asyncio.Task[None] | None = None

    def feed(self, data: bytes) -> None:
        if self.done or self.eof:
            return
        conn = self.conn
        due = conn.loop.time() + conn.draw_delay()
        # Jitter may not reorder a byte stream: a chunk never leaves before the one ahead of it.
        due = max(due, self.last_due)
        self.last_due = due
        self.queue.append((due, data))
        self.queued += len(data)
        if self.queued > MAX_PIPE_BYTES and not self.paused_src and self.src.transport is not None:
            self.src.transport.pause_reading()
            self.paused_src = True
        self.wake.set()

    def feed_eof(self) -> None:
        if not self.eof and not self.done:
            self.eof = True
            self.queue.append(None)
            self.wake.set()

    def start(self) -> None:
        self.task = self.conn.loop.create_task(self._run())

    def stop(self) -> None:
        self.done = True
        if self.task is not None:
            self.task.cancel()

    async def _run(self) -> None:
        try:
            await self._pump()
        finally:
            self.done = True
            self.conn.pipe_finished()

    async def _pump(self) -> None:
        loop = self.conn.loop
        stats = self.conn.proxy.stats_for(self.direction)
        dst = self.dst
        while True:
            while not self.queue:
                self.wake.clear()
                await self.wake.wait()
            item = self.queue.popleft()
            if item is None:
                if dst.transport is not None and not dst.lost and dst.transport.can_write_eof():
                    dst.transport.write_eof()
                    self.conn.emit("eof", self.direction)
                return
            due, data = item
            wait = due - loop.time()
            if wait > 0:
                stats["delayed"] += 1
                await asyncio.sleep(wait)
            for turn, piece in enumerate(self._pieces(data), start=1):
                if self.conn.faults.bandwidth:
                    await self._pace(len(piece))
                await dst.writable.wait()
                if dst.lost or dst.transport is None:
                    return
                allowed = self.conn.allowance(len(piece))
                if allowed:
                    dst.transport.write(piece[:allowed] if allowed < len(piece) else piece)
                    stats["bytes"] += allowed
                    stats["writes"] += 1
                self._consumed(len(piece))
                if self.conn.reset_due:
                    await self.conn.reset_now(self)
                    return
                if turn % PIECES_PER_TURN == 0:
                    await asyncio.sleep(0)

    def _pieces(self, data: bytes) -> Iterator[bytes]:
        faults = self.conn.faults
        size = faults.slice or len(data)
        if faults.bandwidth:
            size = min(size, max(1, int(faults.bandwidth * PACING_SLICE)))
        if size >= len(data):
            yield data
            return
        view = memoryview(data)
        for start in range(0, len(data), size):
            yield bytes(view[start : start + size])

    async def _pace(self, size: int) -> None:
        loop = self.conn.loop
        now = loop.time()
        self.next_send = max(self.next_send, now)
        if self.next_send > now:
            await asyncio.sleep(self.next_send - now)
        self.next_send += size / self.conn.faults.bandwidth

    def _consumed(self, size: int) -> None:
        self.queued -= size
        if self.paused_src and self.queued <= MAX_PIPE_BYTES // 2 and self.src.transport is not None:
            self.paused_src = False
            if not self.src.lost:
                self.src.transport.resume_reading()

    async def flush(self) -> None:
        """Wait (bounded) until what was written here has left the proxy and reached the peer."""
        transport = self.dst.transport
        if transport is None:
            return
        loop = self.conn.loop
        deadline = loop.time() + RESET_FLUSH_TIMEOUT
        while not self.dst.lost and loop.time() < deadline:
            if transport.get_write_buffer_size() == 0 and _unsent_bytes(transport) == 0:
                return
            await asyncio.sleep(0.005)


class _Connection:
    """One client's connection and its connection to the server."""

    def __init__(self, proxy: TcpProxy, client: _ClientSide) -> None:
        self.proxy = proxy
        self.loop = proxy.loop
        self.faults = proxy.faults
        self.client = client
        assert client.transport is not None
        self.peer = short_address(client.transport.get_extra_info("peername"))
        self.server = _Side(self, "server")
        self.forwarded = 0  # bytes, both ways, for --reset-after
        self.connected = False
        self.closing = False
        # Made now, started once the server is connected: the server may speak first, before
        # `_connect` resumes, and what it says must wait in its pipe, not be lost.
        self.pipes = {
            Direction.TO_SERVER: _Pipe(self, Direction.TO_SERVER, self.client, self.server),
            Direction.TO_CLIENT: _Pipe(self, Direction.TO_CLIENT, self.server, self.client),
        }
        proxy.connections.add(self)
        proxy.counts["connections"] += 1
        self.connect_task = self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        family, address = self.proxy.target_address
        try:
            await self.loop.create_connection(lambda: self.server, *address, family=family)
        except OSError as exc:
            self.proxy.counts["refused"] += 1
            self.emit("refused", None, detail=exc.strerror or str(exc))
            # The server refused: the client learns it the way a direct connection would, by a reset.
            self.closing = True
            if self.client.transport is not None:
                reset(self.client.transport)
            self.proxy.connections.discard(self)
            return
        self.connected = True
        if self.faults.slice:
            # Pause as soon as anything is buffered: each piece then leaves in its own send(), with
            # TCP_NODELAY, instead of being coalesced with the next ones in the transport's buffer.
            for side in (self.client, self.server):
                assert side.transport is not None
                side.transport.set_write_buffer_limits(high=0)
        for pipe in self.pipes.values():
            pipe.start()
        self.emit("connect", None)
        if self.client.lost:
            self.side_lost(self.client, self.client.lost_exc)
        elif self.client.transport is not None:
            self.client.transport.resume_reading()

    def pipe_from(self, side: _Side) -> _Pipe:
        return self.pipes[Direction.TO_SERVER if side is self.client else Direction.TO_CLIENT]

    def pipe_to(self, side: _Side) -> _Pipe:
        return self.pipes[Direction.TO_CLIENT if side is self.client else Direction.TO_SERVER]

    def draw_delay(self) -> float:
        f = self.faults
        if not f.jitter:
            return f.delay
        return max(0.0, f.delay + f.jitter * (2 * self.proxy.rng.random() - 1))

    def allowance(self, size: int) -> int:
        """How many of the next `size` bytes may go before the reset (all of them when no reset)."""
        limit = self.faults.reset_after
        if not limit:
            return size
        allowed = max(0, min(size, limit - self.forwarded))
        self.forwarded += allowed
        return allowed

    @property
    def reset_due(self) -> bool:
        return 0 < self.faults.reset_after <= self.forwarded

    async def reset_now(self, pipe: _Pipe) -> None:
        """--reset-after reached: let the bytes written so far arrive, then reset both sides."""
        if self.closing:
            return
        self.closing = True
        await pipe.flush()
        self.proxy.counts["resets"] += 1
        self.emit("reset", pipe.direction, size=self.forwarded)
        for other in self.pipes.values():
            if other is not pipe:
                other.stop()
        for side in (self.client, self.server):
            if side.transport is not None and not side.lost:
                reset(side.transport)
        self._forget()

    def side_lost(self, side: _Side, exc: Exception | None) -> None:
        if self.closing:
            self._forget_when_both_lost()
            return
        if not self.connected:
            return  # lost while the server was being connected: _connect sees to it
        other = self.server if side is self.client else self.client
        if exc is not None:
            # The peer reset (or the network failed): pass the reset on, as a router would not but
            # as the end-to-end view requires: neither side may believe the stream ended cleanly.
            self.closing = True
            self.proxy.counts["resets_forwarded"] += 1
            self.emit("reset-forwarded", None, detail=f"{side.name}: {exc}")
            for pipe in self.pipes.values():
                pipe.stop()
            if other.transport is not None and not other.lost:
                reset(other.transport)
            self._forget()
            return
        # A clean close: nothing more can be written to `side`; what it sent still goes on.
        self.pipe_to(side).stop()
        self.pipe_from(side).feed_eof()
        self.pipe_finished()

    def pipe_finished(self) -> None:
        if self.closing or not self.connected or not all(p.done for p in self.pipes.values()):
            return
        self.closing = True
        for side in (self.client, self.server):
            if side.transport is not None and not side.lost:
                side.transport.close()
        self.emit("close", None, size=self.forwarded)
        self._forget()

    def _forget_when_both_lost(self) -> None:
        if self.client.lost and self.server.lost:
            self._forget()

    def _forget(self) -> None:
        self.proxy.connections.discard(self)

    def abort(self) -> None:
        """Stop now (the proxy is stopping): reset both sides."""
        self.closing = True
        self.connect_task.cancel()
        for pipe in self.pipes.values():
            pipe.stop()
        for side in (self.client, self.server):
            if side.transport is not None and not side.lost:
                reset(side.transport)
        self._forget()

    def emit(self, kind: str, direction: Direction | None, *, size: int = 0, detail: str = "") -> None:
        if self.proxy.on_event is not None:
            self.proxy.on_event(ProxyEvent(kind, self.peer, direction, size, 0.0, detail))


class TcpProxy:
    """A running TCP proxy; made by `open_tcp_proxy`, which also stops it."""

    def __init__(
        self,
        target: Address,
        faults: TcpFaults,
        *,
        seed: int | None = None,
        on_event: EventCallback | None = None,
    ) -> None:
        self.target = target
        self.faults = faults
        self.seed = random.SystemRandom().randrange(2**32) if seed is None else seed
        self.rng = random.Random(self.seed)  # noqa: S311 - jitter, not secrets
        self.on_event = on_event
        self.address: Address = ("", 0)
        self.target_address: tuple[int, Address] = (socket.AF_INET, target)
        self.connections: set[_Connection] = set()
        self.counts = {"connections": 0, "refused": 0, "resets": 0, "resets_forwarded": 0}
        self._stats = {d: {"bytes": 0, "writes": 0, "delayed": 0} for d in Direction}
        self._server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "the proxy is not running"
        return self._loop

    def stats_for(self, direction: Direction) -> dict[str, int]:
        return self._stats[direction]

    async def start(self, host: str, port: int) -> None:
        self._loop = asyncio.get_running_loop()
        self.target_address = await resolve_target(*self.target, socket.SOCK_STREAM)
        try:
            self._server = await self.loop.create_server(lambda: _ClientSide(self), host, port)
        except OSError as exc:
            raise bind_error(host, port, exc) from exc
        self.address = short_address(self._server.sockets[0].getsockname())

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        # Let the aborted transports run their connection_lost callbacks before the loop goes away.
        await asyncio.sleep(0)

    def stats(self) -> dict[str, Any]:
        f = self.faults
        return {
            "proto": "tcp",
            "listen": list(self.address),
            "target": list(self.target),
            "seed": self.seed,
            "faults": {
                "delay": f.delay,
                "jitter": f.jitter,
                "bandwidth": f.bandwidth,
                "slice": f.slice,
                "reset_after": f.reset_after,
            },
            **self.counts,
            "open": len(self.connections),
            "to_server": dict(self._stats[Direction.TO_SERVER]),
            "to_client": dict(self._stats[Direction.TO_CLIENT]),
        }

    def __repr__(self) -> str:
        return f"TcpProxy({format_peer(self.address)} -> {format_peer(self.target)})"


@asynccontextmanager
async def open_tcp_proxy(
    target: Address,
    faults: TcpFaults | None = None,
    *,
    listen: Address = ("127.0.0.1", 0),
    seed: int | None = None,
    on_event: EventCallback | None = None,
) -> AsyncIterator[TcpProxy]:
    """A TCP proxy from `listen` to `target`, running while the block runs; `.address` is where it
    listens (port 0: the system picks one)."""
    proxy = TcpProxy(target, faults or TcpFaults(), seed=seed, on_event=on_event)
    await proxy.start(*listen)
    try:
        yield proxy
    finally:
        await proxy.stop()
