"""The threads model: one thread per client, each blocking in its own recv().

The listening thread only accepts; each accepted connection gets a thread that answers it until it
leaves. An idle client now blocks only its own thread, so every other client is answered at once.
The cost is a thread (a stack, a kernel task) per connected client, which is why servers for many
thousands of clients use an event loop instead (the asyncio model).
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from socketlab.core.services import Service
    from socketlab.models import BlockingServer


def serve_listener(server: BlockingServer, listening: socket.socket, service: Service) -> None:
    while (client := server.accept(listening)) is not None:
        conn, peer = client
        server.start_thread(server.serve_stream, conn, peer, service, name=f"client {peer}")
