"""The server's lifecycle: listen, serve, stop in order. Used by `socketlab serve`, tools and tests.

- `open_server(config)` is an async context manager: it binds every listener (port 0 picks a free
  port) and yields a `RunningServer` whose `listeners` say where it listens, so tests never race for a
  port. Leaving the block drops everything at once.
- `serve(config)` runs until Ctrl-C or SIGTERM, then shuts down gracefully (uvicorn's order): stop
  accepting, answer the lines already received, close each connection without losing its answers,
  drop whatever is left when the grace period ends. A second signal ends the wait at once.

Log lines go to the stdlib logger "socketlab.server"; configuring handlers is the CLI's business.

Hardening (issue 6): `open_server` fits `max_connections` to the file-descriptor limit, builds the
guards (access list, per-address cap, UDP source checks and rate limit) from the config, turns the
event loop's "accept() out of descriptors" reports into at most one log line a second, and every
STATS_INTERVAL logs what the guards dropped (with `stats`, a full statistics line, also at exit).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import logging
import signal
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from socketlab.config import Limits, Listener, ServerConfig
from socketlab.core.guards import (
    AccessList,
    ConnectionGuard,
    ConnectionLimiter,
    RateLimiter,
    UdpGuard,
    UdpSourceGuard,
)
from socketlab.core.services import ErrorReporter, Function, Service, make_service
from socketlab.core.text import encode
from socketlab.errors import BindError, ConfigError, ServiceError
from socketlab.i18n import _, ngettext
from socketlab.transports.allocator import keep_heap_for_streaming
from socketlab.transports.binding import (
    ALL_IPV6,
    BACKLOG,
    describe_bind_error,
    format_address,
    open_listening_sockets,
)
from socketlab.transports.loop import loop_name, run
from socketlab.transports.tcp_server import (
    MAX_LINGERING,
    Admission,
    AdmitHook,
    TcpConnection,
    TcpListener,
)
from socketlab.transports.udp_server import UdpEndpoint, UdpThread, VerboseUdpEndpoint, serve_in_threads

LOGGER_NAME = "socketlab.server"

# Loop turns given, after we stop accepting, to read what clients had sent before the signal: each turn
# polls every socket once, so lines already in the kernel's buffers are read and answered.
SETTLE_TURNS = 3

# Errors of accept() that mean "no resources right now" rather than "this client failed" (trio's
# ACCEPT_CAPACITY_ERRNOS): the server must survive them and go on when resources come back.
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Descriptors the process needs besides its clients: standard streams, the event loop, the listening
# sockets, a log file, the interpreter's own, and clients being turned away with ERR busy.
# `max_connections` must leave these free.
FD_RESERVE = 32 + MAX_LINGERING
# At most one log line per this many seconds about running out of descriptors.
CAPACITY_LOG_INTERVAL = 1.0

OnListening = Callable[[str, str, str, int], None]
"""Told (proto, service, host, port) once per listener when it is ready: the CLI prints it."""


@dataclass(frozen=True)
class BoundListener:
    """A listener as configured, and where its sockets ended up."""

    listener: Listener
    addresses: tuple[tuple[str, int], ...]  # (host, port) of each socket; all share one port

    @property
    def proto(self) -> str:
        return self.listener.proto

    @property
    def service(self) -> str:
        return self.listener.service

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    @property
    def host(self) -> str:
        """The host for people: `::` when every interface of both families listens (as in `[::]:9876`)."""
        if self.listener.host is None and len(self.addresses) > 1:
            return ALL_IPV6
        return self.addresses[0][0]

    def __str__(self) -> str:
        return f"{self.proto} {self.service} {format_address(self.host, self.port)}"


@dataclass(frozen=True)
class ShutdownResult:
    forced: bool = False  # a second signal cut the grace period short
    aborted: int = 0  # connections still open when the grace period ended, dropped


class RunningServer:
    """Handle on a server started by `open_server`."""

    def __init__(self, config: ServerConfig, log: logging.Logger, loop: str) -> None:
        self.config = config
        self.log = log
        self.loop_name = loop
        self.listeners: tuple[BoundListener, ...] = ()
        self.tcp_listeners: list[TcpListener] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._listening: list[tuple[socket.socket, TcpListener]] = []  # for the last accepts at shutdown
        self._udp: list[asyncio.DatagramTransport | UdpThread] = []  # each closes its socket
        self.limits: Limits = config.limits  # as fitted to the descriptor limit (see fit_max_connections)
        self.admission: Admission | None = None
        self.udp_endpoints: list[tuple[str, UdpEndpoint, UdpGuard]] = []  # (label, endpoint, guard)
        self.tls: Any = None  # the ssl.SSLContext of TCP listeners, when TLS is on
        self.capacity_errors = 0  # accept() calls that failed for lack of descriptors or memory

    def stats(self) -> dict[str, Any]:
        """Counters for people and programs: TCP clients and refusals, UDP drops by reason."""
        out: dict[str, Any] = {}
        if self.tcp_listeners:
            tcp: dict[str, Any] = {"open": len(self.connections)}
            if self.admission is not None:
                tcp.update(self.admission.stats())
            closed: dict[str, int] = {}
            for listener in self.tcp_listeners:
                for reason, n in listener.closed_by.items():
                    closed[reason] = closed.get(reason, 0) + n
            tcp["closed_by"] = closed
            tcp["accept_errors"] = self.capacity_errors
            out["tcp"] = tcp
        udp: dict[str, dict[str, int]] = {}
        seen: set[int] = set()
        for label, endpoint, guard in self.udp_endpoints:
            entry = udp.setdefault(label, {"send_buffer_full": 0})
            entry["send_buffer_full"] += endpoint.send_drops
            if id(guard) not in seen:  # one guard serves every socket of a listener
                seen.add(id(guard))
                for name, n in guard.stats().items():
                    entry[name] = entry.get(name, 0) + n
        if udp:
            out["udp"] = udp
        return out

    @property
    def connections(self) -> list[TcpConnection]:
        """Every open TCP connection, all listeners together."""
        return [conn for listener in self.tcp_listeners for conn in listener.connections]

    def stop_accepting(self) -> None:
        """Close the listening sockets; connections already accepted go on."""
        for server in self._servers:
            server.close()

    async def shutdown(
        self, grace: float | None = None, force: asyncio.Event | None = None
    ) -> ShutdownResult:
        """Stop in order: no new clients, answer what was received, close, drop what is left after `grace`."""
        grace = self.config.grace if grace is None else grace
        await self._accept_the_backlog()
        self.stop_accepting()
        await _turns(SETTLE_TURNS)
        for transport in self._udp:
            transport.close()
        for listener in self.tcp_listeners:
            listener.begin_shutdown()
        await _turns(SETTLE_TURNS)  # clients owed nothing are gone now; count those still collecting
        waiting = len(self.connections)
        if waiting:
            self.log.info(
                ngettext(
                    "waiting up to %(grace)g s for %(count)d client to collect its answers "
                    "(a second Ctrl-C stops now)",
                    "waiting up to %(grace)g s for %(count)d clients to collect their answers "
                    "(a second Ctrl-C stops now)",
                    waiting,
                ),
                {"grace": grace, "count": waiting},
            )
            await self._wait_all_gone(grace, force)
        forced = force is not None and force.is_set()
        aborted = self.abort()
        if aborted:
            self.log.info(
                ngettext(
                    "dropped %(count)d client that had not finished",
                    "dropped %(count)d clients that had not finished",
                    aborted,
                ),
                {"count": aborted},
            )
        await self._settle()
        return ShutdownResult(forced=forced, aborted=aborted)

    async def _accept_the_backlog(self) -> None:
        """Serve the clients the kernel has already connected but we have not accepted yet.

        Closing a listening socket resets every connection still in its backlog: clients that
        connected and sent their lines just before the signal would lose them all. So before we stop
        accepting, one last round of accept() takes them in, to be answered like everyone else.
        """
        loop = asyncio.get_running_loop()
        pending = []
        for sock, tcp in self._listening:
            for _attempt in range(BACKLOG):
                try:
                    conn, _address = sock.accept()
                except (BlockingIOError, InterruptedError):
                    break  # the backlog is empty
                except OSError:
                    break  # out of descriptors, or the socket is closed: the rest are reset, as before
                conn.setblocking(False)
                pending.append(loop.connect_accepted_socket(tcp.protocol_factory, conn))
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def _wait_all_gone(self, grace: float, force: asyncio.Event | None) -> None:
        tasks: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(asyncio.gather(*(lst.wait_all_gone() for lst in self.tcp_listeners)))
        ]
        if force is not None:
            tasks.append(asyncio.ensure_future(force.wait()))
        _done, pending = await asyncio.wait(tasks, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def abort(self) -> int:
        """Drop every connection and close every socket now; return how many connections were dropped."""
        self.stop_accepting()
        for transport in self._udp:
            transport.close()
        return sum(listener.abort_all() for listener in self.tcp_listeners)

    async def _settle(self) -> None:
        # Transports report connection_lost on a later loop turn; let them, so none is left half-closed
        # when the loop ends (and the log's "left" lines are complete).
        await _turns(SETTLE_TURNS)
        for server in self._servers:
            await server.wait_closed()

    # -- starting

    async def _start_tcp(
        self,
        listener: Listener,
        service: Service,
        admit: AdmitHook | None,
        prebound: list[socket.socket] | None = None,
    ) -> tuple[tuple[str, int], ...]:
        loop = asyncio.get_running_loop()
        socks = prebound or open_listening_sockets("tcp", listener.host, listener.port)
        label = f"tcp {listener.service}"
        tcp = TcpListener(
            service,
            self.limits,
            self.log,
            label,
            verbose=self.config.verbose,
            admit=admit,
            admission=self.admission,
            tls=self.tls,
        )
        self.tcp_listeners.append(tcp)
        addresses = tuple((s.getsockname()[0], s.getsockname()[1]) for s in socks)
        for i, sock in enumerate(socks):
            try:
                server = await loop.create_server(tcp.protocol_factory, sock=sock, backlog=BACKLOG)
            except OSError as exc:
                for rest in socks[i:]:
                    rest.close()
                where = format_address(addresses[i][0], addresses[i][1])
                raise BindError(describe_bind_error(exc, "tcp", where)) from exc
            self._servers.append(server)
            self._listening.append((sock, tcp))
        tcp.start_idle_sweep(loop)
        return addresses

    async def _start_udp(
        self, listener: Listener, service: Service, prebound: list[socket.socket] | None = None
    ) -> tuple[tuple[str, int], ...]:
        loop = asyncio.get_running_loop()
        socks = prebound or open_listening_sockets("udp", listener.host, listener.port)
        label = f"udp {listener.service}"
        endpoint_class = VerboseUdpEndpoint if self.config.verbose else UdpEndpoint
        addresses = tuple((s.getsockname()[0], s.getsockname()[1]) for s in socks)
        guard = self._udp_guard()
        limits = self.limits
        if self.config.udp_io == "thread":
            threads = serve_in_threads(
                socks, lambda: endpoint_class(service, self.log, label, guard, limits.udp_send_buffer)
            )
            self._udp.extend(threads)
            self.udp_endpoints.extend((label, thread.endpoint, guard) for thread in threads)
            return addresses
        for i, sock in enumerate(socks):
            try:
                transport, protocol = await loop.create_datagram_endpoint(
                    lambda: endpoint_class(service, self.log, label, guard, limits.udp_send_buffer),
                    sock=sock,
                )
            except OSError as exc:
                for rest in socks[i:]:
                    rest.close()
                where = format_address(addresses[i][0], addresses[i][1])
                raise BindError(describe_bind_error(exc, "udp", where)) from exc
            self._udp.append(transport)
            self.udp_endpoints.append((label, protocol, guard))
        return addresses

    # -- hardening

    def _access(self) -> AccessList:
        access = self.config.access
        try:
            return AccessList.from_files(access.allow, access.deny, access.allow_texts, access.deny_texts)
        except ValueError as exc:
            message = _("bad address or network in the access list: {error}").format(error=exc)
            raise ConfigError(message) from exc

    def _prepare(self) -> None:
        """Everything the listeners share, built once before any is bound."""
        limits = self.limits = fit_max_connections(self.config.limits, self.log)
        access = self._access()
        guard = ConnectionGuard(access, ConnectionLimiter(limits.max_per_address, limits.limit_loopback))
        self.admission = Admission(limits.max_connections, guard)
        tls = self.config.tls
        if tls is not None:
            from socketlab.transports.tls import server_context  # noqa: PLC0415 - ssl only when asked

            self.tls = server_context(tls.cert, tls.key)

    def _udp_guard(self) -> UdpGuard:
        limits = self.limits
        rate = RateLimiter(limits.udp_rate, limits.udp_burst, limits.limit_loopback)
        return UdpGuard(self._access(), UdpSourceGuard(limits.udp_drop_privileged_ports), rate)

    def on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The loop's exception handler: accept() out of descriptors is logged once a second at most.

        asyncio's loop reports EMFILE on accept with a traceback, stops accepting for one second and
        tries again (the clients wait in the backlog). uvloop (libuv) closes a reserved descriptor,
        accepts and closes the waiting clients at once, and reports nothing. Either way the server
        goes on; this keeps the log to one line a second instead of a traceback each time.
        """
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in ACCEPT_CAPACITY_ERRNOS:
            self.capacity_errors += 1
            now = loop.time()
            if now >= self._capacity_logged_at + CAPACITY_LOG_INTERVAL:
                self._capacity_logged_at = now
                self.log.warning(
                    _(
                        "cannot accept new clients: %(error)s (%(count)d failed accept calls so far); "
                        "retrying"
                    ),
                    {"error": exc.strerror or exc, "count": self.capacity_errors},
                )
            return
        if self._previous_handler is not None:
            self._previous_handler(loop, context)  # whoever watched the loop before us still does
        else:
            loop.default_exception_handler(context)

    _capacity_logged_at = float("-inf")
    _previous_handler: Any = None

    async def report_periodically(self, interval: float) -> None:
        """Every `interval`: what was dropped since the last report; with `stats`, everything."""
        previous = _drop_totals(self.stats())
        while True:
            await asyncio.sleep(interval)
            current = self.stats()
            totals = _drop_totals(current)
            news = {k: v - previous.get(k, 0) for k, v in totals.items() if v != previous.get(k, 0)}
            previous = totals
            if news:
                self.log.info(
                    _("dropped or refused in the last %(seconds)g s: %(counts)s"),
                    {"seconds": interval, "counts": ", ".join(f"{k} {v}" for k, v in sorted(news.items()))},
                )
            if self.config.stats:
                self.log_stats()

    def log_stats(self) -> None:
        # JSON, not translated: the line is for programs (the soak script) as much as for people.
        self.log.info(_("statistics: %(stats)s"), {"stats": json.dumps(self.stats(), sort_keys=True)})


def _drop_totals(stats: dict[str, Any]) -> dict[str, int]:
    """Every refusal counter as one flat mapping `tcp busy`, `udp upper rate_limited`..., non-zero only."""
    flat: dict[str, int] = {}
    tcp = stats.get("tcp", {})
    for key in ("busy", "denied", "accept_errors"):
        if tcp.get(key):
            flat[f"tcp {key}"] = tcp[key]
    for reason, n in tcp.get("closed_by", {}).items():
        if n:
            flat[f"tcp {reason}"] = n
    for label, counts in stats.get("udp", {}).items():
        for reason, n in counts.items():
            if n:
                flat[f"{label} {reason}"] = n
    return flat


def fit_max_connections(limits: Limits, log: logging.Logger) -> Limits:
    """`limits` with `max_connections` that the file-descriptor limit can hold.

    Raises the soft limit (RLIMIT_NOFILE) up to the hard one when that is enough; otherwise lowers
    `max_connections` and says so once, so extra clients get ERR busy instead of the server failing
    on accept.
    """
    wanted = limits.max_connections
    if not wanted:
        return limits
    try:
        import resource  # noqa: PLC0415 - Unix only
    except ImportError:
        return limits  # Windows: no such limit to check
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + FD_RESERVE
    # Room for twice as many: a burst of clients is accepted whole before the first of them can be
    # turned away, so 2 x max-connections at once must still find descriptors to be told ERR busy.
    room = 2 * need
    if soft != resource.RLIM_INFINITY and soft < room:
        target = room if hard == resource.RLIM_INFINITY else min(hard, room)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError):
                pass  # not allowed to raise it: fall through and lower max_connections instead
    if soft == resource.RLIM_INFINITY or soft >= need:
        return limits
    allowed = max(1, soft - FD_RESERVE)
    log.warning(
        _(
            "--max-connections lowered from %(wanted)d to %(allowed)d: this process may open only "
            "%(limit)d files (ulimit -n); raise that limit to serve more clients at once"
        ),
        {"wanted": wanted, "allowed": allowed, "limit": soft},
    )
    return dataclasses.replace(limits, max_connections=allowed)


async def _turns(count: int) -> None:
    for _turn in range(count):
        await asyncio.sleep(0)


# An answer may be at most this many times the longest line: upper case can triple UTF-8 (U+0390 is 2
# bytes, its upper case 6), so the built-in services stay within it by themselves; a user's function
# is held to it too, so one line cannot make the server build an answer of any size.
MAX_ANSWER_FACTOR = 3


def _bounded(func: Callable[[str], str], limit: int) -> Callable[[str], str]:
    def bounded(text: str) -> str:
        answer = func(text)
        # A str of n characters is at most 4n bytes: only a long answer needs encoding to be measured.
        if isinstance(answer, str) and len(answer) * 4 > limit and len(encode(answer)) > limit:
            raise ServiceError(
                _("the answer is longer than {limit} bytes (3 x --max-line)").format(limit=limit)
            )
        return answer

    return bounded


def _error_reporter(log: logging.Logger, label: str, verbose: bool) -> ErrorReporter:
    def report(request: bytes, exc: BaseException) -> None:
        log.error(
            _("%(listener)s: the service failed on %(request)r: %(error)s"),
            {"listener": label, "request": request, "error": f"{type(exc).__name__}: {exc}"},
            exc_info=exc if verbose else None,
        )

    return report


@asynccontextmanager
async def open_server(
    config: ServerConfig,
    *,
    log: logging.Logger | None = None,
    admit: AdmitHook | None = None,
    sockets: Sequence[list[socket.socket]] | None = None,
) -> AsyncIterator[RunningServer]:
    """Bind every listener of `config` and serve until the block ends.

    Raises `ConfigError` (unknown service, before anything is bound) or `BindError`. `admit`, when
    given, is asked about each new TCP client's address and may refuse it. `sockets`, when given,
    holds already bound sockets for each listener, in order (a worker process serves those).
    """
    log = log or logging.getLogger(LOGGER_NAME)
    loop = asyncio.get_running_loop()
    running = RunningServer(config, log, loop_name(loop))
    # Every service first: a typo in one must not leave the others bound.
    services = [
        (lst, make_service(lst.service, _error_reporter(log, f"{lst.proto} {lst.service}", config.verbose)))
        for lst in config.listeners
    ]
    running._prepare()
    for _listener, service in services:
        if isinstance(service, Function):
            service.func = _bounded(service.func, MAX_ANSWER_FACTOR * running.limits.max_line)
    previous_handler = running._previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(running.on_loop_error)
    bound: list[BoundListener] = []
    reporter: asyncio.Task[None] | None = None
    try:
        for i, (listener, service) in enumerate(services):
            prebound = sockets[i] if sockets is not None else None
            if listener.proto == "tcp":
                addresses = await running._start_tcp(listener, service, admit, prebound)
            else:
                addresses = await running._start_udp(listener, service, prebound)
            bound.append(BoundListener(listener, addresses))
        running.listeners = tuple(bound)
        reporter = loop.create_task(running.report_periodically(config.stats_interval))
        yield running
    finally:
        if reporter is not None:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
        running.abort()
        await running._settle()
        if config.stats:
            running.log_stats()
        loop.set_exception_handler(previous_handler)


def _install_signal_handlers(
    loop: asyncio.AbstractEventLoop, handler: Callable[[], None]
) -> list[tuple[signal.Signals, Any]]:
    """SIGINT and SIGTERM call `handler` on the loop; returns what to restore afterwards."""
    installed: list[tuple[signal.Signals, Any]] = []
    for name in ("SIGINT", "SIGTERM"):
        sig = getattr(signal, name, None)
        if sig is None:
            continue  # Windows has no SIGTERM to catch
        try:
            loop.add_signal_handler(sig, handler)
            installed.append((sig, None))
        except NotImplementedError:
            # Windows' loops cannot watch signals; a plain handler hops onto the loop's thread instead.
            previous = signal.signal(sig, lambda _sig, _frame: loop.call_soon_threadsafe(handler))
            installed.append((sig, previous))
        except (RuntimeError, ValueError):
            pass  # not the main thread: whoever runs us there stops us with `stop` instead
    return installed


def _remove_signal_handlers(
    loop: asyncio.AbstractEventLoop, installed: list[tuple[signal.Signals, Any]]
) -> None:
    for sig, previous in installed:
        if previous is None:
            loop.remove_signal_handler(sig)
        else:
            signal.signal(sig, previous)


async def serve(
    config: ServerConfig,
    *,
    on_listening: OnListening | None = None,
    log: logging.Logger | None = None,
    stop: asyncio.Event | None = None,
    sockets: Sequence[list[socket.socket]] | None = None,
) -> ShutdownResult:
    """Serve `config` until Ctrl-C, SIGTERM or `stop` is set; then shut down within `config.grace`.

    A second signal ends the grace period at once (the result then says `forced`).
    """
    log = log or logging.getLogger(LOGGER_NAME)
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    force = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            force.set()
        else:
            stop.set()

    installed = _install_signal_handlers(loop, on_signal)
    try:
        async with open_server(config, log=log, sockets=sockets) as running:
            if on_listening is not None:
                for b in running.listeners:
                    on_listening(b.proto, b.service, b.host, b.port)
            log.debug(_("event loop: %(loop)s"), {"loop": running.loop_name})
            await stop.wait()
            log.info(_("stopping: no new clients; answering what was received"))
            return await running.shutdown(config.grace, force)
    finally:
        _remove_signal_handlers(loop, installed)


def run_server(
    config: ServerConfig,
    *,
    on_listening: OnListening | None = None,
    log: logging.Logger | None = None,
    sockets: Sequence[list[socket.socket]] | None = None,
) -> ShutdownResult:
    """`serve(config)` on a new event loop of the kind `config.loop` names."""
    # A long-running server process: worth keeping large buffers in the heap (see allocator.py).
    keep_heap_for_streaming()
    return run(serve(config, on_listening=on_listening, log=log, sockets=sockets), config.loop)
