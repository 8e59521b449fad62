"""What `socketlab speed` is asked to measure and what it found: plain data, no I/O.

The JSON form (`result_to_json`) is a stable schema documented in docs/speed.md: keys are only ever
added, and `schema` changes its number when one is removed or changes meaning.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from socketlab.config import MAX_DATAGRAM, MiB
from socketlab.errors import ConfigError
from socketlab.i18n import _
from socketlab.units import Rate

SCHEMA = "socketlab.speed/1"

# A datagram starts with its sequence number and, on probes, its send time (two 64-bit integers).
UDP_HEADER_SIZE = 16
# `--chunk all` on the receiving side: no receive queue holds more than this (tcp_rmem's maximum is
# 32 MiB even on big servers; 6 MiB by default), so a larger buffer would only waste memory.
RECV_ALL_LIMIT = 64 * MiB


@dataclass(frozen=True)
class Point:
    """One point of a sweep. A buffer of None is left alone: the kernel picks and autotunes it."""

    sndbuf: int | None
    rcvbuf: int | None
    chunk: int  # bytes per send() (TCP) or per datagram (UDP)
    recv_chunk: int  # bytes per recv() (UDP always reads whole datagrams)


@dataclass(frozen=True)
class Link:
    """The slow medium of `--netns` (see `netns`)."""

    rate_bits: int  # bits per second, as tc counts them
    delay: float = 0.0  # seconds added on the way back (receiver to sender): the round-trip time


@dataclass(frozen=True)
class SpeedConfig:
    points: tuple[Point, ...]
    proto: str = "tcp"
    duration: float = 1.0  # seconds of sending per run
    repeat: int = 1  # runs per point, each on a new connection
    max_bytes: int | None = None  # per run; the run ends at whichever of duration and bytes comes first
    rate: Rate | None = None  # UDP only; None: as fast as send() goes
    recv_delay: float = 0.0  # seconds the receiver sleeps after each recv(): a slow application
    to: tuple[str, int] | None = None  # a remote discard server; None: our own receiver on loopback
    host: str = "127.0.0.1"  # where the local receiver listens
    probe_interval: float = 0.05  # seconds between probes; 0: no probes
    netns: Link | None = None  # run the receiver behind a rate-limited veth pair instead of loopback


def make_points(
    proto: str,
    sndbufs: list[int | None],
    rcvbufs: list[int | None],
    chunks: list[int | None],
    *,
    bufs: list[int | None] | None = None,
    recv_chunk: int | None = None,
    max_bytes: int | None = None,
) -> tuple[Point, ...]:
    """Every combination, in order. `bufs` sets SO_SNDBUF and SO_RCVBUF together (and then
    `sndbufs`/`rcvbufs` must be [None]). A chunk of None means "all at once": the whole byte budget in
    one send() (TCP), the largest datagram (UDP)."""
    if proto not in ("tcp", "udp"):
        raise ConfigError(_("unknown protocol {proto!r}: use tcp or udp").format(proto=proto))
    if proto == "udp" and recv_chunk is not None:
        raise ConfigError(_("UDP reads each datagram whole: there is no receive chunk to choose"))
    pairs = [(b, b) for b in bufs] if bufs is not None else [(s, r) for s in sndbufs for r in rcvbufs]
    points = []
    for sndbuf, rcvbuf in pairs:
        for chunk in chunks:
            size = _resolve_chunk(proto, chunk, max_bytes)
            if proto == "udp":
                receive = MAX_DATAGRAM + 1  # one more than any datagram, so none is ever truncated
            elif recv_chunk is not None:
                receive = recv_chunk
            else:
                receive = min(size, RECV_ALL_LIMIT)
            points.append(Point(sndbuf, rcvbuf, size, receive))
    for p in points:
        for name, value in (("SO_SNDBUF", p.sndbuf), ("SO_RCVBUF", p.rcvbuf)):
            if value is not None and value <= 0:
                raise ConfigError(_("{name} must be above 0 bytes").format(name=name))
    return tuple(points)


def _resolve_chunk(proto: str, chunk: int | None, max_bytes: int | None) -> int:
    if proto == "udp":
        size = MAX_DATAGRAM if chunk is None else chunk
        if not UDP_HEADER_SIZE <= size <= MAX_DATAGRAM:
            raise ConfigError(
                f"a UDP datagram here is {UDP_HEADER_SIZE} to {MAX_DATAGRAM} bytes "
                f"(it carries a {UDP_HEADER_SIZE}-byte sequence number and time stamp), not {size}"
            )
        return size
    if chunk is None:
        if max_bytes is None:
            raise ConfigError(_("--chunk all needs --bytes: all of what, at once?"))
        return max_bytes
    if chunk <= 0:
        raise ConfigError(_("a chunk must be at least 1 byte"))
    return chunk


@dataclass
class BufferSize:
    """A socket buffer: what was asked for, what getsockopt said right after, and at the end of the run.

    None means not asked (kernel default and autotuning) or not known (the far end of a remote run).
    """

    asked: int | None
    given: int | None
    end: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"asked": self.asked, "given": self.given, "end": self.end}


@dataclass
class UdpCounts:
    """Datagrams, counted by sequence number. received + lost == sent, exactly, when the receiver is ours."""

    sent: int
    send_errors: int = 0  # send() refused the datagram (ENOBUFS, timeout); it was not sent
    received: int | None = None  # distinct sequence numbers read by the receiving application
    lost: int | None = None
    reordered: int | None = None  # arrived after a datagram sent later than it
    duplicated: int | None = None
    kernel_drops: int | None = None  # the receiving socket's own drop counter (/proc/net/udp)

    def to_json(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "send_errors": self.send_errors,
            "received": self.received,
            "lost": self.lost,
            "reordered": self.reordered,
            "duplicated": self.duplicated,
            "kernel_drops": self.kernel_drops,
        }


@dataclass
class RunResult:
    seconds: float  # from the first send() to the last byte read (or to the peer's close, remote TCP)
    sent_bytes: int
    send_calls: int
    send_seconds: float  # from the first send() to the return of the last one
    sndbuf: BufferSize
    rcvbuf: BufferSize
    received_bytes: int | None = None  # None: the receiver is remote and says nothing
    recv_calls: int | None = None
    probes_sent: int = 0
    probe_latencies: list[float] = field(default_factory=list)  # seconds, one per probe that arrived
    udp: UdpCounts | None = None
    end_confirmed: bool = True  # remote TCP: the peer closed after reading everything
    drain_capped: bool = False  # the slow receiver stopped sleeping to drain the rest in time
    receiver_gave_up: bool = False  # the receiver stopped before the end of the data (a very slow link)

    @property
    def throughput(self) -> float | None:
        """Bytes per second that reached the receiving application (remote TCP: that the peer read)."""
        if self.received_bytes is not None:
            return self.received_bytes / self.seconds if self.seconds > 0 else 0.0
        if self.udp is None and self.end_confirmed and self.seconds > 0:
            return self.sent_bytes / self.seconds
        return None

    @property
    def send_rate(self) -> float:
        """Bytes per second that send() accepted: the kernel's buffers included."""
        return self.sent_bytes / self.send_seconds if self.send_seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "sent_bytes": self.sent_bytes,
            "received_bytes": self.received_bytes,
            "send_calls": self.send_calls,
            "recv_calls": self.recv_calls,
            "bytes_per_send": _ratio(self.sent_bytes, self.send_calls),
            "bytes_per_recv": _ratio(self.received_bytes, self.recv_calls),
            "throughput": self.throughput,
            "send_rate": self.send_rate,
            "sndbuf": self.sndbuf.to_json(),
            "rcvbuf": self.rcvbuf.to_json(),
            "probes_sent": self.probes_sent,
            "probe_latency": latency_summary(self.probe_latencies),
            "udp": None if self.udp is None else self.udp.to_json(),
            "end_confirmed": self.end_confirmed,
            "drain_capped": self.drain_capped,
            "receiver_gave_up": self.receiver_gave_up,
        }


def _ratio(a: int | None, b: int | None) -> float | None:
    if a is None or not b:
        return None
    return a / b


def spread(values: list[float]) -> dict[str, float] | None:
    """Median, min and max; None for no values."""
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def latency_summary(values: list[float]) -> dict[str, Any] | None:
    if not values:
        return None
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return {"count": len(ordered), "median": statistics.median(ordered), "p90": p90, "max": ordered[-1]}


@dataclass
class PointResult:
    point: Point
    proto: str
    runs: list[RunResult] = field(default_factory=list)

    @property
    def throughput(self) -> dict[str, float] | None:
        return spread([t for r in self.runs if (t := r.throughput) is not None])

    @property
    def probe_latency(self) -> dict[str, Any] | None:
        return latency_summary([x for r in self.runs for x in r.probe_latencies])

    @property
    def udp(self) -> UdpCounts | None:
        """The runs' datagram counts added up; a count unknown in any run is unknown in the sum."""
        counts = [r.udp for r in self.runs if r.udp is not None]
        if not counts:
            return None

        def total(name: str) -> int | None:
            values = [getattr(c, name) for c in counts]
            return None if any(v is None for v in values) else sum(values)

        return UdpCounts(
            sent=sum(c.sent for c in counts),
            send_errors=sum(c.send_errors for c in counts),
            received=total("received"),
            lost=total("lost"),
            reordered=total("reordered"),
            duplicated=total("duplicated"),
            kernel_drops=total("kernel_drops"),
        )

    def to_json(self) -> dict[str, Any]:
        first = self.runs[0] if self.runs else None
        ends_snd = [r.sndbuf.end for r in self.runs if r.sndbuf.end is not None]
        ends_rcv = [r.rcvbuf.end for r in self.runs if r.rcvbuf.end is not None]
        udp = self.udp
        return {
            "proto": self.proto,
            "chunk": self.point.chunk,
            "recv_chunk": self.point.recv_chunk,
            "sndbuf": BufferSize(
                self.point.sndbuf, first.sndbuf.given if first else None, max(ends_snd, default=None)
            ).to_json(),
            "rcvbuf": BufferSize(
                self.point.rcvbuf, first.rcvbuf.given if first else None, max(ends_rcv, default=None)
            ).to_json(),
            "throughput": self.throughput,
            "send_rate": spread([r.send_rate for r in self.runs]),
            "probe_latency": self.probe_latency,
            "udp": None
            if udp is None
            else {**udp.to_json(), "loss_ratio": _ratio(udp.lost, udp.sent) if udp.sent else None},
            "runs": [r.to_json() for r in self.runs],
        }


@dataclass
class SpeedResult:
    config: SpeedConfig
    machine: dict[str, Any]
    kernel: dict[str, list[int]]  # sysctl name -> its numbers, as read from /proc/sys
    started: str  # ISO 8601, UTC
    points: list[PointResult] = field(default_factory=list)
    interrupted: bool = False

    def to_json(self) -> dict[str, Any]:
        c = self.config
        return {
            "schema": SCHEMA,
            "started": self.started,
            "interrupted": self.interrupted,
            "machine": self.machine,
            "kernel": self.kernel,
            "settings": {
                "proto": c.proto,
                "to": None if c.to is None else f"{c.to[0]}:{c.to[1]}",
                "receiver": "remote" if c.to is not None else "netns" if c.netns is not None else "local",
                "host": None if c.to is not None or c.netns is not None else c.host,
                "duration": c.duration,
                "repeat": c.repeat,
                "max_bytes": c.max_bytes,
                "rate": None if c.rate is None else {"per_second": c.rate.per_second, "unit": c.rate.unit},
                "recv_delay": c.recv_delay,
                "probe_interval": c.probe_interval,
                "netns": None
                if c.netns is None
                else {"rate_bits": c.netns.rate_bits, "delay": c.netns.delay},
            },
            "points": [p.to_json() for p in self.points],
        }
