"""`socketlab bench` against servers whose answers it can predict, and `bench compare`'s report.

The servers here run in a thread of the test process on 127.0.0.1:0; one is correct (the core's
upper service), the others answer wrongly on purpose, and the bench must tell them apart.
"""

from __future__ import annotations

import json
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from socketlab.core.services import make_service
from socketlab.errors import ConfigError, ConnectError
from socketlab.tools import compare
from socketlab.tools.bench import (
    BenchSpec,
    Tally,
    _exact_percentiles,
    expected_answer,
    percentiles,
    request_line,
    run_bench,
    run_load,
    split_connections,
)
from tests.helpers import cli_env

Transform = Callable[[bytes], bytes]
UPPER: Transform = make_service("upper").answer_block


class _LineHandler(socketserver.StreamRequestHandler):
    server: _TcpServer

    def handle(self) -> None:
        self.server.count_connection()
        try:
            for line in self.rfile:
                self.wfile.write(self.server.transform(line))
                self.server.count_line()
        except OSError:
            pass  # the bench closes its connections when its window ends


class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, transform: Transform) -> None:
        super().__init__(("127.0.0.1", 0), _LineHandler)
        self.transform = transform
        self.lock = threading.Lock()
        self.connections = 0
        self.lines = 0

    def count_connection(self) -> None:
        with self.lock:
            self.connections += 1

    def count_line(self) -> None:
        with self.lock:
            self.lines += 1


@pytest.fixture
def tcp_server(request: pytest.FixtureRequest) -> Iterator[_TcpServer]:
    transform: Transform = getattr(request, "param", UPPER)
    server = _TcpServer(transform)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def udp_server(request: pytest.FixtureRequest) -> Iterator[int]:
    transform: Callable[[bytes], bytes | None] = getattr(
        request, "param", make_service("upper").answer_datagram
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(65536)
            except TimeoutError:
                continue
            answer = transform(data)
            if answer is not None:
                sock.sendto(answer, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        sock.close()


def _spec(proto: str, port: int, **kw: object) -> BenchSpec:
    base: dict[str, object] = {"connections": 4, "duration": 0.5, "warmup": 0.1}
    base.update(kw)
    return BenchSpec(proto, "127.0.0.1", port, **base)  # type: ignore[arg-type]


def _lower(line: bytes) -> bytes:
    return line.lower()


def _every_other_wrong(line: bytes) -> bytes:
    # Wrong only for some requests: a bench that checked just the first answer would miss it.
    _every_other_wrong.n += 1  # type: ignore[attr-defined]
    return line.upper() if _every_other_wrong.n % 2 else line  # type: ignore[attr-defined]


_every_other_wrong.n = 0  # type: ignore[attr-defined]


# --- TCP ---------------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_correct_tcp_server_gives_answers_and_no_errors(tcp_server: _TcpServer) -> None:
    result = run_bench(_spec("tcp", tcp_server.server_address[1]))
    t = result.tally
    assert t.connected == 4
    assert t.requests > 0
    assert result.errors == 0
    assert result.rps > 0
    assert result.latency["p50"] <= result.latency["p99"] <= result.latency["max"]
    # Every request counted was answered by this server.
    assert t.requests <= tcp_server.lines


@pytest.mark.timeout(20)
@pytest.mark.parametrize("tcp_server", [_lower, _every_other_wrong], indirect=True)
def test_wrong_tcp_answers_are_counted(tcp_server: _TcpServer) -> None:
    result = run_bench(_spec("tcp", tcp_server.server_address[1], connections=2))
    assert result.tally.answers_total > 0
    assert result.tally.wrong_answers > 0
    assert result.tally.connection_errors == 0


@pytest.mark.timeout(20)
@pytest.mark.parametrize("tcp_server", [bytes.upper], indirect=True)
def test_ascii_only_upper_is_wrong_for_portuguese(tcp_server: _TcpServer) -> None:
    port = tcp_server.server_address[1]
    assert run_bench(_spec("tcp", port, duration=0.3)).errors == 0
    assert run_bench(_spec("tcp", port, duration=0.3, payload="utf8")).tally.wrong_answers > 0


@pytest.mark.timeout(20)
def test_pipelined_requests_are_all_checked(tcp_server: _TcpServer) -> None:
    result = run_bench(_spec("tcp", tcp_server.server_address[1], connections=2, pipeline=8))
    assert result.tally.requests > 0
    assert result.errors == 0


@pytest.mark.timeout(20)
@pytest.mark.parametrize("tcp_server", [make_service("ack").answer_block], indirect=True)
def test_ack_service_is_checked_against_the_core(tcp_server: _TcpServer) -> None:
    port = tcp_server.server_address[1]
    assert run_bench(_spec("tcp", port, service="ack")).errors == 0
    # The same server is wrong for a bench that expects upper.
    assert run_bench(_spec("tcp", port, service="upper", duration=0.3)).tally.wrong_answers > 0


@pytest.mark.timeout(20)
def test_refused_connections_are_an_error_not_a_hang() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connecting is refused
        with pytest.raises(ConnectError, match="refused"):
            run_bench(_spec("tcp", port, connections=3))
        tally = run_load(_spec("tcp", port), 3)
    assert (tally.connected, tally.connection_errors, tally.requests) == (0, 3, 0)


# --- UDP ---------------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_correct_udp_server(udp_server: int) -> None:
    result = run_bench(_spec("udp", udp_server))
    assert result.tally.requests > 0
    assert result.errors == 0


@pytest.mark.timeout(20)
@pytest.mark.parametrize("udp_server", [make_service("ack").answer_datagram], indirect=True)
def test_udp_answers_without_the_request_are_matched_in_order(udp_server: int) -> None:
    # "ok\n" carries no sequence number: each answer is taken for the oldest datagram in flight.
    result = run_bench(_spec("udp", udp_server, service="ack", pipeline=2))
    assert result.tally.requests > 0
    assert result.errors == 0


@pytest.mark.timeout(20)
@pytest.mark.parametrize("udp_server", [_lower], indirect=True)
def test_wrong_udp_answers_are_counted(udp_server: int) -> None:
    result = run_bench(_spec("udp", udp_server))
    assert result.tally.wrong_answers > 0


# --- several processes, the CLI ----------------------------------------------------------------


@pytest.mark.timeout(30)
def test_procs_2_merges_both_processes(tcp_server: _TcpServer) -> None:
    result = run_bench(_spec("tcp", tcp_server.server_address[1], connections=5, procs=2, duration=0.6))
    t = result.tally
    assert t.connections == 5
    assert t.connected == 5
    assert tcp_server.connections == 5
    assert t.requests > 0
    assert result.errors == 0
    assert sum(t.latency_us.values()) == t.requests
    assert t.requests <= tcp_server.lines


JSON_KEYS = {
    "tool",
    "version",
    "proto",
    "host",
    "port",
    "service",
    "payload",
    "connections",
    "connected",
    "size",
    "pipeline",
    "procs",
    "warmup_s",
    "duration_s",
    "requests",
    "rps",
    "mb_per_s",
    "latency_us",
    "histogram",
    "errors",
    "wrong_answers",
    "connection_errors",
    "udp_timeouts",
    "udp_stale",
    "machine",
}


BENCH_TCP = [sys.executable, "-m", "socketlab", "bench", "tcp"]


def _bench_cli(port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BENCH_TCP, "127.0.0.1", str(port), "-c", "2", "-d", "0.4", "-w", "0.1", *extra],
        capture_output=True,
        text=True,
        timeout=20,
        env=cli_env(),
        check=False,
    )


@pytest.mark.timeout(30)
def test_cli_json_report(tcp_server: _TcpServer) -> None:
    proc = _bench_cli(tcp_server.server_address[1], "--json", "--size", "100", "--payload", "utf8")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data) == JSON_KEYS
    assert set(data["latency_us"]) == {"p50", "p90", "p99", "p99.9", "max", "mean"}
    assert {"cpu", "cores", "kernel", "python", "generator"} <= set(data["machine"])
    assert data["size"] == 100
    assert data["payload"] == "utf8"
    assert data["requests"] > 0
    assert data["errors"] == 0
    assert data["histogram"] in ("hdr", "exact")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("tcp_server", [_lower], indirect=True)
def test_cli_fails_on_wrong_answers(tcp_server: _TcpServer) -> None:
    proc = _bench_cli(tcp_server.server_address[1], "--progress")
    assert proc.returncode == 1
    assert "wrong answers" in proc.stdout
    assert "answers" in proc.stderr  # the progress line went to stderr


# --- pure parts --------------------------------------------------------------------------------


def test_requests_and_expected_answers() -> None:
    req = request_line(64)
    assert len(req) == 64
    assert req.endswith(b"\n")
    assert req.count(b"\n") == 1
    assert expected_answer("upper", req) == req.upper()
    assert expected_answer("echo", req) == req
    assert expected_answer("ack", req) == b"ok\n"
    utf8 = request_line(64, payload="utf8")
    assert len(utf8) == 64
    assert utf8.decode("utf-8").startswith("ação")
    assert expected_answer("upper", utf8).decode("utf-8").startswith("AÇÃO")
    udp = request_line(64, 42)
    assert udp.startswith(b"0000000042")
    assert len(udp) == 64


def test_bad_specs_are_config_errors() -> None:
    for bad in (
        _spec("tcp", 1, procs=5),
        _spec("udp", 1, size=8),
        _spec("tcp", 1, service="discard"),
        _spec("tcp", 0),
    ):
        with pytest.raises(ConfigError):
            bad.check()


def test_split_connections() -> None:
    assert split_connections(5, 2) == [3, 2]
    assert split_connections(256, 3) == [86, 85, 85]


def test_tally_merge_adds_counts_and_histograms() -> None:
    a = Tally(connections=2, connected=2, requests=10, wrong_answers=1, window_s=1.0, latency_us={5: 6, 7: 4})
    b = Tally(connections=3, connected=2, requests=5, connection_errors=1, window_s=1.0, latency_us={7: 5})
    b_copy = Tally.from_json(json.loads(json.dumps(b.to_json())))
    a.merge(b_copy)
    assert (a.connections, a.connected, a.requests) == (5, 4, 15)
    assert (a.wrong_answers, a.connection_errors) == (1, 1)
    assert a.latency_us == {5: 6, 7: 9}


def test_percentiles_hdr_and_exact_agree() -> None:
    counts = {10: 500, 20: 400, 30: 90, 40: 9, 1000: 1}
    exact = _exact_percentiles(counts, 1000, 0.0)
    assert (exact["p50"], exact["p90"], exact["p99"], exact["p99.9"], exact["max"]) == (10, 20, 30, 40, 1000)
    hdr, kind = percentiles(counts)
    assert kind in ("hdr", "exact")
    for key in ("p50", "p90", "p99", "p99.9", "max"):
        assert hdr[key] == exact[key]
    assert hdr["mean"] == pytest.approx((10 * 500 + 20 * 400 + 30 * 90 + 40 * 9 + 1000) / 1000)


# --- compare: the report from measurement records ----------------------------------------------


def _fake_report(**opts: object) -> compare.CompareReport:
    options = compare.CompareOptions(rounds=2, scenarios=("tcp16", "idle", "startup"), **opts)  # type: ignore[arg-type]
    report = compare.CompareReport(
        options=options,
        machine={"cpu": "Test CPU", "cores": 2, "system": "Linux", "kernel": "6.0", "python": "CPython 3.11"},
        date="2026-01-01 00:00 UTC",
        generator="loadgen",
        pinned=True,
        labels={"cserver": "C cserver", "socketlab": "socketlab (uvloop)", "threading": "threads"},
    )
    M = compare.Measurement
    report.measurements += [
        M("tcp16", "cserver", 1, 100_000.0, 50.0, 90.0),
        M("tcp16", "cserver", 2, 200_000.0, 40.0, 80.0),
        M("tcp16", "socketlab", 1, 90_000.0, 60.0, 100.0),  # 0.90 of this round's cserver
        M("tcp16", "socketlab", 2, 160_000.0, 55.0, 95.0),  # 0.80
        M("tcp16", "threading", 1, 40_000.0, 300.0, 900.0, errors=2, note="15/16 connected"),
        M("idle", "socketlab", 1, 3.0),
        M("idle", "socketlab", 2, 5.0),
        M("startup", "socketlab client", 1, 80.0),
    ]
    report.skipped.append(("socketlab --workers 2", "`socketlab serve` does not accept --workers (yet)"))
    return report


def test_summary_uses_medians_of_per_round_ratios() -> None:
    rows = {r.server: r for r in compare.summarize(_fake_report(), "tcp16")}
    assert list(rows) == ["cserver", "socketlab", "threading"]
    assert rows["cserver"].ratio == 1.0
    assert rows["socketlab"].value == 125_000.0
    assert rows["socketlab"].ratio == pytest.approx(0.85)
    assert rows["threading"].ratio == pytest.approx(0.4)
    assert rows["threading"].errors == 2
    assert rows["socketlab"].spread == (90_000.0, 160_000.0)


def test_targets_are_judged_on_socketlab() -> None:
    checks = {c.scenario: c for c in compare.check_targets(_fake_report())}
    assert checks["tcp16"].met is True  # 0.85 ≥ 0.85
    assert checks["tcp16"].measured == "0.850×"
    assert checks["idle"].met is True  # median 4.0 ≤ 4 KiB
    assert checks["startup"].met is True  # 80 ms < 120 ms


def test_markdown_report(tmp_path: Path) -> None:
    report = _fake_report(command="socketlab bench compare --rounds 2")
    report.hot_paths = compare.hot_paths_in_use()
    text = compare.render_markdown(report, "img/performance.png")
    assert text.startswith(compare.BEGIN_MARK)
    assert text.rstrip().endswith(compare.END_MARK)
    assert "socketlab bench compare --rounds 2" in text
    assert "Test CPU" in text
    assert f"- socketlab's hot paths: {report.hot_paths}." in text
    assert "| socketlab (uvloop) | 125,000 | 0.85 |" in text
    assert "15/16 connected" in text
    assert "does not accept --workers" in text
    assert "![ratios to cserver](img/performance.png)" in text

    # Written into an existing document, the notes around the markers stay.
    doc = tmp_path / "docs" / "performance.md"
    doc.parent.mkdir()
    doc.write_text(f"# Notes before\n\n{compare.BEGIN_MARK}\nold\n{compare.END_MARK}\n\nNotes after\n")
    compare.write_markdown(report, str(doc), str(tmp_path / "docs" / "img" / "performance.png"))
    written = doc.read_text()
    assert written.startswith("# Notes before")
    assert written.rstrip().endswith("Notes after")
    assert "old" not in written
    assert written.count(compare.BEGIN_MARK) == 1


def test_chart_is_a_png(tmp_path: Path) -> None:
    path = tmp_path / "chart.png"
    assert compare.write_chart(_fake_report(), str(path))
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    assert width > 300
    assert height > 200


# --- compare: one tiny real run ----------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.slow
def test_compare_smoke_run_with_baselines(tmp_path: Path) -> None:
    options = compare.CompareOptions(
        rounds=1,
        duration=0.4,
        warmup=0.1,
        scenarios=("tcp16",),
        servers=("asyncio-streams", "threading"),
        generator="socketlab",
        pin=False,
    )
    log: list[str] = []
    report = compare.run_compare(options, log.append)
    by_server = {m.server: m for m in report.measurements}
    assert {"asyncio-streams", "threading"} <= set(by_server), (log, report.skipped)
    for name in ("asyncio-streams", "threading"):
        assert by_server[name].value > 0
        assert by_server[name].errors == 0
    compare.write_markdown(report, str(tmp_path / "perf.md"), None)
    assert "plain asyncio streams" in (tmp_path / "perf.md").read_text()


@pytest.mark.timeout(90)
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc to see the servers started")
def test_sigterm_stops_a_comparison_and_the_servers_it_started() -> None:
    argv = [
        "bench",
        "compare",
        "--rounds",
        "1",
        "--duration",
        "20",
        "--warmup",
        "0.1",
        "--scenarios",
        "tcp16",
    ]
    argv += ["--servers", "asyncio-streams", "--generator", "socketlab", "--no-pin", "--output", "-"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "socketlab", *argv, "--chart", "-"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=cli_env(),
    )
    try:
        deadline = time.monotonic() + 60
        started: set[int] = set()
        while not started and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            started = set(compare.tree_pids(proc.pid)) - {proc.pid}  # a server (C or baseline) is up
        assert started, "no server was started"
        time.sleep(0.5)
        started |= set(compare.tree_pids(proc.pid)) - {proc.pid}
        proc.terminate()
        assert proc.wait(30) == 130
        for pid in started:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_scenario_lists() -> None:
    assert compare.parse_list("all", compare.SCENARIOS) == compare.SCENARIOS
    assert compare.parse_list("tcp16, bulk", compare.SCENARIOS) == ("tcp16", "bulk")
    with pytest.raises(ConfigError, match="tcp17"):
        compare.parse_list("tcp17", compare.SCENARIOS)


def test_the_reproduce_command_leaves_out_where_results_go() -> None:
    from socketlab.cli.bench import reproducible_args  # noqa: PLC0415 - the CLI layer, only here

    argv = ["bench", "compare", "--rounds", "5", "--json", "/tmp/x.json", "--output=-", "--chart", "c.png"]
    assert reproducible_args(argv) == ["bench", "compare", "--rounds", "5"]
