"""What the UDP and TCP proxies share: their events, finding the target, errors at the edge."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass

from socketlab.errors import BindError, ConnectError
from socketlab.i18n import _
from socketlab.tools.proxy.faults import Direction
from socketlab.transports.binding import format_peer

Address = tuple[str, int]


@dataclass(frozen=True)
class ProxyEvent:
    """One thing the proxy did, for `-v` and for tests. Never printed by the library itself.

    kinds: UDP "forward", "drop", "dup", "reorder", "hold", "overflow", "flow", "flow-end",
    "unreachable"; TCP "connect", "refused", "eof", "close", "reset", "reset-forwarded".
    """

    kind: str
    client: Address
    direction: Direction | None = None
    size: int = 0
    delay: float = 0.0  # seconds, for datagrams sent late
    detail: str = ""
    number: int = 0  # UDP: the datagram's place in its flow and direction, from 1
    data: bytes = b""  # UDP: the datagram concerned (for "reorder", the one overtaken)


EventCallback = Callable[[ProxyEvent], None]


def short_address(address: tuple[object, ...]) -> Address:
    """(host, port) out of what sockets report (IPv6 adds flow info and scope id)."""
    return str(address[0]), int(str(address[1]))


async def resolve_target(host: str, port: int, kind: socket.SocketKind) -> tuple[int, Address]:
    """The family and address to forward to: the first that the resolver gives."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=kind)
    except OSError as exc:
        message = _("cannot resolve {host}: {error}").format(host=host, error=exc.strerror or exc)
        raise ConnectError(message) from exc
    family, _kind, _proto, _canon, sockaddr = infos[0]
    return family, short_address(sockaddr)


def bind_error(host: str, port: int, exc: OSError) -> BindError:
    where = format_peer((host, port))
    return BindError(_("cannot listen on {where}: {error}").format(where=where, error=exc.strerror or exc))
