"""UDP server transport: one datagram in, `Service.answer_datagram`, one datagram back to its sender.

Nothing is added to the answer (the lecture's Java UDPClient sends no newline and must get none back),
and `None` from the service means no answer at all. There are no connections: the sender's address,
read from each datagram, is where the answer goes.

With a `UdpGuard` (the server always gives one) the endpoint cannot be turned against others: datagrams
from reflection ports, broadcast or multicast sources, refused addresses or sources over their rate are
dropped silently (and counted); an answer larger than its request is replaced by a short error or
nothing; answers are not queued beyond `send_buffer` bytes. The common case, a source already vetted
and exempt from the rate limit (loopback by default), costs one set lookup and one port test.

Each socket is served either by the event loop (`UdpEndpoint` as an asyncio DatagramProtocol) or by
a thread of its own (`UdpThread`: blocking recvfrom, the same endpoint, sendto). The thread is the
faster of the two (see docs/performance.md): both calls release the GIL, there is no loop round,
callback or transport between the kernel and the service, and it answers the common datagram itself
(`FastPath`). Its loop is `datagram_path.serve`, which the build compiles with mypyc when it can
(`DATAGRAM_PATH` says which copy runs).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, NamedTuple, cast

from socketlab.core.guards import PRIVILEGED_PORT_LIMIT, REFLECTION_PORTS, UdpGuard, is_loopback
from socketlab.core.services import Service
from socketlab.core.text import to_display
from socketlab.i18n import _
from socketlab.transports import compiled
from socketlab.transports.binding import format_peer

_datagram_module, DATAGRAM_PATH = compiled.load("datagram_path")
"""Which per-datagram loop UdpThread runs: "compiled with mypyc", or "Python (why)"."""
serve_datagrams: Callable[[Any], None] = _datagram_module.serve

# Vetted sources remembered at once; a flood of distinct (spoofed) sources only clears the memory,
# which costs those sources one full check each, never a wrong verdict.
MAX_VETTED = 4096


class FastPath(NamedTuple):
    """What a transport needs to answer the common datagram without calling `UdpEndpoint.answer`.

    A datagram from a vetted source (host in `vetted`, port not in `bad_ports`) that is ASCII gets
    `answer_ascii(data)` for its answer, if that is not None and no longer than the datagram; any other
    goes to `UdpEndpoint.answer`. That is exactly what `answer` would do, a Python call and a few
    tests cheaper (docs/performance.md).
    """

    vetted: set[str]  # the endpoint's own set, live: `answer` adds to it and clears it in place
    bad_ports: frozenset[int]
    answer_ascii: Callable[[bytes], bytes | None]


class UdpEndpoint(asyncio.DatagramProtocol):
    """One bound UDP socket serving one service."""

    __slots__ = (
        "_answer",
        "_answer_ascii",
        "_bad_ports",
        "_guard",
        "_lock",
        "_send_buffer",
        "_send_paused",
        "_sendto",
        "_time",
        "_vetted",
        "label",
        "log",
        "send_drops",
        "transport",
    )

    _sendto: Callable[[bytes, Any], object]  # set when a transport takes the endpoint

    def __init__(
        self,
        service: Service,
        log: logging.Logger,
        label: str,
        guard: UdpGuard | None = None,
        send_buffer: int = 0,
    ) -> None:
        self._answer = service.answer_datagram
        self._answer_ascii = service.ascii_datagram_function()
        self.log = log
        self.label = label
        self._send_paused = False
        self._lock: AbstractContextManager[Any] | None = None  # shared by the threads of one guard
        self._guard = guard
        self._send_buffer = send_buffer  # bytes of answers the transport may queue; 0: its default
        self.send_drops = 0  # answers dropped because the send buffer was full
        # Sources that passed every address check and are exempt from the rate limit: for them only
        # the source port still needs a look, per datagram.
        self._vetted: set[str] = set()
        bad_ports = set(REFLECTION_PORTS)
        if guard is not None and guard.source.drop_privileged_ports:
            bad_ports.update(range(PRIVILEGED_PORT_LIMIT))
        self._bad_ports = frozenset(bad_ports)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self._sendto = self.transport.sendto
        self._time = asyncio.get_running_loop().time
        if self._send_buffer:
            # Both loops' datagram transports have it (flow control), though typeshed omits it.
            cast(Any, self.transport).set_write_buffer_limits(high=self._send_buffer)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        answer = self.answer(data, addr)
        if answer is None:
            return
        # While the socket's send buffer is full, answers are dropped rather than queued without bound:
        # UDP may lose datagrams, and a client that wants the answer retries.
        if self._send_paused:
            self.send_drops += 1
        else:
            self._sendto(answer, addr)

    def fast_path(self) -> FastPath | None:
        """The shortcut a transport may take for the common datagram, or None: take none."""
        if self._guard is None:
            return None  # no vetted sources without a guard: the shortcut would never apply
        return FastPath(self._vetted, self._bad_ports, self._answer_ascii)

    def answer(self, data: bytes, addr: Any) -> bytes | None:
        """What to send back to `addr` for `data`, or None: nothing. Sends nothing itself."""
        if (
            self._guard is not None
            and (addr[1] in self._bad_ports or addr[0] not in self._vetted)
            and not self._admit(addr[0], addr[1])
        ):
            return None  # dropped silently: an answer might go to a victim; counted by the guard
        answer = self._answer_ascii(data) if data.isascii() else self._answer(data)
        if answer is not None and len(answer) > len(data) and self._guard is not None:
            return self._guard.limit_answer(data, answer)  # never larger than the request
        return answer

    def _admit(self, host: str, port: int) -> bool:
        guard = self._guard
        assert guard is not None
        if self._lock is None:
            refused = guard.check(host, port, self._time())
        else:
            with self._lock:  # the guard's rate buckets and counters are shared by several threads
                refused = guard.check(host, port, self._time())
        if refused is not None:
            return False
        rate = guard.rate
        if not rate.enabled or (not rate.limit_loopback and is_loopback(host)):
            vetted = self._vetted
            if len(vetted) >= MAX_VETTED:
                vetted.clear()
            vetted.add(host)
        return True

    def error_received(self, exc: Exception) -> None:
        # Typically an ICMP "port unreachable" for an answer to a client that has already gone, or an
        # answer too big for one datagram; neither concerns anyone else.
        self.log.debug(_("%(listener)s: %(error)s"), {"listener": self.label, "error": exc})

    def pause_writing(self) -> None:
        self._send_paused = True

    def resume_writing(self) -> None:
        self._send_paused = False

    def connection_lost(self, exc: Exception | None) -> None:
        del exc  # a datagram socket has no peer to lose; closing it is our own doing


class VerboseUdpEndpoint(UdpEndpoint):
    """With -v: logs each datagram received with its sender."""

    __slots__ = ()

    def fast_path(self) -> FastPath | None:
        return None  # every datagram is logged, which only `answer` does

    def answer(self, data: bytes, addr: Any) -> bytes | None:
        self.log.info(
            _("%(listener)s: %(peer)s >> %(line)r"),
            {"listener": self.label, "peer": format_peer(addr), "line": to_display(data)},
        )
        return super().answer(data, addr)


# How long `UdpThread.close` waits for its thread after each wake-up datagram, and how many it sends.
WAKE_WAIT = 0.2  # seconds
WAKE_ATTEMPTS = 10


class UdpThread:
    """Serves one UDP socket from a thread of its own with the same `UdpEndpoint` the loop would use.

    Guards, the amplification rule, the counters and -v logging are the endpoint's, unchanged. An answer
    that finds the kernel's send buffer full is dropped and counted in `send_drops`, so nothing is ever
    queued beyond that buffer. `close` stops the thread without any timeout on the socket (a timeout
    would cost a poll() per datagram): it sets a flag and sends the socket an empty datagram to wake it.
    Has the `close` of the asyncio transport it replaces.
    """

    def __init__(self, sock: socket.socket, endpoint: UdpEndpoint, lock: threading.Lock) -> None:
        self.sock = sock
        self.endpoint = endpoint
        self._stopping = False
        sock.setblocking(True)
        endpoint._time = time.monotonic  # as connection_made would for a transport
        endpoint._lock = lock
        self._thread = threading.Thread(
            target=self._serve, name=f"{endpoint.label} {sock.fileno()}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        serve_datagrams(self)  # datagram_path.serve, compiled when the build could

    def crashed(self) -> None:
        """Log the exception being handled: one bad datagram, the listener goes on."""
        endpoint = self.endpoint
        endpoint.log.exception(_("%(listener)s: error serving a datagram"), {"listener": endpoint.label})

    def close(self) -> None:
        """Stop the thread (after the datagrams already received) and close the socket."""
        if self._thread.is_alive():
            self._stopping = True
            for _attempt in range(WAKE_ATTEMPTS):
                self._wake()
                self._thread.join(WAKE_WAIT)
                if not self._thread.is_alive():
                    break
        self.sock.close()  # a thread still blocked (every wake-up lost) is a daemon: it ends with the process

    def _wake(self) -> None:
        host, port = self.sock.getsockname()[:2]
        family = self.sock.family
        if host in ("0.0.0.0", "::"):  # an unspecified address is reached on loopback
            host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as waker:
                waker.sendto(b"", (host, port))
        except OSError:
            pass  # the receive buffer is full: the datagrams in it wake the thread just as well


def serve_in_threads(
    socks: Sequence[socket.socket], make_endpoint: Callable[[], UdpEndpoint]
) -> list[UdpThread]:
    """One started `UdpThread` per socket, each with its own endpoint; their guard shares one lock."""
    lock = threading.Lock()
    threads = [UdpThread(sock, make_endpoint(), lock) for sock in socks]
    for thread in threads:
        thread.start()
    return threads
