"""Tracing socket calls: the recorded sessions follow the lecture's diagrams, the printers write whole
lines from many threads at once, and the calls reported are the ones the kernel saw (strace)."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest

from socketlab.config import Listener
from socketlab.errors import ConfigError
from socketlab.models import MODELS
from socketlab.tracing import (
    CallEvent,
    JsonLinesTracer,
    RecordingTracer,
    TextTracer,
    TracedSocket,
    format_event,
    make_tracer,
    open_socket,
)
from tests.helpers import LISTENING, cli_env
from tests.models.server import read_line, running_server

CLIENT_TIMEOUT = 10.0
JSONL_KEYS = {"name", "fd", "args", "result", "seconds", "error", "time", "data", "proto"}


@pytest.mark.timeout(30)
def test_a_tcp_client_session_is_the_lecture_diagram() -> None:
    """socket, connect, send, recv, close: the client side of the slides' TCP interaction."""
    tracer = RecordingTracer()
    with (
        running_server((Listener("tcp", "upper", "127.0.0.1", 0),), model="threads") as server,
        open_socket(socket.AF_INET, socket.SOCK_STREAM, tracer) as client,
    ):
        client.settimeout(CLIENT_TIMEOUT)
        client.connect(server.address())
        client.sendall("ação\n".encode())
        answer = read_line(client)
    assert answer == "AÇÃO\n".encode()
    assert tracer.names == ["socket", "connect", "sendall", "recv", "close"]
    sock, connect, sendall, recv, close = tracer.events
    fd = sock.result["fd"] if sock.result else None
    assert {e.fd for e in tracer.events} == {fd}
    assert sock.args == {"family": "AF_INET", "type": "SOCK_STREAM"}
    assert connect.args == {"address": f"127.0.0.1:{server.address()[1]}"}
    assert sendall.args == {"bytes": 7}
    assert sendall.data == "ação\n".encode()
    assert recv.result == {"bytes": 7}
    assert recv.data == "AÇÃO\n".encode()
    assert close.error is None


@pytest.mark.timeout(30)
def test_a_udp_client_session_is_the_lecture_diagram() -> None:
    """socket, sendto, recvfrom, close: no connection, the address goes with each datagram."""
    tracer = RecordingTracer()
    with (
        running_server((Listener("udp", "upper", "127.0.0.1", 0),), model="iterative") as server,
        open_socket(socket.AF_INET, socket.SOCK_DGRAM, tracer) as client,
    ):
        client.settimeout(CLIENT_TIMEOUT)
        client.sendto(b"hello", server.address("udp"))
        answer, _ = client.recvfrom(1024)
    assert answer == b"HELLO"
    assert tracer.names == ["socket", "sendto", "recvfrom", "close"]
    sendto, recvfrom = tracer.events[1:3]
    assert sendto.args["address"] == f"127.0.0.1:{server.address('udp')[1]}"
    assert recvfrom.result == {"bytes": 5, "peer": f"127.0.0.1:{server.address('udp')[1]}"}


@pytest.mark.timeout(30)
def test_an_accepted_socket_is_traced_with_the_new_fd_and_the_client_port() -> None:
    tracer = RecordingTracer()
    with open_socket(socket.AF_INET, socket.SOCK_STREAM, tracer) as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        with socket.create_connection(listening.getsockname(), timeout=CLIENT_TIMEOUT) as client:
            conn, address = listening.accept()
            with conn:
                assert isinstance(conn, TracedSocket)
                client.sendall(b"x")
                assert conn.recv(10) == b"x"
                conn.shutdown(socket.SHUT_WR)
                assert client.recv(10) == b""
    accept = tracer.events[tracer.names.index("accept")]
    assert accept.fd == listening_fd(tracer)
    assert accept.result is not None
    assert accept.result["peer"] == f"127.0.0.1:{address[1]}"
    conn_fd = accept.result["fd"]
    assert [(e.name, e.args) for e in tracer.for_fd(conn_fd)] == [
        ("recv", {"bufsize": 10}),
        ("shutdown", {"how": "SHUT_WR"}),
        ("close", {}),
    ]


def listening_fd(tracer: RecordingTracer) -> int:
    first = tracer.events[0]
    assert first.name == "socket"
    return first.fd


@pytest.mark.timeout(30)
def test_a_failed_call_is_reported_and_still_raises() -> None:
    tracer = RecordingTracer()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]  # bound, never listening: connecting is refused
        with (
            open_socket(socket.AF_INET, socket.SOCK_STREAM, tracer) as client,
            pytest.raises(ConnectionRefusedError),
        ):
            client.connect(("127.0.0.1", closed_port))
    connect = tracer.events[1]
    assert connect.name == "connect"
    assert connect.error == os.strerror(errno.ECONNREFUSED)
    assert connect.result is None
    line = format_event(connect)
    assert line.startswith(f"connect(fd={connect.fd}, address=127.0.0.1:{closed_port}) -> error: ")


@pytest.mark.timeout(30)
def test_a_timeout_is_reported_as_an_error() -> None:
    tracer = RecordingTracer()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as quiet:
        quiet.bind(("127.0.0.1", 0))
        with open_socket(socket.AF_INET, socket.SOCK_DGRAM, tracer) as client:
            client.bind(("127.0.0.1", 0))
            client.settimeout(0.05)
            with pytest.raises(TimeoutError):
                client.recvfrom(100)
    recvfrom = tracer.events[2]
    assert (recvfrom.name, recvfrom.error) == ("recvfrom", "timed out")
    assert recvfrom.seconds > 0


def test_open_socket_without_a_tracer_is_a_plain_socket() -> None:
    with open_socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        assert type(sock) is socket.socket


def test_the_human_line_says_what_the_call_did_in_the_lecture_words() -> None:
    accept = CallEvent("accept", 3, {}, {"fd": 5, "peer": "127.0.0.1:54012"}, seconds=2.314)
    assert format_event(accept, {"accept": "accepts"}) == (
        "accept(fd=3) -> fd=5 peer=127.0.0.1:54012  [blocked 2.31 s]  accepts"
    )
    recv = CallEvent("recv", 5, {"bufsize": 1024}, {"bytes": 7}, data="ação\n".encode())
    assert format_event(recv) == "recv(fd=5, bufsize=1024) -> 7 bytes 'ação\\n'"
    out = io.StringIO()
    TextTracer(out).on_call(CallEvent("recv", 5, {"bufsize": 1024}, {"bytes": 0}, seconds=0.0123))
    assert out.getvalue() == (
        "recv(fd=5, bufsize=1024) -> 0 bytes  [blocked 12.3 ms]  "
        "0 bytes: the other side closed the connection (end of stream)\n"
    )
    refused = CallEvent("accept", 3, {}, None, error="would block")
    assert format_event(refused) == (
        "accept(fd=3) -> error: would block: nothing ready yet on this non-blocking socket"
    )
    out = io.StringIO()
    TextTracer(out).on_call(CallEvent("socket", 3, {"family": "AF_INET", "type": "SOCK_STREAM"}, {"fd": 3}))
    assert out.getvalue() == "socket(family=AF_INET, type=SOCK_STREAM) -> fd=3  creates a socket\n"


def test_json_lines_have_stable_keys_and_keep_text_as_text() -> None:
    out = io.StringIO()
    event = CallEvent("sendall", 5, {"bytes": 7}, {"bytes": 7}, 0.5, None, "AÇÃO\n".encode(), 1700000000.25)
    JsonLinesTracer(out).on_call(event)
    record = json.loads(out.getvalue())
    assert set(record) == JSONL_KEYS
    assert record == {
        "name": "sendall",
        "fd": 5,
        "args": {"bytes": 7},
        "result": {"bytes": 7},
        "seconds": 0.5,
        "error": None,
        "time": 1700000000.25,
        "data": "AÇÃO\n",
        "proto": None,
    }


@pytest.mark.timeout(30)
def test_a_connected_udp_socket_is_explained_as_udp_and_flags_are_shown() -> None:
    out = io.StringIO()
    with (
        running_server((Listener("udp", "upper", "127.0.0.1", 0),), model="threads") as server,
        open_socket(socket.AF_INET, socket.SOCK_DGRAM, TextTracer(out)) as client,
    ):
        client.settimeout(CLIENT_TIMEOUT)
        client.connect(server.address("udp"))
        client.send(b"hi")
        assert client.recv(100, socket.MSG_PEEK) == b"HI"
        assert client.recv(100) == b"HI"
    lines = out.getvalue().splitlines()
    assert lines[1].endswith("fixes the destination of a datagram socket (UDP); nothing is sent")
    assert lines[2].startswith("send(")
    assert lines[2].endswith("sends one datagram to the connected destination (UDP)")
    assert ", flags=MSG_PEEK) -> 2 bytes 'HI'" in lines[3]
    assert "(TCP)" not in out.getvalue()


def test_make_tracer_knows_text_and_jsonl_only() -> None:
    assert isinstance(make_tracer("text", io.StringIO()), TextTracer)
    assert isinstance(make_tracer("jsonl", io.StringIO()), JsonLinesTracer)
    with pytest.raises(ConfigError, match="xml"):
        make_tracer("xml", io.StringIO())


class _TearingStream(io.StringIO):
    """Writes one character at a time, giving other threads every chance to cut in."""

    def write(self, s: str) -> int:
        for char in s:
            super().write(char)
            time.sleep(0)
        return len(s)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("fmt", "parse"), [("jsonl", json.loads), ("text", str.strip)])
def test_many_threads_tracing_at_once_write_whole_lines(fmt: str, parse: Callable[[str], object]) -> None:
    out = _TearingStream()
    tracer = make_tracer(fmt, out)
    threads_count, events_each = 4, 25

    def report(thread_index: int) -> None:
        for i in range(events_each):
            tracer.on_call(CallEvent("recv", thread_index, {"bufsize": i}, {"bytes": i}))

    threads = [threading.Thread(target=report, args=(n,)) for n in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = out.getvalue().splitlines()
    assert len(lines) == threads_count * events_each
    for line in lines:
        parse(line)
        assert re.fullmatch(r"(recv\(fd=\d, bufsize=\d+\) -> (1 byte|\d+ bytes) .*)|(\{.*\})", line), line


@pytest.mark.timeout(30)
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_the_socketlab_client_trace_is_the_lecture_diagram(proto: str) -> None:
    """The real client, as a user runs it with --trace: the calls come in the diagram's order."""
    help_text = subprocess.run(
        [sys.executable, "-m", "socketlab", "client", "--help"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=20,
        check=False,
    ).stdout
    if "--trace-format" not in help_text:
        pytest.skip("`socketlab client` has no --trace-format yet (cli/client.py not landed)")
    with running_server((Listener(proto, "upper", "127.0.0.1", 0),), model="threads") as server:
        port = server.address(proto)[1]
        done = subprocess.run(
            [
                *(sys.executable, "-m", "socketlab", "client", proto, "127.0.0.1", str(port)),
                *("--message", "ação", "--trace", "--trace-format", "jsonl"),
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=cli_env(),
            timeout=20,
            check=False,
        )
    assert (done.returncode, done.stdout) == (0, "AÇÃO\n"), done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert all(set(r) == JSONL_KEYS for r in records)
    names = [str(r["name"]) for r in records]
    assert names[0] == "socket"
    assert names[-1] == "close"

    def first(prefix: str, *, answered: bool = False) -> dict[str, Any]:
        return next(
            r
            for r in records
            if str(r["name"]).startswith(prefix) and (not answered or (r["result"] and r["result"]["bytes"]))
        )

    def start(record: dict[str, Any]) -> float:
        return float(record["time"])

    def end(record: dict[str, Any]) -> float:
        return float(record["time"]) + float(record["seconds"])

    # Events come out as calls end, and the client may read in one thread while it writes in
    # another: the answer's recv can end before the sendall that asked for it returns. So the
    # diagram's order is checked on the calls' times: connected before sending, the answer read
    # after the question started to go out.
    send, answer = first("send"), first("recv", answered=True)
    assert send["data"].rstrip("\n") == "ação"
    if proto == "tcp":
        assert end(first("connect")) <= start(send)
    assert end(answer) >= start(send)
    assert answer["data"].rstrip("\n") == "AÇÃO"


# -- the same run under strace: what --trace reports is what the kernel saw --

STRACE_NAMES = {
    "socket",
    "setsockopt",
    "bind",
    "listen",
    "accept",
    "accept4",
    "connect",
    "sendto",
    "recvfrom",
    "shutdown",
}
# Our names for the calls strace shows: Python's recv() is recvfrom(2) and send() sendto(2) on Linux.
AS_SYSCALL = {"accept": "accept", "recv": "recvfrom", "send": "sendto", "sendall": "sendto"}

SERVER_SCRIPT = textwrap.dedent(
    """
    import sys
    from socketlab.config import Listener, ServerConfig
    from socketlab.models import run_blocking_server
    from socketlab.tracing import make_tracer

    config = ServerConfig(listeners=(Listener("tcp", "upper", "127.0.0.1", 0),))

    def announce(proto, service, host, port):
        print(f"{proto} {service} listening on {host}:{port}", flush=True)

    sys.exit(run_blocking_server(config, model=sys.argv[1], tracer=make_tracer("jsonl", sys.stderr),
                                 on_listening=announce))
    """
)
CLI_SERVE = [
    "-m",
    "socketlab",
    "serve",
    "tcp",
    "--service",
    "upper",
    "--host",
    "127.0.0.1",
    "--port",
    "0",
    "--model",
    "iterative",
    "--trace",
    "--trace-format",
    "jsonl",
]


def _strace_or_skip() -> str:
    if not sys.platform.startswith("linux"):
        pytest.skip("strace comparison runs on Linux only")
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (scripts/install-system-deps installs it)")
    probe = subprocess.run(
        [strace, "-f", "-e", "trace=network", "-o", os.devnull, "true"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"strace is not permitted here: {probe.stderr.strip()[:200]}")
    return strace


def _cli_serve_has_trace_or_skip() -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "socketlab", "serve", "--help"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=20,
        check=False,
    ).stdout
    if "--trace-format" not in help_text or "--model" not in help_text:
        pytest.skip("`socketlab serve` has no --model/--trace-format yet (cli/serve.py not landed)")


_FULL = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+|\?)(.*)$")
_UNFINISHED = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(\w+)\((.*)<unfinished \.\.\.>$")
_RESUMED = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+<\.\.\. (\w+) resumed>(.*)\)\s+=\s+(-?\d+|\?)(.*)$")


def _parse_strace(text: str) -> list[tuple[float, str, int]]:
    """(start time, call, fd) of each network call on an IPv4/IPv6 socket, in order of completion."""
    pending: dict[str, tuple[float, str, str]] = {}
    inet: dict[int, bool] = {}
    calls: list[tuple[float, str, int]] = []
    for line in text.splitlines():
        if m := _UNFINISHED.match(line):
            pending[m[1]] = (float(m[2]), m[3], m[4])
            continue
        if m := _RESUMED.match(line):
            if m[1] not in pending:
                continue
            start, name, args = pending.pop(m[1])
            result, tail = m[5], m[6]
        elif m := _FULL.match(line):
            start, name, args, result, tail = float(m[2]), m[3], m[4], m[5], m[6]
        else:
            continue  # signals, exits
        if name not in STRACE_NAMES or (result in ("?", "-1") and "EAGAIN" in tail):
            continue  # EAGAIN: "nothing yet" (non-blocking calls, CPython's retries): not compared
        if name == "socket":
            if result == "-1":
                continue
            fd = int(result)
            inet[fd] = args.startswith(("AF_INET,", "AF_INET6,"))
        else:
            fd = int(args.split(",", 1)[0])
            if name in ("accept", "accept4") and result not in ("?", "-1"):
                inet[int(result)] = inet.get(fd, False)
        if inet.get(fd):
            calls.append((start, "accept" if name == "accept4" else name, fd))
    return calls


def _per_fd(calls: list[tuple[str, int]]) -> dict[int, list[str]]:
    by_fd: dict[int, list[str]] = {}
    for name, fd in calls:
        names = by_fd.setdefault(fd, [])
        # sendall may take several sendto(2) for a big buffer: a run of sends counts once.
        if not (name == "sendto" and names and names[-1] == "sendto"):
            names.append(name)
    return by_fd


def events(lines: list[str]) -> list[dict[str, Any]]:
    """The JSON Lines trace records among a process's output lines."""
    return [json.loads(line) for line in lines if line.startswith("{")]


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class _Lines:
    """Collects the lines of a pipe in a thread, so stdout and stderr can both be read."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._stream = stream
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def close(self) -> None:
        """After the process ended: the rest of its lines, then the pipe closed."""
        self._thread.join(10)
        self._stream.close()

    def wait_for(self, found: Callable[[list[str]], object], timeout: float = 15.0) -> object:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if result := found(list(self.lines)):
                return result
            time.sleep(0.02)
        raise AssertionError(f"not found in time: {self.lines}")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("form", ["cli", *MODELS])
def test_trace_matches_strace_of_the_same_run(form: str, tmp_path: Path) -> None:
    """`form`: the CLI as a user runs it (iterative), or each model through the library."""
    strace = _strace_or_skip()
    if form == "cli":
        _cli_serve_has_trace_or_skip()
        command = [sys.executable, *CLI_SERVE]
    else:
        command = [sys.executable, "-c", SERVER_SCRIPT, form]
    strace_out = tmp_path / "strace.txt"
    proc = subprocess.Popen(
        [strace, "-f", "-ttt", "-e", "trace=network", "-o", str(strace_out), *command],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    server_pid = None
    assert proc.stdout is not None
    assert proc.stderr is not None
    stdout, stderr = _Lines(proc.stdout), _Lines(proc.stderr)
    try:

        def listening(lines: list[str]) -> re.Match[str] | None:
            return next((m for line in lines if (m := LISTENING.match(line))), None)

        match = stdout.wait_for(listening)
        assert isinstance(match, re.Match)
        # The traced program, child of strace: the one to stop (killing strace would leave it running).
        server_pid = int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0])
        with socket.create_connection(("127.0.0.1", int(match[4])), timeout=CLIENT_TIMEOUT) as client:
            client.sendall(b"hello\n")
            assert read_line(client) == b"HELLO\n"

        def session_closed(lines: list[str]) -> bool:
            recorded = events(lines)
            accepted = [e["result"]["fd"] for e in recorded if e["name"] == "accept" and e["result"]]
            return bool(accepted) and any(e["name"] == "close" and e["fd"] == accepted[0] for e in recorded)

        stderr.wait_for(session_closed)
        stopped_at = time.time()
        os.kill(server_pid, signal.SIGINT)
        assert proc.wait(20) == 0, stderr.lines
    finally:
        # The traced server is strace's child: killing strace alone would leave it running with our
        # pipes open, and the reader threads (and this test) waiting forever. Kill it first, found
        # even when the test failed before it announced itself.
        # Only while strace runs: then its tracee is surely ours (its PID cannot have been reused).
        if proc.poll() is None:
            for pid in [server_pid] if server_pid is not None else _children(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait()
        stdout.close()
        stderr.close()

    ours = [
        (AS_SYSCALL.get(str(e["name"]), str(e["name"])), int(e["fd"]))
        for e in events(stderr.lines)
        # close(2) is not a network call; select has no fd; EAGAIN is filtered from strace too.
        if e["name"] not in ("close", "select")
        and e["error"] != "would block"
        and float(e["time"]) < stopped_at
    ]
    kernel = [(name, fd) for start, name, fd in _parse_strace(strace_out.read_text()) if start < stopped_at]
    ours_by_fd, kernel_by_fd = _per_fd(ours), _per_fd(kernel)
    assert ours_by_fd, stderr.lines
    assert {fd: kernel_by_fd.get(fd) for fd in ours_by_fd} == ours_by_fd
    listening_fd = ours[0][1]
    assert ours_by_fd[listening_fd][:4] == ["socket", "setsockopt", "bind", "listen"]
    assert "accept" in ours_by_fd[listening_fd]
