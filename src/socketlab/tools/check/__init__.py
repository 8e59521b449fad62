"""`socketlab check`: probe anyone's TCP or UDP server for the classic bugs of the lecture's servers.

Library code: it talks to the server and returns results; it never prints and never exits (the CLI
does both). Each check opens its own connections (or UDP socket), sends known bytes, and compares what
comes back with what socketlab's core service answers for those bytes, so the checker and socketlab's
servers agree on what "correct" means. Checks run one after the other, and every wait of a check ends
within its timeout; the largest load a check puts on a server is 100 datagrams or 50 connections.

This module holds only constants, so the CLI can build its help without importing sockets; the
runner is in `runner`, the checks in `tcp` and `udp`.
"""

from __future__ import annotations

from socketlab.config import SECONDS

# Two seconds per check: a working server answers in milliseconds on a LAN and well under a second
# across the Internet, so a check that needs more has found something; 12 TCP checks that all wait
# the full time still finish in under half a minute.
DEFAULT_TIMEOUT = 2 * SECONDS
SERVICES = ("upper", "echo", "ack")
JSON_SCHEMA = 1  # bumped only when a key changes meaning or goes away; new keys may be added

# The checks, in the order they run. The order matters: checks that can crash a buggy server run
# last (connect-close: the lecture's TCPServer dies on it); the UDP check whose long datagram stays in
# a reused buffer (large-datagram) runs after the ones it would spoil, and the burst, which can keep a
# slow server busy for a while, runs after every other UDP check.
TCP_CHECK_IDS = (
    "short-line",
    "byte-by-byte",
    "many-lines",
    "utf8",
    "utf8-split",
    "crlf",
    "empty-line",
    "long-line",
    "half-close",
    "idle-client",
    "many-clients",
    "connect-close",
)
UDP_CHECK_IDS = ("no-newline", "utf8", "same-port", "large-datagram", "burst")
