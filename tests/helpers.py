"""Running socketlab (or any server) as a real process in tests, the way a user runs it."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

# `socketlab serve` prints one line per listener, e.g. "tcp upper listening on 127.0.0.1:6789" or
# "udp upper listening on [::]:9876" (English, the tests' locale). This pattern is the contract.
LISTENING = re.compile(r"^(tcp|udp) (\S+) listening on \[?([^\]]+?)\]?:(\d+)\s*$")


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONUNBUFFERED": "1"})
    env.pop("LANGUAGE", None)
    env.update(extra)
    return env


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    listeners: list[tuple[str, str, str, int]] = field(default_factory=list)
    output: list[str] = field(default_factory=list)

    def port(self, proto: str = "tcp", service: str | None = None) -> int:
        for p, s, _host, port in self.listeners:
            if p == proto and (service is None or s == service):
                return port
        raise LookupError(f"no {proto} {service} listener in {self.listeners}")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 15.0) -> int:
        """Send `sig` (Ctrl-C by default) and wait for the exit code; kill after `timeout`."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_serve(
    args: Sequence[str], expect: int = 1, timeout: float = 15.0, env: dict[str, str] | None = None
) -> ServerProcess:
    """Start `python -m socketlab serve ARGS` and wait until `expect` listeners are announced.

    stderr goes to the same pipe as stdout, so log lines are kept in `output` too.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "socketlab", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env or cli_env(),
    )
    return wait_for_listeners(proc, expect, timeout)


def wait_for_listeners(
    proc: subprocess.Popen[bytes], expect: int = 1, timeout: float = 15.0
) -> ServerProcess:
    """Read a started server's output until `expect` listening lines came, never past `timeout`."""
    server = ServerProcess(proc)
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    buf = b""
    fd = proc.stdout.fileno()
    while len(server.listeners) < expect:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            server.__exit__(None, None, None)
            raise RuntimeError(f"server did not start: {server.output} {buf!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            continue
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            server.output.append(line)
            m = LISTENING.match(line)
            if m:
                server.listeners.append((m[1], m[2], m[3], int(m[4])))
    return server
