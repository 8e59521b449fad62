"""Bytes no well-behaved client sends, against a real `socketlab serve`: half-close mid-line, a reset
mid-line, invalid UTF-8, NUL, every byte value; and the bound on an answer's size (3x its line).
"""

from __future__ import annotations

import socket
import struct
import sys

import pytest

from socketlab.core.text import upper_bytes
from tests.hardening.support import ask, exchange, figure, finish, serve


def test_an_answer_is_at_most_three_times_its_line() -> None:
    # Every code point on its own, as UTF-8: the worst growth of Unicode upper casing per character.
    worst = (1.0, "")
    for cp in range(sys.maxunicode + 1):
        if 0xD800 <= cp <= 0xDFFF:
            continue  # surrogates are not encodable
        ch = chr(cp)
        if ch.upper() == ch:
            continue
        raw = ch.encode()
        ratio = len(upper_bytes(raw)) / len(raw)
        if ratio > worst[0]:
            worst = (ratio, ch)
    # And every byte that is not valid UTF-8 on its own: Latin-1 upper case, one byte for one.
    latin = bytes(range(0x80, 0x100))
    assert len(upper_bytes(latin)) == len(latin)
    assert worst[0] <= 3
    figure("answer bound", f"worst upper-case growth is {worst[0]:g}x (U+{ord(worst[1]):04X} {worst[1]!r})")


@pytest.mark.timeout(30)
def test_every_byte_value_invalid_utf8_and_nul_are_answered_and_the_server_goes_on() -> None:
    every = bytes(b for b in range(256) if b != 0x0A)
    lines = [
        every + b"\n",
        b"\x00\x00nul\x00\n",
        b"\xff\xfe\xfd invalid \xc3\x28 \xe2\x82 \xf0\x9f\x98\n",  # bad starts, truncated sequences
        "ação".encode()[:-1] + b"\n",  # a character cut in half
        b"\xed\xa0\x80 surrogate \xed\xbf\xbf\n",  # UTF-8 of surrogates: invalid
        b"\xc0\x80 overlong NUL\n",
        b"\r\r\r\n",
        b"\n",
    ]
    data = b"".join(lines)
    with serve(["tcp"]) as server:
        port = server.port()
        answer = exchange(port, data)
        byte_by_byte = b""
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            for i in range(len(data)):
                s.sendall(data[i : i + 1])
            s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(65536):
                byte_by_byte += chunk
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            still = ask(s, b"ainda aqui\n")
        finish(server)
    assert answer == upper_bytes(data)
    assert byte_by_byte == answer
    assert answer.count(b"\n") == len(lines)
    assert still == b"AINDA AQUI\n"
    figure("every byte", f"{len(lines)} hostile lines ({len(data)} bytes) same answer whole and byte by byte")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_half_close_mid_line_and_reset_mid_line(loop: str) -> None:
    with serve(["tcp", "--loop", loop]) as server:
        port = server.port()
        # Half-close with an unterminated line: it is answered, then our FIN.
        half = exchange(port, "inteira\nmetade sem fim de linha ação".encode())
        # A reset in the middle of a line: nothing to answer, nobody else affected.
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"linha inteira\nmetade de uma li")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            after = ask(s, b"depois\n")
        output = finish(server)
    assert half == "INTEIRA\nMETADE SEM FIM DE LINHA AÇÃO".encode()
    assert after == b"DEPOIS\n"
    assert not any("Traceback" in line for line in output)
    figure(
        "half-close, reset",
        "last line answered at half-close; 20 resets mid-line, next client served",
    )


@pytest.mark.timeout(30)
def test_a_users_function_cannot_answer_more_than_three_times_the_max_line() -> None:
    from socketlab.config import Limits, Listener, ServerConfig  # noqa: PLC0415
    from tests.transports.serving import server_thread  # noqa: PLC0415

    config = ServerConfig(
        listeners=(Listener("tcp", "tests.hardening.big_answer:grow", "127.0.0.1", 0),),
        limits=Limits(max_line=1024),
    )
    with (
        server_thread(config) as running,
        socket.create_connection(("127.0.0.1", running.listeners[0].port), timeout=10) as s,
    ):
        small = ask(s, b"ab\n")  # 2,000 bytes: within 3 x 1 KiB
        big = ask(s, b"abcd\n")  # 4,000 bytes: over it
        after = ask(s, b"c\n")
    assert small == b"ab" * 1000 + b"\n"
    assert big == b"ERR ServiceError: the answer is longer than 3072 bytes (3 x --max-line)\n"
    assert after == b"c" * 1000 + b"\n"
    figure(
        "user answer bound",
        "a user's function answering 1000x: refused with one ERR line above 3 x --max-line",
    )
