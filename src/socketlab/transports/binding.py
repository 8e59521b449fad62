"""Creating listening sockets: every interface or one host, IPv4 and IPv6, one port for both.

`host=None` means what the lecture's `bind(('', port))` means, every interface, done for both families
where the machine has both: one IPv4 socket on 0.0.0.0 and one IPv6 socket on :: with IPV6_V6ONLY set,
so the two can hold the same port (without V6ONLY, Linux's :: would also take the IPv4 port and the
second bind would fail). With port 0 the first socket picks a free port and the others reuse it.

`OSError` from socket(), bind() and listen() is turned here, once, into `BindError` with a message a
person can act on. Nothing here runs an event loop or prints.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from typing import cast

from socketlab.errors import BindError
from socketlab.i18n import _

# asyncio's default backlog is 100: a crowd of clients connecting at once overflows it and each
# dropped SYN costs that client a one-second retransmission. Linux caps the value at
# net.core.somaxconn (4096 since Linux 5.4), so asking for that much is harmless.
BACKLOG = 4096

# With port 0 and several addresses, the port picked for the first may be taken for another family;
# then we start over with a new port. A handful of tries is plenty: collisions are rare.
PORT_ATTEMPTS = 20

ALL_IPV4 = "0.0.0.0"
ALL_IPV6 = "::"

# The machine has no IPv6 (kernel without it, or IPv6 disabled): listen on IPv4 only.
IPV6_MISSING_ERRNOS = frozenset({errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT, errno.EADDRNOTAVAIL})

# Windows' SO_REUSEADDR lets another process steal a bound port; elsewhere it only allows a restart
# while old connections sit in TIME_WAIT, which is what a server that is stopped and started wants.
_REUSE_ADDRESS = os.name == "posix" and sys.platform != "cygwin"

SockAddr = tuple[str, int] | tuple[str, int, int, int]
Address = tuple[int, SockAddr]  # (family, socket address with any port)


def format_address(host: str, port: int) -> str:
    """`127.0.0.1:6789`, `[::1]:6789`: how addresses are written for people and in the listening line."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_peer(peername: object) -> str:
    """A connected peer as `host:port` (the source port tells clients apart), whatever the family."""
    if isinstance(peername, tuple) and len(peername) >= 2:
        return format_address(str(peername[0]), int(peername[1]))
    return str(peername)


def _with_port(sockaddr: SockAddr, port: int) -> SockAddr:
    if len(sockaddr) == 4:
        return (sockaddr[0], port, sockaddr[2], sockaddr[3])
    return (sockaddr[0], port)


def listen_addresses(host: str | None, kind: int = socket.SOCK_STREAM) -> list[Address]:
    """The addresses to listen on for `host`: for None every interface, IPv4 and IPv6.

    A name (`localhost`) may stand for several addresses; each gets its own socket. IPv6 is offered
    for None whenever Python was built with it; `open_listening_sockets` drops it if the kernel says no.
    """
    if host is None:
        addresses: list[Address] = [(socket.AF_INET, (ALL_IPV4, 0))]
        if socket.has_ipv6:
            addresses.append((socket.AF_INET6, (ALL_IPV6, 0, 0, 0)))
        return addresses
    try:
        infos = socket.getaddrinfo(host, 0, socket.AF_UNSPEC, kind, 0, socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BindError(
            _("cannot listen on {host}: {reason}").format(host=host, reason=exc.strerror)
        ) from exc
    seen: list[Address] = []
    for family, _kind, _proto, _canon, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            address: Address = (family, cast(SockAddr, sockaddr))
            if address not in seen:
                seen.append(address)
    if not seen:
        raise BindError(_("cannot listen on {host}: no IPv4 or IPv6 address").format(host=host))
    return seen


def describe_bind_error(exc: OSError, proto: str, where: str) -> str:
    """One line saying why we could not listen, and what to do about it."""
    if exc.errno == errno.EADDRINUSE:
        reason = _("the port is already in use (is another server running there?)")
    elif exc.errno == errno.EACCES:
        reason = _("permission denied (ports below 1024 need administrator rights)")
    elif exc.errno == errno.EADDRNOTAVAIL:
        reason = _("this machine has no such address")
    else:
        reason = exc.strerror or str(exc)
    return _("cannot listen on {proto} {where}: {reason}").format(proto=proto, where=where, reason=reason)


class _PortTaken(Exception):
    """The port picked for the first address is busy for a later one: pick another."""


def open_listening_sockets(
    proto: str, host: str | None, port: int, *, reuse_port: bool = False
) -> list[socket.socket]:
    """Bound (and, for TCP, listening) non-blocking sockets for `proto` on `host`:`port`.

    All sockets share one port, even when `port` is 0. Raises `BindError` when any requested address
    cannot be had (an IPv6 that the machine lacks is skipped when `host` is None). With `reuse_port`,
    SO_REUSEPORT is set before bind, so several processes can each bind their own socket to the port
    and the kernel spreads clients between them (see transports/workers.py).
    """
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    return bind_addresses(
        proto, listen_addresses(host, kind), port, ipv6_optional=host is None, reuse_port=reuse_port
    )


def bind_addresses(
    proto: str,
    addresses: list[Address],
    port: int,
    *,
    ipv6_optional: bool = False,
    reuse_port: bool = False,
) -> list[socket.socket]:
    """One socket per address, all on `port` (with 0, the port the first one got). See above."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    attempts = PORT_ATTEMPTS if port == 0 and len(addresses) > 1 else 1
    for _attempt in range(attempts):
        try:
            return _bind_all(proto, kind, addresses, port, ipv6_optional=ipv6_optional, reuse_port=reuse_port)
        except _PortTaken:
            continue
    raise BindError(
        _("cannot listen on {proto} port 0: no port was free for every address").format(proto=proto)
    )


def _bind_all(
    proto: str,
    kind: int,
    addresses: list[Address],
    port: int,
    *,
    ipv6_optional: bool,
    reuse_port: bool = False,
) -> list[socket.socket]:
    several = len(addresses) > 1
    socks: list[socket.socket] = []
    chosen = port
    try:
        for family, sockaddr in addresses:
            where = format_address(sockaddr[0], chosen)
            try:
                sock = socket.socket(family, kind)
            except OSError as exc:
                if ipv6_optional and family == socket.AF_INET6 and exc.errno in IPV6_MISSING_ERRNOS:
                    continue
                raise BindError(describe_bind_error(exc, proto, where)) from exc
            socks.append(sock)
            try:
                if kind == socket.SOCK_STREAM and _REUSE_ADDRESS:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6 and several:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(_with_port(sockaddr, chosen))
                if kind == socket.SOCK_STREAM:
                    sock.listen(BACKLOG)
            except OSError as exc:
                if ipv6_optional and family == socket.AF_INET6 and exc.errno in IPV6_MISSING_ERRNOS:
                    socks.pop().close()
                    continue
                if exc.errno == errno.EADDRINUSE and port == 0 and chosen != 0:
                    raise _PortTaken from exc
                raise BindError(describe_bind_error(exc, proto, where)) from exc
            sock.setblocking(False)
            if chosen == 0:
                chosen = sock.getsockname()[1]
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    if not socks:
        raise BindError(_("cannot listen on {proto}: no usable address").format(proto=proto))
    return socks
