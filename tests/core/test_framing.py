"""LineFramer: any split of the input gives the same lines; long lines raise only LineTooLong."""

from __future__ import annotations

import contextlib
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from socketlab.core.framing import LineFramer, content_length, split_lines
from socketlab.errors import LineTooLong, SocketlabError

lines_st = st.lists(
    st.binary(max_size=40)
    .map(lambda b: b.replace(b"\n", b""))
    .flatmap(lambda body: st.sampled_from([body + b"\n", body + b"\r\n"])),
    max_size=20,
)


def feed_in_pieces(data: bytes, cuts: list[int], by_block: bool, max_line: int = 1 << 20) -> list[bytes]:
    framer = LineFramer(max_line)
    out: list[bytes] = []
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in itertools.pairwise(points):
        framer.receive_data(data[a:b])
        if by_block:
            while (block := framer.next_block()) is not None:
                out.extend(split_lines(block))
        else:
            while (line := framer.next_line()) is not None:
                out.append(line)
    return out


@given(lines_st, st.lists(st.integers(min_value=0, max_value=2000), max_size=30), st.booleans())
def test_any_split_gives_the_same_lines(lines: list[bytes], cuts: list[int], by_block: bool) -> None:
    data = b"".join(lines)
    assert feed_in_pieces(data, cuts, by_block) == lines


def test_byte_by_byte_equals_one_chunk() -> None:
    data = "ação\r\nstraße\nx\n".encode()
    one = feed_in_pieces(data, [], by_block=False)
    bytewise = feed_in_pieces(data, list(range(len(data))), by_block=False)
    assert one == bytewise == [b"a\xc3\xa7\xc3\xa3o\r\n", b"stra\xc3\x9fe\n", b"x\n"]


def test_line_at_the_limit_passes_and_one_more_byte_raises() -> None:
    framer = LineFramer(max_line=8)
    framer.receive_data(b"12345678\r\n")
    assert framer.next_line() == b"12345678\r\n"
    framer.receive_data(b"123456789\n")
    with pytest.raises(LineTooLong):
        framer.next_line()


def test_long_partial_line_raises_before_its_newline() -> None:
    framer = LineFramer(max_line=8)
    framer.receive_data(b"x" * 9)
    assert framer.next_block() is None  # could still be 8 bytes + CR of a CR LF
    framer.receive_data(b"x")
    with pytest.raises(LineTooLong):
        framer.next_block()


def test_block_hands_out_good_lines_before_a_long_one() -> None:
    framer = LineFramer(max_line=4)
    framer.receive_data(b"ab\ncd\n" + b"y" * 10 + b"\nzz\n")
    assert framer.next_block() == b"ab\ncd\n"
    with pytest.raises(LineTooLong):
        framer.next_block()


def test_lone_cr_is_not_a_terminator() -> None:
    assert split_lines(b"a\rb\nc\r\n") == [b"a\rb\n", b"c\r\n"]
    assert content_length(b"a\rb\n") == 3
    assert content_length(b"abc") == 3
    assert content_length(b"\r\n") == 0


@given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=400), max_size=10))
def test_garbage_raises_only_our_errors(data: bytes, cuts: list[int]) -> None:
    # LineTooLong is the only error the framer may raise, and it is ours; anything else fails the test.
    with contextlib.suppress(SocketlabError):
        feed_in_pieces(data, cuts, by_block=True, max_line=16)


def test_byte_by_byte_long_line_is_linear() -> None:
    # 64 KiB fed one byte at a time: the scan position keeps this O(n); quadratic rescans would take
    # minutes here, so the test's timeout is what fails.
    framer = LineFramer(max_line=1 << 20)
    for _ in range(1 << 16):
        framer.receive_data(b"a")
        assert framer.next_line() is None
    framer.receive_data(b"\n")
    line = framer.next_line()
    assert line is not None
    assert len(line) == (1 << 16) + 1
