"""Running the lecture's own programs (tests/fixtures) as real processes, beside `socketlab`.

The lecture's servers take a port number and print nothing useful, so they cannot bind port 0 and
tell us which port they got; making them do so would change the programs the slides show. Instead we
pick a random port below Linux's ephemeral range (32768-60999, where port 0 and outgoing connections
get theirs), check that it is free, start the server on it and wait until it *answers*. If another
process takes the port in between, the server dies with "Address already in use" and we try another
port, a few times. Waiting for an answer, rather than for a connection to succeed, matters: the Java
TCPServer crashes on a connection closed before a line (readLine returns null), and the Python server
accepts one connection only.
"""

from __future__ import annotations

import os
import random
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import cli_env

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
JAVA_SOURCES = FIXTURES / "java"
LECTURE_PY = FIXTURES / "lecture_py"

LOOPBACK = "127.0.0.1"
# Below the ephemeral range, so a port picked here does not collide with port-0 servers of other tests.
PORT_RANGE = (20_000, 32_000)
START_ATTEMPTS = 5
START_TIMEOUT = 15.0  # seconds for one server to start; a JVM on a busy 2-core machine is slow
RUN_TIMEOUT = 20.0  # seconds for one client program to finish

# Java 17 takes its default charset (file.encoding) from the locale, and System.out encodes with
# sun.stdout.encoding when set, else with that default. Both are set on every run so the bytes do
# not depend on the machine: with UTF-8, System.in and the sockets' readers decode UTF-8, getBytes()
# encodes UTF-8, and writeBytes still sends one byte per char (Latin-1 for Portuguese), whatever the
# charset. ISO-8859-1 stands for the lecture's classroom machines (Windows, Latin-1).
# Start-up flags: a short program gains nothing from the optimizing compiler or a parallel GC.
JVM_FLAGS = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xshare:auto")


@dataclass(frozen=True)
class Java:
    """Where the compiled lecture programs are, and how to run one."""

    java: str
    classes: Path

    def command(self, program: str, *args: str, charset: str = "UTF-8") -> list[str]:
        return [
            self.java,
            *JVM_FLAGS,
            f"-Dfile.encoding={charset}",
            f"-Dsun.stdout.encoding={charset}",
            f"-Dsun.stderr.encoding={charset}",
            "-cp",
            str(self.classes),
            program,
            *args,
        ]

    def run(
        self, program: str, *args: str, stdin: bytes, charset: str = "UTF-8"
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            self.command(program, *args, charset=charset),
            input=stdin,
            capture_output=True,
            timeout=RUN_TIMEOUT,
            env=cli_env(),
            check=False,
        )


def run_socketlab_client(
    args: Sequence[str], stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """`socketlab client ARGS` as a user runs it, with `stdin` piped in (or nothing)."""
    return subprocess.run(
        [sys.executable, "-m", "socketlab", "client", *args],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        timeout=RUN_TIMEOUT,
        env=cli_env(),
        check=False,
    )


def run_lecture_client(port: int) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, str(LECTURE_PY / "client.py"), str(port)],
        capture_output=True,
        timeout=RUN_TIMEOUT,
        env=cli_env(),
        check=False,
    )


@dataclass
class LectureServer:
    """A lecture server process on `port`; its stdout and stderr are kept together in `output`."""

    proc: subprocess.Popen[bytes]
    port: int
    output: bytearray = field(default_factory=bytearray)
    _collected: bool = False  # communicate() already returned the rest of the output

    def read_until(self, marker: bytes, deadline: float) -> bool:
        """Read output until `marker` appears; False if the process ends or time runs out first."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while marker not in self.output:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return False
                self.output += chunk
        return True

    def wait(self, timeout: float = RUN_TIMEOUT) -> int:
        """Wait for a server that ends by itself (the Python one) and collect all its output."""
        if not self._collected:
            rest, _ = self.proc.communicate(timeout=timeout)
            self.output += rest
            self._collected = True
        return self.proc.returncode

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()

    def __enter__(self) -> LectureServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _port_is_free(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind((LOOPBACK, port))
            except OSError:
                return False
    return True


def _free_port() -> int:
    while True:
        port = random.randint(*PORT_RANGE)
        if _port_is_free(port):
            return port


def _start(command: Callable[[int], list[str]], is_ready: Callable[[LectureServer], bool]) -> LectureServer:
    """Start the server on a random free port, retrying when the port was taken in between."""
    for _attempt in range(START_ATTEMPTS):
        port = _free_port()
        proc = subprocess.Popen(
            command(port),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=cli_env(),
        )
        server = LectureServer(proc, port)
        if is_ready(server):
            return server
        server.stop()
        if b"Address already in use" not in server.output:
            raise RuntimeError(f"{command(port)} did not start: {bytes(server.output)!r}")
    raise RuntimeError(f"no free port for {command(0)} after {START_ATTEMPTS} attempts")


def _tcp_answers(server: LectureServer) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and server.proc.poll() is None:
        try:
            with socket.create_connection((LOOPBACK, server.port), timeout=2) as probe:
                # A whole line, so the TCPServer serves the probe like any client and loops to accept.
                probe.sendall(b"ready?\n")
                answer = b""
                while not answer.endswith(b"\n"):
                    chunk = probe.recv(64)
                    if not chunk:
                        break
                    answer += chunk
                if answer == b"READY?\n":
                    return True
        except OSError:
            pass  # not listening yet (refused) or slow to answer: try again until the deadline
        time.sleep(0.05)
    return False


def _udp_answers(server: LectureServer) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((LOOPBACK, server.port))
        probe.settimeout(0.2)
        while time.monotonic() < deadline and server.proc.poll() is None:
            try:
                # One NUL byte: the UDPServer reuses its buffer, which starts all NUL, so this probe
                # leaves it exactly as it was and the test's first datagram is answered as on a fresh
                # server.
                probe.send(b"\0")
                if probe.recv(4096):
                    return True
            except OSError:
                pass  # not bound yet (ICMP port unreachable) or no answer yet: try again
    return False


def start_java_tcp_server(java: Java) -> LectureServer:
    return _start(lambda port: java.command("TCPServer", str(port), LOOPBACK), _tcp_answers)


def start_java_udp_server(java: Java) -> LectureServer:
    return _start(lambda port: java.command("UDPServer", str(port), LOOPBACK), _udp_answers)


LECTURE_SERVER_READY = b"...esperando conexoes ...\n"  # printed after listen(), before accept()


def start_lecture_python_server() -> LectureServer:
    def command(port: int) -> list[str]:
        return [sys.executable, "-u", str(LECTURE_PY / "server.py"), str(port), LOOPBACK]

    def printed_ready(server: LectureServer) -> bool:
        return server.read_until(LECTURE_SERVER_READY, time.monotonic() + START_TIMEOUT)

    return _start(command, printed_ready)


class RecordingRelay:
    """A one-connection TCP relay on 127.0.0.1 that records the exact bytes going each way.

    It lets a test see what a program that only prints decoded text (the Java TCPClient) really sent
    and received. End of stream is passed on as a half-close, so both ends see what they would see
    when connected directly.
    """

    def __init__(self, upstream: tuple[str, int], timeout: float = RUN_TIMEOUT) -> None:
        self.upstream = upstream
        self.timeout = timeout
        self.to_server = bytearray()
        self.to_client = bytearray()
        self.error: BaseException | None = None
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="relay", daemon=True)

    def __enter__(self) -> RecordingRelay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.join()

    def join(self) -> None:
        self._thread.join(self.timeout)
        self._listener.close()
        if self.error is not None:
            raise self.error

    def _serve(self) -> None:
        try:
            self._listener.settimeout(self.timeout)
            client, _ = self._listener.accept()
            with client, socket.create_connection(self.upstream, timeout=self.timeout) as server:
                client.settimeout(self.timeout)
                back = threading.Thread(target=self._pump, args=(server, client, self.to_client))
                back.start()
                self._pump(client, server, self.to_server)
                back.join(self.timeout)
        except OSError as exc:
            self.error = exc

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, record: bytearray) -> None:
        try:
            while data := src.recv(65536):
                record += data
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # a reset or a timeout ends this direction; the test then sees what got through
