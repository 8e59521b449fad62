"""One hierarchy for every error socketlab raises on purpose.

The CLI maps these to messages and exit codes; library code raises them and never prints. `OSError`
from the socket layer is translated once, at the transport edge, into `TransportError` subclasses.
"""

from __future__ import annotations


class SocketlabError(Exception):
    """Base of every error socketlab raises on purpose."""


class ConfigError(SocketlabError):
    """A setting that cannot work: a bad value, an unknown service, an impossible combination."""


class ProtocolError(SocketlabError):
    """The peer sent something the protocol does not allow."""


class LineTooLong(ProtocolError):
    """A line grew past the configured maximum before its terminator arrived."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"line longer than {limit} bytes")
        self.limit = limit


class ServiceError(SocketlabError):
    """A service (usually a user's function) failed on one request; the connection goes on."""


class TransportError(SocketlabError):
    """A socket-level failure, translated from OSError at the edge."""


class BindError(TransportError):
    """The server could not listen where it was asked to (port busy, permission denied...)."""


class ConnectError(TransportError):
    """The client could not reach the server."""


class ConnectionLost(TransportError):
    """The connection broke before every answer arrived."""
