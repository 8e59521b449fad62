"""TLS contexts for `serve tcp --tls-cert/--tls-key` and `client tcp --tls [--ca] [--insecure]`.

Only the contexts live here; the transports use them as they are. TLS 1.2 is the minimum on both sides
(RFC 8996 deprecates 1.0 and 1.1, and Python's defaults already refuse them on most systems, but not
everywhere). Failures to read a certificate or key become `ConfigError` with a message a person can
act on. The server uses the contexts as they are; the blocking client gets `open_tls_pipe`, which
turns a TLS connection into a plain socket (see there why).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
import threading

from socketlab.errors import ConfigError, ConnectError
from socketlab.i18n import _

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
RELAY_CHUNK = 64 * 1024  # bytes moved per read by the client's TLS relay


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context presenting the PEM certificate chain `cert` with its private key `key`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise ConfigError(_("cannot read {path}: no such file").format(path=exc.filename)) from exc
    except OSError as exc:
        raise ConfigError(
            _("cannot read the certificate {cert} or key {key}: {reason}").format(
                cert=cert, key=key, reason=exc.strerror or exc
            )
        ) from exc
    except ssl.SSLError as exc:
        raise ConfigError(
            _("the certificate {cert} and key {key} cannot be used: {reason}").format(
                cert=cert, key=key, reason=exc.reason or exc
            )
        ) from exc
    return context


def client_context(ca: str | None = None, insecure: bool = False) -> ssl.SSLContext:
    """A client context that checks the server against `ca` (a PEM file) or the system's authorities.

    `insecure` skips every check (name and chain): the connection is encrypted but the server is not
    authenticated, which is only fit for a lab's self-signed test server.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = MINIMUM_VERSION
    if ca is not None:
        try:
            context.load_verify_locations(cafile=ca)
        except FileNotFoundError as exc:
            raise ConfigError(_("cannot read {path}: no such file").format(path=ca)) from exc
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                _("cannot use {path} as a CA file: {reason}").format(path=ca, reason=exc)
            ) from exc
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


# --- a TLS connection as a plain socket, for the blocking client -------------------------------------


def open_tls_pipe(
    sock: socket.socket, context: ssl.SSLContext, server_hostname: str, timeout: float
) -> socket.socket:
    """Do the TLS handshake on connected `sock`, then hand back a plain socket carrying the clear text.

    The blocking client (transports.tcp_client.Pipeline) sends from one thread while it reads in
    another, watches its socket with a selector and half-closes it when input ends; an SSLSocket
    supports none of these well (its shutdown() even drops the TLS layer). So one thread relays
    between a socketpair and the TLS connection (ssl.SSLObject over memory buffers), and the client
    keeps using an ordinary socket. A half-close of that socket becomes TLS's close_notify.

    Raises `ConnectError` when the handshake fails (certificate not trusted, TLS version refused...).
    """
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    sock.settimeout(timeout)
    try:
        while True:
            try:
                tls.do_handshake()
                _flush(outgoing, sock)
                break
            except ssl.SSLWantReadError:
                _flush(outgoing, sock)
                data = sock.recv(RELAY_CHUNK)
                if not data:
                    raise ConnectError(_("TLS handshake failed: the server closed the connection")) from None
                incoming.write(data)
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        message = _("TLS: the server's certificate is not trusted ({reason}); see --ca or --insecure")
        raise ConnectError(message.format(reason=exc.verify_message)) from exc
    except (ssl.SSLError, OSError) as exc:
        sock.close()
        raise ConnectError(_("TLS handshake failed: {reason}").format(reason=exc)) from exc
    sock.settimeout(None)
    mine, relay = socket.socketpair()
    thread = threading.Thread(
        target=_relay, args=(relay, sock, tls, incoming, outgoing), name="socketlab-tls", daemon=True
    )
    thread.start()
    return mine


def _flush(outgoing: ssl.MemoryBIO, sock: socket.socket) -> None:
    data = outgoing.read()
    if data:
        sock.sendall(data)


def _relay(
    relay: socket.socket,
    sock: socket.socket,
    tls: ssl.SSLObject,
    incoming: ssl.MemoryBIO,
    outgoing: ssl.MemoryBIO,
) -> None:
    selector = selectors.DefaultSelector()
    selector.register(relay, selectors.EVENT_READ)
    selector.register(sock, selectors.EVENT_READ)
    watching = 2
    try:
        while watching:
            for key, _events in selector.select():
                if key.fileobj is relay:
                    data = relay.recv(RELAY_CHUNK)
                    if data:
                        tls.write(data)
                    else:
                        # The client half-closed: say so the TLS way, and keep reading answers.
                        with contextlib.suppress(ssl.SSLError):
                            tls.unwrap()
                        selector.unregister(relay)
                        watching -= 1
                    _flush(outgoing, sock)
                    continue
                data = sock.recv(RELAY_CHUNK)
                if data:
                    incoming.write(data)
                else:
                    incoming.write_eof()
                ended = not data
                while True:
                    try:
                        clear = tls.read(RELAY_CHUNK)
                    except ssl.SSLWantReadError:
                        break
                    except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                        ended = True  # close_notify, or the connection ended without one
                        break
                    if not clear:
                        ended = True
                        break
                    relay.sendall(clear)
                _flush(outgoing, sock)
                if ended:
                    relay.shutdown(socket.SHUT_WR)
                    selector.unregister(sock)
                    watching -= 1
    except OSError:
        pass  # either side went away: closing both below tells the other
    except ssl.SSLError:
        pass  # a broken TLS stream: the client sees its socket close, as for a reset
    finally:
        selector.close()
        relay.close()
        sock.close()
