"""`socketlab serve --workers N`: several processes on one port, all stopped by one Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import cli_env, start_serve

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not hasattr(os, "fork"), reason="--workers needs fork()"),
]


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    if not path.exists():
        pytest.skip("this system has no /proc/PID/task/PID/children to find the workers")
    return [int(p) for p in path.read_text().split()]


def ask_tcp(port: int, line: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(line)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
        return answer


def test_tcp_workers_answer_and_stop_together() -> None:
    args = ["tcp", "--service", "upper", "--host", "127.0.0.1", "--port", "0", "--workers", "3"]
    with start_serve(args) as server:
        port = server.port("tcp")
        workers = children(server.proc.pid)
        assert len(workers) == 3
        for i in range(30):
            assert ask_tcp(port, f"ação {i}\n".encode()) == f"AÇÃO {i}\n".encode()
        assert server.stop(signal.SIGINT) == 0
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_udp_workers_share_the_port() -> None:
    args = ["udp", "--service", "upper", "--host", "127.0.0.1", "--port", "0", "--workers", "2"]
    with start_serve(args) as server:
        port = server.port("udp")
        assert len(children(server.proc.pid)) == 2
        for i in range(20):
            # A new source port each time, so the kernel's hash spreads the flows over the workers.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(5)
                s.sendto(f"oi {i}".encode(), ("127.0.0.1", port))
                assert s.recvfrom(100)[0] == f"OI {i}".encode()
        assert server.stop(signal.SIGTERM) == 0


def test_workers_need_the_asyncio_model() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "socketlab", "serve", "tcp", "--model", "threads", "--workers", "2"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "--workers needs the asyncio model" in done.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_stop_when_the_parent_is_killed_outright() -> None:
    args = ["tcp", "--service", "upper", "--host", "127.0.0.1", "--port", "0", "--workers", "2"]
    with start_serve(args) as server:
        workers = children(server.proc.pid)
        assert len(workers) == 2
        server.proc.kill()  # SIGKILL: the parent cannot pass anything on
        server.proc.wait(10)
        deadline = time.monotonic() + 15
        alive = workers
        while alive and time.monotonic() < deadline:
            alive = [pid for pid in workers if _running(pid)]
            time.sleep(0.1)
        assert alive == [], f"workers {alive} outlived their parent"


def _running(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
