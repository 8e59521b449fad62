"""The server's lifecycle: listen, serve, stop in order. Used by `socketlab serve`, tools and tests.

- `open_server(config)` is an async context manager: it binds every listener (port 0 picks a free
  port) and yields a `RunningServer` whose `listeners` say where it listens, so tests never race for a
  port. Leaving the block drops everything at once.
- `serve(config)` runs until Ctrl-C or SIGTERM, then shuts down gracefully (uvicorn's order): stop
  accepting, answer the lines already received, close each connection without losing its answers,
  drop whatever is left when the grace period ends. A second signal ends the wait at once.

Log lines go to the stdlib logger "socketlab.server"; configuring handlers is the CLI's business.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from socketlab.config import Listener, ServerConfig
from socketlab.core.services import ErrorReporter, Service, make_service
from socketlab.errors import BindError
from socketlab.i18n import _, ngettext
from socketlab.transports.binding import (
    ALL_IPV6,
    BACKLOG,
    describe_bind_error,
    format_address,
    open_listening_sockets,
)
from socketlab.transports.loop import loop_name, run
from socketlab.transports.tcp_server import AdmitHook, TcpConnection, TcpListener
from socketlab.transports.udp_server import UdpEndpoint, VerboseUdpEndpoint

LOGGER_NAME = "socketlab.server"

# Loop turns given, after we stop accepting, to read what clients had sent before the signal: each turn
# polls every socket once, so lines already in the kernel's buffers are read and answered.
SETTLE_TURNS = 3

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
        self._udp: list[asyncio.DatagramTransport] = []

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
        self, listener: Listener, service: Service, admit: AdmitHook | None
    ) -> tuple[tuple[str, int], ...]:
        loop = asyncio.get_running_loop()
        socks = open_listening_sockets("tcp", listener.host, listener.port)
        label = f"tcp {listener.service}"
        tcp = TcpListener(
            service, self.config.limits, self.log, label, verbose=self.config.verbose, admit=admit
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
        tcp.start_idle_sweep(loop)
        return addresses

    async def _start_udp(self, listener: Listener, service: Service) -> tuple[tuple[str, int], ...]:
        loop = asyncio.get_running_loop()
        socks = open_listening_sockets("udp", listener.host, listener.port)
        label = f"udp {listener.service}"
        endpoint_class = VerboseUdpEndpoint if self.config.verbose else UdpEndpoint
        addresses = tuple((s.getsockname()[0], s.getsockname()[1]) for s in socks)
        for i, sock in enumerate(socks):
            try:
                transport, _protocol = await loop.create_datagram_endpoint(
                    lambda: endpoint_class(service, self.log, label), sock=sock
                )
            except OSError as exc:
                for rest in socks[i:]:
                    rest.close()
                where = format_address(addresses[i][0], addresses[i][1])
                raise BindError(describe_bind_error(exc, "udp", where)) from exc
            self._udp.append(transport)
        return addresses


async def _turns(count: int) -> None:
    for _turn in range(count):
        await asyncio.sleep(0)


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
    config: ServerConfig, *, log: logging.Logger | None = None, admit: AdmitHook | None = None
) -> AsyncIterator[RunningServer]:
    """Bind every listener of `config` and serve until the block ends.

    Raises `ConfigError` (unknown service, before anything is bound) or `BindError`. `admit`, when
    given, is asked about each new TCP client's address and may refuse it.
    """
    log = log or logging.getLogger(LOGGER_NAME)
    running = RunningServer(config, log, loop_name(asyncio.get_running_loop()))
    # Every service first: a typo in one must not leave the others bound.
    services = [
        (lst, make_service(lst.service, _error_reporter(log, f"{lst.proto} {lst.service}", config.verbose)))
        for lst in config.listeners
    ]
    bound: list[BoundListener] = []
    try:
        for listener, service in services:
            if listener.proto == "tcp":
                addresses = await running._start_tcp(listener, service, admit)
            else:
                addresses = await running._start_udp(listener, service)
            bound.append(BoundListener(listener, addresses))
        running.listeners = tuple(bound)
        yield running
    finally:
        running.abort()
        await running._settle()


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
        async with open_server(config, log=log) as running:
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
    config: ServerConfig, *, on_listening: OnListening | None = None, log: logging.Logger | None = None
) -> ShutdownResult:
    """`serve(config)` on a new event loop of the kind `config.loop` names."""
    return run(serve(config, on_listening=on_listening, log=log), config.loop)
