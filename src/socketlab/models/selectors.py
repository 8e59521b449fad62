"""The selectors model: one thread serves every client, waiting in select() for whichever is ready.

The listening socket and each connection are non-blocking and registered with a selector (epoll on
Linux, kqueue on macOS and BSD). The thread blocks in one place only, select(), which says which
sockets can be read or written; the accept, recv and send calls that follow return at once. An idle
client costs a registration, not a thread. This is what asyncio does underneath; what asyncio adds is
a way to write each client's code as if it blocked, instead of the bookkeeping below.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from typing import TYPE_CHECKING

from socketlab.config import READ_CHUNK
from socketlab.core.session import StreamSession
from socketlab.models import ACCEPT_CAPACITY_ERRNOS, ACCEPT_RETRY_SECONDS, LINGER_SECONDS
from socketlab.tracing import CallEvent

if TYPE_CHECKING:
    from socketlab.models import BlockingServer, Client, Endpoint


class _Connection:
    """What the one thread remembers about each client between two select() calls."""

    def __init__(self, client: Client, session: StreamSession, deadline: float) -> None:
        self.client = client
        self.session = session
        self.out = bytearray()  # answers the client has not read yet
        self.deadline = deadline  # when it counts as idle (inf: never)
        self.reading = True  # False while `out` is above the high-water mark (backpressure)
        self.ended = False  # no more input: its end arrived, or it broke a rule
        self.draining = False  # after "ERR line too long": read and drop until it goes
        self.reason: str | None = None  # why it ended, for the log (None: the client left)
        self.broken = False  # a call failed: close at once


def serve_listener(server: BlockingServer, endpoint: Endpoint) -> None:
    _Loop(server, endpoint).run()


class _Loop:
    def __init__(self, server: BlockingServer, endpoint: Endpoint) -> None:
        self.server = server
        self.endpoint = endpoint
        self.limits = server.limits
        self.selector = selectors.DefaultSelector()
        self.connections: dict[socket.socket, _Connection] = {}
        self.accepting_again_at: float | None = None  # out of file descriptors: pause accepting

    def run(self) -> None:
        listening = self.endpoint.sock
        listening.setblocking(False)
        self.selector.register(listening, selectors.EVENT_READ)
        try:
            # After stop, the clients still connected get their answers; then the loop ends.
            while not self.server.stop.is_set() or self.connections:
                if self.server.stop.is_set() and listening in self.selector.get_map():
                    self.selector.unregister(listening)
                for key, mask in self._select():
                    if key.data is None:
                        self._accept_waiting()
                    else:
                        self._serve(key.data, mask)
                self._expire_idle()
                self._resume_accepting()
        finally:
            for conn in list(self.connections.values()):
                self._close(conn)
            self.selector.close()

    def _select(self) -> list[tuple[selectors.SelectorKey, int]]:
        start_wall, start = time.time(), time.perf_counter()
        ready = self.selector.select(self._timeout())
        tracer = self.server.tracer
        # A wait that ends with nothing ready is only our own deadline check: not worth a line.
        if tracer is not None and ready:
            event = CallEvent(
                "select",
                -1,
                {"sockets": len(self.selector.get_map())},
                {"ready": [key.fd for key, _mask in ready]},
                time.perf_counter() - start,
                time=start_wall,
                proto="tcp",
            )
            tracer.on_call(event)
        return ready

    def _timeout(self) -> float | None:
        deadlines = [conn.deadline for conn in self.connections.values()]
        if self.accepting_again_at is not None:
            deadlines.append(self.accepting_again_at)
        if not deadlines or min(deadlines) == float("inf"):
            return None  # nothing to time out: sleep until a socket is ready
        return max(0.0, min(deadlines) - time.monotonic())

    def _accept_waiting(self) -> None:
        # Every client waiting in the listen queue: one readable event may stand for many.
        while True:
            try:
                client = self.server.accept_nowait(self.endpoint)
            except OSError as exc:
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                self.server.accept_failed(self.endpoint, exc)
                # The listening socket stays readable: stop watching it for a while, or this
                # loop would spin without serving anyone.
                self.selector.unregister(self.endpoint.sock)
                self.accepting_again_at = time.monotonic() + ACCEPT_RETRY_SECONDS
                return
            if client is None:
                return
            client.conn.setblocking(False)
            session = StreamSession(client.endpoint.service, self.limits.max_line)
            conn = _Connection(client, session, self._new_deadline())
            self.connections[client.conn] = conn
            self.selector.register(client.conn, selectors.EVENT_READ, conn)

    def _resume_accepting(self) -> None:
        at = self.accepting_again_at
        if at is not None and time.monotonic() >= at and not self.server.stop.is_set():
            self.accepting_again_at = None
            self.selector.register(self.endpoint.sock, selectors.EVENT_READ)

    def _new_deadline(self) -> float:
        idle = self.limits.idle_timeout
        return time.monotonic() + idle if idle > 0 else float("inf")

    def _serve(self, conn: _Connection, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            self._read(conn)
        if mask & selectors.EVENT_WRITE and not conn.broken:
            self._write(conn)
        self._update(conn)

    def _read(self, conn: _Connection) -> None:
        try:
            data = conn.client.conn.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            conn.broken, conn.reason = True, exc.strerror or str(exc)
            return
        conn.deadline = self._new_deadline()
        if conn.draining:
            if not data:
                conn.broken = True  # the client has gone: nothing more to wait for
            return
        if not data:
            conn.out += conn.session.end_of_input()
            conn.ended, conn.reason = True, self.server.eof_reason()
            return
        self.server.log_received(conn.client, data)
        # One recv is not one message: the session keeps what is incomplete.
        conn.out += conn.session.receive_data(data)
        if conn.session.closing:
            conn.ended, conn.reason = True, self.server.too_long_reason()

    def _write(self, conn: _Connection) -> None:
        try:
            # A non-blocking send writes what fits in the socket's buffer now; the rest waits
            # for the next EVENT_WRITE.
            sent = conn.client.conn.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            conn.broken, conn.reason = True, exc.strerror or str(exc)
            return
        del conn.out[:sent]
        conn.deadline = self._new_deadline()

    def _update(self, conn: _Connection) -> None:
        """Close, or watch the connection for what it waits for now."""
        if conn.broken:
            self._close(conn)
            return
        if conn.ended and not conn.out and not conn.draining:
            if not conn.session.closing:
                self._close(conn)
                return
            # After "ERR line too long": FIN, then read and drop what the client still sends,
            # so that closing with unread bytes does not reset the connection before it reads it.
            conn.draining = True
            conn.deadline = time.monotonic() + LINGER_SECONDS
            with contextlib.suppress(OSError):
                conn.client.conn.shutdown(socket.SHUT_WR)
        if len(conn.out) >= self.limits.write_high_water:
            conn.reading = False  # backpressure: a client that does not read stops being read
        elif len(conn.out) <= self.limits.write_low_water:
            conn.reading = True
        events = selectors.EVENT_WRITE if conn.out else 0
        if conn.draining or (conn.reading and not conn.ended):
            events |= selectors.EVENT_READ
        # Never 0: a paused reader has answers to send, and an ended one with none was closed.
        self.selector.modify(conn.client.conn, events, conn)

    def _expire_idle(self) -> None:
        now = time.monotonic()
        for conn in list(self.connections.values()):
            if conn.deadline <= now:
                if not conn.draining:
                    conn.reason = self.server.idle_reason()
                self._close(conn)

    def _close(self, conn: _Connection) -> None:
        sock = conn.client.conn
        if self.connections.pop(sock, None) is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(sock)
        self.server.release(conn.client, conn.reason)
