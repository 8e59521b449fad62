"""`socketlab speed`: byte and datagram accounting, buffer sizes as the kernel gives them, JSON, plots.

Short sweeps on loopback with real sockets and the real receiver process; nothing here asserts on a
speed. Datagram counts are checked against an independent receiver (a socket of the test's own) and
the kernel's per-socket drop counter.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from socketlab.cli import EXIT_USAGE, main
from socketlab.errors import ConfigError
from socketlab.tools.speed import (
    BufferSize,
    PointResult,
    RunResult,
    SpeedConfig,
    SpeedResult,
    UdpCounts,
    make_points,
    new_result,
    run_speed,
)
from socketlab.tools.speed.ends import UDP_HEADER
from socketlab.units import Rate
from tests.helpers import cli_env, start_serve

LINUX = sys.platform.startswith("linux")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def kernel_gives(option: int, asked: int, kind: int = socket.SOCK_STREAM) -> int:
    """What this kernel gives for `asked`, from a socket of the test's own."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, option, asked)
        given: int = s.getsockopt(socket.SOL_SOCKET, option)
        return given


def read_rmem_max() -> int | None:
    try:
        return int(Path("/proc/sys/net/core/rmem_max").read_text())
    except OSError:
        return None


@pytest.mark.timeout(60)
def test_tcp_every_byte_sent_is_received_and_buffers_are_as_the_kernel_gives() -> None:
    rmem_max = read_rmem_max()
    # Past rmem_max the kernel clamps the request: the report must show what it really gave.
    big = 2 * rmem_max if rmem_max is not None else 8 * 1024 * 1024
    points = make_points("tcp", [8192], [4096, big], [1, 64 * 1024])
    config = SpeedConfig(points=points, duration=0.15, probe_interval=0.02)
    result = run_speed(config)
    assert len(result.points) == 4
    for p in result.points:
        (run,) = p.runs
        assert run.received_bytes == run.sent_bytes > 0
        assert run.send_calls > 0
        assert run.recv_calls is not None
        assert run.recv_calls > 0
        assert run.sndbuf.asked == 8192
        assert run.sndbuf.given == kernel_gives(socket.SO_SNDBUF, 8192)
        assert run.rcvbuf.asked == p.point.rcvbuf
        assert run.rcvbuf.given == kernel_gives(socket.SO_RCVBUF, p.point.rcvbuf or 0)
        # Every probe is read whole, in order, and none is found where there was none.
        assert len(run.probe_latencies) == run.probes_sent
        assert all(latency >= 0 for latency in run.probe_latencies)
    one_byte = result.points[0].runs[0]
    assert one_byte.send_calls >= one_byte.sent_bytes - 16 * one_byte.probes_sent
    if LINUX and rmem_max is not None:
        assert result.points[2].runs[0].rcvbuf.given == 2 * rmem_max
        assert result.kernel["net.core.rmem_max"] == [rmem_max]


@pytest.mark.timeout(60)
def test_tcp_byte_budget_and_all_at_once() -> None:
    budget = 3 * 1024 * 1024 + 5
    points = make_points("tcp", [None], [None], [None, 4096], max_bytes=budget)
    result = run_speed(SpeedConfig(points=points, duration=5.0, max_bytes=budget, probe_interval=0))
    all_at_once, small = (p.runs[0] for p in result.points)
    assert all_at_once.sent_bytes == all_at_once.received_bytes == budget
    assert all_at_once.send_calls == 1  # a blocking send() takes the whole buffer in one call
    assert small.sent_bytes == small.received_bytes == budget
    assert small.send_calls >= budget // 4096
    assert small.sndbuf.asked is None  # auto: not set, reported as given
    assert small.sndbuf.given == kernel_given_after_connect_is_positive(small.sndbuf)


def kernel_given_after_connect_is_positive(size: BufferSize) -> int:
    assert size.given is not None
    assert size.given > 0
    return size.given


@pytest.mark.timeout(60)
def test_udp_sent_equals_received_plus_lost_and_the_kernel_agrees() -> None:
    # A slow receiver (1 ms per datagram) with a tiny buffer must overflow; the rate stays low so the
    # only place a datagram can be dropped is the receiving socket, whose kernel counter we read.
    points = make_points("udp", [None], [2048, 64 * 1024], [512])
    config = SpeedConfig(
        points=points,
        proto="udp",
        duration=0.25,
        rate=Rate(20_000, "datagrams"),
        recv_delay=0.001,
        probe_interval=0.02,
    )
    result = run_speed(config)
    for p in result.points:
        (run,) = p.runs
        u = run.udp
        assert u is not None
        assert u.received is not None
        assert u.lost is not None
        assert u.sent == u.received + u.lost
        assert u.duplicated == 0
        assert run.received_bytes == u.received * 512
        assert run.sent_bytes == u.sent * 512
        if LINUX:
            assert u.kernel_drops == u.lost
    small = result.points[0].runs[0].udp
    assert small is not None
    assert small.lost is not None
    assert small.lost > 0


def drops_of(sock: socket.socket) -> int:
    """The test's own reading of /proc/net/udp: the drops column of this socket's line."""
    inode = str(os.fstat(sock.fileno()).st_ino)
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[9] == inode:
            return int(fields[-1])
    raise LookupError(inode)


@pytest.mark.skipif(not LINUX, reason="reads the socket's drop counter from /proc/net/udp")
@pytest.mark.timeout(60)
def test_udp_sender_count_checked_by_an_independent_receiver() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        rx.bind(("127.0.0.1", 0))
        port = rx.getsockname()[1]
        points = make_points("udp", [None], [None], [100])
        config = SpeedConfig(
            points=points,
            proto="udp",
            duration=0.2,
            rate=Rate(10_000, "datagrams"),
            to=("127.0.0.1", port),
            probe_interval=0,
        )
        result = run_speed(config)
        (run,) = result.points[0].runs
        rx.setblocking(False)
        seqs = []
        while True:
            try:
                data = rx.recv(65536)
            except BlockingIOError:
                break
            assert len(data) == 100
            seqs.append(UDP_HEADER.unpack_from(data)[0])
        dropped = drops_of(rx)
    assert run.udp is not None
    assert run.udp.received is None  # the far end is not ours: unknown, not zero
    assert run.udp.lost is None
    assert run.throughput is None
    assert len(set(seqs)) == len(seqs)
    assert set(seqs) <= set(range(run.udp.sent))
    assert len(seqs) + dropped == run.udp.sent
    assert dropped > 0  # nobody read during the run: a 32K buffer cannot hold 2,000 datagrams


@pytest.mark.timeout(60)
def test_tcp_to_a_remote_discard_server_counts_until_it_closes() -> None:
    received = []

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(20)

        def discard() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(20)
                total = 0
                while chunk := conn.recv(65536):
                    total += len(chunk)
                received.append(total)

        reader = threading.Thread(target=discard)
        reader.start()
        points = make_points("tcp", [None], [None], [16 * 1024])
        config = SpeedConfig(points=points, duration=0.1, to=listener.getsockname())
        result = run_speed(config)
        reader.join(20)
    (run,) = result.points[0].runs
    assert received == [run.sent_bytes]
    assert run.end_confirmed
    assert run.received_bytes is None
    assert run.probe_latencies == []  # the probes went, but their arrival is unknown
    assert run.throughput is not None


def test_points_refuse_what_cannot_work() -> None:
    with pytest.raises(ConfigError):
        make_points("udp", [None], [None], [8])  # no room for the sequence number
    with pytest.raises(ConfigError):
        make_points("udp", [None], [None], [70_000])
    with pytest.raises(ConfigError):
        make_points("tcp", [None], [None], [None])  # all at once, of no budget
    with pytest.raises(ConfigError):
        make_points("sctp", [None], [None], [1])
    points = make_points("tcp", [1, 2], [3], [4, 5], bufs=None)
    assert [(p.sndbuf, p.rcvbuf, p.chunk) for p in points] == [(1, 3, 4), (1, 3, 5), (2, 3, 4), (2, 3, 5)]
    assert [(p.sndbuf, p.rcvbuf) for p in make_points("tcp", [None], [None], [1], bufs=[7, 9])] == [
        (7, 7),
        (9, 9),
    ]


def made_up_result(proto: str) -> SpeedResult:
    """A result with known numbers, for what only formats them (JSON, plots)."""
    chunks = [1024, 32768]
    points = make_points(proto, [None], [None], list(chunks), bufs=[4096, 65536, None])
    config = SpeedConfig(points=points, proto=proto, repeat=2)
    result = new_result(config)
    for i, point in enumerate(points):
        p = PointResult(point, proto)
        for r in range(2):
            udp = (
                UdpCounts(sent=1000, received=900 - i, lost=100 + i, reordered=0, duplicated=0)
                if proto == "udp"
                else None
            )
            p.runs.append(
                RunResult(
                    seconds=1.0,
                    sent_bytes=1000 * (i + 1),
                    send_calls=10,
                    send_seconds=0.9,
                    sndbuf=BufferSize(point.sndbuf, 2 * (point.sndbuf or 1024)),
                    rcvbuf=BufferSize(point.rcvbuf, 2 * (point.rcvbuf or 1024)),
                    received_bytes=1000 * (i + 1) + r,
                    recv_calls=20,
                    probes_sent=2,
                    probe_latencies=[0.001 * (i + 1), 0.002 * (i + 1)],
                    udp=udp,
                )
            )
        result.points.append(p)
    return result


TOP_KEYS = {"schema", "started", "interrupted", "machine", "kernel", "settings", "points"}
SETTINGS_KEYS = {
    "proto", "to", "receiver", "host", "duration", "repeat", "max_bytes", "rate", "recv_delay",
    "probe_interval", "netns",
}  # fmt: skip
POINT_KEYS = {
    "proto", "chunk", "recv_chunk", "sndbuf", "rcvbuf", "throughput", "send_rate", "probe_latency",
    "udp", "runs",
}  # fmt: skip
RUN_KEYS = {
    "seconds", "sent_bytes", "received_bytes", "send_calls", "recv_calls", "bytes_per_send",
    "bytes_per_recv", "throughput", "send_rate", "sndbuf", "rcvbuf", "probes_sent", "probe_latency",
    "udp", "end_confirmed", "drain_capped", "receiver_gave_up",
}  # fmt: skip
UDP_KEYS = {"sent", "send_errors", "received", "lost", "reordered", "duplicated", "kernel_drops"}


def test_json_schema_is_stable() -> None:
    doc = json.loads(json.dumps(made_up_result("udp").to_json()))
    assert set(doc) == TOP_KEYS
    assert doc["schema"] == "socketlab.speed/1"
    assert set(doc["settings"]) == SETTINGS_KEYS
    point = doc["points"][0]
    assert set(point) == POINT_KEYS
    assert set(point["sndbuf"]) == {"asked", "given", "end"}
    assert set(point["throughput"]) == {"median", "min", "max"}
    assert set(point["probe_latency"]) == {"count", "median", "p90", "max"}
    assert set(point["udp"]) == UDP_KEYS | {"loss_ratio"}
    assert point["udp"]["sent"] == 2000
    assert point["udp"]["lost"] == 200
    assert set(point["runs"][0]) == RUN_KEYS
    assert set(point["runs"][0]["udp"]) == UDP_KEYS
    assert point["runs"][0]["throughput"] == 1000.0
    assert point["throughput"] == {"median": 1000.5, "min": 1000.0, "max": 1001.0}


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_plot_draws_one_series_per_chunk_with_log_axes(proto: str, tmp_path: Path) -> None:
    from socketlab.tools.speed.plot import plot_speed  # noqa: PLC0415 - matplotlib only here

    path = tmp_path / "speed.png"
    info = plot_speed(made_up_result(proto), path)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert info.x_axis == "buffer"
    expected = ["throughput (MiB/s)", "probe latency (ms)"] + (
        ["datagrams lost (%)"] if proto == "udp" else []
    )
    assert list(info.panels) == expected
    for labels in info.panels.values():
        # Two chunk sizes, each a curve over the sized buffers plus a line for the auto buffer.
        assert labels == ["chunk=1K", "chunk=1K (auto)", "chunk=32K", "chunk=32K (auto)"]
    top = info.figure.axes[0]
    assert top.get_xscale() == "log"
    assert top.get_yscale() == "log"
    curves = [line for line in top.get_lines() if line.get_marker() == "o"]
    assert [list(c.get_xdata()) for c in curves] == [[4096, 65536], [4096, 65536]]


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["speed", "--chunk", "4X"],
        ["speed", "--buf", "4K", "--sndbuf", "8K"],
        ["speed", "--proto", "udp", "--chunk", "4"],
        ["speed", "--rate", "1000"],
        ["speed", "--host", "10.0.0.1"],
        ["speed", "--chunk", "all"],
        ["speed", "--to", "nowhere"],
        ["speed", "--repeat", "0"],
        ["speed", "--proto", "udp", "--recv-chunk", "1K"],
    ):
        assert main(argv) == EXIT_USAGE, argv
        assert "socketlab speed:" in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_cli_json_and_plot_as_a_user_runs_it(socketlab_cmd: list[str], tmp_path: Path) -> None:
    plot = tmp_path / "sweep.png"
    proc = subprocess.run(
        [*socketlab_cmd, "speed", "--buf", "8K,64K", "--chunk", "16K", "--duration", "100ms",
         "--repeat", "2", "--json", "--plot", str(plot)],
        capture_output=True, env=cli_env(), timeout=50, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert set(doc) == TOP_KEYS
    assert [p["rcvbuf"]["asked"] for p in doc["points"]] == [8192, 65536]
    for p in doc["points"]:
        assert set(p) == POINT_KEYS
        assert p["rcvbuf"]["given"] == kernel_gives(socket.SO_RCVBUF, p["rcvbuf"]["asked"])
        assert len(p["runs"]) == 2
        for run in p["runs"]:
            assert set(run) == RUN_KEYS
            assert run["sent_bytes"] == run["received_bytes"]
    assert plot.read_bytes()[:8] == PNG_SIGNATURE
    assert b"\r" not in proc.stderr  # no progress line when stderr is not a terminal


@pytest.mark.timeout(60)
def test_cli_table_for_udp(socketlab_cmd: list[str]) -> None:
    proc = subprocess.run(
        [*socketlab_cmd, "speed", "--proto", "udp", "--chunk", "1K", "--rate", "2MB/s", "--duration", "100ms",
         "--progress"],
        capture_output=True, env=cli_env(), timeout=50, check=False, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    header = proc.stdout.splitlines()[0].split()
    assert header[:3] == ["sndbuf", "rcvbuf", "chunk"]
    assert "lost" in header
    assert "net.core.rmem_max" in proc.stdout or not LINUX
    assert "[1/1]" in proc.stderr  # --progress forces the progress line


def test_a_chunk_sweep_also_plots_the_time_per_call(tmp_path: Path) -> None:
    from socketlab.tools.speed.plot import PER_CALL, plot_speed  # noqa: PLC0415 - matplotlib only here

    result = made_up_result("tcp")
    result.points = [p for p in result.points if p.point.sndbuf == 4096]  # one buffer, two chunks
    info = plot_speed(result, tmp_path / "chunks.png")
    assert info.x_axis == "chunk"
    assert list(info.panels) == ["throughput (MiB/s)", PER_CALL, "probe latency (ms)"]
    calls = info.figure.axes[1]
    (curve,) = [line for line in calls.get_lines() if line.get_marker() == "o"]
    assert list(curve.get_xdata()) == [1024, 32768]
    assert list(curve.get_ydata()) == pytest.approx([0.9 / 10 * 1e6] * 2)  # send_seconds / send_calls


@pytest.mark.timeout(60)
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_against_socketlab_serve_discard(proto: str) -> None:
    with start_serve([proto, "--service", "discard", "--host", "127.0.0.1", "--port", "0"]) as server:
        points = make_points(proto, [64 * 1024], [None], [1024])
        config = SpeedConfig(
            points=points,
            proto=proto,
            duration=0.1,
            rate=Rate(5000, "datagrams") if proto == "udp" else None,
            to=("127.0.0.1", server.port(proto)),
        )
        (run,) = run_speed(config).points[0].runs
    assert run.sent_bytes > 0
    assert run.received_bytes is None  # the server's side is not ours to count
    assert run.rcvbuf.given is None
    assert run.sndbuf.given == kernel_gives(socket.SO_SNDBUF, 64 * 1024, kind=run_kind(proto))
    if proto == "tcp":
        assert run.end_confirmed  # discard closed after reading every byte
        assert run.throughput is not None
    else:
        assert run.udp is not None
        assert run.udp.sent * 1024 == run.sent_bytes
        assert run.udp.lost is None


def run_kind(proto: str) -> int:
    return socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM


def test_remote_runs_refuse_a_receive_buffer(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["speed", "--to", "127.0.0.1:9", "--rcvbuf", "4K"]) == EXIT_USAGE
    assert main(["speed", "--to", "127.0.0.1:9", "--buf", "4K"]) == EXIT_USAGE
    assert "--sndbuf" in capsys.readouterr().err


def test_netns_says_why_it_cannot_run() -> None:
    from socketlab.tools.speed.netns import unavailable_reason  # noqa: PLC0415 - Linux-only module

    def found(tool: str) -> str | None:
        return f"/usr/sbin/{tool}"

    assert unavailable_reason("linux", 0, found) is None
    assert "Linux" in (unavailable_reason("darwin", 0, found) or "")
    assert "root" in (unavailable_reason("linux", 1000, found) or "")
    assert "tc" in (unavailable_reason("linux", 0, lambda tool: None if tool == "tc" else tool) or "")


def test_netns_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["speed", "--netns-delay", "10ms"]) == EXIT_USAGE  # a delay of what link?
    assert main(["speed", "--netns", "20000"]) == EXIT_USAGE  # datagrams per second is not a link rate
    assert main(["speed", "--netns", "10Mbit/s", "--to", "127.0.0.1:9"]) == EXIT_USAGE
    assert capsys.readouterr().err.count("socketlab speed:") == 3


def test_runs_that_would_never_end_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["speed", "--duration", "7200"]) == EXIT_USAGE
    assert main(["speed", "--recv-delay", "5s"]) == EXIT_USAGE
    assert main(["speed", "--duration", "9" * 400]) == EXIT_USAGE
    assert capsys.readouterr().err.count("socketlab speed:") == 3
