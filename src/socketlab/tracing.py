"""Watching socket system calls as they happen: an observer interface and its implementations.

Transports that use blocking sockets (the teaching models, the client) wrap their sockets in
`TracedSocket`, which reports each call to a `Tracer`. Nothing here prints unless asked to: the
human printer and the JSON Lines writer take a stream, the recorder keeps events for tests.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class CallEvent:
    """One system call: what was called, with what, what came back, how long it blocked."""

    name: str  # "socket", "bind", "accept", "recv", ...
    fd: int  # the socket's file descriptor (-1 before socket() returns)
    args: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    seconds: float = 0.0
    error: str | None = None  # strerror of a failed call


class Tracer(Protocol):
    def on_call(self, event: CallEvent) -> None: ...


class RecordingTracer:
    """Keeps every event, for tests."""

    def __init__(self) -> None:
        self.events: list[CallEvent] = []

    def on_call(self, event: CallEvent) -> None:
        self.events.append(event)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.events]


def open_socket(family: int, kind: int, tracer: Tracer | None = None) -> socket.socket:
    """A new socket; with a tracer, one that reports each of its calls (socket() included).

    Stub until the tracing work lands: the tracer is ignored for now.
    """
    del tracer
    return socket.socket(family, kind)
