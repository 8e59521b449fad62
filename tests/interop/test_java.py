"""The slides' Java programs against socketlab, both directions, Portuguese included.

How the bytes flow (see programs.py for the charsets each JVM runs with):
- TCPClient reads stdin in its charset and sends with writeBytes, one byte per char: "ação" leaves as
  Latin-1 on every machine. It decodes the answer in its charset: on a UTF-8 machine the Latin-1
  capitals come out as U+FFFD; on a Latin-1 machine (the lecture's classrooms) they read right.
- UDPClient sends getBytes() (UTF-8 here), no newline, and prints the whole 1024-byte buffer it
  received into, so every answer it prints is followed by NUL characters up to 1024 bytes.
- TCPServer answers with writeBytes (Latin-1 for Portuguese) and reads one line per connection.
- UDPServer answers its whole 1024-byte buffer: the text, then NUL padding.
"""

from __future__ import annotations

import pytest

from tests.helpers import ServerProcess
from tests.interop.programs import LOOPBACK, Java, LectureServer, RecordingRelay, run_socketlab_client

pytestmark = [pytest.mark.java, pytest.mark.timeout(40)]

PORTUGUESE = "ação e coração"
PORTUGUESE_UPPER = "AÇÃO E CORAÇÃO"
UDP_BUFFER = 1024  # the size of receiveData in UDPClient and UDPServer


# --- the lecture's programs with each other: the fixtures themselves behave as on the slides ---


def test_java_tcp_client_and_server_as_on_the_slides(java: Java, java_tcp_server: LectureServer) -> None:
    result = java.run("TCPClient", LOOPBACK, str(java_tcp_server.port), stdin=b"hello, world\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"FROM SERVER: HELLO, WORLD\n"


def test_java_udp_client_and_server_as_on_the_slides(java: Java, java_udp_server: LectureServer) -> None:
    result = java.run("UDPClient", LOOPBACK, str(java_udp_server.port), stdin=PORTUGUESE.encode() + b"\n")
    assert result.returncode == 0, result.stderr
    answer = PORTUGUESE_UPPER.encode()
    # The server pads its answer to 1024 bytes and the client prints its whole buffer: the padding shows.
    assert result.stdout == b"FROM SERVER:" + answer + b"\0" * (UDP_BUFFER - len(answer)) + b"\n"


# --- the slides' Java clients against socketlab serve ---


def test_java_tcp_client_via_localhost(java: Java, serve_tcp_upper: ServerProcess) -> None:
    # "localhost", as students type it; the server listens on 127.0.0.1 only.
    result = java.run("TCPClient", "localhost", str(serve_tcp_upper.port("tcp")), stdin=b"Hello, TCP 1981!\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"FROM SERVER: HELLO, TCP 1981!\n"


def test_java_tcp_client_portuguese_on_a_utf8_machine(java: Java, serve_tcp_upper: ServerProcess) -> None:
    with RecordingRelay((LOOPBACK, serve_tcp_upper.port("tcp"))) as relay:
        result = java.run("TCPClient", LOOPBACK, str(relay.port), stdin=PORTUGUESE.encode("utf-8") + b"\n")
    assert result.returncode == 0, result.stderr
    # writeBytes drops the high byte of each char: the text leaves as Latin-1 though it came in UTF-8.
    assert bytes(relay.to_server) == PORTUGUESE.encode("latin-1") + b"\n"
    # The server upper-cases those bytes as Latin-1 and answers in the encoding they came in.
    answer = PORTUGUESE_UPPER.encode("latin-1") + b"\n"
    assert bytes(relay.to_client) == answer
    # TCPClient decodes the answer as UTF-8, its charset here: each Latin-1 capital is invalid UTF-8
    # and becomes U+FFFD. That is the slides' client on a modern machine, not socketlab's doing.
    printed = result.stdout.decode("utf-8")
    assert printed == "FROM SERVER: " + answer.decode("utf-8", "replace")
    assert printed == "FROM SERVER: A\ufffd\ufffdO E CORA\ufffd\ufffdO\n"


def test_java_tcp_client_portuguese_on_a_latin1_machine(java: Java, serve_tcp_upper: ServerProcess) -> None:
    # A classroom machine whose charset is Latin-1: keyboard, socket and screen all in one byte per char.
    result = java.run(
        "TCPClient",
        LOOPBACK,
        str(serve_tcp_upper.port("tcp")),
        stdin=PORTUGUESE.encode("latin-1") + b"\n",
        charset="ISO-8859-1",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode("latin-1") == f"FROM SERVER: {PORTUGUESE_UPPER}\n"


def test_java_udp_client_gets_the_answer_with_nothing_added(
    java: Java, serve_udp_upper: ServerProcess
) -> None:
    text = "ação, straße"
    result = java.run("UDPClient", LOOPBACK, str(serve_udp_upper.port("udp")), stdin=text.encode() + b"\n")
    assert result.returncode == 0, result.stderr
    answer = "AÇÃO, STRASSE".encode()
    # The NULs are the client's own zeroed buffer; their count shows the datagram was exactly the
    # upper-cased text: no newline added (there would be one before the NULs), no padding of ours.
    assert result.stdout == b"FROM SERVER:" + answer + b"\0" * (UDP_BUFFER - len(answer)) + b"\n"


# --- socketlab client against the slides' Java servers ---


def test_socketlab_tcp_client_against_java_tcpserver(java: Java, java_tcp_server: LectureServer) -> None:
    port = str(java_tcp_server.port)
    # The TCPServer reads one line per connection and loops to accept, so each run is one connection;
    # it never closes the connection, so the client must finish when its answer is in, not at EOF.
    ascii_run = run_socketlab_client(["tcp", LOOPBACK, port, "--message", "hello, world"])
    assert (ascii_run.returncode, ascii_run.stdout) == (0, b"HELLO, WORLD\n"), ascii_run.stderr
    # localhost while the server listens on 127.0.0.1 only. The answer is Latin-1 (writeBytes); the
    # client shows it as text, printed in UTF-8 for this UTF-8 locale.
    pt_run = run_socketlab_client(["tcp", "localhost", port, "--message", PORTUGUESE])
    assert pt_run.returncode == 0, pt_run.stderr
    assert pt_run.stdout.decode("utf-8") == PORTUGUESE_UPPER + "\n"


def test_socketlab_udp_client_against_java_udpserver(java: Java, java_udp_server: LectureServer) -> None:
    # Shortest first: the UDPServer reuses its buffer, so a datagram shorter than the one before it
    # would be answered with the earlier one's tail (the slides' program, kept as it is).
    result = run_socketlab_client(
        [
            "udp",
            LOOPBACK,
            str(java_udp_server.port),
            "--timeout",
            "2",
            "--message",
            "oi",
            "--message",
            PORTUGUESE,
        ]
    )
    assert result.returncode == 0, result.stderr
    # Each answer is 1024 bytes, mostly NUL padding; the client shows the text only.
    assert result.stdout.decode("utf-8") == f"OI\n{PORTUGUESE_UPPER}\n"
