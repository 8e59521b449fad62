"""TLS (certificates from trustme) and access lists, against the in-process server on both loops.

A wrong CA, a client that never starts its handshake, a TLS client that drops the connection without
close_notify; allow/deny overlaps, IPv4-mapped clients, a refused client that sends anyway.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from socketlab.config import Access, Limits, Listener, ServerConfig, Tls
from socketlab.transports.server import RunningServer
from socketlab.transports.tls import server_context
from tests.conftest import HAS_IPV6
from tests.hardening.support import figure
from tests.transports.serving import LOOPS, server_thread


@dataclasses.dataclass
class Pki:
    cert: str
    key: str
    ca: str  # the CA that signed `cert`
    other_ca: str  # a CA that did not


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1", "::1")
    paths = {name: root / f"{name}.pem" for name in ("cert", "key", "ca", "other_ca")}
    leaf.cert_chain_pems[0].write_to_path(paths["cert"])
    leaf.private_key_pem.write_to_path(paths["key"])
    ca.cert_pem.write_to_path(paths["ca"])
    other.cert_pem.write_to_path(paths["other_ca"])
    return Pki(**{name: str(path) for name, path in paths.items()})


def _tls_config(pki: Pki, **limits: float) -> ServerConfig:
    return ServerConfig(
        listeners=(Listener("tcp", "upper", "127.0.0.1", 0),),
        limits=Limits(**limits),  # type: ignore[arg-type]
        tls=Tls(pki.cert, pki.key),
    )


def _client_context(ca: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca)


@contextlib.contextmanager
def _tls_connect(port: int, ca: str) -> Iterator[ssl.SSLSocket]:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with _client_context(ca).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        yield tls


def _read_lines(sock: socket.socket, count: int) -> bytes:
    buf = b""
    while buf.count(b"\n") < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf


def _wait_for(running: RunningServer, what: str, expected: int, timeout: float = 10) -> int:
    """Wait until the TCP counter `what` reaches `expected` (falls to it, for "open"); its value."""
    deadline = time.monotonic() + timeout
    while True:
        tcp = running.stats()["tcp"]
        value = tcp["closed_by"][what] if what in tcp["closed_by"] else tcp[what]
        reached = value <= expected if what == "open" else value >= expected
        if reached or time.monotonic() > deadline:
            return int(value)
        time.sleep(0.02)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("loop", LOOPS)
def test_tls_serves_lines_and_refuses_a_client_that_trusts_another_ca(pki: Pki, loop: str) -> None:
    with server_thread(_tls_config(pki), loop) as running:
        port = running.listeners[0].port
        with _tls_connect(port, pki.ca) as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            tls.sendall("ação\nsegunda linha\n".encode())
            assert _read_lines(tls, 2) == "AÇÃO\nSEGUNDA LINHA\n".encode()
        with pytest.raises(ssl.SSLCertVerificationError), _tls_connect(port, pki.other_ca):
            pass
        failed = _wait_for(running, "tls_failed", 1)
        # And a good client is still served.
        with _tls_connect(port, pki.ca) as tls:
            tls.sendall(b"ok?\n")
            assert _read_lines(tls, 1) == b"OK?\n"
    assert failed >= 1
    assert server_context(pki.cert, pki.key).minimum_version == ssl.TLSVersion.TLSv1_2
    figure(f"tls ({loop})", "served over TLS; a client trusting another CA refused; served again after")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("loop", LOOPS)
def test_a_silent_tls_handshake_is_cut_at_the_deadline(pki: Pki, loop: str) -> None:
    with server_thread(_tls_config(pki, tls_handshake_timeout=0.5), loop) as running:
        port = running.listeners[0].port
        silent = socket.create_connection(("127.0.0.1", port), timeout=10)
        started = time.monotonic()
        closed_by_server = silent.recv(1024) == b""  # blocks until the server gives up on us
        waited = time.monotonic() - started
        silent.close()
        failed = _wait_for(running, "tls_failed", 1)
        open_after = _wait_for(running, "open", 0)
    assert closed_by_server
    assert failed == 1
    assert open_after == 0
    assert waited >= 0.4  # never before the deadline (0.5 s, with the clock's grain)
    figure(
        f"tls silent ({loop})", f"a client that never says hello closed after {waited:.2f} s (deadline 0.5 s)"
    )


@pytest.mark.timeout(30)
@pytest.mark.parametrize("loop", LOOPS)
def test_tls_eof_without_close_notify_mid_line(pki: Pki, loop: str) -> None:
    with server_thread(_tls_config(pki), loop) as running:
        port = running.listeners[0].port
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        tls = _client_context(pki.ca).wrap_socket(raw, server_hostname="127.0.0.1")
        tls.sendall(b"inteira\nmetade de uma")
        assert _read_lines(tls, 1) == b"INTEIRA\n"
        # Drop TCP under TLS: no close_notify, a half-sent line.
        raw_fd = socket.socket(fileno=tls.detach())
        raw_fd.shutdown(socket.SHUT_WR)
        raw_fd.settimeout(10)
        with contextlib.suppress(OSError):
            while raw_fd.recv(65536):
                pass
        raw_fd.close()
        gone = _wait_for(running, "open", 0)
        with _tls_connect(port, pki.ca) as again:
            again.sendall(b"depois\n")
            assert _read_lines(again, 1) == b"DEPOIS\n"
    assert gone == 0


# --- access lists ---------------------------------------------------------------------------------


def _access_config(host: str, allow: tuple[str, ...] = (), deny: tuple[str, ...] = ()) -> ServerConfig:
    return ServerConfig(listeners=(Listener("tcp", "upper", host, 0),), access=Access(allow=allow, deny=deny))


def _try(port: int, source: str, server_host: str = "127.0.0.1") -> bytes:
    """Connect from `source`, send a line, return the answer (b"" when refused)."""
    family = socket.AF_INET6 if ":" in server_host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.bind((source if family == socket.AF_INET else f"::ffff:{source}", 0))
        s.connect((server_host, port))
        try:
            s.sendall(b"quem sou\n")
            return _read_lines(s, 1)
        except ConnectionError:
            return b""


@pytest.mark.timeout(30)
@pytest.mark.parametrize("loop", LOOPS)
def test_allow_and_deny_overlaps_follow_ncat(loop: str) -> None:
    # Allow the loopback /8, deny a /30 inside it, except nothing: deny wins over allow.
    config = _access_config("127.0.0.1", allow=("127.0.0.0/8",), deny=("127.0.0.4/30",))
    verdicts = {}
    with server_thread(config, loop) as running:
        port = running.listeners[0].port
        for source in ("127.0.0.1", "127.0.0.3", "127.0.0.4", "127.0.0.7", "127.0.0.8"):
            verdicts[source] = _try(port, source) == b"QUEM SOU\n"
        denied = running.stats()["tcp"]["denied"]
    assert verdicts == {
        "127.0.0.1": True,
        "127.0.0.3": True,
        "127.0.0.4": False,
        "127.0.0.7": False,
        "127.0.0.8": True,
    }
    assert denied == 2
    # Only an allow list: everything else is refused.
    with server_thread(_access_config("127.0.0.1", allow=("127.0.0.2",)), loop) as running:
        port = running.listeners[0].port
        assert _try(port, "127.0.0.2") == b"QUEM SOU\n"
        assert _try(port, "127.0.0.1") == b""
    figure(f"access ({loop})", "allow 127/8 deny 127.0.0.4/30: .1 .3 .8 served, .4 .7 refused unread")


@pytest.mark.skipif(not HAS_IPV6, reason="needs IPv6 for a dual-stack listener")
@pytest.mark.timeout(30)
def test_an_ipv4_client_of_a_dual_stack_listener_meets_the_ipv4_rules() -> None:
    # On "::" an IPv4 client appears as ::ffff:127.0.0.2; the IPv4 rule must still catch it.
    with server_thread(_access_config("::", deny=("127.0.0.2/32",))) as running:
        port = running.listeners[0].port
        assert _try(port, "127.0.0.2", "::ffff:127.0.0.1") == b""
        assert _try(port, "127.0.0.3", "::ffff:127.0.0.1") == b"QUEM SOU\n"
        assert running.stats()["tcp"]["denied"] == 1


@pytest.mark.timeout(30)
def test_allow_and_deny_files_from_the_command_line(tmp_path: Path) -> None:
    from tests.hardening.support import finish, serve  # noqa: PLC0415

    allow = tmp_path / "allow.txt"
    allow.write_text("# the lab\n127.0.0.0/24, 127.0.1.0/24  # two rooms\n")
    deny = tmp_path / "deny.txt"
    deny.write_text("127.0.1.9\n")
    with serve(["tcp", "--allow-file", str(allow), "--deny-file", str(deny)]) as server:
        port = server.port()
        served = {src: _try(port, src) == b"QUEM SOU\n" for src in ("127.0.0.5", "127.0.1.9", "127.0.2.1")}
        output = finish(server)
    assert served == {"127.0.0.5": True, "127.0.1.9": False, "127.0.2.1": False}
    assert sum("refused by the access list" in line for line in output) == 2


@pytest.mark.timeout(60)
def test_the_client_speaks_tls_and_refuses_an_untrusted_server(pki: Pki) -> None:
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from tests.hardening.support import finish, serve  # noqa: PLC0415
    from tests.helpers import cli_env  # noqa: PLC0415

    def client(*extra: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        command = [sys.executable, "-m", "socketlab", "client", "tcp", "127.0.0.1", str(port), *extra]
        return subprocess.run(
            command, input=stdin, capture_output=True, timeout=30, env=cli_env(), check=False
        )

    with serve(["tcp", "--tls-cert", pki.cert, "--tls-key", pki.key]) as server:
        port = server.port()
        lines = "".join(f"linha {n} ação\n" for n in range(2000)) + "última sem fim de linha"
        good = client("--tls", "--ca", pki.ca, stdin=lines.encode())
        untrusted = client("--tls", "--ca", pki.other_ca, "-m", "oi")
        insecure = client("--tls", "--insecure", "-m", "oi")
        plain = client("-m", "oi", "--timeout", "2")
        finish(server)
    assert good.returncode == 0, good.stderr
    assert good.stdout.decode() == lines.upper() + "\n"
    assert untrusted.returncode == 1
    assert b"not trusted" in untrusted.stderr
    assert insecure.returncode == 0
    assert insecure.stdout == b"OI\n"
    assert plain.returncode == 1  # a plain client gets no answer from a TLS server
    figure(
        "tls client",
        "2,001 lines (the last unterminated) through client --tls; untrusted CA refused (exit 1)",
    )
