"""Running a blocking-model server in this process, on 127.0.0.1:0 or [::1]:0, for tests."""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from socketlab.config import Limits, Listener, ServerConfig
from socketlab.models import run_blocking_server
from socketlab.tracing import Tracer

STARTUP_SECONDS = 10.0


@dataclass
class RunningServer:
    listeners: list[tuple[str, str, str, int]] = field(default_factory=list)
    exit_code: int | None = None

    def address(self, proto: str = "tcp", service: str | None = None) -> tuple[str, int]:
        for p, s, host, port in self.listeners:
            if p == proto and (service is None or s == service):
                return host, port
        raise LookupError(f"no {proto} {service} listener in {self.listeners}")


@contextlib.contextmanager
def running_server(
    listeners: tuple[Listener, ...],
    *,
    model: str,
    tracer: Tracer | None = None,
    limits: Limits | None = None,
    grace: float = 5.0,
) -> Iterator[RunningServer]:
    """Serve `listeners` in a thread; on leaving, stop it and check that it stopped cleanly."""
    config = ServerConfig(listeners=listeners, limits=limits or Limits(), grace=grace)
    announced: queue.Queue[tuple[str, str, str, int]] = queue.Queue()
    stop = threading.Event()
    server = RunningServer()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.exit_code = run_blocking_server(
                config,
                model=model,
                tracer=tracer,
                on_listening=lambda *where: announced.put(where),
                stop=stop,
            )
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    thread = threading.Thread(target=run, name=f"{model} server")
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while len(server.listeners) < len(listeners):
            if errors:
                raise errors[0]
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            with contextlib.suppress(queue.Empty):
                server.listeners.append(announced.get(timeout=0.05))
        yield server
    finally:
        stop.set()
        thread.join(grace + STARTUP_SECONDS)
    assert not thread.is_alive(), "the server did not stop"
    if errors:
        raise errors[0]
    assert server.exit_code == 0


def read_lines(sock: socket.socket, count: int = 1) -> bytes:
    """`count` lines from a stream socket, however they are split into segments; less if it closed."""
    data = b""
    while data.count(b"\n") < count:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def read_line(sock: socket.socket) -> bytes:
    return read_lines(sock, 1)
