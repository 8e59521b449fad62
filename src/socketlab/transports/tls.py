"""TLS contexts for `serve tcp --tls-cert/--tls-key` and `client tcp --tls [--ca] [--insecure]`.

Only the contexts live here; the transports use them as they are. TLS 1.2 is the minimum on both sides
(RFC 8996 deprecates 1.0 and 1.1, and Python's defaults already refuse them on most systems, but not
everywhere). Failures to read a certificate or key become `ConfigError` with a message a person can
act on; nothing here opens a socket.
"""

from __future__ import annotations

import ssl

from socketlab.errors import ConfigError
from socketlab.i18n import _

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


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
