"""Closed-loop load for line servers: requests per second, latency percentiles, wrong answers.

Each connection (TCP) or connected socket (UDP) keeps `pipeline` requests in flight: it sends a line,
and every answer that comes back is checked against what the core's service says the answer must be,
timed, and replaced by a new request. Only answers that arrive inside the measured window (after the
warm-up) are counted, as in vmbench and the reference `loadgen`. Every run stops by itself after
warm-up + duration.

The generator is raw non-blocking sockets under epoll (or `selectors` where there is no epoll), one
event loop per process: a Python generator must not be the bottleneck of what it measures, and an
asyncio loop costs more per request than the servers under test. `procs > 1` runs the same loop in
several processes (`python -m socketlab.tools.bench`, talking JSON Lines over pipes) that start their
measured windows at the same monotonic instant; their counts and histograms are merged.

Latencies are kept per process as counts per whole microsecond (a dict: cheap to update, bounded by
the number of distinct values, exact to merge), then loaded into an HDR histogram for the
percentiles when `hdrh` is installed, or ranked exactly when it is not.

This module never prints for people; progress goes to a callback.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import select
import selectors
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from socketlab import __version__
from socketlab.core.services import make_service
from socketlab.errors import ConfigError, ConnectError
from socketlab.i18n import _

SERVICES = ("upper", "echo", "ack")
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
# The same filler as ../shared/bench's loadgen and bulk, so both generators send the same bytes.
FILLER = b"abcdefghijklmnopqrstuvwxyz0123456789 the quick brown fox jumps over"
# Portuguese in UTF-8, for measuring the Unicode path of `upper` (bytes.upper would leave "ç" alone).
FILLER_UTF8 = "ação, coração e pão: é útil à gestão da informação; ".encode()
PAYLOADS = ("ascii", "utf8")
# A UDP request starts with its sequence number, so a late answer can be told from a current one.
# Digits are left alone by every service that echoes the request.
SEQ_DIGITS = 10
# loadgen's choice: a datagram unanswered this long is taken as lost and replaced by a new one.
UDP_TIMEOUT = 0.2
CONNECT_TIMEOUT = 5.0
PROGRESS_EVERY = 0.5  # seconds between progress reports
FIRST_PROGRESS = 0.1  # seconds: show a line soon, so a short run shows one too
# Highest latency the histogram tracks: one minute, in microseconds (HdrHistogram needs a bound).
MAX_LATENCY_US = 60_000_000
_POLL = 0.05  # seconds: how late the loop may notice the end of the window
_RECV = 256 * 1024
_NS = 1_000_000_000


@dataclass(frozen=True)
class BenchSpec:
    """What to measure. Sizes in bytes, times in seconds."""

    proto: str  # "tcp" or "udp"
    host: str
    port: int
    connections: int = 16
    size: int = 64  # bytes per request line, LF included (as loadgen's -s)
    duration: float = 10.0
    warmup: float = 1.0
    pipeline: int = 1  # requests in flight per connection
    procs: int = 1
    service: str = "upper"
    payload: str = "ascii"  # "ascii" (loadgen's bytes) or "utf8" (Portuguese text)
    connect_timeout: float = CONNECT_TIMEOUT

    def check(self) -> None:
        """Raise ConfigError for a spec that cannot run."""
        if self.proto not in ("tcp", "udp"):
            raise ConfigError(_("unknown protocol {proto!r}: use tcp or udp").format(proto=self.proto))
        if self.service not in SERVICES:
            raise ConfigError(
                _("bench knows the answers of {services}, not {service!r}").format(
                    services=", ".join(SERVICES), service=self.service
                )
            )
        if not 0 < self.port < 65536:
            raise ConfigError(_("port {port} is not in 1-65535").format(port=self.port))
        if self.connections < 1 or self.pipeline < 1 or self.procs < 1:
            raise ConfigError(_("connections, pipeline and procs must be at least 1"))
        if self.payload not in PAYLOADS:
            raise ConfigError(
                _("payload must be one of {payloads}, not {payload!r}").format(
                    payloads=", ".join(PAYLOADS), payload=self.payload
                )
            )
        if self.procs > self.connections:
            raise ConfigError(
                _("{procs} processes need at least as many connections").format(procs=self.procs)
            )
        least = SEQ_DIGITS + 2 if self.proto == "udp" else 2
        if not least <= self.size <= 65_000:
            raise ConfigError(
                _("size must be {least}-65000 bytes for {proto}").format(least=least, proto=self.proto)
            )
        if self.duration <= 0 or self.warmup < 0:
            raise ConfigError(_("duration must be positive and warm-up not negative"))


def request_line(size: int, seq: int | None = None, payload: str = "ascii") -> bytes:
    """A request of `size` bytes ending in LF, starting with `seq` when given.

    `ascii` is loadgen's lowercase filler; `utf8` is Portuguese text, cut at a character boundary and
    padded with ASCII so the size stays exact.
    """
    prefix = b"" if seq is None else b"%0*d" % (SEQ_DIGITS, seq % 10**SEQ_DIGITS)
    n = size - 1 - len(prefix)
    filler = FILLER_UTF8 if payload == "utf8" else FILLER
    body = (filler * (n // len(filler) + 1))[:n]
    if payload == "utf8":
        text = body.decode("utf-8", "ignore")  # drops a character cut in half at the end
        body = text.encode() + b"x" * (n - len(text.encode()))
    return prefix + body + b"\n"


def expected_answer(service: str, request: bytes, proto: str = "tcp") -> bytes:
    """What a correct server answers to `request`, by the core's own definition of the service."""
    svc = make_service(service)
    if proto == "udp":
        answer = svc.answer_datagram(request)
        if answer is None:
            raise ConfigError(_("service {service!r} does not answer datagrams").format(service=service))
        return answer
    answer = svc.answer_block(request)
    # Answers are framed by their LF; a service answering with more or fewer lines cannot be checked.
    if not answer.endswith(b"\n") or answer.count(b"\n") != 1:
        raise ConfigError(_("service {service!r} does not answer one line per line").format(service=service))
    return answer


@dataclass
class Tally:
    """What one process counted. Latency counts are keyed by whole microseconds."""

    connections: int = 0
    connected: int = 0
    requests: int = 0  # answers inside the measured window
    answers_total: int = 0  # every answer, warm-up included
    bytes_out: int = 0  # request bytes of the counted requests
    bytes_in: int = 0  # answer bytes of the counted requests
    wrong_answers: int = 0
    connection_errors: int = 0
    udp_timeouts: int = 0
    udp_stale: int = 0
    window_s: float = 0.0
    first_error: str = ""  # what went wrong first, for a message when nothing connected
    latency_us: dict[int, int] = field(default_factory=dict)

    def merge(self, other: Tally) -> None:
        for name in (
            "connections",
            "connected",
            "requests",
            "answers_total",
            "bytes_out",
            "bytes_in",
            "wrong_answers",
            "connection_errors",
            "udp_timeouts",
            "udp_stale",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.window_s = max(self.window_s, other.window_s)
        self.first_error = self.first_error or other.first_error
        counts = self.latency_us
        for value, n in other.latency_us.items():
            counts[value] = counts.get(value, 0) + n

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["latency_us"] = sorted(self.latency_us.items())
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tally:
        data = dict(data)
        data["latency_us"] = {int(v): int(n) for v, n in data["latency_us"]}
        return cls(**data)


@dataclass(frozen=True)
class Progress:
    elapsed: float  # seconds since the load started
    answers: int  # every answer so far, warm-up included
    errors: int
    warming_up: bool


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class BenchResult:
    spec: BenchSpec
    tally: Tally
    latency: dict[str, float]  # p50, p90, p99, p99.9, max, mean: microseconds
    histogram: str  # "hdr" or "exact"
    machine: dict[str, Any]

    @property
    def rps(self) -> float:
        return self.tally.requests / self.tally.window_s if self.tally.window_s else 0.0

    @property
    def mb_per_s(self) -> float:
        """Request and answer bytes moved per second, in MB (10^6 bytes) as the C tools count."""
        moved = self.tally.bytes_out + self.tally.bytes_in
        return moved / self.tally.window_s / 1e6 if self.tally.window_s else 0.0

    @property
    def errors(self) -> int:
        return self.tally.wrong_answers + self.tally.connection_errors

    def to_json(self) -> dict[str, Any]:
        """The machine-readable report (`socketlab bench --json`); its keys are a public contract."""
        t = self.tally
        return {
            "tool": "socketlab bench",
            "version": __version__,
            "proto": self.spec.proto,
            "host": self.spec.host,
            "port": self.spec.port,
            "service": self.spec.service,
            "payload": self.spec.payload,
            "connections": self.spec.connections,
            "connected": t.connected,
            "size": self.spec.size,
            "pipeline": self.spec.pipeline,
            "procs": self.spec.procs,
            "warmup_s": self.spec.warmup,
            "duration_s": round(t.window_s, 6),
            "requests": t.requests,
            "rps": round(self.rps, 1),
            "mb_per_s": round(self.mb_per_s, 3),
            "latency_us": {k: round(v, 1) for k, v in self.latency.items()},
            "histogram": self.histogram,
            "errors": self.errors,
            "wrong_answers": t.wrong_answers,
            "connection_errors": t.connection_errors,
            "udp_timeouts": t.udp_timeouts,
            "udp_stale": t.udp_stale,
            "machine": self.machine,
        }


# --- the machine -------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass  # not Linux: platform.processor() is the best we have
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Where a figure was measured, recorded with it: figures from different machines do not compare."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not every system can tell which CPUs this process may use
        usable = os.cpu_count() or 1
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count() or 1,
        "usable_cores": usable,
        "system": platform.system(),
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "generator": "epoll" if hasattr(select, "epoll") else "selectors",
    }


# --- percentiles -------------------------------------------------------------------------------


def percentiles(counts: dict[int, int]) -> tuple[dict[str, float], str]:
    """p50/p90/p99/p99.9, max and mean (microseconds) of latency counts, and how they were found."""
    total = sum(counts.values())
    if not total:
        return {}, "none"
    mean = sum(v * n for v, n in counts.items()) / total
    try:
        from hdrh.histogram import HdrHistogram  # noqa: PLC0415 - optional dependency
    except ImportError:
        return _exact_percentiles(counts, total, mean), "exact"
    hist = HdrHistogram(1, MAX_LATENCY_US, 3)
    for value, n in counts.items():
        hist.record_value(min(max(value, 1), MAX_LATENCY_US), n)
    result = {_pname(p): float(hist.get_value_at_percentile(p)) for p in PERCENTILES}
    result["max"] = float(max(counts))
    result["mean"] = mean
    return result, "hdr"


def _pname(p: float) -> str:
    return f"p{p:g}"


def _exact_percentiles(counts: dict[int, int], total: int, mean: float) -> dict[str, float]:
    # Nearest rank: the smallest value with at least p% of the samples at or below it.
    ordered = sorted(counts.items())
    result: dict[str, float] = {}
    for p in PERCENTILES:
        rank = max(1, -(-int(p * total * 10) // 1000))  # ceil(p/100 * total), in integers
        seen = 0
        for value, n in ordered:
            seen += n
            if seen >= rank:
                result[_pname(p)] = float(value)
                break
    result["max"] = float(ordered[-1][0])
    result["mean"] = mean
    return result


# --- the load loop (one process) ---------------------------------------------------------------


class _Poller:
    """Level-triggered readiness for many sockets: epoll where there is one, else selectors."""

    READ = 1
    WRITE = 4

    def __init__(self) -> None:
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        self._sel = None if self._epoll is not None else selectors.DefaultSelector()

    def register(self, fd: int, mask: int) -> None:
        if self._epoll is not None:
            self._epoll.register(fd, mask)
        else:
            assert self._sel is not None
            self._sel.register(fd, self._sel_events(mask))

    def modify(self, fd: int, mask: int) -> None:
        if self._epoll is not None:
            self._epoll.modify(fd, mask)
        else:
            assert self._sel is not None
            self._sel.modify(fd, self._sel_events(mask))

    def unregister(self, fd: int) -> None:
        if self._epoll is not None:
            self._epoll.unregister(fd)
        else:
            assert self._sel is not None
            self._sel.unregister(fd)

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        if self._epoll is not None:
            return self._epoll.poll(timeout)
        assert self._sel is not None
        out = []
        for key, ev in self._sel.select(timeout):
            mask = (self.READ if ev & selectors.EVENT_READ else 0) | (
                self.WRITE if ev & selectors.EVENT_WRITE else 0
            )
            out.append((key.fd, mask))
        return out

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
        elif self._sel is not None:
            self._sel.close()

    @staticmethod
    def _sel_events(mask: int) -> int:
        return (selectors.EVENT_READ if mask & _Poller.READ else 0) | (
            selectors.EVENT_WRITE if mask & _Poller.WRITE else 0
        )


class _Conn:
    __slots__ = ("inflight", "out", "rest", "seq", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inflight: deque[int] = deque()  # send times (ns), oldest first
        self.out = b""  # request bytes the socket would not take yet
        self.rest = b""  # the start of an answer whose LF has not arrived
        self.seq = 0


def _open_sockets(spec: BenchSpec, count: int, tally: Tally) -> list[socket.socket]:
    """Connect `count` non-blocking sockets, all at once; those that fail are counted and dropped."""
    kind = socket.SOCK_STREAM if spec.proto == "tcp" else socket.SOCK_DGRAM
    try:
        infos = socket.getaddrinfo(spec.host, spec.port, type=kind)
    except socket.gaierror as exc:
        raise ConnectError(_("cannot resolve {host}: {reason}").format(host=spec.host, reason=exc)) from exc
    family, _kind, _proto, _name, address = infos[0]
    poller = _Poller()
    pending: dict[int, socket.socket] = {}
    ready: list[socket.socket] = []
    try:
        for _turn in range(count):
            sock = socket.socket(family, kind)
            sock.setblocking(False)
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            code = sock.connect_ex(address)
            if code == 0:
                ready.append(sock)
            elif code in (errno.EINPROGRESS, errno.EWOULDBLOCK):
                pending[sock.fileno()] = sock
                poller.register(sock.fileno(), _Poller.WRITE)
            else:
                tally.connection_errors += 1
                tally.first_error = tally.first_error or os.strerror(code)
                sock.close()
        deadline = time.monotonic() + spec.connect_timeout
        while pending and (left := deadline - time.monotonic()) > 0:
            for fd, _ev in poller.poll(min(left, _POLL)):
                sock = pending.pop(fd)
                poller.unregister(fd)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code == 0:
                    ready.append(sock)
                else:
                    tally.connection_errors += 1
                    tally.first_error = tally.first_error or os.strerror(code)
                    sock.close()
    finally:
        for sock in pending.values():
            tally.connection_errors += 1  # not connected within the connect timeout
            tally.first_error = tally.first_error or "connect timed out"
            sock.close()
        poller.close()
    return ready


def run_load(
    spec: BenchSpec,
    connections: int,
    start_ns: int | None = None,
    progress: ProgressCallback | None = None,
    on_connected: Callable[[], int] | None = None,
) -> Tally:
    """Run `connections` of `spec`'s load in this process and count what happened.

    The load starts at `start_ns` (time.monotonic_ns) or, without it, as soon as the sockets are
    connected; `on_connected`, when given, is called once they are and returns the start instead
    (that is how several processes agree on one start).
    """
    tally = Tally(connections=connections)
    socks = _open_sockets(spec, connections, tally)
    tally.connected = len(socks)
    try:
        if on_connected is not None:
            start_ns = on_connected()
        if start_ns is None:
            start_ns = time.monotonic_ns()
        while (wait := start_ns - time.monotonic_ns()) > 0:
            time.sleep(wait / _NS)
        if socks:
            loop = _tcp_loop if spec.proto == "tcp" else _udp_loop
            loop(spec, socks, start_ns, tally, progress)
    finally:
        for sock in socks:
            sock.close()
    return tally


def _tcp_loop(
    spec: BenchSpec,
    socks: list[socket.socket],
    t0: int,
    tally: Tally,
    progress: ProgressCallback | None,
) -> None:
    request = request_line(spec.size, payload=spec.payload)
    answer = expected_answer(spec.service, request)
    k = spec.pipeline
    # Answers arrive in runs; a run of n correct answers is one comparison with this.
    answers_n = [answer * n for n in range(k + 1)]
    requests_n = [request * n for n in range(k + 1)]
    req_len, ans_len = len(request), len(answer)
    w0 = t0 + int(spec.warmup * _NS)
    w1 = w0 + int(spec.duration * _NS)
    counts = tally.latency_us
    poller = _Poller()
    conns: dict[int, _Conn] = {}
    READ, WRITE = _Poller.READ, _Poller.WRITE
    now = time.monotonic_ns()
    for sock in socks:
        c = _Conn(sock)
        conns[sock.fileno()] = c
        poller.register(sock.fileno(), READ)
        c.inflight.extend([now] * k)
        _send(c, requests_n[k], poller)

    requests = answers_total = wrong = errors = 0
    next_report = t0 + int(FIRST_PROGRESS * _NS)
    monotonic_ns = time.monotonic_ns
    try:
        while conns:
            now = monotonic_ns()
            if now >= w1:
                break
            if progress is not None and now >= next_report:
                next_report = now + int(PROGRESS_EVERY * _NS)
                progress(Progress((now - t0) / _NS, answers_total, wrong + errors, now < w0))
            for fd, ev in poller.poll(min(_POLL, (w1 - now) / _NS)):
                found = conns.get(fd)
                if found is None:
                    continue  # dropped earlier in this same batch of events
                c = found
                if ev & WRITE:
                    try:
                        _flush(c, poller)
                    except OSError:
                        errors += 1
                        _drop(c, conns, poller)
                        continue
                if not ev & ~WRITE:
                    continue
                try:
                    data = c.sock.recv(_RECV)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    errors += 1
                    _drop(c, conns, poller)
                    continue
                if not data:
                    errors += 1  # the server closed a connection that still had requests in flight
                    _drop(c, conns, poller)
                    continue
                if c.rest:
                    data = c.rest + data
                end = data.rfind(b"\n") + 1
                if not end:
                    c.rest = data
                    continue
                c.rest = data[end:]
                block = data[:end] if c.rest else data
                n = block.count(b"\n")
                inflight = c.inflight
                if n > len(inflight):
                    wrong += n - len(inflight)  # answers to questions never asked
                    n = len(inflight)
                if block != answers_n[n]:
                    wrong += sum(1 for line in block.split(b"\n")[:n] if line + b"\n" != answer)
                done = monotonic_ns()
                answers_total += n
                if w0 <= done < w1:
                    for _turn in range(n):
                        sent = inflight.popleft()
                        if sent >= t0:
                            us = (done - sent) // 1000
                            counts[us] = counts.get(us, 0) + 1
                            requests += 1
                else:
                    for _turn in range(n):
                        inflight.popleft()
                if n:
                    inflight.extend([done] * n)
                    try:
                        _send(c, requests_n[n], poller)
                    except OSError:
                        errors += 1
                        _drop(c, conns, poller)
    finally:
        poller.close()
        tally.requests += requests
        tally.answers_total += answers_total
        tally.wrong_answers += wrong
        tally.connection_errors += errors
        tally.bytes_out += requests * req_len
        tally.bytes_in += requests * ans_len
        tally.window_s = spec.duration


def _send(c: _Conn, data: bytes, poller: _Poller) -> None:
    if c.out:
        c.out += data
        return
    sent = c.sock.send(data)
    if sent < len(data):
        c.out = data[sent:]
        poller.modify(c.sock.fileno(), _Poller.READ | _Poller.WRITE)


def _flush(c: _Conn, poller: _Poller) -> None:
    if not c.out:
        return
    try:
        sent = c.sock.send(c.out)
    except BlockingIOError:
        return
    c.out = c.out[sent:]
    if not c.out:
        poller.modify(c.sock.fileno(), _Poller.READ)


def _drop(c: _Conn, conns: dict[int, _Conn], poller: _Poller) -> None:
    fd = c.sock.fileno()
    conns.pop(fd, None)
    poller.unregister(fd)


def _udp_loop(
    spec: BenchSpec,
    socks: list[socket.socket],
    t0: int,
    tally: Tally,
    progress: ProgressCallback | None,
) -> None:
    service = make_service(spec.service)
    template = request_line(spec.size, 0, spec.payload)
    w0 = t0 + int(spec.warmup * _NS)
    w1 = w0 + int(spec.duration * _NS)
    timeout_ns = int(UDP_TIMEOUT * _NS)
    counts = tally.latency_us
    poller = _Poller()
    by_fd = {s.fileno(): s for s in socks}
    # Per socket: sequence number -> (send time, expected answer), oldest first.
    inflight: dict[int, dict[int, tuple[int, bytes | None]]] = {fd: {} for fd in by_fd}
    seqs = dict.fromkeys(by_fd, 0)
    size = spec.size

    def send_new(fd: int, now: int) -> None:
        seq = seqs[fd] = seqs[fd] + 1
        req = b"%0*d" % (SEQ_DIGITS, seq % 10**SEQ_DIGITS) + template[SEQ_DIGITS:]
        inflight[fd][seq] = (now, service.answer_datagram(req))
        # A send that fails is like a datagram lost on the way: the timeout replaces it.
        with contextlib.suppress(BlockingIOError, InterruptedError, ConnectionRefusedError):
            by_fd[fd].send(req)

    now = time.monotonic_ns()
    for fd in by_fd:
        poller.register(fd, _Poller.READ)
        for _turn in range(spec.pipeline):
            send_new(fd, now)

    requests = answers_total = wrong = errors = timeouts = stale = bytes_in = 0
    next_report = t0 + int(FIRST_PROGRESS * _NS)
    next_scan = now + timeout_ns // 10
    monotonic_ns = time.monotonic_ns
    try:
        while True:
            now = monotonic_ns()
            if now >= w1:
                break
            if progress is not None and now >= next_report:
                next_report = now + int(PROGRESS_EVERY * _NS)
                progress(Progress((now - t0) / _NS, answers_total, wrong + errors, now < w0))
            if now >= next_scan:
                next_scan = now + timeout_ns // 10
                for fd, pending in inflight.items():
                    expired = [s for s, (sent, _) in pending.items() if now - sent > timeout_ns]
                    for s in expired:
                        del pending[s]
                        timeouts += 1
                        send_new(fd, now)
            for fd, _ev in poller.poll(min(_POLL, (w1 - now) / _NS)):
                sock = by_fd[fd]
                pending = inflight[fd]
                while True:
                    try:
                        data = sock.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        # A connected UDP socket reports the ICMP error of an earlier datagram here.
                        errors += 1
                        break
                    done = monotonic_ns()
                    head = data[:SEQ_DIGITS]
                    if len(data) >= SEQ_DIGITS and head.isdigit():
                        entry = pending.pop(int(head), None)
                    elif pending:
                        # An answer that does not carry the request (ack): it answers the oldest.
                        entry = pending.pop(next(iter(pending)))
                    else:
                        entry = None
                    if entry is None:
                        stale += 1  # a late answer to a datagram already given up on
                        continue
                    sent, expected = entry
                    answers_total += 1
                    if data != expected:
                        wrong += 1
                    if w0 <= done < w1 and sent >= t0:
                        us = (done - sent) // 1000
                        counts[us] = counts.get(us, 0) + 1
                        requests += 1
                        bytes_in += len(data)
                    send_new(fd, done)
    finally:
        poller.close()
        tally.requests += requests
        tally.answers_total += answers_total
        tally.wrong_answers += wrong
        tally.connection_errors += errors
        tally.udp_timeouts += timeouts
        tally.udp_stale += stale
        tally.bytes_out += requests * size
        tally.bytes_in += bytes_in
        tally.window_s = spec.duration


# --- several processes -------------------------------------------------------------------------

_START_MARGIN = 0.1  # seconds between "all connected" and the common start, to deliver the start


def split_connections(connections: int, procs: int) -> list[int]:
    """Connections per process, as even as possible."""
    base, extra = divmod(connections, procs)
    return [base + (1 if i < extra else 0) for i in range(procs)]


def run_bench(spec: BenchSpec, progress: ProgressCallback | None = None) -> BenchResult:
    """Run the whole benchmark (every process) and return the merged result."""
    spec.check()
    if spec.procs == 1:
        tally = run_load(spec, spec.connections, progress=progress)
    else:
        tally = _run_procs(spec, progress)
    if not tally.connected:
        raise ConnectError(
            f"could not connect to {spec.host} port {spec.port}: {tally.first_error or 'no connection'}"
        )
    latency, kind = percentiles(tally.latency_us)
    return BenchResult(spec, tally, latency, kind, machine_info())


def _worker_command() -> list[str]:
    return [sys.executable, "-m", "socketlab.tools.bench"]


def _run_procs(spec: BenchSpec, progress: ProgressCallback | None) -> Tally:
    shares = split_connections(spec.connections, spec.procs)
    workers = [
        subprocess.Popen(
            _worker_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in shares
    ]
    try:
        return _drive_workers(spec, shares, workers, progress)
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
            w.wait()
            for f in (w.stdin, w.stdout, w.stderr):
                if f is not None:
                    f.close()


def _drive_workers(
    spec: BenchSpec,
    shares: list[int],
    workers: list[subprocess.Popen[bytes]],
    progress: ProgressCallback | None,
) -> Tally:
    for w, share in zip(workers, shares, strict=True):
        assert w.stdin is not None
        w.stdin.write(json.dumps({"spec": asdict(spec), "connections": share}).encode() + b"\n")
        w.stdin.flush()
    # Start-up (interpreter, imports) and connecting are bounded; then the run itself.
    deadline = time.monotonic() + 30 + spec.connect_timeout
    for w in workers:
        msg = _read_message(w, deadline)
        if "ready" not in msg:
            raise ConnectError(_("a load process failed to start: {message}").format(message=msg))
    start_ns = time.monotonic_ns() + int(_START_MARGIN * _NS)
    for w in workers:
        assert w.stdin is not None
        w.stdin.write(json.dumps({"start_ns": start_ns}).encode() + b"\n")
        w.stdin.flush()
    t0 = start_ns / _NS
    deadline = t0 + spec.warmup + spec.duration + 15
    answers = dict.fromkeys(range(len(workers)), 0)
    errors = dict.fromkeys(range(len(workers)), 0)
    merged = Tally()
    done: set[int] = set()
    with selectors.DefaultSelector() as sel:
        for i, w in enumerate(workers):
            assert w.stdout is not None
            sel.register(w.stdout, selectors.EVENT_READ, i)
        while len(done) < len(workers):
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConnectError(_("load processes did not finish in time"))
            for key, _events in sel.select(left):
                i = key.data
                msg = _read_message(workers[i], deadline)
                if "progress" in msg:
                    answers[i], errors[i] = msg["progress"]
                    if progress is not None:
                        now = time.monotonic()
                        progress(
                            Progress(
                                now - t0,
                                sum(answers.values()),
                                sum(errors.values()),
                                now < t0 + spec.warmup,
                            )
                        )
                elif "tally" in msg:
                    merged.merge(Tally.from_json(msg["tally"]))
                    done.add(i)
                    sel.unregister(key.fileobj)
                else:
                    raise ConnectError(
                        _("a load process failed: {message}").format(message=msg.get("error", msg))
                    )
    return merged


def _read_message(w: subprocess.Popen[bytes], deadline: float) -> dict[str, Any]:
    assert w.stdout is not None
    if not select.select([w.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
        return {"error": "no answer from the load process"}
    line = w.stdout.readline()
    if not line:
        err = w.stderr.read().decode(errors="replace").strip() if w.stderr else ""
        return {"error": err.splitlines()[-1] if err else "the load process exited"}
    result: dict[str, Any] = json.loads(line)
    return result


def worker_main(stdin: Iterable[bytes] | None = None) -> int:
    """One load process: spec in on stdin, JSON Lines out (ready, progress..., tally)."""
    lines = iter(stdin if stdin is not None else sys.stdin.buffer)
    out = sys.stdout

    def emit(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    job = json.loads(next(lines))
    spec = BenchSpec(**job["spec"])

    def on_connected() -> int:
        emit({"ready": True})
        start: int = json.loads(next(lines))["start_ns"]
        return start

    def report(p: Progress) -> None:
        emit({"progress": [p.answers, p.errors]})

    try:
        tally = run_load(spec, job["connections"], progress=report, on_connected=on_connected)
    except (ConnectError, ConfigError, OSError) as exc:
        emit({"error": str(exc)})
        return 1
    emit({"tally": tally.to_json()})
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
