"""TCP limits against a real `socketlab serve` process: idle clients, slowloris, long lines, clients
that never read, too many clients, too few file descriptors, SIGTERM with a crowd.

Limits are set small (a second, not a minute) so each scenario runs in seconds; the default values are
the same code with other numbers. Each test prints a FIGURE line for docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import threading
import time

import pytest

from socketlab.core.text import upper_bytes
from tests.hardening.support import (
    ask,
    close_all,
    connect_many,
    exchange,
    figure,
    finish,
    open_fds,
    rss_kib,
    serve,
    serve_limited,
    wait_closed,
)

MiB = 1024 * 1024


class GoodClient:
    """A well-behaved client asking a line every 50 ms in a thread; counts right and wrong answers."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.right = 0
        self.wrong = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(0.05):
            n += 1
            answer = ask(self.sock, f"ação {n}\n".encode())
            if answer == f"AÇÃO {n}\n".encode():
                self.right += 1
            else:
                self.wrong += 1
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.sock.close()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_thousand_idle_clients_are_closed_at_the_idle_timeout_while_a_good_client_is_served() -> None:
    with serve(["tcp", "--idle-timeout", "1"]) as server:
        pid, port = server.proc.pid, server.port()
        before = rss_kib(pid)
        good = GoodClient(port)
        idle = connect_many(port, 1000)
        started = time.monotonic()
        while open_fds(pid) < 1000 and time.monotonic() - started < 10:
            time.sleep(0.05)
        during = rss_kib(pid)
        closed, received = wait_closed(idle, timeout=20)
        elapsed = time.monotonic() - started
        after = rss_kib(pid)
        good.stop()
        close_all(idle)
        output = finish(server)
    assert closed == 1000
    assert all(data == b"" for data in received.values())  # closed, nothing sent to them
    assert good.wrong == 0
    assert good.right > 0
    assert sum("idle for 1 s" in line for line in output) == 1000
    per_client = (during - before) * 1024 / 1000
    assert per_client < 16 * 1024  # bounded: a few KiB per idle client
    figure(
        "idle",
        f"1000 idle clients closed after {elapsed:.1f} s (idle timeout 1 s); server RSS {before} KiB "
        f"-> {during} KiB with them ({per_client / 1024:.1f} KiB each) -> {after} KiB after; "
        f"good client answered {good.right} times meanwhile, 0 wrong",
    )


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_five_hundred_slowloris_clients_are_closed_at_the_line_deadline() -> None:
    with serve(["tcp", "--line-deadline", "1", "--idle-timeout", "60"]) as server:
        port = server.port()
        good = GoodClient(port)
        loris = connect_many(port, 500)
        started = time.monotonic()
        alive = list(loris)
        sent = 0
        # One byte every 0.2 s from each: always active, so the idle timeout never fires.
        while alive and time.monotonic() - started < 20:
            still = []
            for s in alive:
                try:
                    s.send(b"x")
                    sent += 1
                    still.append(s)
                except OSError:
                    pass  # closed by the server: what we are waiting for
            alive = still
            time.sleep(0.2)
        closed, _received = wait_closed(loris, timeout=10)
        elapsed = time.monotonic() - started
        good.stop()
        close_all(loris)
        output = finish(server)
    deadline_lines = sum("line not finished within 1 s" in line for line in output)
    assert deadline_lines == 500
    assert closed == 500
    assert good.wrong == 0
    assert good.right > 0
    figure(
        "slowloris",
        f"500 clients sending 1 byte every 0.2 s ({sent} bytes in all) closed by the 1 s line deadline "
        f"within {elapsed:.1f} s; good client answered {good.right} times meanwhile, 0 wrong",
    )


@pytest.mark.timeout(30)
def test_a_one_mib_line_whole_and_in_pieces() -> None:
    line = ("ação " * (MiB // 6)).encode()[:MiB] + b"\n"
    line = line[: MiB - 1] + b"\n"
    assert len(line) == MiB
    with serve(["tcp"]) as server:  # default --max-line 16K: refused
        port = server.port()
        whole = exchange(port, b"antes\n" + line + b"depois\n")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"antes\n")
            for i in range(0, len(line), 1024):
                try:
                    s.sendall(line[i : i + 1024])
                except ConnectionError:
                    break  # the server has closed: it needs no more of this line
            pieces = b""
            try:
                while chunk := s.recv(65536):
                    pieces += chunk
            except ConnectionError:
                pass  # a reset after the error line: the client kept sending after the FIN
        finish(server)
    assert whole == b"ANTES\nERR line too long\n"
    assert pieces == b"ANTES\nERR line too long\n"
    with serve(["tcp", "--max-line", "2M"]) as server:
        pid, port = server.proc.pid, server.port()
        before = rss_kib(pid)
        answer_whole = exchange(port, line)
        answer_pieces = exchange(port, line, piece=1024)
        after = rss_kib(pid)
        finish(server)
    expected = upper_bytes(line)
    assert answer_whole == expected
    assert answer_pieces == expected
    figure(
        "long line",
        "1 MiB line: with the default 16 KiB limit answered 'ERR line too long' (whole and in 1 KiB "
        f"pieces), nothing of it echoed; with --max-line 2M answered exactly both ways, server RSS "
        f"{before} -> {after} KiB",
    )


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_client_that_sends_128_mib_without_reading_cannot_grow_the_server() -> None:
    chunk = (b"abcdefghij" * 100 + b"\n") * 64  # 64 KiB of lines
    with serve(["tcp", "--send-timeout", "2"]) as server:
        pid, port = server.proc.pid, server.port()
        good = GoodClient(port)
        time.sleep(0.3)
        before = peak = rss_kib(pid)
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and it never reads
        s.setblocking(False)
        sent = 0
        outcome = "all sent"
        started = time.monotonic()
        while sent < 128 * MiB and time.monotonic() - started < 30:
            try:
                sent += s.send(chunk)
            except BlockingIOError:
                peak = max(peak, rss_kib(pid))
                time.sleep(0.01)
            except OSError as exc:
                outcome = f"disconnected by the server ({exc.strerror})"
                break
        peak = max(peak, rss_kib(pid))
        s.close()
        good.stop()
        output = finish(server)
    growth = peak - before
    assert outcome.startswith("disconnected")
    assert any("not reading its answers for 2 s" in line for line in output)
    assert growth < 5 * 1024
    assert good.wrong == 0
    figure(
        "no reading",
        f"client sending 128 MiB without reading: got {sent / MiB:.1f} MiB through before backpressure, "
        f"then {outcome} at the 2 s send timeout; server RSS growth {growth} KiB (limit 5 MiB)",
    )


@pytest.mark.timeout(30)
def test_twice_max_connections_at_once_the_extra_clients_get_err_busy() -> None:
    with serve(["tcp", "--max-connections", "20"]) as server:
        port = server.port()
        socks = connect_many(port, 40)
        time.sleep(0.3)  # every one accepted (or turned away) before anyone speaks
        served = busy = 0
        for s in socks:
            try:
                answer = ask(s, b"oi\n")
            except ConnectionError:
                answer = b""
            if answer == b"OI\n":
                served += 1
            elif answer == b"ERR busy\n":
                busy += 1
        close_all(socks)
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            after = ask(s, b"de novo\n")
        output = finish(server)
    assert (served, busy) == (20, 20)
    assert after == b"DE NOVO\n"
    # A line from a client already told ERR busy is dropped, never answered: an answer after our FIN
    # would fail inside the server ("Cannot call write() after write_eof()").
    assert not [line for line in output if "Traceback" in line or "Fatal error" in line]
    figure("max connections", "40 clients at once with --max-connections 20: 20 served, 20 told 'ERR busy'")


def _capacity_lines(output: list[str]) -> int:
    return sum("cannot accept new clients" in line for line in output)


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_ulimit_64_with_120_clients(loop: str) -> None:
    # Default --max-connections: lowered at start to what 64 descriptors allow, said once.
    with serve_limited(["tcp", "--loop", loop], 64) as server:
        port = server.port()
        socks = connect_many(port, 120)
        counts = {"served": 0, "busy": 0, "closed": 0}
        for s in socks:
            s.settimeout(5)
            try:
                answer = ask(s, b"oi\n")
            except OSError:
                answer = b""
            counts["served" if answer == b"OI\n" else "busy" if answer == b"ERR busy\n" else "closed"] += 1
        close_all(socks)
        time.sleep(1.2)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            assert ask(s, b"depois\n") == b"DEPOIS\n"
        output = finish(server)
    lowered = [line for line in output if "--max-connections lowered from 1024" in line]
    assert len(lowered) == 1
    allowed = int(re.search(r"to (\d+)", lowered[0])[1])  # type: ignore[index]
    assert counts["served"] == allowed
    # No descriptors at all (--max-connections 0): accept() itself fails with EMFILE. asyncio
    # leaves the clients waiting in the backlog and retries every second; uvloop (libuv) accepts
    # and closes them at once. Either way: no crash, at most one log line a second, and service
    # back as soon as descriptors are.
    with serve_limited(["tcp", "--loop", loop, "--max-connections", "0"], 64) as server:
        port = server.port()
        started = time.monotonic()
        socks = connect_many(port, 120)
        for s in socks:
            s.setblocking(False)
            with contextlib.suppress(OSError):  # already closed by the server (uvloop): seen below
                s.send(b"oi\n")
        time.sleep(0.5)
        _closed, received = wait_closed(socks, timeout=0.5)  # those waiting in the backlog stay open
        served_first = sum(data == b"OI\n" for data in received.values())
        close_all(socks)  # descriptors come back
        time.sleep(1.5)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            recovered = ask(s, b"depois\n")
        elapsed = time.monotonic() - started
        output = finish(server)
    log_lines = _capacity_lines(output)
    assert recovered == b"DEPOIS\n"
    assert 0 < served_first < 120
    assert log_lines <= elapsed + 1
    figure(
        f"ulimit 64 ({loop})",
        f"default limits: --max-connections lowered to {allowed}, of 120 clients {counts['served']} "
        f"served, {counts['busy']} told ERR busy, {counts['closed']} closed in the accept burst; "
        f"with --max-connections 0: {served_first} served, accept() out of descriptors logged "
        f"{log_lines} times in {elapsed:.1f} s, served again once descriptors came back",
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_sigterm_with_200_active_clients_loses_no_answer(loop: str) -> None:
    # The signal comes right after the last send: some clients are still in the listening socket's
    # backlog, not yet accepted. They are taken in before the listener closes, not reset.
    lines = 100
    payloads = [b"".join(f"cliente {c} linha {n} ação\n".encode() for n in range(lines)) for c in range(200)]
    with serve(["tcp", "--loop", loop]) as server:
        port = server.port()
        socks = connect_many(port, 200)
        for s, payload in zip(socks, payloads, strict=True):
            s.sendall(payload)  # answers are not read yet: the server is busy answering them
        server.proc.send_signal(signal.SIGTERM)
        answers = []
        for s in socks:
            s.settimeout(10)
            buf = b""
            while chunk := s.recv(65536):
                buf += chunk
            answers.append(buf)
        close_all(socks)
        output = finish(server, sig=None)
    complete = sum(a == upper_bytes(p) for a, p in zip(answers, payloads, strict=True))
    assert complete == 200
    assert not any("dropped" in line and "not finished" in line for line in output)
    figure(f"sigterm ({loop})", f"SIGTERM, 200 clients owed 100 answers each: {complete}/200 got all, exit 0")
