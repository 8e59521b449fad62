"""The asyncio UDP server, in-process, on both event loops and both address families."""

from __future__ import annotations

import logging
import socket

import pytest

from socketlab.config import Listener, ServerConfig
from tests.conftest import HAS_IPV6
from tests.transports.serving import LOCALHOSTS, LOOPS, config_for, family_of, server_thread

USER_SHOUT = "tests.cli.user_service:shout"
USER_BACKWARDS = "tests.cli.user_service:backwards"

# (service, datagram, answer): one datagram in, one out, nothing added (the Java UDPClient sends no
# newline and must get none back).
EXCHANGES = [
    ("upper", "ação".encode(), "AÇÃO".encode()),
    ("upper", "ação".encode("latin-1"), "AÇÃO".encode("latin-1")),  # the Java client's bytes
    ("upper", b"with newline\n", b"WITH NEWLINE\n"),
    ("echo", bytes(range(256)), bytes(range(256))),
    ("ack", b"hello", b"ok"),
    ("ack", b"hello\r\n", b"ok\r\n"),
    # No UDP answer may be larger than its request (no amplification), hence a padded failing request.
    (USER_BACKWARDS, "olá, ação".encode(), "oãça ,álo".encode()),
    (USER_SHOUT, b"boom" + b" " * 40, b"ERR ValueError: no booms here"),
]


def _udp_client(host: str) -> socket.socket:
    sock = socket.socket(family_of(host), socket.SOCK_DGRAM)
    sock.settimeout(5)
    return sock


@pytest.mark.timeout(20)
@pytest.mark.parametrize("host", LOCALHOSTS)
@pytest.mark.parametrize("loop", LOOPS)
def test_each_service_answers_one_datagram_with_one_datagram(loop: str, host: str) -> None:
    if ":" in host and not HAS_IPV6:
        pytest.skip("this machine has no IPv6 loopback (::1)")
    services = sorted({service for service, _, _ in EXCHANGES})
    config = ServerConfig(listeners=tuple(Listener("udp", s, host, 0) for s in services))
    with server_thread(config, loop) as running:
        ports = {b.service: b.port for b in running.listeners}
        with _udp_client(host) as sock:
            for service, request, answer in EXCHANGES:
                sock.sendto(request, (host, ports[service]))
                data, sender = sock.recvfrom(65535)
                assert data == answer, service
                assert sender[1] == ports[service]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("loop", LOOPS)
def test_each_client_gets_its_own_answers(loop: str) -> None:
    # No connections in UDP: the answer goes back to the address and source port it came from.
    with server_thread(config_for("udp", "upper"), loop) as running:
        address = ("127.0.0.1", running.listeners[0].port)
        clients = [_udp_client("127.0.0.1") for _ in range(5)]
        try:
            for round_ in range(3):
                for i, sock in enumerate(clients):
                    sock.sendto(f"cliente {i} rodada {round_}".encode(), address)
                for i, sock in enumerate(clients):
                    assert sock.recv(65535) == f"CLIENTE {i} RODADA {round_}".encode()
        finally:
            for sock in clients:
                sock.close()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("loop", LOOPS)
def test_discard_sends_nothing_back(loop: str) -> None:
    config = ServerConfig(
        listeners=(Listener("udp", "discard", "127.0.0.1", 0), Listener("udp", "echo", "127.0.0.1", 0))
    )
    with server_thread(config, loop) as running, _udp_client("127.0.0.1") as sock:
        discard, echo = (("127.0.0.1", b.port) for b in running.listeners)
        sock.sendto(b"into the void", discard)
        sock.sendto(b"marco", echo)
        assert sock.recvfrom(65535) == (b"marco", echo)
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            sock.recvfrom(65535)  # had discard answered, it would be here by now


@pytest.mark.timeout(20)
def test_verbose_logs_each_datagram_and_user_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="socketlab.server")
    with (
        server_thread(config_for("udp", USER_SHOUT, verbose=True)) as running,
        _udp_client("127.0.0.1") as sock,
    ):
        address = ("127.0.0.1", running.listeners[0].port)
        padding = b" " * 40  # no answer may be larger than its request (no UDP amplification)
        sock.sendto(b"boom" + padding, address)
        assert sock.recv(65535) == b"ERR ValueError: no booms here"
        sock.sendto(b"boom again" + padding, address)
        assert sock.recv(65535) == b"ERR ValueError: no booms here"
        peer = f"127.0.0.1:{sock.getsockname()[1]}"
    messages = [r.getMessage() for r in caplog.records]
    assert f"udp {USER_SHOUT}: {peer} >> {'boom' + ' ' * 40!r}" in messages
    assert f"udp {USER_SHOUT}: {peer} >> {'boom again' + ' ' * 40!r}" in messages
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert "no booms here" in errors[0]
