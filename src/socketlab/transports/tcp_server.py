"""TCP server transport: one sans-IO `StreamSession` per connection, on asyncio's Protocol API.

Thin on purpose: it moves bytes between the socket and the session and handles the connection's life
(backpressure, idle timeout, closing without losing answers). What to answer is the core's business.

The per-chunk path (`TcpConnection.data_received`) is measured against a C epoll server, so it does
the least it can: hand the bytes to the session, write what comes back. No timers are touched there
(the idle timeout is a periodic sweep per listener, see `TcpListener`), nothing is logged unless -v
chose the verbose class, and nothing is allocated beyond the answer itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

from socketlab.config import Limits
from socketlab.core.framing import LineFramer
from socketlab.core.services import Service
from socketlab.core.session import StreamSession
from socketlab.errors import LineTooLong
from socketlab.i18n import _
from socketlab.transports.binding import format_peer

AdmitHook = Callable[[Any], bool]
"""Called with a new client's peer address; False refuses the connection (hardening hooks in here)."""

# The idle timeout is checked by a sweep that runs this many times per timeout. A connection is closed
# once it has stayed silent through SWEEPS_PER_TIMEOUT + 1 sweeps, that is after between 1 and 1.25
# times the timeout: never early, at most a quarter late, and no timer work per chunk.
SWEEPS_PER_TIMEOUT = 4

# After refusing a client (line too long) we shut our side and read and drop what it still sends, so
# the kernel does not answer its bytes with a reset that could destroy the error line on its way.
# Apache's lingering close waits 2 s for the client to go, then closes anyway; so do we.
LINGER = 2.0


def _discard(data: bytes) -> bytes:
    del data
    return b""


class TcpListener:
    """What all connections of one TCP listener share: service, limits, log, the live connections."""

    def __init__(
        self,
        service: Service,
        limits: Limits,
        log: logging.Logger,
        label: str,
        *,
        verbose: bool = False,
        admit: AdmitHook | None = None,
    ) -> None:
        self.service = service
        self.limits = limits
        self.log = log
        self.label = label  # "tcp upper": says which listener a log line is about
        self.admit = admit
        self.connections: set[TcpConnection] = set()
        self.connection_class: type[TcpConnection] = VerboseTcpConnection if verbose else TcpConnection
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_interval = limits.idle_timeout / SWEEPS_PER_TIMEOUT
        self._all_gone: asyncio.Future[None] | None = None

    def protocol_factory(self) -> TcpConnection:
        return self.connection_class(self)

    # -- the connection's life, called by TcpConnection

    def welcome(self, conn: TcpConnection, peername: Any) -> bool:
        if self.admit is not None and not self.admit(peername):
            self.log.info(_("%(listener)s: %(peer)s refused"), {"listener": self.label, "peer": conn.peer})
            return False
        self.connections.add(conn)
        self.log.info(_("%(listener)s: %(peer)s connected"), {"listener": self.label, "peer": conn.peer})
        return True

    def farewell(self, conn: TcpConnection, exc: Exception | None) -> None:
        if conn not in self.connections:
            return  # refused by the admit hook: never welcomed
        self.connections.discard(conn)
        reason = conn.close_reason
        if reason is None and exc is not None:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        args = {"listener": self.label, "peer": conn.peer, "reason": reason}
        if reason is None:
            self.log.info(_("%(listener)s: %(peer)s left"), args)
        else:
            self.log.info(_("%(listener)s: %(peer)s left (%(reason)s)"), args)
        if not self.connections and self._all_gone is not None and not self._all_gone.done():
            self._all_gone.set_result(None)

    # -- idle timeout

    def start_idle_sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.limits.idle_timeout > 0:
            self._sweeper = loop.call_later(self._sweep_interval, self._sweep, loop)

    def stop_idle_sweep(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        limit = SWEEPS_PER_TIMEOUT
        for conn in list(self.connections):
            conn.quiet += 1
            if conn.quiet > limit:
                conn.idle_out(self.limits.idle_timeout)
        self._sweeper = loop.call_later(self._sweep_interval, self._sweep, loop)

    # -- shutdown

    def begin_shutdown(self) -> None:
        """Answers already owed go out, then each connection closes (see `TcpConnection.begin_shutdown`)."""
        self.stop_idle_sweep()
        for conn in list(self.connections):
            conn.begin_shutdown()

    async def wait_all_gone(self) -> None:
        if not self.connections:
            return
        if self._all_gone is None or self._all_gone.done():
            self._all_gone = asyncio.get_running_loop().create_future()
        await self._all_gone

    def abort_all(self) -> int:
        """Drop every connection at once; return how many there were."""
        self.stop_idle_sweep()
        conns = list(self.connections)
        for conn in conns:
            conn.abort()
        return len(conns)


class TcpConnection(asyncio.Protocol):
    """One client: bytes in -> `StreamSession` -> answer bytes out, in order."""

    __slots__ = (
        "_listener",
        "_receive",
        "_session",
        "_transport",
        "_write",
        "close_reason",
        "draining",
        "peer",
        "quiet",
        "reading_paused",
    )

    def __init__(self, listener: TcpListener) -> None:
        self._listener = listener
        self._session = StreamSession(listener.service, listener.limits.max_line)
        self._receive: Callable[[bytes], bytes] = self._session.receive_data
        self.quiet = 0  # idle sweeps since the client last showed life
        self.peer = "?"
        self.close_reason: str | None = None  # set when we close on purpose, for the log
        self.draining = False  # True once we stopped answering: read and drop, then close
        self.reading_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        self._transport = t
        self._write = t.write
        # Both marks explicitly: uvloop's default low mark differs from asyncio's (see config).
        limits = self._listener.limits
        t.set_write_buffer_limits(high=limits.write_high_water, low=limits.write_low_water)
        peername = t.get_extra_info("peername")
        self.peer = format_peer(peername)
        if not self._listener.welcome(self, peername):
            t.abort()

    def data_received(self, data: bytes) -> None:
        self.quiet = 0
        answer = self._receive(data)
        if answer:
            self._write(answer)
            if self._session.closing:
                self._refuse()

    def eof_received(self) -> bool | None:
        # Half-close: the client has said all it will say but may still be reading. Its last,
        # unterminated line is answered; close() sends every answer before the FIN.
        if not self.draining:
            answer = self._session.end_of_input()
            if answer:
                self._write(answer)
        self._transport.close()
        return None

    def pause_writing(self) -> None:
        # The client does not read as fast as it sends: stop reading until our answers drain, so
        # neither our buffer nor the kernel's grows without bound. A draining connection keeps reading
        # (it only drops bytes) so the client's sends never meet a reset.
        if not self.draining:
            self.reading_paused = True
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self.quiet = 0  # the client is reading our answers: it is alive
        if self.reading_paused:
            self.reading_paused = False
            self._transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._listener.farewell(self, exc)

    # -- closing on purpose

    def _refuse(self) -> None:
        error = self._session.error
        if isinstance(error, LineTooLong):
            self.close_reason = _("line too long: over {limit} bytes").format(limit=error.limit)
        else:
            self.close_reason = _("refused")
        self._linger()
        loop = asyncio.get_running_loop()
        loop.call_later(LINGER, self.abort)

    def _linger(self) -> None:
        """Stop answering: send what is owed, then our FIN, and read and drop until the client goes."""
        self.draining = True
        self._receive = _discard
        t = self._transport
        if self.reading_paused:
            self.reading_paused = False
            t.resume_reading()
        if t.can_write_eof():
            t.write_eof()
        else:
            t.close()

    def begin_shutdown(self) -> None:
        """The server is stopping: deliver the answers owed, then close without losing them."""
        t = self._transport
        if t.is_closing() or self.draining:
            return
        self.close_reason = _("server shutting down")
        if t.get_write_buffer_size() == 0:
            # Nothing owed and nothing unread: a plain close sends the FIN after the last answer.
            t.close()
        else:
            self._linger()

    def idle_out(self, timeout: float) -> None:
        t = self._transport
        if t.is_closing():
            # Already closing but still here after a whole timeout: the client reads nothing.
            t.abort()
            return
        self.close_reason = _("idle for {seconds:g} s").format(seconds=timeout)
        t.close()

    def abort(self) -> None:
        if self in self._listener.connections:  # else it is gone already: nothing to drop
            self._transport.abort()

    @property
    def write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    @property
    def pending(self) -> int:
        """Bytes of an incomplete line held for this client."""
        return self._session.pending


class VerboseTcpConnection(TcpConnection):
    """With -v: logs each line received, as the lecture's server prints `" >> ", dado`."""

    __slots__ = ("_log_framer",)

    def __init__(self, listener: TcpListener) -> None:
        super().__init__(listener)
        service = listener.service
        self._log_framer = LineFramer(listener.limits.max_line) if service.framed else None

    def data_received(self, data: bytes) -> None:
        listener = self._listener
        framer = self._log_framer
        if self.draining:
            pass  # bytes after a refusal or during shutdown are dropped unread: nothing to show
        elif framer is None:
            self._log_line(data)
        else:
            framer.receive_data(data)
            try:
                while (line := framer.next_line()) is not None:
                    self._log_line(line)
            except LineTooLong:
                framer.take_rest()
                listener.log.info(
                    _("%(listener)s: %(peer)s sent a line too long"),
                    {"listener": listener.label, "peer": self.peer},
                )
        super().data_received(data)

    def eof_received(self) -> bool | None:
        if self._log_framer is not None and not self.draining and self._log_framer.pending:
            self._log_line(self._log_framer.take_rest())
        return super().eof_received()

    def _log_line(self, line: bytes) -> None:
        listener = self._listener
        listener.log.info(
            _("%(listener)s: %(peer)s >> %(line)r"),
            {"listener": listener.label, "peer": self.peer, "line": line},
        )
