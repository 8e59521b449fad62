"""The lecture's first Python pair (port 9898: the client sends `Echo`, the server answers `ok`) against
socketlab, both directions."""

from __future__ import annotations

import ast

import pytest

from tests.helpers import ServerProcess
from tests.interop.programs import (
    LectureServer,
    run_lecture_client,
    run_socketlab_client,
    start_lecture_python_server,
)

pytestmark = pytest.mark.timeout(30)


def received_by(server: LectureServer) -> bytes:
    """What the lecture server got, from its `print(" >> ", dado)` lines (one per recv)."""
    got = b""
    for line in bytes(server.output).decode("utf-8").splitlines():
        if line.startswith(" >>  "):
            chunk = ast.literal_eval(line.removeprefix(" >>  "))
            assert isinstance(chunk, bytes)
            got += chunk
    return got


def test_lecture_client_and_server_as_on_the_slides() -> None:
    with start_lecture_python_server() as server:
        result = run_lecture_client(server.port)
        assert server.wait() == 0, bytes(server.output)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"Iniciando cliente\nResposta:  ok\n"
    assert received_by(server) == b"Echo\n"


def test_lecture_client_against_socketlab_ack(serve_tcp_ack: ServerProcess) -> None:
    result = run_lecture_client(serve_tcp_ack.port("tcp"))
    assert result.returncode == 0, result.stderr
    # socketlab's ack keeps the line's terminator ("ok\n"); print adds its own newline after it.
    assert result.stdout == b"Iniciando cliente\nResposta:  ok\n\n"


@pytest.mark.parametrize(
    ("args", "stdin", "sent"),
    [
        pytest.param(["--message", "Echo"], None, b"Echo\n", id="message"),
        pytest.param([], "ação e coração\n".encode(), "ação e coração\n".encode(), id="pipe-portuguese"),
    ],
)
def test_socketlab_client_against_lecture_server(args: list[str], stdin: bytes | None, sent: bytes) -> None:
    with start_lecture_python_server() as server:
        result = run_socketlab_client(["tcp", "127.0.0.1", str(server.port), *args], stdin=stdin)
        # The server answers "ok" with no newline and serves until the client closes: the client must
        # end its side once its input is done, and show the unterminated answer; the script then ends.
        assert server.wait() == 0, bytes(server.output)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"ok\n"
    assert received_by(server) == sent
