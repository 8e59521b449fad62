"""Running the asyncio server inside the test process, on either event loop.

`server_thread()` runs `open_server` on its own loop in a thread, so a test can talk to it with plain
blocking sockets; `run_async()` runs a coroutine (server and clients together) on the loop named.
Either way, an exception that escapes a protocol callback fails the test: the loop's exception handler
records it instead of only logging it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest

from socketlab.config import Limits, Listener, ServerConfig
from socketlab.transports.loop import has_uvloop, run
from socketlab.transports.server import RunningServer, open_server

T = TypeVar("T")

LOOPS = [
    pytest.param("asyncio", id="asyncio"),
    pytest.param(
        "uvloop", id="uvloop", marks=pytest.mark.skipif(not has_uvloop(), reason="uvloop is not installed")
    ),
]

LOCALHOSTS = [
    pytest.param("127.0.0.1", id="ipv4"),
    pytest.param("::1", id="ipv6"),
]


def config_for(
    proto: str, service: str, host: str = "127.0.0.1", *, limits: Limits | None = None, verbose: bool = False
) -> ServerConfig:
    return ServerConfig(
        listeners=(Listener(proto, service, host, 0),), limits=limits or Limits(), verbose=verbose
    )


class LoopErrors:
    """Exceptions the event loop would otherwise only log."""

    def __init__(self) -> None:
        self.contexts: list[dict[str, Any]] = []

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.contexts.append(context)

    def check(self) -> None:
        assert not self.contexts, f"the event loop reported errors: {self.contexts}"


async def _guarded(main: Coroutine[Any, Any, T], errors: LoopErrors) -> T:
    asyncio.get_running_loop().set_exception_handler(errors)
    return await main


def run_async(main: Coroutine[Any, Any, T], loop: str) -> T:
    """Run `main` on a new loop of the kind named; fail if the loop reported any error."""
    errors = LoopErrors()
    result = run(_guarded(main, errors), loop)
    errors.check()
    return result


@contextmanager
def server_thread(config: ServerConfig, loop: str = "asyncio") -> Iterator[RunningServer]:
    """`open_server(config)` on its own loop in a thread; yields it once every listener is bound."""
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        state["loop"] = asyncio.get_running_loop()
        state["stop"] = stop = asyncio.Event()
        async with open_server(config) as running:
            state["running"] = running
            ready.set()
            await stop.wait()

    def target() -> None:
        try:
            run_async(main(), loop)
        except BaseException as exc:
            state["error"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=target, name="socketlab-test-server", daemon=True)
    thread.start()
    ready.wait(10)
    if "error" in state:
        thread.join(5)
        raise state["error"]
    try:
        yield state["running"]
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(10)
        assert not thread.is_alive(), "the server thread did not stop"
        if "error" in state:
            raise state["error"]


def connect(host: str, port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout)


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (the socket's timeout bounds each wait)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def read_exactly(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
