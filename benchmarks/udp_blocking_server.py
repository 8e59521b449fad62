"""Baseline: the lecture's UDPServer as a plain blocking recvfrom/sendto loop. ASCII upper only.

Listens on 127.0.0.1 (--port 0 picks a free port) and says where on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import socket

from _announce import announce

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", parser.parse_args().port))
        announce("udp", sock.getsockname()[1])
        # SIGINT (Ctrl-C, or `socketlab bench compare` done with it) is how this server stops.
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                data, peer = sock.recvfrom(65536)
                sock.sendto(data.upper(), peer)
