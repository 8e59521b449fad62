"""Text rules shared by every service: how bytes become text and back. Pure functions, no I/O.

Clients of the lecture send two kinds of bytes for the same Portuguese text: UTF-8 (Python, modern Java
with getBytes()) and one byte per char (Java's DataOutputStream.writeBytes drops the high byte of each
char, so "ação" arrives as Latin-1 0x61 0xE7 0xE3 0x6F). Both must come back upper-cased, in the
encoding they came in. We decode with `surrogateescape`, so every byte that is not part of valid UTF-8
becomes a lone surrogate U+DC80..U+DCFF that encodes back to the very same byte; those bytes are
upper-cased as Latin-1 where Latin-1 has the capital, and left alone otherwise.
"""

from __future__ import annotations

import re

_ESCAPED = re.compile("[\udc80-\udcff]")


def _latin1_upper_table() -> dict[int, int]:
    table: dict[int, int] = {}
    for byte in range(0x80, 0x100):
        char = chr(byte)
        upper = char.upper()
        # Only a one-char capital inside Latin-1 can stand in the same single byte: ÿ -> Ÿ (U+0178),
        # µ -> Μ (Greek) and ß -> SS are left as they are.
        if upper != char and len(upper) == 1 and ord(upper) < 0x100:
            table[0xDC00 + byte] = 0xDC00 + ord(upper)
    return table


# Maps the escaped form of each Latin-1 lower-case byte to the escaped form of its capital.
_LATIN1_UPPER_ESCAPED = _latin1_upper_table()


def decode(data: bytes) -> str:
    """Bytes to text, never failing: invalid UTF-8 bytes become lone surrogates (see module doc)."""
    return data.decode("utf-8", "surrogateescape")


def encode(text: str) -> bytes:
    """The inverse of `decode`: text to bytes, restoring the original invalid bytes.

    Surrogates that did not come from `decode` (a user's function may return them) cannot be encoded;
    they become '?' rather than an exception.
    """
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


def upper_text(text: str) -> str:
    """Unicode upper case, with escaped Latin-1 bytes upper-cased within Latin-1."""
    if _ESCAPED.search(text) is not None:
        text = text.translate(_LATIN1_UPPER_ESCAPED)
    return text.upper()


def upper_bytes(data: bytes) -> bytes:
    """Upper-case any bytes, line terminators and all, by the rules of the module doc.

    Working on a whole chunk of complete lines gives exactly the answer line by line would: no Unicode
    upper-case mapping produces or consumes CR or LF, and LF never occurs inside a UTF-8 sequence.
    """
    if data.isascii():
        # The hot path: bytes.upper is ASCII-only and runs at memory speed.
        return data.upper()
    return encode(upper_text(decode(data)))


def to_display(data: bytes) -> str:
    """Bytes from a server as text for a person: UTF-8 where valid, each other byte as Latin-1.

    The lecture's Java servers answer Portuguese in Latin-1 (writeBytes); this shows "AÇÃO" either way.
    """
    text = decode(data)
    if _ESCAPED.search(text) is None:
        return text
    return _ESCAPED.sub(lambda m: chr(ord(m.group()) - 0xDC00), text)
