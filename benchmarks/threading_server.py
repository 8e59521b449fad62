"""Baseline: the upper-case line server as Python's socketserver.ThreadingTCPServer, one thread per client.

Listens on 127.0.0.1 (--port 0 picks a free port) and says where on stdout. ASCII upper only.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import socketserver

from _announce import announce


class UpperHandler(socketserver.StreamRequestHandler):
    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle(self) -> None:
        try:
            for line in self.rfile:
                self.wfile.write(line.upper())
        except ConnectionError:
            pass  # the client left: nothing more to answer


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 4096


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    with Server(("127.0.0.1", parser.parse_args().port), UpperHandler) as server:
        announce("tcp", server.server_address[1])
        # SIGINT (Ctrl-C, or `socketlab bench compare` done with it) is how this server stops.
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
