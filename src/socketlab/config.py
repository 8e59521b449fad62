"""Settings shared by the CLI, the library and the tests: each default once, with its unit and reason.

Frozen dataclasses only; no parsing of argv here (that is the CLI's job) and no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SECONDS = 1.0
KiB = 1024
MiB = 1024 * KiB

# The lecture's ports, as on the slides.
TCP_UPPER_PORT = 6789  # TCPServer.java
UDP_UPPER_PORT = 9876  # UDPServer.java
TCP_ACK_PORT = 9898  # the first Python server of the lecture

# 16 KiB: Twisted's LineReceiver.MAX_LENGTH and h11's default max_incomplete_event_size are both
# 16 KiB; a longer "line" from a test client is a bug or an attack, never a message.
MAX_LINE = 16 * KiB
# A client silent for a minute is gone; nginx's keepalive and client_body timeouts are 60 s too.
IDLE_TIMEOUT = 60 * SECONDS
# Time to answer the lines already received after Ctrl-C/SIGTERM (uvicorn's graceful timeout idea).
GRACE = 10 * SECONDS
# Backpressure marks for the server's per-connection write buffer. Set explicitly because uvloop's
# default low-water mark (a quarter of the high mark, with a high mark of 64 KiB) differs from asyncio's;
# the values are asyncio's defaults so both loops behave the same.
WRITE_HIGH_WATER = 64 * KiB
WRITE_LOW_WATER = 16 * KiB
# How many bytes one recv may return; large enough for bulk transfers to move whole chunks.
READ_CHUNK = 256 * KiB
# A UDP datagram cannot carry more than 65,507 bytes of payload over IPv4.
MAX_DATAGRAM = 65_507

# Client defaults.
UDP_TIMEOUT = 1 * SECONDS  # wait this long for each UDP answer before retrying
UDP_RETRIES = 3  # then report the line as lost and go on
CONNECT_TIMEOUT = 10 * SECONDS
# Lines in flight on one TCP connection when input is piped: enough to hide the round trip, small
# enough that memory stays bounded however long the input is.
PIPELINE_WINDOW = 256


@dataclass(frozen=True)
class Limits:
    """Per-connection limits of the server. 0 turns a limit off where noted."""

    max_line: int = MAX_LINE  # bytes, excluding the line terminator
    idle_timeout: float = IDLE_TIMEOUT  # seconds without any byte from the client; 0 = off
    write_high_water: int = WRITE_HIGH_WATER
    write_low_water: int = WRITE_LOW_WATER


@dataclass(frozen=True)
class Listener:
    """One listening socket: a transport, a service, an address."""

    proto: str  # "tcp" or "udp"
    service: str  # "upper", "echo", "ack", "discard" or "package.module:function"
    host: str | None = None  # None: every interface, IPv4 and IPv6 where the system has both
    port: int = 0


def lecture_listeners(host: str | None = None) -> tuple[Listener, ...]:
    """The lecture's whole system: what `socketlab serve` runs with no arguments."""
    return (
        Listener("tcp", "upper", host, TCP_UPPER_PORT),
        Listener("udp", "upper", host, UDP_UPPER_PORT),
        Listener("tcp", "ack", host, TCP_ACK_PORT),
    )


@dataclass(frozen=True)
class ServerConfig:
    """Everything `socketlab serve` needs; the CLI builds one, tests build their own."""

    listeners: tuple[Listener, ...] = field(default_factory=lecture_listeners)
    limits: Limits = field(default_factory=Limits)
    loop: str = "auto"  # "auto" (uvloop when installed), "asyncio" or "uvloop"
    grace: float = GRACE
    verbose: bool = False
