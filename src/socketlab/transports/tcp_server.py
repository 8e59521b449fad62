"""TCP server transport: one sans-IO `StreamSession` per connection, on asyncio's Protocol API.

Thin on purpose: it moves bytes between the socket and the session and handles the connection's life
(backpressure, idle timeout, closing without losing answers). What to answer is the core's business.

The per-chunk path (`TcpConnection.data_received`) is measured against a C epoll server, so it does
the least it can: answer a chunk of whole ASCII lines itself under the session's fast-path contract
(core/session.py), hand any other chunk to the session, write what comes back. No timers are touched
there (the idle timeout is a periodic sweep per listener, see `TcpListener`), nothing is logged unless
-v chose the verbose class, and nothing is allocated beyond the answer itself. It lives in
chunk_path.py, which the build compiles with mypyc when it can (`CHUNK_PATH` says which one runs).

Hardening (issue 6) lives outside that path: who may connect and how many is decided once, in
`connection_made` (`Admission`); the line deadline and the send timeout are checked by the same
periodic sweep as the idle timeout; TLS is started after the admission check, so a refused client is
closed before any byte of it is read, handshake included.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from socketlab.config import Limits
from socketlab.core.framing import LineFramer
from socketlab.core.guards import ConnectionGuard, DropReason
from socketlab.core.services import Service
from socketlab.core.session import StreamSession
from socketlab.core.text import to_display
from socketlab.errors import LineTooLong
from socketlab.i18n import _
from socketlab.transports import compiled
from socketlab.transports.binding import format_peer
from socketlab.transports.chunk_path import ChunkPath

_chunk_module, CHUNK_PATH = compiled.load("chunk_path")
"""Which per-chunk path TcpConnection runs: "compiled with mypyc", or "Python (why)"."""
if TYPE_CHECKING:
    ChunkPathBase = ChunkPath
else:
    ChunkPathBase = _chunk_module.ChunkPath

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


# One line to a client turned away because the server (or its address) has too many connections.
ERR_BUSY = b"ERR busy\n"
# A client turned away gets this long to read ERR busy before its socket is dropped; short, since
# the point of refusing it is to give its descriptor back.
BUSY_LINGER = 0.5
# At most this many turned-away clients linger at once (each holds a descriptor); beyond it they get
# ERR busy and an immediate close. The server keeps this many descriptors spare (server.FD_RESERVE).
MAX_LINGERING = 16

# What `Admission.check` decides about a new connection.
ADMITTED, REFUSED, BUSY = "admitted", "refused", "busy"


class Admission:
    """What all TCP listeners of one server share: how many clients are served, and who may connect.

    Decided once per connection, when it is accepted: the access list (a refused client is closed
    before any byte is read), then the per-address cap and `max_connections` (a client over either
    is told `ERR busy`). Counts what it refused for the statistics.
    """

    def __init__(self, max_connections: int = 0, guard: ConnectionGuard | None = None) -> None:
        self.max_connections = max_connections
        self.guard = guard
        self.open = 0
        self.accepted = 0  # connections admitted since the start
        self.busy = 0  # turned away with ERR busy, every reason together
        self.lingering = 0  # turned-away connections still reading their ERR busy

    def check(self, host: Any) -> str:
        guard = self.guard
        if guard is not None:
            reason = guard.check(host)
            if reason is DropReason.DENIED:
                return REFUSED
            if reason is not None:
                self.busy += 1
                return BUSY
        if self.max_connections and self.open >= self.max_connections:
            if guard is not None:
                guard.release(host)
            self.busy += 1
            return BUSY
        self.open += 1
        self.accepted += 1
        return ADMITTED

    def release(self, host: Any) -> None:
        self.open -= 1
        if self.guard is not None:
            self.guard.release(host)

    def stats(self) -> dict[str, int]:
        out = {"open": self.open, "accepted": self.accepted, "busy": self.busy}
        if self.guard is not None:
            out["denied"] = self.guard.counters[DropReason.DENIED]
            out["per_address"] = self.guard.counters[DropReason.PER_ADDRESS]
        return out


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
        admission: Admission | None = None,
        tls: Any = None,
    ) -> None:
        self.service = service
        self.limits = limits
        self.log = log
        self.label = label  # "tcp upper": says which listener a log line is about
        self.admit = admit
        self.admission = admission
        self.tls = tls  # an ssl.SSLContext when this listener speaks TLS
        self.connections: set[TcpConnection] = set()
        self.connection_class: type[TcpConnection] = VerboseTcpConnection if verbose else TcpConnection
        self._sweeper: asyncio.TimerHandle | None = None
        # One sweep serves every timeout: it runs SWEEPS_PER_TIMEOUT times per the shortest one, and
        # each timeout is a number of sweeps (so each fires between 1 and 1.25 times its value).
        timeouts = [t for t in (limits.idle_timeout, limits.line_deadline, limits.send_timeout) if t > 0]
        self._sweep_interval = min(timeouts) / SWEEPS_PER_TIMEOUT if timeouts else 0.0
        self._idle_sweeps = self._sweeps(limits.idle_timeout)
        self._deadline_sweeps = self._sweeps(limits.line_deadline)
        self._send_sweeps = self._sweeps(limits.send_timeout)
        self._all_gone: asyncio.Future[None] | None = None
        # Connections closed by each limit, for the statistics (counted off the per-chunk path).
        self.closed_by: dict[str, int] = dict.fromkeys(
            ("idle", "line_deadline", "send_timeout", "line_too_long", "tls_failed"), 0
        )

    def _sweeps(self, timeout: float) -> int:
        return max(1, round(timeout / self._sweep_interval)) if timeout > 0 else 0

    def protocol_factory(self) -> TcpConnection:
        return self.connection_class(self)

    # -- the connection's life, called by TcpConnection

    def welcome(self, conn: TcpConnection, peername: Any) -> str:
        """ADMITTED (the connection is now served), REFUSED (drop it unread) or BUSY (ERR busy)."""
        if peername is None:
            # uvloop asks getpeername() only now: a client that reset before we got here has none.
            # There is nobody to serve, or to log.
            return REFUSED
        if self.admit is not None and not self.admit(peername):
            self.log.info(_("%(listener)s: %(peer)s refused"), {"listener": self.label, "peer": conn.peer})
            return REFUSED
        if self.admission is not None:
            host = peername[0] if isinstance(peername, tuple) else peername
            verdict = self.admission.check(host)
            if verdict is REFUSED:
                self.log.info(
                    _("%(listener)s: %(peer)s refused by the access list"),
                    {"listener": self.label, "peer": conn.peer},
                )
                return REFUSED
            if verdict is BUSY:
                # No log line per client turned away: under a flood that would be the flood. They are
                # counted, and the count is logged with the other statistics.
                return BUSY
            conn.host = host
        self.connections.add(conn)
        self.log.info(_("%(listener)s: %(peer)s connected"), {"listener": self.label, "peer": conn.peer})
        return ADMITTED

    def farewell(self, conn: TcpConnection, exc: Exception | None) -> None:
        if conn not in self.connections:
            if conn.turned_away:
                conn.turned_away = False
                if self.admission is not None:
                    self.admission.lingering -= 1
            return  # refused or turned away: never welcomed
        self.connections.discard(conn)
        if conn.host is not None and self.admission is not None:
            self.admission.release(conn.host)
            conn.host = None
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
        if self._sweep_interval > 0:
            self._sweeper = loop.call_later(self._sweep_interval, self._sweep, loop)

    def stop_idle_sweep(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        idle, deadline, send = self._idle_sweeps, self._deadline_sweeps, self._send_sweeps
        for conn in list(self.connections):
            conn.quiet += 1
            if idle and conn.quiet > idle:
                conn.idle_out(self.limits.idle_timeout)
                self.closed_by["idle"] += 1
                continue
            if deadline:
                # Slowloris: bytes keep coming (so the idle timer never fires) but no line ends. A line
                # is "pending since" the sweep that first saw it and no answer since.
                progress = conn.progress
                if progress != conn.seen_progress:
                    conn.seen_progress = progress
                    conn.partial = 0
                if conn.pending:
                    conn.partial += 1
                    if conn.partial > deadline:
                        conn.deadline_out(self.limits.line_deadline)
                        self.closed_by["line_deadline"] += 1
                        continue
                else:
                    conn.partial = 0
            if send and conn.reading_paused:
                # Paused means our answers are above the high-water mark: the client is not reading.
                conn.stalled += 1
                if conn.stalled > send:
                    conn.send_out(self.limits.send_timeout)
                    self.closed_by["send_timeout"] += 1
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


class TcpConnection(ChunkPathBase, asyncio.Protocol):
    """One client: bytes in -> `StreamSession` -> answer bytes out, in order.

    `data_received`, the per-chunk path, is `ChunkPath`'s (chunk_path.py), compiled when the build could.
    """

    __slots__ = (
        "_listener",
        "close_reason",
        "draining",
        "host",
        "partial",
        "peer",
        "reading_paused",
        "seen_progress",
        "stalled",
        "tls_pending",
        "turned_away",
    )
    # What ChunkPath declares as Any (it is compiled alone), typed for the code of this class.
    _session: StreamSession
    _transport: asyncio.Transport

    def __init__(self, listener: TcpListener) -> None:
        self._listener = listener
        self._session = StreamSession(listener.service, listener.limits.max_line)
        self._answer_ascii = self._session.answer_ascii
        self._fast_limit = self._session.fast_limit
        self.quiet = 0  # idle sweeps since the client last showed life
        self.peer = "?"
        self.close_reason: str | None = None  # set when we close on purpose, for the log
        self.draining = False  # True once we stopped answering: read and drop, then close
        self.reading_paused = False
        self.seen_progress = 0  # the session's progress at the last sweep (for the line deadline)
        self.partial = 0  # sweeps that saw the same unfinished line
        self.stalled = 0  # sweeps with reading paused because the client does not read
        self.host: Any = None  # the address the admission counted, released when the client goes
        self.turned_away = False  # told ERR busy, lingering until it reads it
        self.tls_pending = False  # admitted, TLS handshake under way

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        if self.tls_pending:
            self._tls_ready(t)
            return
        self._transport = t
        # Both marks explicitly: uvloop's default low mark differs from asyncio's (see config).
        limits = self._listener.limits
        t.set_write_buffer_limits(high=limits.write_high_water, low=limits.write_low_water)
        peername = t.get_extra_info("peername")
        self.peer = format_peer(peername)
        listener = self._listener
        verdict = listener.welcome(self, peername)
        if verdict is REFUSED:
            t.abort()  # reading has not started: not one byte of this client is read
        elif verdict is BUSY:
            self._turn_away()
        elif listener.tls is not None:
            self._start_tls(t, listener.tls)

    def eof_received(self) -> bool | None:
        # Half-close: the client has said all it will say but may still be reading. Its last,
        # unterminated line is answered; close() sends every answer before the FIN.
        if not self.draining:
            answer = self._session.end_of_input()
            if answer:
                self._transport.write(answer)
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
        self.stalled = 0
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
            self._listener.closed_by["line_too_long"] += 1
        else:
            self.close_reason = _("refused")
        self._linger()
        loop = asyncio.get_running_loop()
        loop.call_later(LINGER, self.abort)

    def _linger(self) -> None:
        """Stop answering: send what is owed, then our FIN, and read and drop until the client goes."""
        self.draining = True
        self._session.stop()
        self._fast_limit = -1
        t = self._transport
        if self.reading_paused:
            self.reading_paused = False
            t.resume_reading()
        if t.can_write_eof():
            t.write_eof()
        else:
            t.close()

    def _turn_away(self) -> None:
        """Too many clients: one line `ERR busy`, our FIN, and the socket dropped soon after."""
        t = self._transport
        admission = self._listener.admission
        if self._listener.tls is not None:
            t.abort()  # a TLS client cannot read a plain line
            return
        if admission is not None and admission.lingering >= MAX_LINGERING:
            # Under a flood lingering would hold as many descriptors as the clients it turns away:
            # the line and our FIN go out now (lost only if the client had already sent something).
            t.write(ERR_BUSY)
            t.close()
            return
        if admission is not None:
            admission.lingering += 1
        self.turned_away = True
        t.write(ERR_BUSY)
        self._linger()
        asyncio.get_running_loop().call_later(BUSY_LINGER, t.abort)

    def _start_tls(self, raw: asyncio.Transport, context: Any) -> None:
        """Put a TLS layer between the socket and this connection, now, before any byte is read.

        Not `loop.start_tls()`: that is a coroutine, so it runs a loop turn later, and uvloop starts
        reading as soon as connection_made returns (whatever pause_reading said): the ClientHello
        would reach the line framer. asyncio's SSLProtocol, installed here synchronously, works on
        both loops; it calls connection_made again with the TLS transport once the handshake is done.
        """
        from asyncio import sslproto  # noqa: PLC0415 - only TLS listeners need it

        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        layer = sslproto.SSLProtocol(
            loop,
            self,
            context,
            waiter,
            server_side=True,
            # typeshed says int; asyncio takes any number of seconds
            ssl_handshake_timeout=cast(Any, self._listener.limits.tls_handshake_timeout),
        )
        self.tls_pending = True
        waiter.add_done_callback(lambda done: self._tls_done(raw, done))
        raw.set_protocol(layer)
        layer.connection_made(raw)

    def _tls_ready(self, tls: asyncio.Transport) -> None:
        self.tls_pending = False
        self._transport = tls
        limits = self._listener.limits
        tls.set_write_buffer_limits(high=limits.write_high_water, low=limits.write_low_water)

    def _tls_done(self, raw: asyncio.Transport, waiter: asyncio.Future[None]) -> None:
        exc = None if waiter.cancelled() else waiter.exception()
        if exc is not None or self.tls_pending:
            self._tls_failed(raw, exc)

    def _tls_failed(self, raw: asyncio.Transport, exc: BaseException | None) -> None:
        self.tls_pending = False
        reason = _("the client left") if exc is None else str(exc) or type(exc).__name__
        self.close_reason = _("TLS handshake failed: {reason}").format(reason=reason)
        self._listener.closed_by["tls_failed"] += 1
        raw.abort()
        # The TLS layer may never tell us the connection is lost (it never saw it made): say goodbye
        # here; a later connection_lost finds the connection gone and does nothing.
        self._listener.farewell(self, None)

    def begin_shutdown(self) -> None:
        """The server is stopping: deliver the answers owed, then close without losing them."""
        t = self._transport
        if t.is_closing() or self.draining:
            return
        self.close_reason = _("server shutting down")
        if t.get_write_buffer_size() == 0 and self.tls_pending:
            t.close()
        else:
            # Even with nothing owed, a plain close is not safe: an active client's next line may be on
            # its way, and a close with unread bytes sends a reset that destroys the answers still in
            # the client's receive buffer. Our FIN instead, then read and drop until it goes (at most
            # LINGER seconds, within the grace period).
            self._linger()
            asyncio.get_running_loop().call_later(LINGER, self.abort)

    def idle_out(self, timeout: float) -> None:
        self._time_out(_("idle for {seconds:g} s").format(seconds=timeout))

    def deadline_out(self, deadline: float) -> None:
        """A line has been arriving for longer than the line deadline (slowloris)."""
        self._time_out(_("line not finished within {seconds:g} s").format(seconds=deadline))

    def _time_out(self, reason: str) -> None:
        """Close, answers owed first; drop at once if a close is already under way."""
        t = self._transport
        if t.is_closing():
            # Already closing but still here after a whole timeout: the client reads nothing.
            t.abort()
            return
        self.close_reason = reason
        t.close()

    def send_out(self, timeout: float) -> None:
        """The client has left our answers unread for longer than the send timeout."""
        self.close_reason = _("not reading its answers for {seconds:g} s").format(seconds=timeout)
        self._transport.abort()  # nothing owed can reach a client that does not read

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

    @property
    def progress(self) -> int:
        """Grows when lines that had to wait for more bytes are answered (see StreamSession.progress)."""
        return self._session.progress


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
            {"listener": listener.label, "peer": self.peer, "line": to_display(line)},
        )
