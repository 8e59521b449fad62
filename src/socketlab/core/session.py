"""One client's conversation with a stream service: bytes in, answer bytes out. Pure, no I/O.

Every stream transport (asyncio, the teaching models) drives one `StreamSession` per connection:
`receive_data()` with what arrived, send what it returns; `end_of_input()` when the client half-closes
or leaves; close when `closing` becomes true.
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
        # Bound once: the fast path below reads these for every chunk.
        self._fast = service.framed
        self._answer_block = service.answer_block
        self._held = self._framer.held
        # A chunk no longer than one line of max_line bytes and its LF cannot hold a line over the
        # limit, so such a chunk needs no line scan.
        self._fast_limit = max_line + 1
        self.closing = False
        """True once the client broke a rule: send what was returned, then close."""
        self.error: LineTooLong | None = None

    @property
    def pending(self) -> int:
        """Bytes received that are not yet part of a complete line."""
        return self._framer.pending

    def receive_data(self, data: bytes) -> bytes:
        """Answers owed for `data`: possibly empty, never an exception for any input."""
        # The common case first, as cheaply as Python allows (this runs once per chunk read): a
        # chunk of whole lines, short enough to need no line scan, with nothing held over.
        if (
            self._fast
            and len(data) <= self._fast_limit
            and data[-1:] == b"\n"
            and not self._held
            and not self.closing
        ):
            return self._answer_block(data)
        if self.closing or not data:
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
        except LineTooLong as exc:
            return self._refuse(exc, answer)
        return answer

    def _refuse(self, exc: LineTooLong, answered: bytes) -> bytes:
        # Lines before the long one are answered; nothing of the long line is.
        # The framer hands out every good line before it raises, so `answered` already holds them.
        self.closing = True
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
