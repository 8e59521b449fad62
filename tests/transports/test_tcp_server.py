"""The asyncio TCP server, in-process, on both event loops and both address families."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import pytest

from socketlab.config import KiB, Limits, Listener, ServerConfig
from socketlab.errors import BindError, ConfigError
from socketlab.transports.binding import (
    ALL_IPV4,
    ALL_IPV6,
    Address,
    bind_addresses,
    format_address,
    listen_addresses,
)
from socketlab.transports.server import open_server
from tests.conftest import HAS_IPV6, needs_ipv6
from tests.transports.serving import (
    LOCALHOSTS,
    LOOPS,
    config_for,
    connect,
    read_all,
    read_exactly,
    run_async,
    server_thread,
)

USER_SHOUT = "tests.cli.user_service:shout"

# (service, request, answer): every request is followed by a half-close, so the answer is complete
# when the server closes.
EXCHANGES = [
    ("upper", b"hello\r\na\xc3\xa7\xc3\xa3o\nstra\xc3\x9fe\n", b"HELLO\r\nA\xc3\x87\xc3\x83O\nSTRASSE\n"),
    ("upper", "não termina".encode(), "NÃO TERMINA".encode()),
    ("echo", bytes(range(256)) * 4, bytes(range(256)) * 4),
    ("ack", b"one\ntwo\r\nthree", b"ok\nok\r\nok"),
    (USER_SHOUT, b"hi\nboom\nyo\r\n", b"HI!\nERR ValueError: no booms here\nYO!\r\n"),
]


def _skip_without_ipv6(host: str) -> None:
    if ":" in host and not HAS_IPV6:
        pytest.skip("this machine has no IPv6 loopback (::1)")


@pytest.mark.timeout(20)
@pytest.mark.parametrize("host", LOCALHOSTS)
@pytest.mark.parametrize("loop", LOOPS)
def test_each_service_answers_over_tcp(loop: str, host: str) -> None:
    _skip_without_ipv6(host)
    services = sorted({service for service, _, _ in EXCHANGES})
    config = ServerConfig(listeners=tuple(Listener("tcp", s, host, 0) for s in services))
    with server_thread(config, loop) as running:
        ports = {b.service: b.port for b in running.listeners}
        assert all(b.host == host for b in running.listeners)
        for service, request, answer in EXCHANGES:
            with connect(host, ports[service]) as sock:
                sock.sendall(request)
                sock.shutdown(socket.SHUT_WR)
                assert read_all(sock) == answer, service


@pytest.mark.timeout(20)
@pytest.mark.parametrize("loop", LOOPS)
def test_portuguese_split_across_segments_byte_by_byte(loop: str) -> None:
    utf8 = "Programação com sockets: ação, coração, não!\n".encode()
    latin1 = "Conexão aceita, ação!\n".encode("latin-1")  # the Java TCPClient's writeBytes
    expected = "PROGRAMAÇÃO COM SOCKETS: AÇÃO, CORAÇÃO, NÃO!\n".encode() + "CONEXÃO ACEITA, AÇÃO!\n".encode(
        "latin-1"
    )
    with (
        server_thread(config_for("tcp", "upper"), loop) as running,
        connect("127.0.0.1", running.listeners[0].port) as sock,
    ):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i, byte in enumerate(utf8 + latin1):
            sock.sendall(bytes([byte]))
            if i % 4 == 0:
                time.sleep(0.001)  # give the server a chance to read a partial character
        assert read_exactly(sock, len(expected)) == expected


@pytest.mark.timeout(20)
@pytest.mark.parametrize("loop", LOOPS)
def test_line_too_long_answers_earlier_lines_then_error_then_closes(loop: str) -> None:
    limits = Limits(max_line=32)
    with server_thread(config_for("tcp", "upper", limits=limits), loop) as running:
        port = running.listeners[0].port
        with connect("127.0.0.1", port) as sock:
            sock.sendall(b"first\nsecond\r\n" + b"x" * 100 + b"\nnever answered\n")
            assert read_all(sock) == b"FIRST\nSECOND\r\nERR line too long\n"
        # The same, with the long line still unterminated and the client sending on after the error:
        # the server drops those bytes rather than answer them with a reset that could eat the error.
        with connect("127.0.0.1", port) as sock:
            sock.sendall(b"ok\n" + b"y" * 40)
            expected = b"OK\nERR line too long\n"
            assert read_exactly(sock, len(expected)) == expected
            for _ in range(5):
                sock.sendall(b"y" * 1000)
            assert read_all(sock) == b""
        with connect("127.0.0.1", port) as sock:  # the server goes on serving others
            sock.sendall(b"still here\n")
            assert read_exactly(sock, 11) == b"STILL HERE\n"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("loop", LOOPS)
def test_half_close_still_gets_every_answer(loop: str) -> None:
    with (
        server_thread(config_for("tcp", "upper"), loop) as running,
        connect("127.0.0.1", running.listeners[0].port) as sock,
    ):
        sock.sendall(b"abc\n" * 1000 + b"last line, unterminated")
        sock.shutdown(socket.SHUT_WR)
        assert read_all(sock) == b"ABC\n" * 1000 + b"LAST LINE, UNTERMINATED"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("loop", LOOPS)
def test_idle_clients_are_closed_and_active_ones_are_not(loop: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="socketlab.server")
    limits = Limits(idle_timeout=0.4)
    with server_thread(config_for("tcp", "upper", limits=limits), loop) as running:
        port = running.listeners[0].port
        with connect("127.0.0.1", port) as quiet, connect("127.0.0.1", port) as busy:
            quiet.sendall(b"a\n")
            assert read_exactly(quiet, 2) == b"A\n"
            # Three timeouts' worth of activity on `busy`, never silent for more than a fraction of one.
            for _ in range(24):
                busy.sendall(b"b\n")
                assert read_exactly(busy, 2) == b"B\n"
                time.sleep(0.05)
            assert quiet.recv(10) == b""  # closed by the server
            busy.sendall(b"c\n")
            assert read_exactly(busy, 2) == b"C\n"
    assert any("idle for 0.4 s" in r.getMessage() for r in caplog.records)


async def _backpressure(loop_name: str) -> None:
    limits = Limits(write_high_water=64 * KiB, write_low_water=16 * KiB)
    line = b"x" * 1023 + b"\n"
    block = line * 64
    cap = 256 * 1024 * KiB  # without backpressure the client could send forever; stop and fail
    async with open_server(config_for("tcp", "upper", limits=limits)) as running:
        assert running.loop_name == loop_name
        loop = asyncio.get_running_loop()
        sock = socket.create_connection(("127.0.0.1", running.listeners[0].port), timeout=10)
        sock.setblocking(False)
        with sock:
            sent = 0
            blocked_turns = 0
            # Send and never read: our receive buffer fills, then the server's send buffer, then its
            # write buffer passes the high mark, it stops reading, and finally our sends block.
            while blocked_turns < 50:
                try:
                    sent += sock.send(block[sent % len(line) :])  # stay aligned after a short send
                    blocked_turns = 0
                    await asyncio.sleep(0)
                except BlockingIOError:
                    blocked_turns += 1
                    await asyncio.sleep(0.002)
                assert sent < cap, "the server never stopped reading"
            (conn,) = running.connections
            assert conn.reading_paused
            # Bounded: the high mark plus at most one read's answer; the partial line under max_line.
            assert conn.write_buffer_size <= limits.write_high_water + 1024 * KiB
            assert conn.pending <= limits.max_line
            assert sent > 4 * (limits.write_high_water + 1024 * KiB)  # it was the server that held back
            # Now read everything while finishing the last line: every answer arrives, in order.
            rest = line[len(line) - (len(line) - sent % len(line)) % len(line) :]
            total = sent + len(rest)

            async def read_answers() -> bytes:
                received = bytearray()
                while len(received) < total:
                    chunk = await loop.sock_recv(sock, 1024 * KiB)
                    assert chunk, "connection closed early"
                    received += chunk
                return bytes(received)

            reading = asyncio.ensure_future(read_answers())
            await loop.sock_sendall(sock, rest)
            assert await reading == line.upper() * (total // len(line))
            assert not conn.reading_paused


@pytest.mark.timeout(30)
@pytest.mark.parametrize("loop", LOOPS)
def test_a_client_that_does_not_read_makes_the_server_stop_reading(loop: str) -> None:
    run_async(_backpressure(loop), loop)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("loop", LOOPS)
def test_verbose_logs_connections_and_each_line(loop: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="socketlab.server")
    with server_thread(config_for("tcp", "ack", verbose=True), loop) as running:
        with connect("127.0.0.1", running.listeners[0].port) as sock:
            client_port = sock.getsockname()[1]
            sock.sendall("Echo\nsegunda ação".encode())
            sock.shutdown(socket.SHUT_WR)
            assert read_all(sock) == b"ok\nok"
        deadline = time.monotonic() + 5
        while not any("left" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.01)
    messages = [r.getMessage() for r in caplog.records]
    peer = f"127.0.0.1:{client_port}"
    assert f"tcp ack: {peer} connected" in messages
    # Shown as text, so Portuguese reads as Portuguese (the slide prints the bytes' repr).
    assert f"tcp ack: {peer} >> 'Echo\\n'" in messages
    assert f"tcp ack: {peer} >> 'segunda ação'" in messages
    assert f"tcp ack: {peer} left" in messages


@pytest.mark.timeout(20)
def test_a_failing_user_function_is_logged_and_the_server_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="socketlab.server")
    with server_thread(config_for("tcp", USER_SHOUT)) as running:
        port = running.listeners[0].port
        for _ in range(2):
            with connect("127.0.0.1", port) as sock:
                sock.sendall(b"boom\nfine\n")
                expected = b"ERR ValueError: no booms here\nFINE!\n"
                assert read_exactly(sock, len(expected)) == expected
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert "no booms here" in errors[0].getMessage()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("loop", LOOPS)
def test_shutdown_delivers_answers_owed_to_a_slow_reader(loop: str) -> None:
    async def scenario() -> None:
        async with open_server(config_for("tcp", "upper")) as running:
            reader, writer = await asyncio.open_connection("127.0.0.1", running.listeners[0].port)
            writer.write(b"hello\n" * 50_000)
            await writer.drain()
            # Wait until the server has answered part of it; then stop it while answers are pending.
            assert await reader.readexactly(6) == b"HELLO\n"
            shutdown = asyncio.ensure_future(running.shutdown(grace=10))
            await asyncio.sleep(0.05)
            rest = await reader.read()  # everything up to the server's FIN
            writer.close()  # we leave too, so the server need not wait for us any longer
            result = await shutdown
            assert not result.forced
            assert rest == b"HELLO\n" * (len(rest) // 6)
            assert len(rest) % 6 == 0
            assert running.connections == []

    run_async(scenario(), loop)


@pytest.mark.timeout(10)
def test_a_busy_port_raises_bind_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def scenario() -> None:
            async with open_server(ServerConfig(listeners=(Listener("tcp", "upper", "127.0.0.1", port),))):
                pass

        with pytest.raises(BindError, match="already in use"):
            run_async(scenario(), "asyncio")


@pytest.mark.timeout(10)
def test_an_unknown_service_fails_before_anything_is_bound() -> None:
    async def scenario() -> None:
        listeners = (Listener("tcp", "upper", "127.0.0.1", 0), Listener("tcp", "nope", "127.0.0.1", 0))
        async with open_server(ServerConfig(listeners=listeners)):
            pass

    with pytest.raises(ConfigError, match="unknown service"):
        run_async(scenario(), "asyncio")


def test_every_interface_means_ipv4_and_ipv6() -> None:
    addresses = listen_addresses(None)
    assert addresses[0] == (socket.AF_INET, (ALL_IPV4, 0))
    if socket.has_ipv6:
        assert addresses[1] == (socket.AF_INET6, (ALL_IPV6, 0, 0, 0))
    assert format_address("::", 9876) == "[::]:9876"
    assert format_address("127.0.0.1", 6789) == "127.0.0.1:6789"


@needs_ipv6
@pytest.mark.timeout(10)
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_several_addresses_share_one_port_even_port_zero(proto: str) -> None:
    # Binding every interface would leave the loopback, so both loopback addresses stand in for
    # 0.0.0.0 and :: here: the same path (one socket per address, IPV6_V6ONLY, the first port reused).
    both: list[Address] = [(socket.AF_INET, ("127.0.0.1", 0)), (socket.AF_INET6, ("::1", 0, 0, 0))]
    socks = bind_addresses(proto, both, 0)
    try:
        assert [s.family for s in socks] == [socket.AF_INET, socket.AF_INET6]
        ports = {s.getsockname()[1] for s in socks}
        assert len(ports) == 1
        assert 0 not in ports
        assert socks[1].getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        if proto == "tcp":
            (port,) = ports
            for host in ("127.0.0.1", "::1"):
                with connect(host, port):
                    pass  # the kernel completes the handshake: both sockets listen
    finally:
        for s in socks:
            s.close()
