"""The TCP client of the lecture's line protocol: connect, send lines, collect one answer per line.

Blocking sockets and one helper thread, never asyncio: `socketlab client` has a start-up budget and a
client talking to one server needs no event loop. Library code: raises socketlab.errors, never prints.

Lines are pipelined. A sender thread takes the caller's lines and writes them while at most `window`
lines wait for their answers; the calling thread reads the answers. Reading and writing in separate
threads means a server that stops reading until its answers are read (backpressure) cannot deadlock
us, and the window keeps memory bounded however long the input is.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Iterable, Iterator

from socketlab.config import CONNECT_TIMEOUT, PIPELINE_WINDOW, READ_CHUNK, SECONDS, MiB
from socketlab.core.framing import LineFramer
from socketlab.errors import ConnectError, ConnectionLost
from socketlab.i18n import _, ngettext
from socketlab.tracing import Tracer, open_socket

# Ten seconds without a byte while answers are owed means the server is gone or will not answer; the
# same patience as CONNECT_TIMEOUT, and far beyond any round trip a working server takes.
ANSWER_TIMEOUT = 10 * SECONDS
# The server caps requests at 16 KiB, but an answer may be longer (upper-casing "ß" doubles it, a
# user's function can return anything); 1 MiB is beyond any sane answer and still bounds memory.
MAX_ANSWER = 1 * MiB


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


SockAddr = tuple[str, int] | tuple[str, int, int, int]

# Both loopbacks, for `localhost`: RFC 6761 reserves the name for the loopback, yet many /etc/hosts
# map it to 127.0.0.1 only (or ::1 only), while a server may listen on just the other one. curl
# resolves localhost to both for the same reason.
_LOOPBACKS = ((int(socket.AF_INET6), "::1"), (int(socket.AF_INET), "127.0.0.1"))


def client_addresses(host: str, port: int, kind: socket.SocketKind) -> list[tuple[int, SockAddr]]:
    """Every (family, address) to try for `host`:`port`, in the resolver's order.

    `localhost` always includes both loopbacks, whatever /etc/hosts says. Raises ConnectError when
    the name does not resolve.
    """
    try:
        infos = socket.getaddrinfo(host, port, 0, kind)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConnectError(_("cannot resolve {host}: {reason}").format(host=host, reason=exc)) from exc
    found: list[tuple[int, SockAddr]] = []
    for family, _kind, _proto, _name, address in infos:
        entry: tuple[int, SockAddr]
        if family == socket.AF_INET6 and len(address) == 4:
            entry = (int(family), (str(address[0]), port, int(address[2]), int(address[3])))
        elif family == socket.AF_INET:
            entry = (int(family), (str(address[0]), port))
        else:
            continue  # neither IPv4 nor IPv6: nothing a line client can use
        if entry not in found:
            found.append(entry)
    if host.lower().rstrip(".") == "localhost" and socket.has_ipv6:
        present = {address[0] for _family, address in found}
        for loop_family, ip in _LOOPBACKS:
            if ip not in present:
                found.append((loop_family, (ip, port, 0, 0) if ":" in ip else (ip, port)))
    return found


def connect_tcp(
    host: str, port: int, *, timeout: float = CONNECT_TIMEOUT, tracer: Tracer | None = None
) -> socket.socket:
    """A blocking socket connected to `host`:`port`, trying every address the name resolves to.

    `localhost` often resolves to both ::1 and 127.0.0.1 while a server listens on only one of them,
    so a refusal from the first address is no reason to give up.
    """
    addresses = client_addresses(host, port, socket.SOCK_STREAM)
    reasons: list[str] = []
    for family, address in addresses:
        sock = open_socket(family, socket.SOCK_STREAM, tracer)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.settimeout(None)
        except OSError as exc:
            sock.close()
            reason = _reason(exc)
            if reason not in reasons:
                reasons.append(reason)
            continue
        return sock
    raise ConnectError(
        _("could not connect to {host} port {port}: {reason}").format(
            host=host, port=port, reason="; ".join(reasons) or _("no address")
        )
    )


def _strip_terminators(block: bytes) -> list[bytes]:
    """A block of complete lines (as LineFramer.next_block returns) into lines without terminators."""
    lines = block.split(b"\n")
    lines.pop()  # the empty piece after the last LF
    if b"\r" in block:
        lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    return lines


class Pipeline:
    """Lines out through a sender thread, answers in through `answers()`; one per connection.

    `items` may be single lines or blocks of several complete lines (the CLI passes whatever one read
    of standard input gave, which is much faster than one send per line). Each item is sent byte for
    byte, with a LF added only when it does not end in one; an empty item is one empty line.
    """

    def __init__(
        self,
        sock: socket.socket,
        items: Iterable[bytes],
        *,
        window: int = PIPELINE_WINDOW,
        timeout: float = ANSWER_TIMEOUT,
        peer: str = "",
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.sock = sock
        self.window = window
        self.timeout = timeout
        self.peer = peer or _("the server")
        self._items = items
        self._cond = threading.Condition()
        # Shared with the sender thread, guarded by _cond.
        self.sent = 0  # lines handed to the socket (counted before sendall, so never behind answers)
        self.answered = 0
        self._done = False  # the sender has finished, for good or with an error
        self._stopped = False  # the reader gave up: the sender must stop
        self._error: BaseException | None = None
        self._owed_since = 0.0  # when the count of answers owed last rose from zero
        # The sender wakes the reader through this pair when the reader may be waiting with no timeout
        # (nothing owed), so the reader never polls. socketpair works on Windows too.
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread = threading.Thread(target=self._send_all, name="socketlab-sender", daemon=True)

    # The sender thread.

    def _wake(self) -> None:
        assert self._wake_w is not None
        # Safe to ignore a failure: the pair is full (a wake-up is pending anyway) or the reader closed it.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"!")

    def _wait_room(self) -> int:
        with self._cond:
            while self.sent - self.answered >= self.window and not self._stopped:
                self._cond.wait()
            return 0 if self._stopped else self.window - (self.sent - self.answered)

    def _send_all(self) -> None:
        try:
            items = iter(self._items)
            while True:
                # Room first, then the next item: on a terminal (window 1) the prompt for the next
                # line then comes only after the answer to the previous one is shown.
                room = self._wait_room()
                if room == 0:
                    return
                item = next(items, None)
                if item is None:
                    break
                data = item if item.endswith(b"\n") else item + b"\n"
                start = 0
                while True:
                    # Send as many whole lines of this item as the window has room for.
                    end = start
                    count = 0
                    while count < room and end < len(data):
                        end = data.index(b"\n", end) + 1
                        count += 1
                    with self._cond:
                        wake = self.sent == self.answered
                        if wake:
                            self._owed_since = time.monotonic()
                        self.sent += count
                    if wake:
                        self._wake()
                    self.sock.sendall(data[start:end])
                    start = end
                    if start == len(data):
                        break
                    room = self._wait_room()
                    if room == 0:
                        return
            # Half-close: a server that answers at end of input (or answers without a final LF, as the
            # lecture's Python server does) sees that nothing more is coming.
            self.sock.shutdown(socket.SHUT_WR)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader thread, which raises it
            self._error = exc
        finally:
            with self._cond:
                self._done = True
            self._wake()

    # The reader, in the caller's thread.

    def _lost(self, owed: int, what: str) -> ConnectionLost:
        return ConnectionLost(
            ngettext(
                "connection lost: {what} ({owed} answer owed by {peer})",
                "connection lost: {what} ({owed} answers owed by {peer})",
                owed,
            ).format(what=what, owed=owed, peer=self.peer)
        )

    def answers(self) -> Iterator[list[bytes]]:
        """Yields the answers in order, in batches as they arrive, without their line terminators.

        Raises ConnectionLost when the server closes or falls silent for `timeout` seconds while
        answers are owed, and whatever reading the items raised.
        """
        wake_r, wake_w = socket.socketpair()
        wake_w.setblocking(False)  # a full pair already holds a wake-up: never block the sender on it
        self._wake_r, self._wake_w = wake_r, wake_w
        self._thread.start()
        framer = LineFramer(MAX_ANSWER)
        selector = selectors.DefaultSelector()
        sock = self.sock
        try:
            selector.register(sock, selectors.EVENT_READ)
            selector.register(wake_r, selectors.EVENT_READ)
            last_read = time.monotonic()
            eof = False
            while True:
                with self._cond:
                    owed = self.sent - self.answered
                    done = self._done
                    owed_since = self._owed_since
                error = self._error
                if error is not None and not isinstance(error, OSError):
                    raise error  # reading the items failed
                # A failed send (OSError) is not raised here: the answers already on their way are
                # read first, and the end of the connection or silence is reported with the count owed.
                if done and owed <= 0:
                    return
                if eof and owed > 0:
                    raise self._lost(owed, _("the server closed the connection"))
                wait = None
                if owed > 0 and not eof:
                    wait = max(last_read, owed_since) + self.timeout - time.monotonic()
                    if wait <= 0:
                        raise self._lost(owed, _("no answer for {seconds:g} s").format(seconds=self.timeout))
                for key, _events in selector.select(wait):
                    if key.fileobj is wake_r:
                        wake_r.recv(4096)
                        continue
                    try:
                        data = sock.recv(READ_CHUNK)
                    except OSError as exc:
                        raise self._lost(owed, _reason(exc)) from exc
                    last_read = time.monotonic()
                    if data:
                        framer.receive_data(data)
                        block = framer.next_block()
                        batch = _strip_terminators(block) if block is not None else []
                    else:
                        # An answer without its LF still counts when the server closes after it.
                        eof = True
                        selector.unregister(sock)
                        rest = framer.take_rest()
                        batch = [rest.removesuffix(b"\r")] if rest else []
                    if batch:
                        yield batch
                        last_read = time.monotonic()  # time spent by the consumer is not silence
                        with self._cond:
                            self.answered += len(batch)
                            self._cond.notify_all()
        finally:
            self._stop()
            selector.close()

    def _stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if not self._done:
            # Wakes a sender blocked in sendall (close alone would not, on Linux); an error means the
            # socket is already disconnected, so there is nothing left to wake.
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
        if self._wake_r is not None and self._wake_w is not None:
            self._wake_r.close()
            self._wake_w.close()


def exchange_tcp(
    host: str,
    port: int,
    lines: Iterable[bytes],
    *,
    window: int = PIPELINE_WINDOW,
    timeout: float = ANSWER_TIMEOUT,
    connect_timeout: float = CONNECT_TIMEOUT,
    tracer: Tracer | None = None,
) -> list[bytes]:
    """Send `lines` to a line server and return its answers, in order, without terminators.

    Raises ConnectError when no address of `host` accepts the connection, ConnectionLost when the
    connection breaks or the server falls silent before every answer arrived.
    """
    with connect_tcp(host, port, timeout=connect_timeout, tracer=tracer) as sock:
        pipeline = Pipeline(sock, lines, window=window, timeout=timeout, peer=f"{host} port {port}")
        answers: list[bytes] = []
        for batch in pipeline.answers():
            answers.extend(batch)
        return answers
