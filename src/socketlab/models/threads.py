"""The threads model: one thread per client, each blocking in its own recv().

The listening thread only accepts; each accepted connection gets a thread that answers it until it
leaves. An idle client now blocks only its own thread, so every other client is answered at once.
The cost is a thread (a stack, a kernel task) per connected client, which is why servers for many
thousands of clients use an event loop instead (the asyncio model).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from socketlab.models import BlockingServer, Endpoint


def serve_listener(server: BlockingServer, endpoint: Endpoint) -> None:
    while (client := server.accept(endpoint)) is not None:
        server.start_thread(server.serve_stream, client, name=f"{endpoint.label} {client.peer}")
