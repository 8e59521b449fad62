"""UDP server transport: one datagram in, `Service.answer_datagram`, one datagram back to its sender.

Nothing is added to the answer (the lecture's Java UDPClient sends no newline and must get none back),
and `None` from the service means no answer at all. There are no connections: the sender's address,
read from each datagram, is where the answer goes.

With a `UdpGuard` (the server always gives one) the endpoint cannot be turned against others: datagrams
from reflection ports, broadcast or multicast sources, refused addresses or sources over their rate are
dropped silently (and counted); an answer larger than its request is replaced by a short error or
nothing; answers are not queued beyond `send_buffer` bytes. The common case, a source already vetted
and exempt from the rate limit (loopback by default), costs one set lookup and one port test.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from socketlab.core.guards import PRIVILEGED_PORT_LIMIT, REFLECTION_PORTS, UdpGuard, is_loopback
from socketlab.core.services import Service
from socketlab.core.text import to_display
from socketlab.i18n import _
from socketlab.transports.binding import format_peer

# Vetted sources remembered at once; a flood of distinct (spoofed) sources only clears the memory,
# which costs those sources one full check each, never a wrong verdict.
MAX_VETTED = 4096


class UdpEndpoint(asyncio.DatagramProtocol):
    """One bound UDP socket serving one service."""

    __slots__ = (
        "_answer",
        "_bad_ports",
        "_guard",
        "_send_buffer",
        "_send_paused",
        "_sendto",
        "_time",
        "_vetted",
        "label",
        "log",
        "send_drops",
        "transport",
    )

    def __init__(
        self,
        service: Service,
        log: logging.Logger,
        label: str,
        guard: UdpGuard | None = None,
        send_buffer: int = 0,
    ) -> None:
        self._answer = service.answer_datagram
        self.log = log
        self.label = label
        self._send_paused = False
        self._guard = guard
        self._send_buffer = send_buffer  # bytes of answers the transport may queue; 0: its default
        self.send_drops = 0  # answers dropped because the send buffer was full
        # Sources that passed every address check and are exempt from the rate limit: for them only
        # the source port still needs a look, per datagram.
        self._vetted: set[str] = set()
        bad_ports = set(REFLECTION_PORTS)
        if guard is not None and guard.source.drop_privileged_ports:
            bad_ports.update(range(PRIVILEGED_PORT_LIMIT))
        self._bad_ports = frozenset(bad_ports)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self._sendto = self.transport.sendto
        self._time = asyncio.get_running_loop().time
        if self._send_buffer:
            # Both loops' datagram transports have it (flow control), though typeshed omits it.
            cast(Any, self.transport).set_write_buffer_limits(high=self._send_buffer)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if (
            self._guard is not None
            and (addr[1] in self._bad_ports or addr[0] not in self._vetted)
            and not self._admit(addr[0], addr[1])
        ):
            return  # dropped silently: an answer might go to a victim; counted by the guard
        answer = self._answer(data)
        if answer is None:
            return
        if len(answer) > len(data) and self._guard is not None:
            answer = self._guard.limit_answer(data, answer)  # never larger than the request
            if answer is None:
                return
        # While the socket's send buffer is full, answers are dropped rather than queued without bound:
        # UDP may lose datagrams, and a client that wants the answer retries.
        if self._send_paused:
            self.send_drops += 1
        else:
            self._sendto(answer, addr)

    def _admit(self, host: str, port: int) -> bool:
        guard = self._guard
        assert guard is not None
        if guard.check(host, port, self._time()) is not None:
            return False
        rate = guard.rate
        if not rate.enabled or (not rate.limit_loopback and is_loopback(host)):
            vetted = self._vetted
            if len(vetted) >= MAX_VETTED:
                vetted.clear()
            vetted.add(host)
        return True

    def error_received(self, exc: Exception) -> None:
        # Typically an ICMP "port unreachable" for an answer to a client that has already gone, or an
        # answer too big for one datagram; neither concerns anyone else.
        self.log.debug(_("%(listener)s: %(error)s"), {"listener": self.label, "error": exc})

    def pause_writing(self) -> None:
        self._send_paused = True

    def resume_writing(self) -> None:
        self._send_paused = False

    def connection_lost(self, exc: Exception | None) -> None:
        del exc  # a datagram socket has no peer to lose; closing it is our own doing


class VerboseUdpEndpoint(UdpEndpoint):
    """With -v: logs each datagram received with its sender."""

    __slots__ = ()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.log.info(
            _("%(listener)s: %(peer)s >> %(line)r"),
            {"listener": self.label, "peer": format_peer(addr), "line": to_display(data)},
        )
        super().datagram_received(data, addr)
