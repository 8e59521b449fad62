"""Watching socket system calls as they happen: an observer interface and its implementations.

Transports that use blocking sockets (the teaching models, the client) create their sockets with
`open_socket(..., tracer)`, which gives a `TracedSocket`: each call is reported to a `Tracer` as a
`CallEvent` (arguments, result, how long it blocked, error). Nothing here prints unless asked to: the
human printer and the JSON Lines writer take a stream, the recorder keeps events for tests.

Only blocking sockets can be traced this way: with an event loop the calls are made by the loop
(or by libuv, under uvloop), not by code that a wrapper can stand in front of.

Every tracer here is thread-safe: under the `threads` model many sockets report at once, and each
event is written as one whole line.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Protocol

from socketlab.errors import ConfigError
from socketlab.i18n import _, ngettext
from socketlab.transports.binding import format_peer

if TYPE_CHECKING:
    from _socket import _Address, _RetAddress

    from _typeshed import ReadableBuffer as Buffer

TRACE_FORMATS = ("text", "jsonl")

# How much of the payload an event keeps: enough to recognise a line, bounded however much moves.
PREVIEW_BYTES = 64
# Below a millisecond the call did not wait for the network; showing the time would only be noise.
BLOCKED_SHOWN = 0.001

# The `error` of an event is for tools too, so it stays in English: the OS's strerror, or one of
# these fixed words, which the human printer translates.
WOULD_BLOCK = "would block"  # EAGAIN on a non-blocking socket: nothing ready, try after select()
TIMED_OUT = "timed out"  # the socket's timeout (settimeout) ran out; Python's own word for it
INTERRUPTED = "interrupted"  # Ctrl-C while blocked in the call


@dataclass(frozen=True)
class CallEvent:
    """One system call: what was called, with what, what came back, how long it blocked."""

    name: str  # "socket", "bind", "accept", "recv", ...
    fd: int  # the socket's file descriptor (for socket(): the new one; -1 if socket() failed)
    args: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None  # {"fd": 5, "peer": "127.0.0.1:54012"}, {"bytes": 6}, ...
    seconds: float = 0.0  # time spent inside the call: how long it blocked
    error: str | None = None  # strerror of a failed call, "timed out", "interrupted"
    data: bytes | None = None  # the first PREVIEW_BYTES of what was sent or received
    time: float = 0.0  # wall-clock time the call started (seconds since the epoch)
    proto: str | None = None  # "tcp" (a stream socket) or "udp" (a datagram socket)


class Tracer(Protocol):
    def on_call(self, event: CallEvent) -> None: ...


class RecordingTracer:
    """Keeps every event, for tests."""

    def __init__(self) -> None:
        self.events: list[CallEvent] = []
        self._lock = threading.Lock()

    def on_call(self, event: CallEvent) -> None:
        with self._lock:
            self.events.append(event)

    @property
    def names(self) -> list[str]:
        with self._lock:
            return [e.name for e in self.events]

    def for_fd(self, fd: int) -> list[CallEvent]:
        """The events of one socket, in order (a file descriptor number is reused after close)."""
        with self._lock:
            return [e for e in self.events if e.fd == fd]


def explanations() -> dict[str, str]:
    """What each call does, in the words of the lecture's table of system calls.

    A function, not a constant: `_()` must run after the language is chosen.
    """
    return {
        "socket": _("creates a socket"),
        "setsockopt": _("sets an option of the socket"),
        "bind": _("associates a port with a socket"),
        "listen": _("asks to wait for connections on a port"),
        "accept": _(
            "accepts a connection received on a port, as a new socket; the source port tells clients apart"
        ),
        "connect": _("establishes a connection through a socket to a destination"),
        "send": _("sends bytes on a connection (TCP)"),
        "sendall": _("sends bytes on a connection (TCP), all of them"),
        "recv": _("receives bytes on a connection (TCP)"),
        "recv-eof": _("0 bytes: the other side closed the connection (end of stream)"),
        # A UDP socket may be connected too: connect() then sends nothing, it only fixes the address.
        "connect/udp": _("fixes the destination of a datagram socket (UDP); nothing is sent"),
        "send/udp": _("sends one datagram to the connected destination (UDP)"),
        "recv/udp": _("receives one datagram from the connected destination (UDP)"),
        "sendto": _("sends bytes on a datagram socket (UDP)"),
        "recvfrom": _("receives bytes on a datagram socket (UDP)"),
        "shutdown": _("closes one direction of the connection; the other side reads end of stream"),
        "close": _("asks to close the socket (always unilateral)"),
        # Not a call on one socket: the selectors model's wait on all of them (epoll, kqueue...).
        "select": _("waits until some socket can be read or written: one thread serves every client"),
    }


def _format_seconds(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1000:.1f} ms"


def _format_data(data: bytes) -> str:
    # repr of the text, not of the bytes: Portuguese stays readable ('ação\n', not b'a\xc3\xa7...').
    text = repr(data.decode("utf-8", "backslashreplace"))
    return text + "..." if len(data) >= PREVIEW_BYTES else text


def _count_bytes(n: int) -> str:
    return ngettext("{n} byte", "{n} bytes", n).format(n=n)


def format_event(event: CallEvent, explain: dict[str, str] | None = None) -> str:
    """One line for people: call(args) -> result  [blocked t]  explanation."""
    parts = [] if event.name == "socket" or event.fd < 0 else [f"fd={event.fd}"]
    for key, value in event.args.items():
        parts.append(_count_bytes(value) if key == "bytes" else f"{key}={value}")
    if event.data is not None and event.name.startswith("send"):
        parts.append(_format_data(event.data))
    line = f"{event.name}({', '.join(parts)})"
    if event.error is not None:
        reason = {
            WOULD_BLOCK: _("would block: nothing ready yet on this non-blocking socket"),
            TIMED_OUT: _("timed out"),
            INTERRUPTED: _("interrupted"),
        }.get(event.error, event.error)
        line += " -> " + _("error: {reason}").format(reason=reason)
    elif event.result is not None:
        shown = []
        for key, value in event.result.items():
            shown.append(_count_bytes(value) if key == "bytes" else f"{key}={value}")
        if event.data and event.name.startswith("recv"):
            shown.append(_format_data(event.data))
        line += " -> " + " ".join(shown)
    if event.seconds >= BLOCKED_SHOWN:
        line += "  [" + _("blocked {time}").format(time=_format_seconds(event.seconds)) + "]"
    if explain is not None:
        key = event.name
        if event.proto == "udp" and f"{key}/udp" in explain:
            key = f"{key}/udp"
        elif key == "recv" and event.result == {"bytes": 0}:
            key = "recv-eof"
        if key in explain:
            line += "  " + explain[key]
    return line


class TextTracer:
    """Prints one line per call, for people, as it happens."""

    def __init__(self, stream: IO[str], *, explain: bool = True) -> None:
        self.stream = stream
        self._explain = explanations() if explain else None
        self._lock = threading.Lock()

    def on_call(self, event: CallEvent) -> None:
        line = format_event(event, self._explain)
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()


def event_to_json(event: CallEvent) -> dict[str, Any]:
    """The JSON Lines record of one event. Its keys are stable; tools may rely on them."""
    return {
        "name": event.name,
        "fd": event.fd,
        "args": event.args,
        "result": event.result,
        "seconds": round(event.seconds, 6),
        "error": event.error,
        "time": round(event.time, 6),
        "data": None if event.data is None else event.data.decode("utf-8", "backslashreplace"),
        "proto": event.proto,
    }


class JsonLinesTracer:
    """Writes one JSON object per call: for tools, never translated."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def on_call(self, event: CallEvent) -> None:
        line = json.dumps(event_to_json(event), ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()


def make_tracer(fmt: str, stream: IO[str]) -> Tracer:
    """The tracer for `--trace-format`: "text" (for people) or "jsonl" (JSON Lines, for tools)."""
    if fmt == "text":
        return TextTracer(stream)
    if fmt == "jsonl":
        return JsonLinesTracer(stream)
    raise ConfigError(
        _("unknown trace format {fmt!r}: use {choices}").format(fmt=fmt, choices=", ".join(TRACE_FORMATS))
    )


class _NoTracer:
    def on_call(self, event: CallEvent) -> None:
        pass


def _enum_name(value: int, kind: Callable[[int], object]) -> str:
    try:
        return getattr(kind(value), "name", str(value))
    except ValueError:
        return str(value)


_LEVELS = {
    socket.SOL_SOCKET: "SOL_SOCKET",
    socket.IPPROTO_TCP: "IPPROTO_TCP",
    socket.IPPROTO_IP: "IPPROTO_IP",
}
_OPTIONS = {
    (socket.SOL_SOCKET, socket.SO_REUSEADDR): "SO_REUSEADDR",
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE): "SO_KEEPALIVE",
    (socket.SOL_SOCKET, socket.SO_RCVBUF): "SO_RCVBUF",
    (socket.SOL_SOCKET, socket.SO_SNDBUF): "SO_SNDBUF",
    (socket.SOL_SOCKET, socket.SO_BROADCAST): "SO_BROADCAST",
    (socket.IPPROTO_TCP, socket.TCP_NODELAY): "TCP_NODELAY",
}
if hasattr(socket, "IPPROTO_IPV6"):
    _LEVELS[socket.IPPROTO_IPV6] = "IPPROTO_IPV6"
    _OPTIONS[(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)] = "IPV6_V6ONLY"
if hasattr(socket, "SO_REUSEPORT"):
    _OPTIONS[(socket.SOL_SOCKET, socket.SO_REUSEPORT)] = "SO_REUSEPORT"
_MSG_FLAGS = tuple(
    (getattr(socket, name), name)
    for name in ("MSG_DONTWAIT", "MSG_PEEK", "MSG_WAITALL", "MSG_OOB", "MSG_NOSIGNAL", "MSG_TRUNC")
    if hasattr(socket, name)
)
_SHUT = {socket.SHUT_RD: "SHUT_RD", socket.SHUT_WR: "SHUT_WR", socket.SHUT_RDWR: "SHUT_RDWR"}


class _Start:
    """When a call started: wall clock for the record, a monotonic counter for its duration."""

    __slots__ = ("counter", "wall")

    def __init__(self) -> None:
        self.wall = time.time()
        self.counter = time.perf_counter()


def _with_flags(args: dict[str, Any], flags: int) -> dict[str, Any]:
    """args, plus the MSG_* flags of a send or recv when there are any (MSG_DONTWAIT...)."""
    if flags:
        names = [name for value, name in _MSG_FLAGS if flags & value]
        unknown = flags
        for value, _name in _MSG_FLAGS:
            unknown &= ~value
        if unknown:
            names.append(hex(unknown))
        args["flags"] = "|".join(names)
    return args


def _reason(exc: BaseException) -> str:
    if isinstance(exc, BlockingIOError):
        return WOULD_BLOCK
    if isinstance(exc, TimeoutError):
        return TIMED_OUT
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED
    return str(exc) or type(exc).__name__


def _nbytes(data: Buffer) -> int:
    with memoryview(data) as view:
        return view.nbytes


def _head(data: Buffer) -> bytes:
    with memoryview(data) as view:
        return bytes(view[:PREVIEW_BYTES]) if view.ndim == 1 and view.itemsize == 1 else b""


class TracedSocket(socket.socket):
    """A socket that reports each of its calls to a tracer, including its own creation.

    A socket it accepts is traced too, by the same tracer. Every method keeps the meaning and the
    exceptions of `socket.socket`; tracing only watches.
    """

    def __init__(
        self,
        family: int = -1,
        type: int = -1,
        proto: int = -1,
        fileno: int | None = None,
        *,
        tracer: Tracer | None = None,
    ) -> None:
        self._tracer: Tracer = tracer if tracer is not None else _NoTracer()
        if fileno is not None:
            # An accepted or duplicated socket: its creation was the accept() already reported.
            super().__init__(family, type, proto, fileno)
            return
        start = _Start()
        args = {
            "family": _enum_name(family, socket.AddressFamily),
            "type": _enum_name(type, socket.SocketKind),
        }
        try:
            super().__init__(family, type, proto)
        except BaseException as exc:
            self._report("socket", -1, args, start, exc=exc)
            raise
        self._report("socket", self.fileno(), args, start, result={"fd": self.fileno()})

    def _report(
        self,
        name: str,
        fd: int,
        args: dict[str, Any],
        start: _Start,
        *,
        result: dict[str, Any] | None = None,
        exc: BaseException | None = None,
        data: bytes | None = None,
    ) -> None:
        seconds = time.perf_counter() - start.counter
        error = None if exc is None else _reason(exc)
        proto = "udp" if self.type == socket.SOCK_DGRAM else "tcp"
        event = CallEvent(name, fd, args, result, seconds, error, data, start.wall, proto)
        self._tracer.on_call(event)

    def _call(
        self,
        name: str,
        args: dict[str, Any],
        call: Callable[[], Any],
        *,
        result_of: Callable[[Any], dict[str, Any] | None] = lambda _r: None,
        data_of: Callable[[Any], bytes | None] = lambda _r: None,
        sent: bytes | None = None,
    ) -> Any:
        fd = self.fileno()
        start = _Start()
        try:
            value = call()
        except BaseException as exc:
            self._report(name, fd, args, start, exc=exc, data=sent)
            raise
        data = sent if sent is not None else data_of(value)
        self._report(name, fd, args, start, result=result_of(value), data=data)
        return value

    def setsockopt(self, level: int, optname: int, value: Any, optlen: Any = None, /) -> None:
        args = {
            "level": _LEVELS.get(level, str(level)),
            "option": _OPTIONS.get((level, optname), str(optname)),
            "value": value if isinstance(value, int) else repr(value),
        }
        if optlen is None:
            self._call("setsockopt", args, lambda: socket.socket.setsockopt(self, level, optname, value))
        else:
            self._call(
                "setsockopt", args, lambda: socket.socket.setsockopt(self, level, optname, value, optlen)
            )

    def bind(self, address: _Address, /) -> None:
        self._call("bind", {"address": format_peer(address)}, lambda: socket.socket.bind(self, address))

    def listen(self, backlog: int = socket.SOMAXCONN, /) -> None:
        self._call("listen", {"backlog": backlog}, lambda: socket.socket.listen(self, backlog))

    def accept(self) -> tuple[socket.socket, _RetAddress]:
        fd = self.fileno()
        start = _Start()
        try:
            plain, address = super().accept()
        except BaseException as exc:
            self._report("accept", fd, {}, start, exc=exc)
            raise
        # socket.socket.accept already chose the new socket's blocking mode; detach keeps it.
        new_fd = plain.detach()
        conn = TracedSocket(self.family, self.type, self.proto, fileno=new_fd, tracer=self._tracer)
        self._report("accept", fd, {}, start, result={"fd": new_fd, "peer": format_peer(address)})
        return conn, address

    def connect(self, address: _Address, /) -> None:
        self._call("connect", {"address": format_peer(address)}, lambda: socket.socket.connect(self, address))

    def send(self, data: Buffer, flags: int = 0, /) -> int:
        sent: int = self._call(
            "send",
            _with_flags({"bytes": _nbytes(data)}, flags),
            lambda: socket.socket.send(self, data, flags),
            result_of=lambda n: {"bytes": n},
            sent=_head(data),
        )
        return sent

    def sendall(self, data: Buffer, flags: int = 0, /) -> None:
        n = _nbytes(data)
        self._call(
            "sendall",
            _with_flags({"bytes": n}, flags),
            lambda: socket.socket.sendall(self, data, flags),
            result_of=lambda _r: {"bytes": n},
            sent=_head(data),
        )

    def sendto(self, data: Buffer, flags_or_address: Any, address: Any = None, /) -> int:
        if address is None:
            flags, address = 0, flags_or_address
        else:
            flags = flags_or_address
        sent: int = self._call(
            "sendto",
            _with_flags({"bytes": _nbytes(data), "address": format_peer(address)}, flags),
            lambda: socket.socket.sendto(self, data, flags, address),
            result_of=lambda n: {"bytes": n},
            sent=_head(data),
        )
        return sent

    def recv(self, bufsize: int, flags: int = 0, /) -> bytes:
        data: bytes = self._call(
            "recv",
            _with_flags({"bufsize": bufsize}, flags),
            lambda: socket.socket.recv(self, bufsize, flags),
            result_of=lambda d: {"bytes": len(d)},
            data_of=lambda d: d[:PREVIEW_BYTES],
        )
        return data

    def recvfrom(self, bufsize: int, flags: int = 0, /) -> tuple[bytes, _RetAddress]:
        value: tuple[bytes, _RetAddress] = self._call(
            "recvfrom",
            _with_flags({"bufsize": bufsize}, flags),
            lambda: socket.socket.recvfrom(self, bufsize, flags),
            result_of=lambda v: {"bytes": len(v[0]), "peer": format_peer(v[1])},
            data_of=lambda v: v[0][:PREVIEW_BYTES],
        )
        return value

    def shutdown(self, how: int, /) -> None:
        self._call("shutdown", {"how": _SHUT.get(how, str(how))}, lambda: socket.socket.shutdown(self, how))

    def close(self) -> None:
        if self.fileno() == -1:
            super().close()  # already closed: nothing happens, so nothing to report
            return
        self._call("close", {}, super().close)


def open_socket(family: int, kind: int, tracer: Tracer | None = None) -> socket.socket:
    """A new socket; with a tracer, one that reports each of its calls (socket() included)."""
    if tracer is None:
        return socket.socket(family, kind)
    return TracedSocket(family, kind, tracer=tracer)
