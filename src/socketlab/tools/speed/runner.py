"""Runs a sweep: for each point and repeat, one transfer from a fresh sender socket to a receiver.

The sender runs in this process. The local receiver (see `receiver`) is a child process for the whole
sweep, given one job per run: it opens a listening (TCP) or bound (UDP) socket with the asked
SO_RCVBUF, says where it is and what buffer it got, receives, and sends its counts back.

With `to=(host, port)` there is no local receiver: the far end is a `discard` server (RFC 863) and
what it received is unknown, except that a TCP peer which closes after our end of input has read
every byte, which is how remote TCP throughput is measured.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

from socketlab import __version__
from socketlab.errors import ConnectError, TransportError
from socketlab.i18n import _
from socketlab.tools.speed import ends
from socketlab.tools.speed.model import (
    BufferSize,
    Point,
    PointResult,
    RunResult,
    SpeedConfig,
    SpeedResult,
    UdpCounts,
)
from socketlab.tools.speed.receiver import LocalReceiver, ReceiverJob

CONNECT_TIMEOUT = 5.0
# Remote TCP: after our end of input, wait this long for the peer to close.
REMOTE_CLOSE_TIMEOUT = 10.0
# A receiver may take the sending window, its slow drain and its give-up margin; then it is broken.
RESULT_MARGIN = ends.GIVE_UP + 5.0

Progress = Callable[[int, int, Point, int, RunResult | None], None]
"""Called before each run (with None) and after it: (runs done, runs in all, point, repeat, result)."""


@contextlib.contextmanager
def _receiving_end(config: SpeedConfig) -> Iterator[tuple[LocalReceiver | None, str]]:
    """The local receiver (None for a remote one) and the address it listens on."""
    if config.to is not None:
        yield None, config.to[0]
        return
    with contextlib.ExitStack() as stack:
        host, prefix = config.host, []
        if config.netns is not None:
            from socketlab.tools.speed.netns import slow_link  # noqa: PLC0415 - Linux and root only

            ns = stack.enter_context(slow_link(config.netns))
            host, prefix = ns.receiver_address, ns.exec_prefix
        receiver = LocalReceiver(prefix)
        stack.callback(receiver.close)
        yield receiver, host


def describe_machine() -> dict[str, Any]:
    return {
        "system": platform.system(),
        "release": platform.release(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "cpus": os.cpu_count(),
        "socketlab": __version__,
    }


def new_result(config: SpeedConfig) -> SpeedResult:
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return SpeedResult(config, describe_machine(), ends.read_kernel_limits(), started)


def run_speed(
    config: SpeedConfig, progress: Progress | None = None, result: SpeedResult | None = None
) -> SpeedResult:
    """Run every point `config.repeat` times; fill and return `result` (a new one if None).

    Interrupted (KeyboardInterrupt), the caller's `result` keeps the runs finished so far.
    """
    result = result if result is not None else new_result(config)
    total = len(config.points) * config.repeat
    done = 0
    with _receiving_end(config) as (receiver, host):
        for point in config.points:
            point_result = PointResult(point, config.proto)
            result.points.append(point_result)
            for repeat in range(config.repeat):
                if progress is not None:
                    progress(done, total, point, repeat, None)
                run = _run_once(config, point, receiver, host)
                point_result.runs.append(run)
                done += 1
                if progress is not None:
                    progress(done, total, point, repeat, run)
    return result


def _run_once(config: SpeedConfig, point: Point, receiver: LocalReceiver | None, host: str) -> RunResult:
    proto = config.proto
    if receiver is not None:
        job = ReceiverJob(proto, host, point.rcvbuf, point.recv_chunk, config.recv_delay, config.duration)
        port, rcvbuf_given = receiver.start(job)
        address = (host, port)
        rcvbuf = BufferSize(point.rcvbuf, rcvbuf_given)
    else:
        assert config.to is not None
        address = config.to
        rcvbuf = BufferSize(point.rcvbuf, None)
    # On a failure here the sweep ends; closing the receiver stops the child wherever it waits.
    sock = _connect(proto, address, point.sndbuf)
    with sock:
        sndbuf = BufferSize(point.sndbuf, sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
        if proto == "tcp":
            return _run_tcp(config, point, sock, receiver, sndbuf=sndbuf, rcvbuf=rcvbuf)
        return _run_udp(config, point, sock, receiver, sndbuf=sndbuf, rcvbuf=rcvbuf)


def _connect(proto: str, address: tuple[str, int], sndbuf: int | None) -> socket.socket:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    try:
        infos = socket.getaddrinfo(address[0], address[1], type=kind)
    except socket.gaierror as exc:
        raise ConnectError(
            _("cannot resolve {host}: {reason}").format(host=address[0], reason=exc.strerror)
        ) from None
    family, _kind, _proto, _name, sockaddr = infos[0]
    sock = socket.socket(family, kind)
    try:
        # Before connect(): the buffer must be in place when TCP negotiates the connection.
        if sndbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect(sockaddr)
        sock.settimeout(None)
        ends.set_io_timeout(sock, ends.IO_TIMEOUT)
    except OSError as exc:
        sock.close()
        raise ConnectError(
            _("cannot connect to {host}:{port}: {reason}").format(
                host=address[0], port=address[1], reason=exc.strerror or exc
            )
        ) from None
    return sock


def _run_tcp(
    config: SpeedConfig,
    point: Point,
    sock: socket.socket,
    receiver: LocalReceiver | None,
    *,
    sndbuf: BufferSize,
    rcvbuf: BufferSize,
) -> RunResult:
    try:
        sent = ends.send_tcp(sock, point.chunk, config.duration, config.max_bytes, config.probe_interval)
        sndbuf.end = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        sock.shutdown(socket.SHUT_WR)
    except OSError as exc:
        raise TransportError(_("sending failed: {reason}").format(reason=exc.strerror or exc)) from None
    run = RunResult(
        seconds=sent.finished - sent.started,
        sent_bytes=sent.sent_bytes,
        send_calls=sent.calls,
        send_seconds=sent.finished - sent.started,
        sndbuf=sndbuf,
        rcvbuf=rcvbuf,
        probes_sent=len(sent.probe_times),
    )
    if receiver is None:
        closed = _wait_for_close(sock, REMOTE_CLOSE_TIMEOUT)
        run.end_confirmed = closed is not None
        if closed is not None:
            run.seconds = closed - sent.started
        return run
    got = receiver.result(config.duration + RESULT_MARGIN)
    run.received_bytes = got.received_bytes
    run.recv_calls = got.calls
    run.seconds = max(got.last, sent.finished) - sent.started
    run.rcvbuf.end = got.rcvbuf_end
    run.drain_capped = got.drain_capped
    run.receiver_gave_up = got.gave_up
    run.probe_latencies = [b - a for a, b in zip(sent.probe_times, got.probe_arrivals, strict=False)]
    return run


def _wait_for_close(sock: socket.socket, timeout: float) -> float | None:
    """Time the peer closed (read returned 0) after reading all, or None if it did not in `timeout`."""
    give_up = time.monotonic() + timeout
    buf = bytearray(4096)
    while time.monotonic() < give_up:
        try:
            if sock.recv_into(buf) == 0:
                return time.monotonic()
        except (BlockingIOError, TimeoutError):
            continue
        except OSError:
            return None  # reset: the peer did not read everything in order
    return None


def _run_udp(
    config: SpeedConfig,
    point: Point,
    sock: socket.socket,
    receiver: LocalReceiver | None,
    *,
    sndbuf: BufferSize,
    rcvbuf: BufferSize,
) -> RunResult:
    rate = config.rate.datagrams_per_second(point.chunk) if config.rate is not None else None
    try:
        sent = ends.send_udp(
            sock,
            point.chunk,
            duration=config.duration,
            datagrams_per_second=rate,
            max_bytes=config.max_bytes,
            probe_interval=config.probe_interval,
        )
    except ConnectionRefusedError:
        raise ConnectError(
            f"nobody is listening on udp {config.to or config.host}: the kernel said port unreachable"
        ) from None
    except OSError as exc:
        raise TransportError(_("sending failed: {reason}").format(reason=exc.strerror or exc)) from None
    sndbuf.end = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    run = RunResult(
        seconds=sent.finished - sent.started,
        sent_bytes=sent.sent_bytes,
        send_calls=sent.calls,
        send_seconds=sent.finished - sent.started,
        sndbuf=sndbuf,
        rcvbuf=rcvbuf,
        probes_sent=len(sent.probe_times),
        udp=UdpCounts(sent=sent.datagrams, send_errors=sent.send_errors),
    )
    if receiver is None:
        return run
    receiver.sender_done()
    got = receiver.result(config.duration + RESULT_MARGIN)
    assert run.udp is not None
    run.udp.received = got.datagrams
    run.udp.lost = sent.datagrams - got.datagrams
    run.udp.reordered = got.reordered
    run.udp.duplicated = got.duplicated
    run.udp.kernel_drops = got.kernel_drops
    run.received_bytes = got.received_bytes
    run.recv_calls = got.calls
    if got.last:
        run.seconds = max(got.last, sent.finished) - sent.started
    run.rcvbuf.end = got.rcvbuf_end
    run.drain_capped = got.drain_capped
    run.receiver_gave_up = got.gave_up
    run.probe_latencies = got.probe_latencies
    return run
