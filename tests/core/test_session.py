"""StreamSession: one client's conversation, the same whatever the segmentation."""

from __future__ import annotations

import importlib.util
import itertools
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from socketlab.core.services import ERR_LINE_TOO_LONG, make_service
from socketlab.core.session import StreamSession
from socketlab.errors import LineTooLong
from tests.conftest import ROOT


def run(service: str, chunks: list[bytes], max_line: int = 16384) -> tuple[bytes, bool]:
    session = StreamSession(make_service(service), max_line)
    out = b"".join(session.receive_data(c) for c in chunks)
    return out + session.end_of_input(), session.closing


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(st.binary(max_size=300), st.lists(st.integers(0, 400), max_size=20), st.sampled_from(["upper", "ack"]))
def test_any_split_gives_the_same_answers(data: bytes, cuts: list[int], service: str) -> None:
    whole = run(service, [data], max_line=32)
    pieces = run(service, cut(data, cuts), max_line=32)
    bytewise = run(service, [data[i : i + 1] for i in range(len(data))], max_line=32)
    assert whole == pieces == bytewise


def test_portuguese_split_inside_a_character() -> None:
    data = "ação\n".encode()
    assert run("upper", [data[:2], data[2:4], data[4:]]) == ("AÇÃO\n".encode(), False)


def test_long_line_answers_earlier_lines_then_one_error() -> None:
    out, closing = run("upper", [b"ok\n", b"x" * 20, b"y\nnever\n"], max_line=10)
    assert out == b"OK\n" + ERR_LINE_TOO_LONG
    assert closing


def test_session_records_the_error() -> None:
    session = StreamSession(make_service("ack"), 4)
    assert session.receive_data(b"12345678\n") == ERR_LINE_TOO_LONG
    assert isinstance(session.error, LineTooLong)
    assert session.receive_data(b"more\n") == b""


def test_unterminated_last_line_is_answered_at_end() -> None:
    assert run("upper", [b"abc\nde"]) == (b"ABC\nDE", False)


def test_echo_is_byte_exact_and_unframed() -> None:
    data = bytes(range(256)) * 100
    assert run("echo", cut(data, [7, 300, 9000]), max_line=8) == (data, False)


def test_a_line_one_byte_over_the_limit_is_refused_however_it_arrives() -> None:
    # Found by fuzz/fuzz_core.py: a chunk of exactly max_line + 2 bytes ("xx\n" with max_line 1) took
    # the no-scan fast path, and in a longer block the line after a good one was dropped unanswered.
    over = b"\xf4\xf4\n"
    expected = (b"\n" + ERR_LINE_TOO_LONG, True)
    assert run("upper", [b"\n" + over], max_line=1) == expected
    assert run("upper", [b"\n", over], max_line=1) == expected
    assert run("upper", [b"\n", over[:1], over[1:]], max_line=1) == expected
    assert run("upper", [b"a\r\n"], max_line=1) == (b"A\r\n", False)  # CR LF is not content


def test_atheris_fuzz_smoke_run(tmp_path: Path) -> None:
    """A short run of the coverage-guided fuzzer (fuzz/fuzz_core.py); long runs are a separate command."""
    if importlib.util.find_spec("atheris") is None:
        pytest.skip("atheris is not installed (pip install atheris; it has wheels for Linux and macOS)")
    done = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "fuzz_core.py"), "-runs=20000", "-seed=1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Done 20000 runs" in done.stderr


def receive_by_contract(session: StreamSession, chunk: bytes) -> bytes:
    """What a transport taking the fast path itself does (the contract in core/session.py)."""
    if chunk and len(chunk) <= session.fast_limit and chunk[-1] == 0x0A and chunk.isascii():
        return session.answer_ascii(chunk)
    return session.receive_data(chunk)


# Mostly ASCII lines, so that the fast path is taken often, with some bytes that keep it off.
PIECES = [b"abc\n", b"x\r\n", b"\n", b"long line " * 5 + b"\n", b"\xc3\xa7\n", b"ab"]
LINES = st.lists(st.sampled_from(PIECES))


@given(LINES, st.lists(st.integers(0, 400), max_size=20), st.sampled_from(["upper", "ack", "echo"]))
def test_the_fast_path_contract_gives_what_receive_data_gives(
    lines: list[bytes], cuts: list[int], service: str
) -> None:
    data = b"".join(lines)
    chunks = cut(data, cuts)
    by_contract = StreamSession(make_service(service), max_line=32)
    answers = b"".join(receive_by_contract(by_contract, c) for c in chunks)
    answers += by_contract.end_of_input()
    assert (answers, by_contract.closing) == run(service, chunks, max_line=32)


def test_a_stopped_session_answers_nothing_either_way() -> None:
    session = StreamSession(make_service("upper"))
    session.stop()
    assert receive_by_contract(session, b"abc\n") == b""
    assert session.end_of_input() == b""
