"""The iterative model: one client at a time, as the slides' TCPServer.

accept() one client, answer it until it leaves, then accept() the next. While one client is being
served, the next one's connection is already established by the kernel (the three-way handshake
does not need us) and waits in the listen queue; its lines wait unanswered in its socket's buffer.
A client that connects and says nothing holds everyone else up until it leaves or the idle timeout
closes it: that is the lesson of this model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from socketlab.models import BlockingServer, Endpoint


def serve_listener(server: BlockingServer, endpoint: Endpoint) -> None:
    while (client := server.accept(endpoint)) is not None:
        server.serve_stream(client)
