"""The local receiver: a child process (`python -m socketlab.tools.speed`) and its handle.

It runs as a process of its own for the whole sweep, so the two ends use two cores as two programs
would; a thread would share the interpreter lock with the sender and measure the lock instead of the
sockets. It is started as a plain command rather than with multiprocessing, so it never re-imports
the caller's main module. Parent and child talk JSON Lines over the child's stdin and stdout:

    parent -> child   {"job": {...}}            one run: open a socket, receive, report
                      {"sender_done": true}     UDP: the sender has sent its last datagram
    child -> parent   {"ready": {"port": P, "rcvbuf_given": B}}
                      {"done": {...ReceiveReport...}}  or  {"error": "text"}

End of input on stdin ends the child.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import IO, Any

from socketlab.errors import TransportError
from socketlab.i18n import _
from socketlab.tools.speed import ends

# How long the child may take to start, to open its socket, and to see the sender connect.
READY_TIMEOUT = 30.0


@dataclass(frozen=True)
class ReceiverJob:
    proto: str
    host: str
    rcvbuf: int | None
    recv_chunk: int
    delay: float
    duration: float


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class _Lines:
    """JSON Lines over a pair of pipes, reading with a timeout (select on the raw descriptor)."""

    def __init__(self, reader: IO[bytes], writer: IO[bytes]) -> None:
        self._fd = reader.fileno()
        self._writer = writer
        self._buf = b""

    def send(self, message: dict[str, Any]) -> None:
        self._writer.write(json.dumps(message).encode() + b"\n")
        self._writer.flush()

    def ready(self, timeout: float = 0.0) -> bool:
        """A whole line is waiting (or the pipe is at its end)."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = None if timeout == float("inf") else max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([self._fd], [], [], left)
            if not readable:
                return False
            chunk = os.read(self._fd, 65536)
            if not chunk:
                return True
            self._buf += chunk
        return True

    def receive(self, timeout: float) -> dict[str, Any] | None:
        """The next message; None at end of input. TimeoutError when none came in time."""
        if not self.ready(timeout):
            raise TimeoutError
        line, sep, self._buf = self._buf.partition(b"\n")
        if not sep:
            return None
        message: dict[str, Any] = json.loads(line)
        return message


def main() -> None:
    """The child: serve jobs until end of input."""
    lines = _Lines(sys.stdin.buffer, sys.stdout.buffer)
    while True:
        message = lines.receive(timeout=float("inf"))
        if message is None:
            return
        if "job" not in message:
            continue  # a late "sender_done" of a run that already ended
        job = ReceiverJob(**message["job"])
        try:
            report = _receive(job, lines)
        except OSError as exc:
            lines.send({"error": f"receiver: {exc.strerror or exc}"})
            continue
        lines.send({"done": asdict(report)})


def _receive(job: ReceiverJob, lines: _Lines) -> ends.ReceiveReport:
    kind = socket.SOCK_STREAM if job.proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(family_of(job.host), kind) as sock:
        # Before listen(): TCP fixes the window scale it offers from the buffer at SYN time.
        given = ends.set_buffer(sock, socket.SO_RCVBUF, job.rcvbuf)
        sock.bind((job.host, 0))
        if job.proto == "tcp":
            sock.listen(1)
            sock.settimeout(READY_TIMEOUT)
        else:
            ends.set_io_timeout(sock, ends.QUIET)
        lines.send({"ready": {"port": sock.getsockname()[1], "rcvbuf_given": given}})
        window_end = time.monotonic() + job.duration
        if job.proto == "udp":
            return ends.receive_udp(sock, job.delay, window_end, lines.ready)
        peer, _ = sock.accept()
        with peer:
            peer.settimeout(None)
            ends.set_io_timeout(peer, ends.IO_TIMEOUT)
            return ends.receive_tcp(peer, job.recv_chunk, job.delay, window_end)


class LocalReceiver:
    """The receiver child process, as the sender's side sees it."""

    def __init__(self, prefix: Sequence[str] = ()) -> None:
        """`prefix` runs the child through another command (`ip netns exec NAME`)."""
        self._proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "socketlab.tools.speed"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        self._lines = _Lines(self._proc.stdout, self._proc.stdin)

    def start(self, job: ReceiverJob) -> tuple[int, int]:
        """Hand the child a run; return its port and the SO_RCVBUF the kernel gave it."""
        self._lines.send({"job": asdict(job)})
        ready = self._wait("ready", READY_TIMEOUT)
        return int(ready["port"]), int(ready["rcvbuf_given"])

    def sender_done(self) -> None:
        self._lines.send({"sender_done": True})

    def result(self, timeout: float) -> ends.ReceiveReport:
        return ends.ReceiveReport(**self._wait("done", timeout))

    def _wait(self, kind: str, timeout: float) -> dict[str, Any]:
        try:
            message = self._lines.receive(timeout)
        except TimeoutError:
            raise TransportError(
                _("the receiver process did not answer within {timeout:.0f} s").format(timeout=timeout)
            ) from None
        if message is None:
            raise TransportError(_("the receiver process died"))
        if kind not in message:
            raise TransportError(str(message.get("error", message)))
        value: dict[str, Any] = message[kind]
        return value

    def close(self) -> None:
        assert self._proc.stdin is not None
        # End of input makes the child return; an OSError means it is gone already (no reader left).
        with contextlib.suppress(OSError):
            self._proc.stdin.close()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()  # our own child, blocked in a run; by its handle
            self._proc.wait(5)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
