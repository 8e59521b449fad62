"""Baseline: the upper-case line server as a plain asyncio streams program, the way tutorials write it.

No uvloop, no tuning: `readline()`, `upper()`, `write()`, `drain()` per line. ASCII upper only.
Listens on 127.0.0.1 (--port 0 picks a free port) and says where on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from _announce import announce


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            writer.write(line.upper())
            await writer.drain()
    except (ConnectionError, asyncio.LimitOverrunError, ValueError):
        pass  # a client that breaks the connection or sends an endless line is simply dropped
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    announce("tcp", server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    # SIGINT (Ctrl-C, or `socketlab bench compare` done with it) is how this server stops.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(parser.parse_args().port))
