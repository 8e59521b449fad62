"""The TCP server's per-chunk path, as Python and as the copy the build compiles with mypyc.

Both must answer exactly as the session does; the build must compile it where it can; and a compiled
copy that no longer matches chunk_path.py must not be used.
"""

from __future__ import annotations

import importlib
import itertools
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from socketlab.core.services import make_service
from socketlab.core.session import StreamSession
from socketlab.transports import chunk_path
from socketlab.transports.chunk_path import ChunkPath
from socketlab.transports.tcp_server import CHUNK_PATH
from tests.conftest import ROOT
from tests.helpers import cli_env, start_serve

pytestmark = pytest.mark.timeout(60)

COMPILED = "compiled with mypyc"
SRC = ROOT / "src"


def compiled_class() -> type[ChunkPath] | None:
    try:
        native = importlib.import_module("socketlab.transports._chunk_path_native")
    except ImportError:
        return None
    cls: type[ChunkPath] = native.ChunkPath
    return cls


def can_compile() -> str | None:
    """Why the build could not have compiled chunk_path.py here, or None if it could."""
    if os.environ.get("SOCKETLAB_PURE_PYTHON"):
        return "SOCKETLAB_PURE_PYTHON is set"
    if shutil.which(os.environ.get("CC", "cc")) is None:
        return "no C compiler (cc) on this machine"
    if importlib.util.find_spec("mypyc") is None:
        return "mypyc is not installed"
    return None


def harness(base: type[ChunkPath], service: str, max_line: int) -> ChunkPath:
    """A ChunkPath subclass as TcpConnection makes one, writing into a list instead of a socket."""

    class Harness(base):  # type: ignore[valid-type,misc]
        def __init__(self) -> None:
            session = StreamSession(make_service(service), max_line)
            self._session = session
            self._answer_ascii = session.answer_ascii
            self._fast_limit = session.fast_limit
            self._transport = self
            self.quiet = 3
            self.written: list[bytes] = []
            self.refused = 0

        def write(self, data: bytes) -> None:
            self.written.append(data)

        def _refuse(self) -> None:
            # What TcpConnection._refuse does to the session and the copy of its limit.
            self.refused += 1
            self._session.stop()
            self._fast_limit = -1

    conn: ChunkPath = Harness()
    return conn


def classes() -> list[type[ChunkPath]]:
    native = compiled_class()
    return [ChunkPath] if native is None else [ChunkPath, native]


PIECES = [b"abc\n", b"x\r\n", b"\n", b"long line " * 5 + b"\n", b"\xc3\xa7\xc3\xa3o\n", b"ab", b"\xff\n"]


@given(
    st.lists(st.sampled_from(PIECES)),
    st.lists(st.integers(0, 400), max_size=20),
    st.sampled_from(["upper", "ack", "echo"]),
)
def test_every_chunk_path_answers_as_the_session_does(
    lines: list[bytes], cuts: list[int], service: str
) -> None:
    data = b"".join(lines)
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in itertools.pairwise(points) if b > a]
    reference = StreamSession(make_service(service), max_line=32)
    expected = []
    for chunk in chunks:
        expected.append(reference.receive_data(chunk))
        if reference.closing:
            break
    for base in classes():
        conn = harness(base, service, max_line=32)
        for chunk in chunks:
            conn.data_received(chunk)
        assert b"".join(conn.written) == b"".join(expected), base  # type: ignore[attr-defined]
        assert conn.refused == int(reference.closing), base  # type: ignore[attr-defined]
        assert conn.quiet == (0 if chunks else 3)


def test_the_build_compiled_the_chunk_path_where_it_could() -> None:
    why_not = can_compile()
    if why_not is not None:
        pytest.skip(f"the build could not compile chunk_path.py: {why_not}")
    # A compiler and mypyc are here, so scripts/test's install must have compiled it, from this source.
    assert CHUNK_PATH == COMPILED
    assert compiled_class() is not None


def chunk_path_in(env: dict[str, str]) -> str:
    code = "from socketlab.transports.tcp_server import CHUNK_PATH; print(CHUNK_PATH)"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30, check=True
    )
    return done.stdout.strip()


def test_socketlab_pure_python_keeps_the_python_path() -> None:
    assert chunk_path_in(cli_env(SOCKETLAB_PURE_PYTHON="1")) == "Python (SOCKETLAB_PURE_PYTHON is set)"


def test_a_compiled_copy_older_than_the_source_is_not_used(tmp_path: Path) -> None:
    if compiled_class() is None:
        pytest.skip(f"no compiled copy to go stale: {can_compile() or 'not built'}")
    # A development install after an edit of chunk_path.py: the copy in src/ was built from the old text.
    shutil.copytree(SRC / "socketlab", tmp_path / "socketlab")
    edited = tmp_path / "socketlab" / "transports" / "chunk_path.py"
    edited.write_text(Path(chunk_path.__file__).read_text() + "\n# edited\n")
    env = cli_env(PYTHONPATH=str(tmp_path))
    env.pop("SOCKETLAB_PURE_PYTHON", None)
    assert "older than chunk_path.py" in chunk_path_in(env)


def exchange(port: int, data: bytes) -> bytes:
    """Send `data` in small writes, half-close, and read everything until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for i in range(0, len(data), 7):
            sock.sendall(data[i : i + 7])
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def test_a_real_server_answers_the_same_either_way() -> None:
    lines = b"hello\n" * 50 + "ação é fácil\n".encode() * 20 + b"mixed \xc3\xa7 and ascii\n" + b"last"
    answers = []
    for extra in ({}, {"SOCKETLAB_PURE_PYTHON": "1"}):
        args = ["tcp", "--service", "upper", "--host", "127.0.0.1", "--port", "0"]
        with start_serve(args, env=cli_env(**extra)) as server:
            answers.append(exchange(server.port(), lines))
    expected = lines.decode().upper().encode()
    assert answers == [expected, expected]
