"""The servers' hot paths (transports/chunk_path.py and datagram_path.py), as Python and as the copies
the build compiles with mypyc.

Both copies must answer exactly as the session and the endpoint do; the build must compile them where it
can; and a compiled copy that no longer matches its source must not be used.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import logging
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hatch_build
import pytest
from hypothesis import given
from hypothesis import strategies as st

from socketlab.core.guards import UdpGuard
from socketlab.core.services import make_service
from socketlab.core.session import StreamSession
from socketlab.transports import compiled, datagram_path, udp_server
from socketlab.transports.chunk_path import ChunkPath
from socketlab.transports.compiled import COMPILED, HOT_PATHS
from socketlab.transports.tcp_server import CHUNK_PATH
from socketlab.transports.udp_server import DATAGRAM_PATH, UdpEndpoint, serve_in_threads
from tests.conftest import ROOT
from tests.hardening.support import exchange
from tests.helpers import cli_env, start_serve
from tests.transports.test_udp_thread import _Fragile

pytestmark = pytest.mark.timeout(60)

SRC = ROOT / "src"


def native(name: str) -> Any:
    """The compiled copy of socketlab.transports.NAME, or None."""
    try:
        return importlib.import_module(f"socketlab.transports._{name}_native")
    except ImportError:
        return None


def compiled_class() -> type[ChunkPath] | None:
    module = native("chunk_path")
    return None if module is None else module.ChunkPath


def can_compile() -> str | None:
    """Why the build could not have compiled the hot paths here, or None if it could."""
    if os.environ.get(compiled.PURE_PYTHON_VARIABLE):
        return f"{compiled.PURE_PYTHON_VARIABLE} is set"
    if shutil.which(os.environ.get("CC", "cc")) is None:
        return "no C compiler (cc) on this machine"
    if importlib.util.find_spec("mypyc") is None:
        return "mypyc is not installed"
    if not Path(sysconfig.get_paths()["include"], "Python.h").exists():
        return "Python's C headers (Python.h) are not installed"
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
    built = compiled_class()
    return [ChunkPath] if built is None else [ChunkPath, built]


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


def test_the_build_and_the_loader_know_the_same_hot_paths() -> None:
    assert hatch_build.HOT_PATHS == HOT_PATHS


def test_the_build_compiled_the_hot_paths_where_it_could() -> None:
    why_not = can_compile()
    if why_not is not None:
        pytest.skip(f"the build could not compile the hot paths: {why_not}")
    # A compiler and mypyc are here, so scripts/test's install must have compiled them, from this source.
    assert (CHUNK_PATH, DATAGRAM_PATH) == (COMPILED, COMPILED)
    assert compiled_class() is not None
    assert udp_server.serve_datagrams is native("datagram_path").serve


def paths_in(env: dict[str, str]) -> list[str]:
    code = "from socketlab.transports import compiled as c; [print(c.load(n)[1]) for n in c.HOT_PATHS]"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30, check=True
    )
    return done.stdout.splitlines()


def test_socketlab_pure_python_keeps_the_python_paths() -> None:
    assert paths_in(cli_env(SOCKETLAB_PURE_PYTHON="1")) == ["Python (SOCKETLAB_PURE_PYTHON is set)"] * 2


@pytest.mark.parametrize("name", HOT_PATHS)
def test_a_compiled_copy_older_than_its_source_is_not_used(name: str, tmp_path: Path) -> None:
    if native(name) is None:
        pytest.skip(f"no compiled copy to go stale: {can_compile() or 'not built'}")
    # A development install after an edit of the source: the copy in src/ was built from the old text.
    shutil.copytree(SRC / "socketlab", tmp_path / "socketlab")
    edited = tmp_path / "socketlab" / "transports" / f"{name}.py"
    edited.write_text(edited.read_text() + "\n# edited\n")
    env = cli_env(PYTHONPATH=str(tmp_path))
    env.pop(compiled.PURE_PYTHON_VARIABLE, None)
    loaded = dict(zip(HOT_PATHS, paths_in(env), strict=True))
    assert f"older than {name}.py" in loaded[name]
    assert all(v == COMPILED for n, v in loaded.items() if n != name)


def test_a_real_server_answers_the_same_either_way() -> None:
    lines = b"hello\n" * 50 + "ação é fácil\n".encode() * 20 + b"mixed \xc3\xa7 and ascii\n" + b"last"
    answers = []
    for extra in ({}, {compiled.PURE_PYTHON_VARIABLE: "1"}):
        args = ["tcp", "--service", "upper", "--host", "127.0.0.1", "--port", "0"]
        with start_serve(args, env=cli_env(**extra)) as server:
            answers.append(exchange(server.port(), lines, piece=7))
    expected = lines.decode().upper().encode()
    assert answers == [expected, expected]


def serve_functions() -> list[Callable[[Any], None]]:
    module = native("datagram_path")
    return [datagram_path.serve] + ([] if module is None else [module.serve])


@pytest.mark.parametrize("spec", ["upper", "ack", "echo", "fragile"])
def test_every_datagram_loop_answers_as_the_endpoint_does(
    spec: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Real sockets through a UdpThread, once per copy of the loop; an endpoint of its own says what each
    # datagram should get, amplification rule included (ack must not answer "x" with the larger "ok").
    datagrams = [b"abc", b"x", "ação".encode(), b"\xff\xfe", b"", b"line\r\n", b"break", b"last"]
    log = logging.getLogger("test.compiled.udp")
    service = _Fragile() if spec == "fragile" else make_service(spec)
    answers = []
    for serve in serve_functions():
        monkeypatch.setattr(udp_server, "serve_datagrams", serve)
        reference = UdpEndpoint(service, log, "reference", UdpGuard())
        reference._time = lambda: 0.0
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        (thread,) = serve_in_threads([sock], lambda: UdpEndpoint(service, log, f"udp {spec}", UdpGuard()))
        got: list[bytes | None] = []
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.bind(("127.0.0.1", 0))
                client.settimeout(0.5)
                for data in datagrams:
                    client.sendto(data, sock.getsockname())
                    try:
                        expected = reference.answer(data, client.getsockname())
                    except RuntimeError:
                        expected = None  # the fragile service's "break": logged, unanswered
                    try:
                        got.append(client.recvfrom(65536)[0])
                    except TimeoutError:
                        got.append(None)
                    assert got[-1] == expected, (serve, data)
        finally:
            thread.close()
        answers.append(got)
    assert all(a == answers[0] for a in answers)
    if spec == "fragile":
        assert caplog.text.count("udp fragile: error serving a datagram") == len(answers)


def test_a_real_udp_server_answers_the_same_either_way() -> None:
    datagrams = [b"hello", "ação é fácil".encode(), b"mixed \xc3\xa7 ascii", b"x" * 1000]
    answers = []
    for extra in ({}, {compiled.PURE_PYTHON_VARIABLE: "1"}):
        args = ["udp", "--service", "upper", "--host", "127.0.0.1", "--port", "0"]
        with (
            start_serve(args, env=cli_env(**extra)) as server,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
        ):
            client.settimeout(5)
            got = []
            for data in datagrams:
                client.sendto(data, ("127.0.0.1", server.port("udp")))
                got.append(client.recvfrom(65536)[0])
            answers.append(got)
    expected = [d.decode().upper().encode() for d in datagrams]
    assert answers == [expected, expected]
