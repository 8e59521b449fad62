"""One client's conversation with a stream service: bytes in, answer bytes out. Pure, no I/O.

Every stream transport (asyncio, the teaching models) drives one `StreamSession` per connection:
`receive_data()` with what arrived, send what it returns; `end_of_input()` when the client half-closes
or leaves; close when `closing` becomes true.

The fast path. Most chunks a server reads are a few whole ASCII lines with nothing held over, and for
those the answer is one C call (`bytes.upper` for upper). A transport whose per-chunk cost matters may
answer such a chunk itself, without calling `receive_data`, under this contract (for a non-empty chunk):

    if len(chunk) <= session.fast_limit and chunk[-1] == 0x0A and chunk.isascii():
        answer = session.answer_ascii(chunk)   # exactly what receive_data(chunk) would return

`fast_limit` is -1 whenever that does not hold (bytes held over, closing, an unframed service), and
such a chunk leaves the session unchanged, so the two ways can be mixed freely. `fast_limit` changes
only inside `receive_data` and `stop`: a transport may keep a copy and take it again after each. The
fast path saves a Python call per chunk, about a twentieth of a server's time at 64-byte lines
(docs/performance.md).
"""

from __future__ import annotations

from socketlab.config import MAX_LINE
from socketlab.core.framing import LineFramer
from socketlab.core.services import ERR_LINE_TOO_LONG, Service
from socketlab.errors import LineTooLong


class StreamSession:
    def __init__(self, service: Service, max_line: int = MAX_LINE) -> None:
        self.service = service
        self.max_line = max_line
        self._framer = LineFramer(max_line)
        self._answer_block = service.answer_block
        self.answer_ascii = service.ascii_block_function()
        """Answers a chunk that passes the fast-path test (see the module doc)."""
        # A chunk no longer than one line of max_line bytes and its LF cannot hold a line over the
        # limit, so such a chunk needs no line scan.
        self._fast_limit = max_line + 1 if service.framed else -1
        self.fast_limit = self._fast_limit
        """Longest chunk the fast path may take now; -1 while it may take none (see the module doc)."""
        self.closing = False
        """True once the client broke a rule: send what was returned, then close."""
        self.progress = 0
        """Grows each time the slow path answers lines: what a line deadline watches. The fast path
        leaves it alone, as it never holds a partial line, before or after."""
        self.error: LineTooLong | None = None

    @property
    def pending(self) -> int:
        """Bytes received that are not yet part of a complete line."""
        return self._framer.pending

    def receive_data(self, data: bytes) -> bytes:
        """Answers owed for `data`: possibly empty, never an exception for any input."""
        # The fast path first (see the module doc), here for any text, not only ASCII.
        try:
            if len(data) <= self.fast_limit and data[-1] == 0x0A:
                if data.isascii():
                    return self.answer_ascii(data)
                return self._answer_block(data)
        except IndexError:  # data[-1] of an empty chunk; a try costs nothing until it raises
            return b""
        if self.closing:
            return b""
        service = self.service
        if not service.framed:
            return service.answer_stream(data)
        framer = self._framer
        framer.receive_data(data)
        answer = b""
        try:
            # Usually one block; the call after it raises for an over-long line that stopped the
            # block short, and checks the length of the unterminated tail otherwise.
            while (block := framer.next_block()) is not None:
                answer += service.answer_block(block)
                self.progress += 1
        except LineTooLong as exc:
            return self._refuse(exc, answer)
        self.fast_limit = -1 if framer.pending else self._fast_limit
        return answer

    def stop(self) -> None:
        """Answer nothing more: every chunk from now on is dropped (shutting down, client turned away)."""
        self.closing = True
        self.fast_limit = -1

    def _refuse(self, exc: LineTooLong, answered: bytes) -> bytes:
        # Lines before the long one are answered; nothing of the long line is.
        # The framer hands out every good line before it raises, so `answered` already holds them.
        self.stop()
        self.error = exc
        self._framer.take_rest()
        return answered + ERR_LINE_TOO_LONG

    def end_of_input(self) -> bytes:
        """The client sent its last byte: answer an unterminated last line, if any."""
        if self.closing:
            return b""
        rest = self._framer.take_rest()
        if not rest or not self.service.framed:
            return b""
        return self.service.answer_block(rest)
