"""The teaching models: the lecture's servers on blocking sockets, to watch and compare.

- `iterative` (iterative.py): one client at a time, as the slides' TCPServer: accept, serve until the
  client leaves, accept the next. A second client waits in the listen queue meanwhile.
- `threads` (threads.py): one thread per client, each blocking in its own recv().
- `selectors` (selectors.py): one thread for every client, waiting in select() for whichever is
  ready; non-blocking calls. What asyncio does underneath.

A model is one function, `serve_listener(server, endpoint)`: how a listening TCP socket is served.
Everything else is shared and lives here: binding, the per-connection loop (the sans-IO
`StreamSession` does the framing, so there is no second framer), UDP (a recvfrom/sendto loop in its
own thread under every model, since UDP has no connections to be iterative or threaded about), and
stopping. The asyncio server is the fast one; these exist so the system calls can be traced
(socketlab.tracing) and the models compared. Library code: it logs, it never prints.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any, Protocol

from socketlab.config import READ_CHUNK, Limits, Listener, ServerConfig
from socketlab.core.framing import split_lines
from socketlab.core.services import Service, make_service
from socketlab.core.session import StreamSession
from socketlab.core.text import to_display
from socketlab.errors import BindError, ConfigError
from socketlab.i18n import _
from socketlab.tracing import Tracer, open_socket
from socketlab.transports.binding import describe_bind_error, format_address, format_peer

__all__ = ["MODELS", "BlockingServer", "Client", "Endpoint", "run_blocking_server"]

MODELS = ("iterative", "threads", "selectors")

logger = logging.getLogger(__name__)

OnListening = Callable[[str, str, str, int], None]
"""Called as on_listening(proto, service, host, port) once per bound socket."""

# listen(backlog) is the length of the queue of connections the kernel has completed and that wait
# for accept(); it is not a limit on clients. 128 was Linux's SOMAXCONN for decades.
BACKLOG = 128
# Big enough for any UDP datagram: we decode only the bytes received, so size costs nothing.
DATAGRAM_BUFFER = 65_535
# After "ERR line too long", how long to read and drop what the client is still sending, so that
# closing with unread bytes does not reset the connection before the client reads the error.
LINGER_SECONDS = 1.0
# When accept() fails for lack of file descriptors, wait this long before trying again.
ACCEPT_RETRY_SECONDS = 0.1
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# A client that reset the connection before we accepted it: nothing to serve, accept the next.
ACCEPT_SKIP_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
# Binding "::" fails this way where the system has no IPv6: serve IPv4 only.
NO_IPV6_ERRNOS = frozenset({errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT})
# How often the waiting main thread wakes up: Windows does not interrupt a wait on Ctrl-C.
WAIT_SLICE = 1.0
# With port 0 on every interface, IPv6 must get the port IPv4 got; another program may hold it.
PORT_PAIR_ATTEMPTS = 5


class _Terminate(Exception):
    """SIGTERM, turned into an exception in the main thread so it unwinds like Ctrl-C."""


@dataclass(frozen=True)
class Endpoint:
    """One bound socket with what it serves; `label` names it in log lines ("tcp upper")."""

    sock: socket.socket
    service: Service
    label: str


@dataclass(frozen=True)
class Client:
    """One accepted connection."""

    conn: socket.socket
    peer: str  # "127.0.0.1:54012": the source port tells clients apart
    endpoint: Endpoint


class ServeListener(Protocol):
    def __call__(self, server: BlockingServer, endpoint: Endpoint) -> None: ...


class BlockingServer:
    """The parts every blocking model shares: accepting, serving one connection, threads, stopping."""

    def __init__(self, config: ServerConfig, tracer: Tracer | None, stop: threading.Event) -> None:
        self.config = config
        self.limits: Limits = config.limits
        self.tracer = tracer  # for waits a model makes outside socket calls (the selectors model)
        self.stop = stop
        self.failed = False
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()

    # -- what the models call --

    def accept(self, endpoint: Endpoint) -> Client | None:
        """The next client, registered so that stopping can reach it; None once the server stops."""
        while not self.stop.is_set():
            try:
                conn, address = endpoint.sock.accept()
            except OSError as exc:
                if self.stop.is_set():
                    return None
                if exc.errno in ACCEPT_CAPACITY_ERRNOS:
                    self.accept_failed(endpoint, exc)
                    self.stop.wait(ACCEPT_RETRY_SECONDS)
                    continue
                if exc.errno in ACCEPT_SKIP_ERRNOS:
                    continue
                raise
            client = self._admit(endpoint, conn, address)
            if client is not None:
                return client
        return None

    def accept_nowait(self, endpoint: Endpoint) -> Client | None:
        """A client already waiting on a non-blocking listening socket, or None.

        Raises OSError when the system is out of file descriptors (ACCEPT_CAPACITY_ERRNOS).
        """
        if self.stop.is_set():
            return None
        try:
            conn, address = endpoint.sock.accept()
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            if exc.errno in ACCEPT_SKIP_ERRNOS:
                return None
            raise
        return self._admit(endpoint, conn, address)

    def accept_failed(self, endpoint: Endpoint, exc: OSError) -> None:
        logger.warning(
            _("%(listener)s: cannot accept a client: %(reason)s"),
            {"listener": endpoint.label, "reason": exc.strerror},
        )

    def _admit(self, endpoint: Endpoint, conn: socket.socket, address: Any) -> Client | None:
        with self._lock:
            if self.stop.is_set():
                # The wake-up connection of _wake(), or a client that came too late.
                conn.close()
                return None
            self._connections.add(conn)
        client = Client(conn, format_peer(address), endpoint)
        logger.info(_("%(listener)s: %(peer)s connected"), {"listener": endpoint.label, "peer": client.peer})
        return client

    def serve_stream(self, client: Client) -> None:
        """Answer one client until it leaves, breaks a limit or stays idle too long; then close."""
        conn = client.conn
        session = StreamSession(client.endpoint.service, self.limits.max_line)
        if self.limits.idle_timeout > 0:
            conn.settimeout(self.limits.idle_timeout)
        reason: str | None = None
        try:
            while True:
                # One recv is not one message: a line may come in pieces, or many lines in one
                # piece. The session keeps what is incomplete and answers only whole lines.
                data = conn.recv(READ_CHUNK)
                if not data:
                    rest = session.end_of_input()
                    if rest:
                        conn.sendall(rest)
                    reason = self.eof_reason()
                    break
                self.log_received(client, data)
                answer = session.receive_data(data)
                if answer:
                    # sendall, not send: send may write only part of the answer.
                    conn.sendall(answer)
                if session.closing:
                    reason = self.too_long_reason()
                    self._linger(conn)
                    break
        except TimeoutError:
            reason = self.idle_reason()
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
        finally:
            self.release(client, reason)

    def release(self, client: Client, reason: str | None) -> None:
        """Close a client's connection and log why it ended (None: the client left)."""
        with self._lock:
            self._connections.discard(client.conn)
            client.conn.close()
        args = {"listener": client.endpoint.label, "peer": client.peer, "reason": reason}
        if reason is None:
            logger.info(_("%(listener)s: %(peer)s left"), args)
        else:
            logger.info(_("%(listener)s: %(peer)s left (%(reason)s)"), args)

    def log_received(self, client: Client, data: bytes) -> None:
        if self.config.verbose:
            for line in split_lines(data):
                logger.info(
                    _("%(listener)s: %(peer)s >> %(line)r"),
                    {"listener": client.endpoint.label, "peer": client.peer, "line": to_display(line)},
                )

    def eof_reason(self) -> str | None:
        # After stop, the end of input is our own shutdown(SHUT_RD), not the client leaving.
        return _("server shutting down") if self.stop.is_set() else None

    def too_long_reason(self) -> str:
        return _("line too long: over {limit} bytes").format(limit=self.limits.max_line)

    def idle_reason(self) -> str:
        return _("idle for {seconds:g} s").format(seconds=self.limits.idle_timeout)

    def start_thread(self, target: Callable[..., None], *args: Any, name: str) -> None:
        """Run target(*args) in a new thread that stop() waits for; a crash there is logged."""
        thread = threading.Thread(target=self._run_client, args=(target, args), name=name, daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()

    # -- shared by every model --

    def serve_datagrams(self, endpoint: Endpoint) -> None:
        """UDP under every model: each datagram is one request, answered by one datagram."""
        sock, service = endpoint.sock, endpoint.service
        while True:
            try:
                # Decode only the bytes received: the Java UDPServer turns its whole 1024-byte
                # buffer into a String, NUL padding and all.
                data, address = sock.recvfrom(DATAGRAM_BUFFER)
            except ConnectionResetError:
                continue  # Windows reports an ICMP "port unreachable" from an earlier answer here
            except OSError:
                if self.stop.is_set():
                    return
                raise
            if self.stop.is_set():
                return
            if self.config.verbose:
                logger.info(
                    _("%(listener)s: %(peer)s >> %(line)r"),
                    {"listener": endpoint.label, "peer": format_peer(address), "line": to_display(data)},
                )
            answer = service.answer_datagram(data)
            if answer is None:
                continue
            try:
                sock.sendto(answer, address)
            except OSError as exc:
                # One client's unreachable address must not stop the service for everyone.
                logger.warning(
                    _("%(listener)s: cannot answer %(peer)s: %(reason)s"),
                    {"listener": endpoint.label, "peer": format_peer(address), "reason": exc.strerror},
                )

    def run_listener(self, target: Callable[..., None], *args: Any) -> None:
        """Body of a listener's thread: a crash there stops the whole server, which then fails."""
        try:
            target(*args)
        except Exception:
            logger.exception(_("a listener stopped with an error; stopping the server"))
            self.failed = True
            self.stop.set()

    def _run_client(self, target: Callable[..., None], args: tuple[Any, ...]) -> None:
        try:
            target(*args)
        except Exception:
            # A bug while serving one client must not take the others down.
            logger.exception(_("error while serving a client"))
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _linger(self, conn: socket.socket) -> None:
        """FIN after the error line, then read and drop until the client goes (or LINGER_SECONDS)."""
        deadline = _Deadline(LINGER_SECONDS)
        with contextlib.suppress(OSError):  # a reset or the timeout: either way, we close now
            conn.shutdown(socket.SHUT_WR)
            while deadline.left() > 0:
                conn.settimeout(deadline.left())
                if not conn.recv(READ_CHUNK):
                    break

    def begin_stop(self) -> None:
        """Stop accepting and wake every thread blocked in a call on a client's connection."""
        with self._lock:
            self.stop.set()
            for conn in self._connections:
                # SHUT_RD wakes a recv() blocked in another thread (it returns b""), and the lines
                # already received still get their answers. Closing would not wake it on Linux.
                with contextlib.suppress(OSError):  # the client may be gone already
                    conn.shutdown(socket.SHUT_RD)

    def client_threads(self) -> list[threading.Thread]:
        with self._lock:
            return list(self._threads)


def _wake(sock: socket.socket) -> None:
    """Wake the thread blocked in accept() or recvfrom() on `sock`, from outside.

    Closing a socket does not wake a thread blocked on it (not on Linux, at least), and shutdown()
    of a listening socket wakes accept() on Linux only; a connection (TCP) or an empty datagram
    (UDP) from ourselves does it everywhere. The woken thread sees the stop flag and returns.
    """
    try:
        host, port = sock.getsockname()[:2]
    except OSError:
        return  # already closed: nobody is blocked on it
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    with contextlib.suppress(OSError), socket.socket(sock.family, sock.type) as waker:
        waker.settimeout(WAIT_SLICE)
        if sock.type == socket.SOCK_STREAM:
            waker.connect((host, port))
        else:
            waker.sendto(b"", (host, port))


def bind_addresses(listener: Listener, kind: int) -> Iterator[tuple[int, str]]:
    """(family, host) pairs to bind for one listener, the preferred first."""
    if listener.host is None:
        # The lecture's bind(('', port)): every interface. "::" with IPV6_V6ONLY beside "0.0.0.0"
        # behaves the same on every system, where a dual-stack "::" alone does not.
        yield socket.AF_INET, "0.0.0.0"
        if socket.has_ipv6:
            yield socket.AF_INET6, "::"
        return
    try:
        infos = socket.getaddrinfo(listener.host, listener.port, type=kind, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BindError(
            _("cannot listen on {host}: {reason}").format(host=listener.host, reason=exc.strerror)
        ) from exc
    family, _type, _proto, _name, sockaddr = infos[0]
    yield family, str(sockaddr[0])


def _open_bound(
    listener: Listener, family: int, host: str, port: int, tracer: Tracer | None
) -> socket.socket:
    kind = socket.SOCK_STREAM if listener.proto == "tcp" else socket.SOCK_DGRAM
    sock = open_socket(family, kind, tracer)
    try:
        if kind == socket.SOCK_STREAM and os.name != "nt":
            # SO_REUSEADDR: a restarted server can bind its port again at once, while connections
            # of the previous run still sit in TIME_WAIT. (On Windows it means something unsafe.)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_listener(listener: Listener, tracer: Tracer | None) -> list[socket.socket]:
    """The bound (and, for TCP, listening) sockets of one listener; BindError if it cannot be done."""
    if listener.proto not in ("tcp", "udp"):
        raise ConfigError(_("unknown protocol {proto!r}: use tcp or udp").format(proto=listener.proto))
    kind = socket.SOCK_STREAM if listener.proto == "tcp" else socket.SOCK_DGRAM
    addresses = list(bind_addresses(listener, kind))
    for attempt in range(PORT_PAIR_ATTEMPTS):
        bound: list[socket.socket] = []
        port = listener.port
        try:
            for index, (family, host) in enumerate(addresses):
                try:
                    sock = _open_bound(listener, family, host, port, tracer)
                except OSError as exc:
                    if index > 0 and exc.errno in NO_IPV6_ERRNOS:
                        continue
                    if (
                        index > 0
                        and listener.port == 0
                        and exc.errno == errno.EADDRINUSE
                        and attempt + 1 < PORT_PAIR_ATTEMPTS
                    ):
                        raise _PortTaken from exc
                    raise BindError(
                        describe_bind_error(exc, listener.proto, format_address(host, port))
                    ) from exc
                bound.append(sock)
                port = sock.getsockname()[1]
        except _PortTaken:
            for sock in bound:
                sock.close()
            continue
        except BaseException:
            for sock in bound:
                sock.close()
            raise
        return bound
    raise AssertionError("unreachable: the last attempt raises BindError")  # pragma: no cover


class _PortTaken(Exception):
    """The port IPv4 got from port 0 is taken on IPv6: pick another pair."""


def _load_model(model: str) -> ServeListener:
    if model not in MODELS:
        raise ConfigError(
            _("unknown model {model!r}: use {choices}").format(model=model, choices=", ".join(MODELS))
        )
    module = importlib.import_module(f"socketlab.models.{model}")
    serve: ServeListener = module.serve_listener
    return serve


def _service_error_reporter(label: str) -> Callable[[bytes, BaseException], None]:
    def report(request: bytes, exc: BaseException) -> None:
        logger.error(
            _("%(listener)s: the service failed on %(request)r: %(error)s"),
            {"listener": label, "request": request, "error": f"{type(exc).__name__}: {exc}"},
        )

    return report


def run_blocking_server(
    config: ServerConfig,
    *,
    model: str,
    tracer: Tracer | None = None,
    on_listening: OnListening | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Serve every listener of `config` with blocking sockets until stopped; the exit code.

    Stops on Ctrl-C or SIGTERM (when called in the main thread) or when `stop` is set: stops
    accepting, lets each client get the answers it is owed, closes everything and returns 0; 1 if a
    listener failed. Raises BindError when a listener cannot bind, ConfigError for a bad model or
    service, before serving anything.
    """
    serve_listener = _load_model(model)
    stop = stop if stop is not None else threading.Event()
    server = BlockingServer(config, tracer, stop)
    labelled = []
    for listener in config.listeners:
        label = f"{listener.proto} {listener.service}"
        labelled.append((listener, label, make_service(listener.service, _service_error_reporter(label))))
    endpoints: list[tuple[Listener, Endpoint]] = []
    try:
        for listener, label, service in labelled:
            for sock in bind_listener(listener, tracer):
                endpoints.append((listener, Endpoint(sock, service, label)))
        for listener, endpoint in endpoints:
            host, port = endpoint.sock.getsockname()[:2]
            if on_listening is not None:
                on_listening(listener.proto, listener.service, host, port)
        return _serve_until_stopped(server, serve_listener, endpoints)
    finally:
        for _listener, endpoint in endpoints:
            endpoint.sock.close()


def _serve_until_stopped(
    server: BlockingServer, serve_listener: ServeListener, endpoints: list[tuple[Listener, Endpoint]]
) -> int:
    listener_threads = []
    for listener, endpoint in endpoints:
        if listener.proto == "tcp":
            args: tuple[Any, ...] = (serve_listener, server, endpoint)
        else:
            args = (server.serve_datagrams, endpoint)
        name = f"{endpoint.label} {format_peer(endpoint.sock.getsockname())}"
        thread = threading.Thread(target=server.run_listener, args=args, name=name, daemon=True)
        listener_threads.append(thread)
    with _sigterm_raises():
        try:
            for thread in listener_threads:
                thread.start()
            while not server.stop.wait(WAIT_SLICE):
                pass
        except (KeyboardInterrupt, _Terminate):
            pass
        logger.info(_("stopping: no new clients; answering what was received"))
        # A second signal while stopping: leave at once; the threads are daemons and die with us.
        with contextlib.suppress(KeyboardInterrupt, _Terminate):
            _stop(server, listener_threads, [endpoint.sock for _listener, endpoint in endpoints])
    return 1 if server.failed else 0


def _stop(
    server: BlockingServer, listener_threads: list[threading.Thread], socks: list[socket.socket]
) -> None:
    server.begin_stop()
    for sock in socks:
        _wake(sock)
    deadline = _Deadline(server.config.grace)
    for thread in listener_threads:
        thread.join(deadline.left())
    for thread in server.client_threads():
        thread.join(deadline.left())


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self._end - time.monotonic())


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """In the main thread, make SIGTERM unwind like Ctrl-C; elsewhere signals are not ours."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Terminate

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
