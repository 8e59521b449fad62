"""The lecture's programs, corrected (examples/), run for real: against each other, against
socketlab's servers, and with socketlab's client against them. Each is a real process; the servers
run until killed, so each test stops the ones it started, by PID."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from socketlab.config import Listener
from tests.helpers import cli_env, start_serve
from tests.models.server import read_lines, running_server

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PORT_LINE = re.compile(r"porta (\d+)")
RUN_TIMEOUT = 20.0


@contextlib.contextmanager
def example_server(name: str, port: int = 0) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """Start examples/NAME on 127.0.0.1; yield its port (from its first line) and the process."""
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / name), "127.0.0.1", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=cli_env(),
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        match = PORT_LINE.search(first)
        assert match is not None, first
        yield int(match[1]), proc
    finally:
        proc.terminate()
        proc.wait(RUN_TIMEOUT)
        if proc.stdout is not None:
            proc.stdout.close()


def output_of(proc: subprocess.Popen[str]) -> str:
    """What a server printed after its first line, once it has been stopped."""
    proc.terminate()
    proc.wait(RUN_TIMEOUT)
    assert proc.stdout is not None
    return proc.stdout.read()


def run_example(name: str, port: int, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), "127.0.0.1", str(port)],
        input=stdin,
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=RUN_TIMEOUT,
        check=False,
    )


def run_socketlab_client(proto: str, port: int, message: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "socketlab", "client", proto, "127.0.0.1", str(port), "--message", message],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=RUN_TIMEOUT,
        check=False,
    )


def test_every_example_is_standard_library_only_and_listed_in_the_readme() -> None:
    readme = (EXAMPLES / "README.md").read_text()
    programs = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert programs == [
        "echo_client.py",
        "echo_server.py",
        "tcp_client.py",
        "tcp_server.py",
        "udp_client.py",
        "udp_server.py",
    ]
    for name in programs:
        assert f"`{name}`" in readme
        source = (EXAMPLES / name).read_text()
        imports = set(re.findall(r"^(?:import|from) (\w+)", source, re.MULTILINE))
        assert imports <= {"socket", "sys"}, (name, imports)


# -- against each other --


@pytest.mark.timeout(30)
def test_tcp_client_and_server() -> None:
    with example_server("tcp_server.py") as (port, server):
        done = run_example("tcp_client.py", port, "ação straße\n")
        printed = output_of(server)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "FROM SERVER: AÇÃO STRASSE\n"
    # The server shows each client's address and source port.
    assert re.search(r"conexão de \('127\.0\.0\.1', \d+\)", printed)


@pytest.mark.timeout(30)
def test_tcp_server_answers_whole_lines_however_they_arrive_and_latin1_as_latin1() -> None:
    with (
        example_server("tcp_server.py") as (port, _server),
        socket.create_connection(("127.0.0.1", port), timeout=RUN_TIMEOUT) as client,
    ):
        # What the slides' Java TCPClient sends for "ação" (writeBytes: one byte per char), in
        # pieces, then two UTF-8 lines in one piece.
        for piece in (b"a\xe7", b"\xe3o\n", "olá\nmundo\n".encode()):
            client.sendall(piece)
        answers = read_lines(client, 3)
    assert answers == b"A\xc7\xc3O\n" + "OLÁ\nMUNDO\n".encode()


@pytest.mark.timeout(30)
def test_udp_client_and_server() -> None:
    with example_server("udp_server.py") as (port, _server):
        done = run_example("udp_client.py", port, "ação\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "FROM SERVER:AÇÃO\n"


@pytest.mark.timeout(30)
def test_echo_client_and_server() -> None:
    with example_server("echo_server.py") as (port, server):
        done = run_example("echo_client.py", port)
        printed = output_of(server)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Iniciando cliente\nResposta:  ok\n"
    assert printed == " >>  b'Echo\\n'\n"


@pytest.mark.timeout(30)
def test_echo_server_answers_ok_per_line_not_per_recv() -> None:
    with (
        example_server("echo_server.py") as (port, _server),
        socket.create_connection(("127.0.0.1", port), timeout=RUN_TIMEOUT) as client,
    ):
        client.sendall(b"one\ntwo\nthr")
        client.sendall(b"ee\n")
        assert read_lines(client, 3) == b"ok\nok\nok\n"


@pytest.mark.timeout(30)
def test_udp_client_gives_up_when_nobody_answers() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        done = run_example("udp_client.py", silent.getsockname()[1], "anyone?\n")
        # Each of its tries arrived; none was answered.
        silent.settimeout(RUN_TIMEOUT)
        tries = [silent.recv(100) for _ in range(3)]
    assert done.returncode == 1
    assert "sem resposta" in done.stderr
    assert tries == [b"anyone?"] * 3


@pytest.mark.timeout(30)
def test_a_killed_tcp_server_restarts_on_its_port_at_once() -> None:
    """SO_REUSEADDR: the killed server's connection is left in TIME_WAIT on its port."""
    with example_server("tcp_server.py") as (port, server):
        with socket.create_connection(("127.0.0.1", port), timeout=RUN_TIMEOUT) as client:
            client.sendall(b"hi\n")
            assert read_lines(client) == b"HI\n"
            server.kill()  # its side closes first, so the TIME_WAIT is on the server's port
            server.wait(RUN_TIMEOUT)
            assert client.recv(100) == b""
        with example_server("tcp_server.py", port) as (same_port, _again):
            done = run_example("tcp_client.py", same_port, "again\n")
    assert same_port == port
    assert done.stdout == "FROM SERVER: AGAIN\n"


# -- against socketlab --


@contextlib.contextmanager
def socketlab_server(kind: str, proto: str, service: str) -> Iterator[int]:
    """A socketlab server on 127.0.0.1: a teaching model in this process, or `socketlab serve`."""
    if kind == "serve":
        with start_serve([proto, "--service", service, "--host", "127.0.0.1", "--port", "0"]) as served:
            yield served.port(proto)
        return
    with running_server((Listener(proto, service, "127.0.0.1", 0),), model=kind) as server:
        yield server.address(proto)[1]


SERVERS = ["iterative", "threads", "selectors", "serve"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", SERVERS)
def test_example_clients_against_socketlab(kind: str) -> None:
    with socketlab_server(kind, "tcp", "upper") as port:
        tcp = run_example("tcp_client.py", port, "ação\n")
    with socketlab_server(kind, "udp", "upper") as port:
        udp = run_example("udp_client.py", port, "ação\n")
    with socketlab_server(kind, "tcp", "ack") as port:
        echo = run_example("echo_client.py", port)
    assert (tcp.returncode, tcp.stdout) == (0, "FROM SERVER: AÇÃO\n"), tcp.stderr
    assert (udp.returncode, udp.stdout) == (0, "FROM SERVER:AÇÃO\n"), udp.stderr
    assert (echo.returncode, echo.stdout) == (0, "Iniciando cliente\nResposta:  ok\n"), echo.stderr


@pytest.mark.timeout(30)
def test_socketlab_client_against_example_servers() -> None:
    with example_server("tcp_server.py") as (port, _server):
        tcp = run_socketlab_client("tcp", port, "ação")
    with example_server("udp_server.py") as (port, _server):
        udp = run_socketlab_client("udp", port, "ação")
    with example_server("echo_server.py") as (port, server):
        echo = run_socketlab_client("tcp", port, "Echo")
        printed = output_of(server)
    assert (tcp.returncode, tcp.stdout) == (0, "AÇÃO\n"), tcp.stderr
    assert (udp.returncode, udp.stdout) == (0, "AÇÃO\n"), udp.stderr
    assert (echo.returncode, echo.stdout) == (0, "ok\n"), echo.stderr
    assert printed == " >>  b'Echo\\n'\n"
