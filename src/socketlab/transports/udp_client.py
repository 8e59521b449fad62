"""The UDP client of the lecture's protocol: one datagram per request, one per answer, retried on loss.

Blocking sockets, no asyncio (the client's start-up budget). Library code: raises socketlab.errors and
returns results, never prints.

How answers are matched to requests, since the protocol carries no request number:
- one request is outstanding at a time, and the socket is connected, so the kernel drops datagrams
  from anyone but the server;
- a datagram that arrives while a request waits is its answer, even if it answers an earlier attempt
  of the same request (the services are deterministic: every attempt gets the same answer);
- stale datagrams are drained before each new request is sent, and after a request that needed a
  retry (or was lost) the next one goes out from a fresh socket, with a new source port: late answers
  to the old attempts then go to a port nobody reads, and can never be taken for the next answer.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from socketlab.config import MAX_DATAGRAM, UDP_RETRIES, UDP_TIMEOUT
from socketlab.errors import ConnectError, ConnectionLost
from socketlab.i18n import _
from socketlab.tracing import Tracer, open_socket
from socketlab.transports.tcp_client import client_addresses

# Large enough for any UDP payload, so no answer is ever truncated.
RECV_SIZE = 65_536


@dataclass(frozen=True)
class UdpResult:
    """The fate of one request."""

    request: bytes
    answer: bytes | None  # None: no answer after every attempt
    attempts: int  # datagrams sent; 0 when the request could not be sent at all (too long)

    @property
    def lost(self) -> bool:
        return self.answer is None


def strip_padding(answer: bytes) -> bytes:
    """The answer without trailing NUL bytes.

    The lecture's Java UDPServer answers its whole 1024-byte receive buffer, text followed by NULs.
    (An answer that really ends in NUL bytes loses them too; no text service sends such answers.)
    """
    return answer.rstrip(b"\0")


class UdpClient:
    """Requests to one UDP server, one at a time, each retried `retries` times after `timeout`."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float = UDP_TIMEOUT,
        retries: int = UDP_RETRIES,
        tracer: Tracer | None = None,
        unpad: bool = True,
    ) -> None:
        if timeout <= 0 or retries < 0:
            raise ValueError("timeout must be positive and retries not negative")
        self.host = host
        self.port = port
        self.timeout = timeout
        self.retries = retries
        self.unpad = unpad
        self._tracer = tracer
        self._candidates = client_addresses(host, port, socket.SOCK_DGRAM)
        self._index = 0
        # Until the first answer we do not know which address the server listens on: `localhost` may
        # be ::1 and 127.0.0.1 while the server has only one. A refusal (the ICMP port unreachable a
        # connected UDP socket reports as ECONNREFUSED) or a timeout moves on to the next address.
        self._settled = False
        self._sock: socket.socket | None = None
        self._refused: set[int] = set()

    def __enter__(self) -> UdpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _socket(self) -> socket.socket:
        while self._sock is None:
            family, address = self._candidates[self._index]
            sock = open_socket(family, socket.SOCK_DGRAM, self._tracer)
            try:
                sock.connect(address)  # sends nothing: it fixes the peer and filters other sources
            except OSError:
                # This address cannot be reached at all (say, no IPv6 route): as good as refused.
                sock.close()
                self._next_address(refused=True)
                continue
            self._sock = sock
        return self._sock

    def _next_address(self, *, refused: bool) -> None:
        if refused:
            self._refused.add(self._index)
            if len(self._refused) == len(self._candidates):
                raise ConnectError(
                    _("nothing listens on udp {host} port {port} (connection refused)").format(
                        host=self.host, port=self.port
                    )
                )
        self.close()
        for step in range(1, len(self._candidates) + 1):
            index = (self._index + step) % len(self._candidates)
            if index not in self._refused:
                self._index = index
                return

    def _drain(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        try:
            while True:
                sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            pass  # nothing stale is left
        except ConnectionRefusedError:
            pass  # a refusal of an old attempt says nothing about the next one
        finally:
            sock.setblocking(True)

    def _await_answer(self, sock: socket.socket) -> bytes | None:
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            sock.settimeout(left)
            try:
                return sock.recv(RECV_SIZE)
            except TimeoutError:
                return None
            except InterruptedError:
                continue

    def request(self, payload: bytes) -> UdpResult:
        """Send `payload` as one datagram and wait for its answer, retrying; never raises for a loss.

        Raises ConnectError when every address of the host refuses before any answer came back, and
        ConnectionLost for a socket error that no retry can mend.
        """
        if len(payload) > MAX_DATAGRAM:
            return UdpResult(payload, None, 0)
        attempts = 0
        answer: bytes | None = None
        if self._sock is not None:
            self._drain(self._sock)
        while attempts <= self.retries:
            sock = self._socket()
            attempts += 1
            try:
                sock.send(payload)
                answer = self._await_answer(sock)
            except ConnectionRefusedError:
                if not self._settled:
                    attempts -= 1  # the wrong address, not a lost datagram
                    self._next_address(refused=True)
                continue
            except OSError as exc:
                raise ConnectionLost(
                    _("udp {host} port {port}: {reason}").format(
                        host=self.host, port=self.port, reason=exc.strerror or exc
                    )
                ) from exc
            if answer is not None:
                self._settled = True
                break
            if not self._settled and len(self._candidates) > 1:
                self._next_address(refused=False)
        if attempts > 1 or answer is None:
            # Late answers to this request's attempts may still come: let them go to a closed port.
            self.close()
        if answer is not None and self.unpad:
            answer = strip_padding(answer)
        return UdpResult(payload, answer, attempts)


def exchange_udp(
    host: str,
    port: int,
    requests: Iterable[bytes],
    *,
    timeout: float = UDP_TIMEOUT,
    retries: int = UDP_RETRIES,
    tracer: Tracer | None = None,
    unpad: bool = True,
) -> Iterator[UdpResult]:
    """Send each request as one datagram, in order, and yield its result as soon as it is known."""
    with UdpClient(host, port, timeout=timeout, retries=retries, tracer=tracer, unpad=unpad) as client:
        for payload in requests:
            yield client.request(payload)


def lost_count(results: Iterable[UdpResult]) -> int:
    """How many of `results` went unanswered."""
    return sum(1 for result in results if result.lost)
