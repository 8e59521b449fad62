"""The services as pure functions: known answers, Unicode rules, and no exception for any input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from socketlab.core.services import BUILTIN, Function, make_service
from socketlab.core.text import decode, to_display, upper_bytes
from socketlab.errors import ConfigError


@pytest.mark.parametrize(
    ("sent", "answer"),
    [
        ("ação\n".encode(), "AÇÃO\n".encode()),
        ("straße\r\n".encode(), b"STRASSE\r\n"),
        (b"a\xe7\xe3o\n", b"A\xc7\xc3O\n"),  # Latin-1 from Java's writeBytes stays Latin-1
        (b"\xff\xb5\xdf\n", b"\xff\xb5\xdf\n"),  # ÿ µ ß have no one-byte Latin-1 capital
        (b"mixed \xe7 and \xc3\xa7\n", b"MIXED \xc7 AND \xc3\x87\n"),
        (b"\x00\x01bin\n", b"\x00\x01BIN\n"),
    ],
)
def test_upper_known_answers(sent: bytes, answer: bytes) -> None:
    assert make_service("upper").answer_block(sent) == answer


def test_upper_datagram_adds_nothing() -> None:
    assert make_service("upper").answer_datagram("ação".encode()) == "AÇÃO".encode()


def test_ack_keeps_each_terminator() -> None:
    ack = make_service("ack")
    assert ack.answer_block(b"Echo\n") == b"ok\n"
    assert ack.answer_block(b"a\r\nb\nc\r\n") == b"ok\r\nok\nok\r\n"
    assert ack.answer_block(b"last") == b"ok"
    assert ack.answer_datagram(b"Echo") == b"ok"


def test_echo_and_discard() -> None:
    assert make_service("echo").answer_stream(b"\x00\xff\n") == b"\x00\xff\n"
    assert make_service("discard").answer_stream(b"abc") == b""
    assert make_service("discard").answer_datagram(b"abc") is None


def boom(line: str) -> str:
    if "x" in line:
        raise ValueError("no x please")
    return line[::-1]


def test_user_function_failure_answers_that_line_only() -> None:
    seen: list[bytes] = []
    service = make_service(f"{__name__}:boom", report=lambda req, exc: seen.append(req))
    assert isinstance(service, Function)
    assert service.answer_block("abc\nxyz\r\nçã\n".encode()) == (
        b"cba\nERR ValueError: no x please\r\n" + "ãç\n".encode()
    )
    assert seen == [b"xyz"]


def test_unknown_service_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        make_service("shout")
    with pytest.raises(ConfigError):
        make_service("no_such_module_here:f")
    with pytest.raises(ConfigError):
        make_service(f"{__name__}:not_there")


@given(st.binary(max_size=200))
def test_every_service_answers_any_bytes(data: bytes) -> None:
    for name in BUILTIN:
        service = make_service(name)
        service.answer_block(data)
        service.answer_datagram(data)


@given(st.binary(max_size=200))
def test_upper_keeps_line_structure(data: bytes) -> None:
    # Not idempotent in general: upper-casing stray Latin-1 bytes can make valid UTF-8 (0xEF 0x80
    # becomes 0xCF 0x80, "π"), which a second pass then reads as UTF-8. Lines are always kept.
    once = upper_bytes(data)
    assert once.count(b"\n") == data.count(b"\n")
    assert once.count(b"\r") == data.count(b"\r")


# Printable ASCII and the Latin-1 letters (0xC0-0xFF): in such text a byte >= 0xC0 is never followed by
# a continuation byte (0x80-0xBF), so no run of it is valid UTF-8, as with Portuguese from writeBytes.
latin1_text = st.text(
    alphabet=st.one_of(
        st.characters(min_codepoint=0x20, max_codepoint=0x7E),
        st.characters(min_codepoint=0xC0, max_codepoint=0xFF),
    ),
    max_size=50,
)


@given(latin1_text)
def test_latin1_text_is_upper_cased_byte_for_byte(text: str) -> None:
    data = text.encode("latin-1")
    expected = bytes(
        ord(c.upper()) if len(c.upper()) == 1 and ord(c.upper()) < 0x100 else ord(c) for c in text
    )
    assert upper_bytes(data) == expected


@given(st.text(max_size=100))
def test_upper_of_utf8_is_unicode_upper(text: str) -> None:
    # Lone surrogates cannot be sent as UTF-8; drop them from the generated text.
    clean = "".join(c for c in text if not "\ud800" <= c <= "\udfff")
    assert upper_bytes(clean.encode()) == clean.upper().encode()


@given(st.binary(max_size=100))
def test_display_never_fails_and_keeps_valid_utf8(data: bytes) -> None:
    shown = to_display(data)
    assert "\udc80" not in shown
    if not any("\udc80" <= c <= "\udcff" for c in decode(data)):
        assert shown == data.decode("utf-8")


def test_display_of_latin1_answer() -> None:
    assert to_display(b"A\xc7\xc3O") == "AÇÃO"


@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=200))
def test_the_ascii_functions_answer_as_the_services_do(text: str) -> None:
    # The session's fast path trusts this function with every ASCII chunk instead of answer_block.
    block = text.encode()
    for name in BUILTIN:
        service = make_service(name)
        if service.framed:
            assert service.ascii_block_function()(block) == service.answer_block(block)
        assert service.ascii_datagram_function()(block) == service.answer_datagram(block)
