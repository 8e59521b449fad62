"""Bounded socket operations for the checker: every wait ends at a deadline, every error is classified.

The checker talks to servers it does not trust: they may never answer, answer forever, reset the
connection or die half-way. Each helper here takes a `Deadline` and returns what happened instead of
blocking past it; `OSError` is turned here, once, into `ProbeError` with a reason for people.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from socketlab.config import SECONDS, KiB
from socketlab.i18n import _

SockAddr = tuple[Any, ...]

# After an answer looks complete, wait this long for bytes the server may still send (an extra line,
# NUL padding): on a loopback or a LAN those arrive in microseconds, and 50 ms per check keeps a whole
# run under a second for a correct server.
LINGER = 0.05 * SECONDS
# The checker never holds more than this from one connection: a server streaming garbage forever
# must not exhaust our memory. Far above the largest expected answer (an 8 KiB line).
MAX_READ = 256 * KiB

REFUSED_ERRNOS = frozenset({errno.ECONNREFUSED})
RESET_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})


class Deadline:
    """A point in time, `seconds` from now, that every wait of one check respects."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.end

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.left()))

    def part(self, seconds: float) -> Deadline:
        """A deadline `seconds` from now, but never later than this one."""
        sub = Deadline(min(seconds, self.left()))
        sub.seconds = self.seconds
        return sub


class ProbeError(Exception):
    """The server could not be reached or talked to; `reason` is for people."""

    def __init__(self, reason: str, *, refused: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.refused = refused


def describe_error(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def resolve(host: str, port: int, kind: socket.SocketKind) -> list[tuple[int, SockAddr]]:
    """(family, address) pairs for host:port in the resolver's order; ProbeError if it fails."""
    try:
        infos = socket.getaddrinfo(host, port, 0, kind)
    except (socket.gaierror, UnicodeError) as exc:
        raise ProbeError(_("cannot resolve {host}: {reason}").format(host=host, reason=exc)) from exc
    seen: list[tuple[int, SockAddr]] = []
    for family, _kind, _proto, _name, address in infos:
        entry = (int(family), tuple(address))
        if entry not in seen:
            seen.append(entry)
    return seen


def connect_tcp(family: int, address: SockAddr, deadline: Deadline) -> socket.socket:
    """A connected TCP socket with Nagle off (so each send is its own segment), or ProbeError."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(max(deadline.left(), 0.001))
        sock.connect(address)
    except TimeoutError as exc:
        sock.close()
        raise ProbeError(
            _("the connection was not accepted within {seconds:g} s").format(seconds=deadline.seconds)
        ) from exc
    except OSError as exc:
        sock.close()
        refused = exc.errno in REFUSED_ERRNOS
        raise ProbeError(
            _("cannot connect: {reason}").format(reason=describe_error(exc)), refused=refused
        ) from exc
    sock.setblocking(False)
    return sock


@dataclass
class Reading:
    """What came back on one connection, and how the reading ended."""

    data: bytes = b""
    eof: bool = False  # the server closed (or half-closed) its side
    reset: str = ""  # the connection broke: the reason, for people
    complete: bool = False  # the answer looked complete before the deadline

    @property
    def timed_out(self) -> bool:
        return not (self.complete or self.eof or self.reset)


def send_segments(sock: socket.socket, segments: Sequence[bytes], pause: float, deadline: Deadline) -> str:
    """Send each segment on its own, `pause` seconds apart; '' or the reason sending broke."""
    for i, segment in enumerate(segments):
        if i and pause:
            deadline.sleep(pause)
        error = send_all(sock, segment, deadline)
        if error:
            return error
    return ""


def send_all(sock: socket.socket, data: bytes, deadline: Deadline) -> str:
    """sendall on a non-blocking socket, bounded by the deadline; '' or the reason it failed."""
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            _r, writable, _x = select.select([], [sock], [], deadline.left())
            if not writable:
                return _("the server stopped reading: could not send everything within {seconds:g} s").format(
                    seconds=deadline.seconds
                )
            continue
        except OSError as exc:
            return describe_error(exc)
        view = view[sent:]
    return ""


def read_answer(
    sock: socket.socket, deadline: Deadline, is_complete: Callable[[bytes], bool], linger: float = LINGER
) -> Reading:
    """Read until `is_complete(data)`, end of stream, an error or the deadline.

    Once the answer looks complete, keep reading while bytes keep coming within `linger` seconds,
    so extra bytes (an added line, padding) are seen too.
    """
    reading = Reading()
    buf = bytearray()
    quiet_until: float | None = None
    while True:
        wait = deadline.left()
        if quiet_until is not None:
            wait = min(wait, max(0.0, quiet_until - time.monotonic()))
        readable, _w, _x = select.select([sock], [], [], wait)
        if not readable:
            break
        try:
            chunk = sock.recv(64 * KiB)
        except BlockingIOError:
            continue
        except OSError as exc:
            reading.reset = describe_error(exc)
            break
        if not chunk:
            reading.eof = True
            break
        buf += chunk
        if len(buf) >= MAX_READ:
            break
        if is_complete(bytes(buf)):
            reading.complete = True
            quiet_until = time.monotonic() + linger
    reading.data = bytes(buf)
    if not reading.complete and is_complete(reading.data):
        reading.complete = True
    return reading


def close_quietly(sock: socket.socket) -> None:
    # Closing a socket the peer reset can fail; it is closed on our side either way.
    with contextlib.suppress(OSError):
        sock.close()


def open_udp(family: int, receive_buffer: int = 0) -> socket.socket:
    """An unconnected UDP socket: it receives answers from any port, so a wrong port can be seen."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if receive_buffer:
        # Without it the default buffer still works; the burst check then measures our loss too.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    return sock


def send_datagram(sock: socket.socket, data: bytes, address: SockAddr) -> str:
    """'' or the reason the datagram could not be sent."""
    try:
        sock.sendto(data, address)
    except BlockingIOError:
        return _("our send buffer is full")
    except OSError as exc:
        return describe_error(exc)
    return ""


@dataclass
class Datagram:
    data: bytes
    source: SockAddr


def receive_datagrams(
    sock: socket.socket, deadline: Deadline, enough: Callable[[list[Datagram]], bool], linger: float = LINGER
) -> tuple[list[Datagram], str]:
    """Datagrams that arrive until `enough(received)`, then for `linger` more seconds; and an error.

    The error is the reason reported by the OS, usually an ICMP "port unreachable" turned into
    ECONNREFUSED; on an unconnected socket Linux reports none, so it is mostly ''.
    """
    received: list[Datagram] = []
    quiet_until: float | None = None
    while True:
        wait = deadline.left()
        if quiet_until is not None:
            wait = min(wait, max(0.0, quiet_until - time.monotonic()))
        readable, _w, _x = select.select([sock], [], [], wait)
        if not readable:
            return received, ""
        try:
            data, source = sock.recvfrom(65_535)
        except BlockingIOError:
            continue
        except OSError as exc:
            return received, describe_error(exc)
        received.append(Datagram(data, tuple(source)))
        if quiet_until is None and enough(received):
            quiet_until = time.monotonic() + linger


def udp_port_unreachable(family: int, address: SockAddr, deadline: Deadline, wait: float) -> bool:
    """True when the OS reports that nothing listens on the UDP port (ICMP port unreachable).

    Only a connected UDP socket is told about ICMP errors, so this uses one of its own.
    """
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.send(b"\n")
            sock.settimeout(max(0.001, min(wait, deadline.left())))
            sock.recv(65_535)
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
    return False
