"""Reference point: the smallest uvloop Protocol upper server (TCP) and DatagramProtocol (--udp).

What a careful hand-written Python server gets with no framework at all; the issue's targets quote it.
It upper-cases each received chunk with bytes.upper (ASCII only, no line limits, no backpressure).
Listens on 127.0.0.1 (--port 0 picks a free port) and says where on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import cast

import uvloop
from _announce import announce


class Upper(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio's, only look-alikes: cast, do not check.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data.upper())


class UpperDatagram(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data.upper(), addr)


async def main(port: int, udp: bool) -> None:
    loop = asyncio.get_running_loop()
    if udp:
        transport, _ = await loop.create_datagram_endpoint(UpperDatagram, local_addr=("127.0.0.1", port))
        announce("udp", transport.get_extra_info("sockname")[1])
        await asyncio.Future()
    server = await loop.create_server(Upper, "127.0.0.1", port, backlog=4096)
    announce("tcp", server.sockets[0].getsockname()[1])
    await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--udp", action="store_true")
    args = parser.parse_args()
    # SIGINT (Ctrl-C, or `socketlab bench compare` done with it) is how this server stops.
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(main(args.port, args.udp))
