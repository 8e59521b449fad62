"""UDP server transport: one datagram in, `Service.answer_datagram`, one datagram back to its sender.

Nothing is added to the answer (the lecture's Java UDPClient sends no newline and must get none back),
and `None` from the service means no answer at all. There are no connections: the sender's address,
read from each datagram, is where the answer goes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from socketlab.core.services import Service
from socketlab.i18n import _
from socketlab.transports.binding import format_peer


class UdpEndpoint(asyncio.DatagramProtocol):
    """One bound UDP socket serving one service."""

    __slots__ = ("_answer", "_send_paused", "_sendto", "label", "log", "transport")

    def __init__(self, service: Service, log: logging.Logger, label: str) -> None:
        self._answer = service.answer_datagram
        self.log = log
        self.label = label
        self._send_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self._sendto = self.transport.sendto

    def datagram_received(self, data: bytes, addr: Any) -> None:
        answer = self._answer(data)
        # While the socket's send buffer is full, answers are dropped rather than queued without bound:
        # UDP may lose datagrams, and a client that wants the answer retries.
        if answer is not None and not self._send_paused:
            self._sendto(answer, addr)

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
            {"listener": self.label, "peer": format_peer(addr), "line": data},
        )
        super().datagram_received(data, addr)
