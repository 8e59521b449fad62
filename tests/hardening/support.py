"""Shared by the hardening tests: server processes, their memory and descriptors, figures for the doc.

Each test prints one `FIGURE` line (run with `-s` to see them); docs/reliability.md records the
figures of a real run. Figures are reported, never asserted against a clock.
"""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from tests.helpers import ServerProcess, cli_env, start_serve, wait_for_listeners


def figure(name: str, text: str) -> None:
    print(f"\nFIGURE {name}: {text}", flush=True)


def serve(args: Sequence[str], expect: int = 1, env: dict[str, str] | None = None) -> ServerProcess:
    """`socketlab serve ARGS` on 127.0.0.1, a free port; its output is collected as it comes."""
    return _drained(start_serve([*args, "--host", "127.0.0.1", "--port", "0"], expect=expect, env=env))


def _drained(server: ServerProcess) -> ServerProcess:
    # A thousand clients make a thousand log lines: unread, they would fill the pipe and freeze the
    # server on its next log line. A thread keeps reading them into `output`.
    stream = server.proc.stdout
    assert stream is not None

    def drain() -> None:
        for raw in iter(stream.readline, b""):
            server.output.append(raw.decode("utf-8", "replace").rstrip("\n"))

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    _drains[id(server)] = thread
    return server


_drains: dict[int, threading.Thread] = {}


def serve_limited(args: Sequence[str], nofile: int) -> ServerProcess:
    """`socketlab serve` with RLIMIT_NOFILE set to `nofile` (as `ulimit -n` does) before it starts."""
    command = f"ulimit -n {nofile} && exec {sys.executable} -m socketlab serve " + " ".join(
        [*args, "--host", "127.0.0.1", "--port", "0"]
    )
    proc = subprocess.Popen(
        ["bash", "-c", command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=cli_env(),
    )
    return _announced(proc)


def _announced(proc: subprocess.Popen[bytes]) -> ServerProcess:
    # Bounded wait: a server that never announces itself fails the test instead of hanging it.
    return _drained(wait_for_listeners(proc))


def finish(server: ServerProcess, sig: int | None = 15) -> list[str]:
    """Stop the server (SIGTERM; None: it was signalled already) and return its whole output."""
    code = server.proc.wait(20) if sig is None else server.stop(sig)
    thread = _drains.pop(id(server), None)
    if thread is not None:
        thread.join(10)
    assert code == 0, f"exit code {code}: {server.output[-20:]}"
    return server.output


def rss_kib(pid: int) -> int:
    """Resident memory of process `pid` in KiB (VmRSS from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise LookupError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def connect_many(port: int, count: int, timeout: float = 10.0) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        socks.append(s)
    return socks


def wait_closed(socks: Iterable[socket.socket], timeout: float) -> tuple[int, dict[socket.socket, bytes]]:
    """Wait until the server has closed each socket (EOF or reset); return (closed, bytes received).

    Sockets still open after `timeout` are not counted as closed.
    """
    sel = selectors.DefaultSelector()
    received: dict[socket.socket, bytes] = {}
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        received[s] = b""
    closed = 0
    deadline = time.monotonic() + timeout
    while sel.get_map() and (left := deadline - time.monotonic()) > 0:
        for key, _events in sel.select(min(left, 0.5)):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionError:
                data = b""
            if data:
                received[sock] += data
            else:
                closed += 1
                sel.unregister(sock)
    sel.close()
    return closed, received


def close_all(socks: Iterable[socket.socket]) -> None:
    for s in socks:
        s.close()


def exchange(port: int, data: bytes, timeout: float = 10.0, piece: int = 0) -> bytes:
    """Send `data` (in writes of `piece` bytes, if given), half-close, read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        for i in range(0, len(data), piece or max(len(data), 1)):
            s.sendall(data[i : i + (piece or len(data))])
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def ask(sock: socket.socket, line: bytes) -> bytes:
    """One line over an open connection, its one-line answer back."""
    sock.sendall(line)
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf
