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
# Absolute deadline for one line: a client dribbling a byte now and then (slowloris) keeps the idle
# timer happy forever, so a line that has been arriving for this long closes the connection. 30 s is
# what a person needs to type a line; nginx's client_header_timeout is 60 s, Apache's mod_reqtimeout 20-40 s.
LINE_DEADLINE = 30 * SECONDS
# A client that reads nothing for this long while we owe it answers is gone or hostile: disconnect it,
# so its answers stop holding server memory (nginx's send_timeout is 60 s; we serve short lines).
SEND_TIMEOUT = 30 * SECONDS
# Clients served at once by one server; more get "ERR busy" and are closed (nginx's
# worker_connections is 512-1024; 1024 is also the usual default file-descriptor limit, checked at start).
MAX_CONNECTIONS = 1024
# Connections at once from one address (loopback exempt unless asked): a class behind one NAT stays
# under it, one runaway script cannot take every slot (Apache's mod_qos and nginx limit_conn examples).
MAX_PER_ADDRESS = 64
# A TLS client has this long to finish its handshake; asyncio's own default is 60 s, too generous
# for a handshake that takes milliseconds on a lab network (a silent client would hold a slot).
TLS_HANDSHAKE_TIMEOUT = 10 * SECONDS
# Per-source UDP rate limit: 100 datagrams a second, bursts of 200 (see core.guards).
UDP_RATE = 100.0  # datagrams per second
UDP_BURST = 200  # datagrams
# Answers a UDP socket may queue when the kernel's send buffer is full; beyond it answers are dropped
# and counted, since UDP may lose them anyway and a client that wants one retries.
UDP_SEND_BUFFER = 256 * KiB
# How often dropped datagrams and refused clients are summed up in the log (and --stats prints a line).
STATS_INTERVAL = 10 * SECONDS
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
    line_deadline: float = LINE_DEADLINE  # seconds one line may take to arrive whole; 0 = off
    send_timeout: float = SEND_TIMEOUT  # seconds a client may leave our answers unread; 0 = off
    max_connections: int = MAX_CONNECTIONS  # TCP clients at once, all listeners; 0 = off
    max_per_address: int = MAX_PER_ADDRESS  # TCP clients at once from one address; 0 = off
    limit_loopback: bool = False  # apply the per-address cap and the UDP rate to loopback too
    tls_handshake_timeout: float = TLS_HANDSHAKE_TIMEOUT  # seconds
    udp_rate: float = UDP_RATE  # datagrams per second per source; 0 = off
    udp_burst: int = UDP_BURST  # datagrams
    udp_drop_privileged_ports: bool = False  # also drop datagrams from source ports below 1024
    udp_send_buffer: int = UDP_SEND_BUFFER  # bytes of answers queued per UDP socket


@dataclass(frozen=True)
class Access:
    """Who may connect: ncat's --allow/--deny rules (see core.guards.AccessList). Empty: everyone."""

    allow: tuple[str, ...] = ()  # networks (CIDR) or addresses
    deny: tuple[str, ...] = ()
    allow_texts: tuple[str, ...] = ()  # contents of --allow-file, already read
    deny_texts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Tls:
    """A certificate chain and its key (PEM files) for `serve tcp --tls-cert --tls-key`."""

    cert: str
    key: str


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
    # Who reads UDP sockets: "thread" (one blocking thread per socket, the faster) or "loop" (the event loop).
    udp_io: str = "thread"
    grace: float = GRACE
    verbose: bool = False
    access: Access = field(default_factory=Access)
    tls: Tls | None = None  # TCP listeners speak TLS
    stats: bool = False  # log a statistics line every `stats_interval` and at exit
    stats_interval: float = STATS_INTERVAL  # seconds between reports of what was dropped
