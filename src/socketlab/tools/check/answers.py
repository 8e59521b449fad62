"""Judging a server's answer against the one the core service gives, and showing bytes to people.

Pure functions: no sockets. A verdict names *how* an answer differs (lines split, lines missing,
Latin-1 instead of UTF-8, NUL padding...), because each way points to a different bug of the lecture.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from socketlab.core.services import Service, make_service
from socketlab.core.session import StreamSession


class Verdict(enum.Enum):
    EXACT = "exact"  # byte for byte what the core answers
    SAME_LINES = "same-lines"  # the same lines, another terminator (LF for CR LF)
    UNTERMINATED = "unterminated"  # the right text, but the last line has no terminator
    DOUBLE_NEWLINE = "double-newline"  # every answer line followed by an empty line
    GREETING = "greeting"  # the right answer, after lines nobody asked for
    NOTHING = "nothing"  # no byte at all
    TRUNCATED = "truncated"  # a proper prefix of the expected answer
    EXTRA_LINES = "extra-lines"  # more lines than expected: a line answered in pieces
    FEWER_LINES = "fewer-lines"  # fewer lines: lines merged or lost
    LATIN1 = "latin1"  # the right text, one byte per char (Java's writeBytes)
    ASCII_ONLY = "ascii-only"  # only a-z upper-cased (bytes.upper)
    NUL_PADDED = "nul-padded"  # the right answer followed by NUL bytes (a whole buffer sent)
    NEWLINE_ADDED = "newline-added"  # UDP: the right answer followed by a line terminator
    LEFTOVER = "leftover"  # UDP: the right answer followed by other bytes (a reused buffer)
    DIFFERENT = "different"


def expected_stream(service: Service, data: bytes, end_of_input: bool = False) -> bytes:
    """What the core answers on a connection that receives `data` (then EOF, if `end_of_input`)."""
    session = StreamSession(service)
    answer = session.receive_data(data)
    if end_of_input:
        answer += session.end_of_input()
    return answer


def other_service_answering(
    services: Sequence[str],
    current: str,
    request: bytes,
    received: bytes,
    *,
    datagram: bool,
    end: bool = False,
) -> str | None:
    """The name of another service whose answer to `request` is `received` (the wrong --service?)."""
    if not request or not received:
        return None
    for name in services:
        if name == current:
            continue
        service = make_service(name)
        if datagram:
            if service.answer_datagram(request) == received:
                return name
            continue
        answer = expected_stream(service, request, end)
        if judge_stream(answer, received, service.framed) in (Verdict.EXACT, Verdict.SAME_LINES):
            return name
    return None


def lines_of(data: bytes) -> list[bytes]:
    """Lines without terminators (LF, or CR LF); an unterminated tail counts as a line."""
    parts = data.split(b"\n")
    tail = parts.pop()
    lines = [p[:-1] if p.endswith(b"\r") else p for p in parts]
    if tail:
        lines.append(tail)
    return lines


def latin1_form(answer: bytes) -> bytes | None:
    """`answer` with its text encoded one byte per char, as Java's DataOutputStream.writeBytes does."""
    try:
        return answer.decode("utf-8").encode("latin-1")
    except (UnicodeDecodeError, UnicodeEncodeError):
        return None


def ascii_upper_form(request: bytes) -> bytes:
    """What a server that upper-cases only ASCII letters (bytes.upper) answers."""
    return request.upper()


def judge_stream(
    expected: bytes, received: bytes, framed: bool, variants: Sequence[tuple[Verdict, bytes | None]] = ()
) -> Verdict:
    """How `received` differs from `expected` on a stream; framed services are compared by lines."""
    if received == expected:
        return Verdict.EXACT
    if not received:
        return Verdict.NOTHING
    got = lines_of(received)
    if framed and got == lines_of(expected):
        if expected.endswith(b"\n") and not received.endswith(b"\n"):
            return Verdict.UNTERMINATED
        return Verdict.SAME_LINES
    for verdict, form in variants:
        if form is not None and form != expected and (received == form or (framed and got == lines_of(form))):
            return verdict
    if b"\0" in received and b"\0" not in expected:
        unpadded = received.replace(b"\0", b"")
        if judge_stream(expected, unpadded, framed) in (Verdict.EXACT, Verdict.SAME_LINES):
            return Verdict.NUL_PADDED
    if framed:
        plain_got, plain_want = _lf(received), _lf(expected)
        if plain_want.count(b"\n") and plain_got == plain_want.replace(b"\n", b"\n\n"):
            return Verdict.DOUBLE_NEWLINE
        extra = plain_got[: len(plain_got) - len(plain_want)]
        if len(plain_got) > len(plain_want) and plain_got.endswith(plain_want) and extra.endswith(b"\n"):
            return Verdict.GREETING
    if expected.startswith(received):
        # Whole lines and then nothing: lines went unanswered (one line per connection, say), which
        # is not the cut-off answer of an ignored send() result.
        if framed and received.endswith(b"\n"):
            return Verdict.FEWER_LINES
        return Verdict.TRUNCATED
    if framed:
        want = lines_of(expected)
        if len(got) > len(want):
            return Verdict.EXTRA_LINES
        if len(got) < len(want):
            return Verdict.FEWER_LINES
    return Verdict.DIFFERENT


def _lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def judge_datagram(
    expected: bytes, received: bytes, variants: Sequence[tuple[Verdict, bytes | None]] = ()
) -> Verdict:
    """How one UDP answer differs from the expected one."""
    if received == expected:
        return Verdict.EXACT
    if not received:
        return Verdict.NOTHING
    for verdict, form in variants:
        if form is not None and form != expected and received.rstrip(b"\0") == form:
            return verdict
    if received.startswith(expected):
        extra = received[len(expected) :]
        if not extra.strip(b"\0"):
            return Verdict.NUL_PADDED
        if extra in (b"\n", b"\r\n"):
            return Verdict.NEWLINE_ADDED
        return Verdict.LEFTOVER
    if expected.startswith(received):
        return Verdict.TRUNCATED
    return Verdict.DIFFERENT


def strip_datagram_extras(received: bytes) -> bytes:
    """The answer without what other checks judge: trailing NUL padding and one added terminator."""
    data = received.rstrip(b"\0")
    for end in (b"\r\n", b"\n"):
        if data.endswith(end):
            return data[: -len(end)]
    return data


_ESCAPES = {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x00: "\\0", 0x5C: "\\\\"}


def show(data: bytes, limit: int = 60) -> str:
    """Bytes for a report: quoted text with \\n, \\r, \\0 visible; invalid UTF-8 as \\xNN; long runs cut.

    A run of one repeated byte (NUL padding, a long line of x) is shown as `'x'×8192`, so a report
    still says what came back without printing it all.
    """
    parts: list[str] = []
    shown = 0
    i = 0
    n = len(data)
    while i < n and shown < limit:
        j = i
        while j < n and data[j] == data[i]:
            j += 1
        run = j - i
        if run >= 8:
            parts.append(f"'{_show_text(data[i : i + 1])}'×{run}")
            shown += 8
            i = j
            continue
        # Take the longest piece up to the next long run, cut at the limit.
        k = i
        while k < n and k - i < limit - shown:
            m = k
            while m < n and data[m] == data[k]:
                m += 1
            if m - k >= 8:
                break
            k = m
        k = max(k, i + 1)
        parts.append(f"'{_show_text(data[i:k])}'")
        shown += k - i
        i = k
    text = " + ".join(parts) if parts else "''"
    if i < n:
        text += f" … ({n:,} bytes)"
    return text


def _show_text(data: bytes) -> str:
    out: list[str] = []
    text = data.decode("utf-8", "surrogateescape")
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code in _ESCAPES:
            out.append(_ESCAPES[code])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif ch == "'":
            out.append("\\'")
        else:
            out.append(ch)
    return "".join(out)
