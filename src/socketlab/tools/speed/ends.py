"""The two ends of a transfer: the send and receive loops, and what the kernel says about buffers.

Sockets stay in blocking mode, so each send()/recv() the report counts is one system call; the time
bound comes from SO_SNDTIMEO/SO_RCVTIMEO in the kernel (Python's own socket timeouts would add a poll()
before every call and double the cost being measured). Every loop ends by itself: at its deadline, at
its byte or datagram budget, or when the peer is done.

TCP probes. The bulk stream is all zero bytes. A probe is a 16-byte message, one 0x01 followed by
fifteen 0x02, written with its own send() into the same connection, so it queues behind every bulk
byte already in the sender's and the receiver's buffers. The receiver finds each 0x01 in what it
reads and notes the time it has read the whole probe; both ends run on this machine and read the same
monotonic clock, so probe i's latency is arrival[i] - send[i]. UDP probes are datagrams carrying
their send time; every datagram carries its sequence number.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

PROBE = b"\x01" + b"\x02" * 15
PROBE_MARK = PROBE[0]
UDP_HEADER = struct.Struct("!QQ")  # sequence number, send time in ns (0: not a probe)
# Longest any single send()/recv() may block; the loops check their deadlines in between.
IO_TIMEOUT = 0.5
# A UDP receiver that heard nothing for this long after the sender finished has read all there is:
# on loopback a datagram reaches the receive queue (or is dropped) microseconds after the sender's
# send(), even when the kernel defers that work to its softirq thread.
QUIET = 0.1
# After the sending window, a slow receiver (--recv-delay) keeps its pace this long, then reads the
# rest at full speed (and says so), so draining big buffers slowly cannot make a run last for ever.
DRAIN_LIMIT = 5.0
# Past this, the receiver gives up on the rest altogether.
GIVE_UP = 2 * DRAIN_LIMIT
# A UDP pacer sends in bursts of up to this much time's worth rather than sleeping for less.
PACE_SLACK = 0.001
# Sequence numbers above this are not ours (a stray datagram); it also bounds the `seen` table.
MAX_SEQ = 50_000_000
# Errors of send() that drop one datagram and leave the socket usable.
UDP_TRANSIENT_ERRNOS = frozenset({errno.ENOBUFS, errno.EAGAIN, errno.ENOMEM})

KERNEL_FILES = {
    "net.core.wmem_max": "/proc/sys/net/core/wmem_max",
    "net.core.rmem_max": "/proc/sys/net/core/rmem_max",
    "net.core.wmem_default": "/proc/sys/net/core/wmem_default",
    "net.core.rmem_default": "/proc/sys/net/core/rmem_default",
    "net.ipv4.tcp_wmem": "/proc/sys/net/ipv4/tcp_wmem",
    "net.ipv4.tcp_rmem": "/proc/sys/net/ipv4/tcp_rmem",
    "net.ipv4.tcp_moderate_rcvbuf": "/proc/sys/net/ipv4/tcp_moderate_rcvbuf",
}


def read_kernel_limits() -> dict[str, list[int]]:
    """The sysctls that decide socket buffer sizes, where /proc/sys has them (Linux); {} elsewhere."""
    limits: dict[str, list[int]] = {}
    for name, path in KERNEL_FILES.items():
        try:
            with open(path, encoding="ascii") as f:
                limits[name] = [int(x) for x in f.read().split()]
        except (OSError, ValueError):
            continue  # not Linux, or a container hiding /proc/sys: the report says "unknown"
    return limits


def set_io_timeout(sock: socket.socket, seconds: float) -> None:
    """Bound every blocking send()/recv() on `sock` to `seconds`, keeping one system call per call."""
    if sys.platform.startswith("linux"):
        whole = int(seconds)
        timeval = struct.pack("@ll", whole, int((seconds - whole) * 1_000_000))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    else:
        # The struct differs by system; Python's timeout is portable and only costs a poll() per call.
        sock.settimeout(seconds)


def set_buffer(sock: socket.socket, option: int, size: int | None) -> int:
    """Ask for a buffer size (None: leave the kernel's choice) and return what the kernel gave."""
    if size is not None:
        sock.setsockopt(socket.SOL_SOCKET, option, size)
    given: int = sock.getsockopt(socket.SOL_SOCKET, option)
    return given


def kernel_udp_drops(sock: socket.socket) -> int | None:
    """The socket's drop counter, from /proc/net/udp[6] (its last column), found by inode; None elsewhere."""
    inode = os.fstat(sock.fileno()).st_ino
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(path, encoding="ascii") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) >= 13 and fields[9] == str(inode):
                return int(fields[-1])
    return None


@dataclass
class SendReport:
    started: float  # monotonic time of the first send()
    finished: float  # monotonic time the last send() returned
    sent_bytes: int = 0
    calls: int = 0
    probe_times: list[float] = field(default_factory=list)
    datagrams: int = 0  # UDP: datagrams sent (= the next sequence number)
    send_errors: int = 0


def send_tcp(
    sock: socket.socket, chunk: int, duration: float, max_bytes: int | None, probe_interval: float
) -> SendReport:
    """Send zeros in `chunk`-byte send() calls for `duration` seconds or `max_bytes`, probes between."""
    data = memoryview(bytearray(chunk))
    budget = max_bytes if max_bytes is not None else sys.maxsize
    started = time.monotonic()
    report = SendReport(started, started)
    deadline = started + duration
    next_probe = started + probe_interval if probe_interval > 0 else float("inf")
    sent = calls = 0
    monotonic = time.monotonic
    while sent < budget:
        now = monotonic()
        if now >= deadline:
            break
        if now >= next_probe and budget - sent >= len(PROBE):
            probe_calls, probe_sent = _send_probe(sock, deadline + 2 * IO_TIMEOUT)
            calls += probe_calls
            sent += probe_sent
            if probe_sent < len(PROBE):
                break  # the receiver stopped reading; the partial probe is ignored at the other end
            report.probe_times.append(now)
            next_probe = now + probe_interval
            continue
        left = budget - sent
        calls += 1
        try:
            sent += sock.send(data if left >= chunk else data[:left])
        except (BlockingIOError, TimeoutError):
            continue  # nothing fitted for IO_TIMEOUT: the loop checks the deadline again
    report.finished = monotonic()
    report.sent_bytes = sent
    report.calls = calls
    return report


def _send_probe(sock: socket.socket, give_up: float) -> tuple[int, int]:
    # A probe must arrive whole before any more bulk bytes, or the receiver would misread it.
    view = memoryview(PROBE)
    calls = sent = 0
    while sent < len(PROBE) and time.monotonic() < give_up:
        calls += 1
        try:
            sent += sock.send(view[sent:])
        except (BlockingIOError, TimeoutError):
            continue
    return calls, sent


def send_udp(
    sock: socket.socket,
    size: int,
    *,
    duration: float,
    datagrams_per_second: float | None,
    max_bytes: int | None,
    probe_interval: float,
) -> SendReport:
    """Send `size`-byte datagrams numbered 0, 1, 2... on a connected socket, paced when a rate is given."""
    buf = bytearray(size)
    pack = UDP_HEADER.pack_into
    max_datagrams = MAX_SEQ if max_bytes is None else min(MAX_SEQ, max_bytes // size)
    started = time.monotonic()
    report = SendReport(started, started)
    deadline = started + duration
    next_probe = started + probe_interval if probe_interval > 0 else float("inf")
    interval = 1.0 / datagrams_per_second if datagrams_per_second else 0.0
    seq = calls = errors = 0
    monotonic = time.monotonic
    while seq < max_datagrams:
        now = monotonic()
        if now >= deadline:
            break
        if interval:
            due = started + seq * interval
            if due > now + PACE_SLACK:
                time.sleep(min(due, deadline) - now)
                continue
        stamp = 0
        if now >= next_probe:
            stamp = time.monotonic_ns()
            next_probe = now + probe_interval
        pack(buf, 0, seq, stamp)
        calls += 1
        try:
            sock.send(buf)
        except (BlockingIOError, TimeoutError):
            errors += 1
            continue
        except OSError as exc:
            if exc.errno not in UDP_TRANSIENT_ERRNOS:
                raise
            errors += 1
            continue  # this sequence number goes out with the next datagram
        if stamp:
            report.probe_times.append(now)
        seq += 1
    report.finished = monotonic()
    report.datagrams = seq
    report.sent_bytes = seq * size
    report.calls = calls
    report.send_errors = errors
    return report


@dataclass
class ReceiveReport:
    received_bytes: int = 0
    calls: int = 0
    last: float = 0.0  # monotonic time of the last read that returned data
    probe_arrivals: list[float] = field(default_factory=list)  # TCP: when each whole probe was read
    probe_latencies: list[float] = field(default_factory=list)  # UDP: computed from the time stamps
    rcvbuf_end: int = 0
    drain_capped: bool = False
    gave_up: bool = False
    # UDP
    datagrams: int = 0  # distinct sequence numbers
    duplicated: int = 0
    reordered: int = 0
    foreign: int = 0  # datagrams too short or numbered beyond MAX_SEQ: not from our sender
    kernel_drops: int | None = None


def receive_tcp(conn: socket.socket, recv_chunk: int, delay: float, window_end: float) -> ReceiveReport:
    """Read until the sender closes; find the probes; sleep `delay` after each read while it is due."""
    report = ReceiveReport()
    buf = bytearray(max(recv_chunk, 1))
    pending: deque[int] = deque()  # stream offsets at which a probe seen will be whole
    total = calls = 0
    last = 0.0
    slow_until = window_end + DRAIN_LIMIT
    give_up = window_end + GIVE_UP
    monotonic = time.monotonic
    while True:
        try:
            n = conn.recv_into(buf, recv_chunk)
        except (BlockingIOError, TimeoutError):
            if monotonic() > give_up:
                report.gave_up = True
                break
            continue
        now = monotonic()
        if n == 0:
            break
        calls += 1
        pos = buf.find(PROBE_MARK, 0, n)
        while pos >= 0:
            pending.append(total + pos + len(PROBE))
            pos = buf.find(PROBE_MARK, pos + 1, n)
        total += n
        while pending and pending[0] <= total:
            pending.popleft()
            report.probe_arrivals.append(now)
        last = now
        if delay:
            if now < slow_until:
                time.sleep(delay)
            else:
                report.drain_capped = True
        if now > give_up:
            report.gave_up = True
            break
    report.received_bytes = total
    report.calls = calls
    report.last = last
    report.rcvbuf_end = conn.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return report


def receive_udp(
    sock: socket.socket, delay: float, window_end: float, sender_done: Callable[[], bool]
) -> ReceiveReport:
    """Read numbered datagrams until the sender is done and the socket has been quiet for QUIET.

    The socket's receive timeout must be QUIET: a timeout is how the loop notices the quiet.
    """
    report = ReceiveReport()
    buf = bytearray(65536)
    unpack = UDP_HEADER.unpack_from
    seen = bytearray(4096)  # seen[seq] == 1 once that datagram has been read
    highest = -1
    slow_until = window_end + DRAIN_LIMIT
    give_up = window_end + GIVE_UP
    monotonic = time.monotonic
    while True:
        try:
            n = sock.recv_into(buf)
        except (BlockingIOError, TimeoutError):
            if sender_done() or monotonic() > give_up:
                report.gave_up = not sender_done()
                break
            continue
        now_ns = time.monotonic_ns()
        now = now_ns / 1e9
        report.calls += 1
        if n < UDP_HEADER.size:
            report.foreign += 1
            continue
        seq, stamp = unpack(buf)
        if seq > MAX_SEQ:
            report.foreign += 1
            continue
        if seq >= len(seen):
            seen.extend(bytes(max(seq + 1, 2 * len(seen)) - len(seen)))
        if seen[seq]:
            report.duplicated += 1
            continue
        seen[seq] = 1
        report.datagrams += 1
        report.received_bytes += n
        if seq < highest:
            report.reordered += 1
        else:
            highest = seq
        if stamp:
            report.probe_latencies.append((now_ns - stamp) / 1e9)
        report.last = now
        if delay:
            if now < slow_until:
                time.sleep(delay)
            else:
                report.drain_capped = True
        if now > give_up:
            report.gave_up = True
            break
    report.rcvbuf_end = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    report.kernel_drops = kernel_udp_drops(sock)
    return report
