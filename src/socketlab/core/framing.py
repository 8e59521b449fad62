"""Splits a byte stream into lines. Pure: never touches a socket.

A line ends in LF; a CR right before the LF is part of the terminator ("\\r\\n"). The terminator is kept
with the line, so services can answer with the terminator the client used.

Like h11's receive buffer, the framer remembers how far it has already looked for a LF, so a long line
arriving one byte at a time costs O(n) in total, not O(n^2).
"""

from __future__ import annotations

from socketlab.config import MAX_LINE
from socketlab.errors import LineTooLong


def content_length(line: bytes | bytearray | memoryview) -> int:
    """Length of a line without its terminator (LF, or CR LF)."""
    n = len(line)
    if n and line[n - 1] == 0x0A:
        n -= 1
        if n and line[n - 1] == 0x0D:
            n -= 1
    return n


def split_lines(block: bytes) -> list[bytes]:
    """A block of complete lines into lines, terminators kept (the last one may lack its LF)."""
    return block.splitlines(keepends=True) if b"\r" not in block else _split_lf(block)


def _split_lf(block: bytes) -> list[bytes]:
    # bytes.splitlines also splits on a lone CR, which is not a terminator here.
    lines = [part + b"\n" for part in block.split(b"\n")]
    last = lines.pop()[:-1]
    if last:
        lines.append(last)
    return lines


class LineFramer:
    """Accumulates bytes and hands out complete lines, at most `max_line` bytes each.

    `next_line()` hands out one line; `next_block()` hands out every complete line at once as one
    bytes object, which is what the fast transports use: a service can answer a whole block in one call.
    A line over the limit raises `LineTooLong` as soon as it is known to be too long, even before its
    LF arrives; lines before it are still handed out first.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._scanned = 0  # no LF in _buf[:_scanned]

    def receive_data(self, data: bytes) -> None:
        """Feed bytes as they came from the transport; an empty `data` is ignored."""
        self._buf += data

    @property
    def pending(self) -> int:
        """Bytes held that are not yet part of a complete line."""
        return len(self._buf)

    def next_line(self) -> bytes | None:
        """The next complete line with its terminator, or None when more data is needed."""
        end = self._buf.find(b"\n", self._scanned)
        if end < 0:
            self._scanned = len(self._buf)
            self._check_partial()
            return None
        line = bytes(self._buf[: end + 1])
        if content_length(line) > self.max_line:
            raise LineTooLong(self.max_line)
        del self._buf[: end + 1]
        self._scanned = 0
        return line

    def next_block(self) -> bytes | None:
        """Every complete line held, as one bytes object, or None when no line is complete."""
        end = self._buf.rfind(b"\n", self._scanned)
        if end < 0:
            self._scanned = len(self._buf)
            self._check_partial()
            return None
        block_len = end + 1
        if block_len > self.max_line + 1:
            # Only a block longer than one line of max_line bytes and its LF can hold a line over the
            # limit; find the first such line and keep the lines before it.
            good = self._good_prefix(block_len)
            if good < block_len:
                if good == 0:
                    raise LineTooLong(self.max_line)
                block_len = good
        block = bytes(self._buf[:block_len])
        del self._buf[:block_len]
        # The tail left over is checked on the next call, so this block is never lost to that check.
        self._scanned = 0
        return block

    def _good_prefix(self, block_len: int) -> int:
        """Length of the run of lines, from the start, that are within the limit."""
        start = 0
        buf = self._buf
        while start < block_len:
            end = buf.find(b"\n", start, block_len)
            length = end - start
            if length and buf[end - 1] == 0x0D:
                length -= 1
            if length > self.max_line:
                return start
            start = end + 1
        return block_len

    def _check_partial(self) -> None:
        # Called when the buffer holds no LF: all of it is one unterminated line. It may still end in
        # the CR of a coming CR LF, hence the +1.
        if len(self._buf) > self.max_line + 1:
            raise LineTooLong(self.max_line)

    def take_rest(self) -> bytes:
        """At end of input: whatever is left (an unterminated last line), emptying the framer."""
        rest = bytes(self._buf)
        self._buf.clear()
        self._scanned = 0
        return rest
