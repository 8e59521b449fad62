"""What happens to each datagram crossing the proxy, decided by seeded dice. Pure: no sockets, no clock.

The proxy asks a `FaultyLink` (one per direction of each client's flow) what to do with every
datagram, and gets back the copies to send with the delay of each. Given the same seed, the same
flow and the same sequence of datagrams, the fates are the same on every run: a failure seen once
can be seen again. Each datagram rolls the same five dice whatever the settings, so the fate of the
n-th datagram never depends on what happened to the ones before it.

Also here: reading the fault options as people write them (`10%`, `0.1`, `50`, `50ms±10`), so the
library and the CLI agree on their meaning.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, field
from enum import StrEnum

from socketlab.errors import ConfigError
from socketlab.i18n import _
from socketlab.units import parse_duration, parse_rate, parse_size


class Direction(StrEnum):
    """Which way a datagram or a byte travels through the proxy."""

    TO_SERVER = "client->server"
    TO_CLIENT = "server->client"


@dataclass(frozen=True)
class UdpFaults:
    """Fault probabilities (0 to 1) and delays (seconds) applied to each datagram, each way.

    The delay of each copy is `delay` plus a uniform draw in [-jitter, +jitter] (never below 0), as
    Linux's netem does; with jitter, datagrams overtake each other even without `reorder`.
    """

    loss: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    delay: float = 0.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        for name in ("loss", "dup", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                message = _("{name} must be a probability from 0 to 1, not {value!r}")
                raise ConfigError(message.format(name=name, value=value))
        if self.delay < 0 or self.jitter < 0:
            raise ConfigError(_("delay and jitter cannot be negative"))


@dataclass(frozen=True)
class TcpFaults:
    """What the TCP proxy does to the byte stream, each way. TCP itself still delivers every byte in
    order: these change only when and in what pieces the bytes arrive (or cut the connection).
    """

    delay: float = 0.0  # seconds added to the trip of every chunk
    jitter: float = 0.0  # seconds, uniform +-; never reorders bytes (a chunk waits for the one before)
    bandwidth: float = 0.0  # bytes per second each way; 0: no limit
    slice: int = 0  # write in pieces of at most this many bytes; 0: as they came
    reset_after: int = 0  # bytes forwarded on a connection, both ways together, before a RST; 0: never

    def __post_init__(self) -> None:
        if self.delay < 0 or self.jitter < 0:
            raise ConfigError(_("delay and jitter cannot be negative"))
        if self.bandwidth < 0 or self.slice < 0 or self.reset_after < 0:
            raise ConfigError(_("bandwidth, slice and reset-after cannot be negative"))


@dataclass(frozen=True)
class Departure:
    """One copy of a datagram to send, `delay` seconds from now."""

    data: bytes
    delay: float


@dataclass
class LinkCounters:
    """What the proxy did to the datagrams going one way (summed over clients by the proxy)."""

    received: int = 0  # datagrams that arrived
    forwarded: int = 0  # datagrams sent on (once or more)
    dropped: int = 0  # lost on purpose (--loss)
    duplicated: int = 0  # extra copies sent (--dup)
    reordered: int = 0  # held back and overtaken by the next datagram (--reorder)
    delayed: int = 0  # copies sent late (--delay)
    overflow: int = 0  # dropped because too many were waiting to be sent (bounded queue)
    bytes_received: int = 0

    def add(self, other: LinkCounters) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    def to_json(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Fate:
    """What became of one datagram, and what to send now because of it."""

    sends: tuple[Departure, ...]  # in order: this datagram's copies, then any it overtook
    lost: bool = False
    duplicated: bool = False
    held: bool = False  # kept back for reordering: it goes out after the next datagram
    overtook: bool = False  # went ahead of a datagram that was held back

    @property
    def delayed(self) -> bool:
        return any(d.delay > 0 for d in self.sends)


class FaultyLink:
    """One direction of one flow: datagrams in, the copies to send (with their delays) out.

    `reorder` holds a datagram back until the next one has gone ahead of it. When nothing follows, the
    caller releases it with `release_held()` after a short wait (it then arrives late but in order,
    and is not counted as reordered). A datagram that overtakes is never held itself.
    """

    def __init__(self, faults: UdpFaults, rng: random.Random) -> None:
        self.faults = faults
        self.counters = LinkCounters()
        self._rng = rng
        self._held: tuple[Departure, ...] = ()

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def push(self, datagram: bytes) -> Fate:
        """The fate of the next datagram."""
        f = self.faults
        random_ = self._rng.random
        # Always five draws, in this order: see the module docstring.
        lose, duplicate, reorder, delay1, delay2 = (random_() for _ in range(5))
        c = self.counters
        c.received += 1
        c.bytes_received += len(datagram)
        held, self._held = self._held, ()
        if lose < f.loss:
            c.dropped += 1
            return Fate(held, lost=True)
        copies: tuple[Departure, ...] = (Departure(datagram, self._delay(delay1)),)
        duplicated = duplicate < f.dup
        if duplicated:
            copies += (Departure(datagram, self._delay(delay2)),)
            c.duplicated += 1
        c.forwarded += 1
        c.delayed += sum(1 for d in copies if d.delay > 0)
        if held:
            # This datagram goes ahead of the one held back: that is the reordering.
            c.reordered += 1
            return Fate(copies + held, duplicated=duplicated, overtook=True)
        if reorder < f.reorder:
            self._held = copies
            return Fate((), duplicated=duplicated, held=True)
        return Fate(copies, duplicated=duplicated)

    def release_held(self) -> tuple[Departure, ...]:
        """The copies of the datagram held back for reordering, when no other came to overtake it."""
        held, self._held = self._held, ()
        return held

    def _delay(self, draw: float) -> float:
        f = self.faults
        if not f.jitter:
            return f.delay
        return max(0.0, f.delay + f.jitter * (2 * draw - 1))


@dataclass
class FaultPlan:
    """The seeded source of every `FaultyLink` of one proxy run.

    Each (direction, flow) pair gets its own random stream, derived from the seed: the fates of one
    client's datagrams do not depend on how its traffic interleaves with the answers or with other
    clients. Flows are numbered in order of arrival, from 0.
    """

    faults: UdpFaults
    seed: int = field(default_factory=lambda: random.SystemRandom().randrange(2**32))

    def link(self, direction: Direction, flow: int) -> FaultyLink:
        # A string seed is hashed with SHA-512 by random.Random, identically on every run and machine.
        rng = random.Random(f"{self.seed}/{direction.value}/{flow}")  # noqa: S311 - dice, not secrets
        return FaultyLink(self.faults, rng)


# --- options as people write them -------------------------------------------------------------------


def parse_probability(text: str) -> float:
    """`0.1`, `.1`, `10%` or `10 %` to a probability from 0 to 1."""
    s = text.strip()
    percent = s.endswith("%")
    try:
        value = float(s[:-1] if percent else s)
    except ValueError:
        raise ConfigError(_("not a probability: {text!r} (examples: 0.1, 10%)").format(text=text)) from None
    if percent:
        value /= 100
    if not 0.0 <= value <= 1.0:
        raise ConfigError(_("a probability must be from 0 to 1 (0% to 100%): {text!r}").format(text=text))
    return value


_PLUS_MINUS = re.compile(r"±|\+-|\+/-")


def parse_delay(text: str) -> tuple[float, float]:
    """`MS[±JITTER]` to (delay, jitter) in seconds: `50`, `50ms`, `50±10`, `50+-10`, `0.1s±20ms`.

    A bare number is milliseconds, here (unlike other durations), as in `ping` and `tc netem`.
    """
    parts = _PLUS_MINUS.split(text.strip())
    if len(parts) > 2 or not all(p.strip() for p in parts):
        raise ConfigError(_("not a delay: {text!r} (examples: 50, 50ms, 50±10, 50+-10)").format(text=text))
    delay, *jitter = (_milliseconds(p.strip()) for p in parts)
    return delay, (jitter[0] if jitter else 0.0)


def _milliseconds(text: str) -> float:
    try:
        value = float(text) / 1000
    except ValueError:
        return parse_duration(text)  # it carries a unit (and parse_duration takes no sign)
    if not value >= 0 or value == float("inf"):
        raise ConfigError(_("not a delay: {text!r} (examples: 50, 50ms, 50±10, 50+-10)").format(text=text))
    return value


def parse_bandwidth(text: str) -> float:
    """Bytes per second: `50000`, `64K`, `1MiB/s`, `10MB/s` (binary, like sizes) or `8Mbit/s` (bits,
    decimal, like links). A bare number is bytes per second."""
    s = text.strip()
    body = s[:-2].strip() if s.lower().endswith("/s") else s
    try:
        value = float(parse_size(body))
    except ConfigError:
        value = parse_rate(s).per_second  # bits per second, or a message saying what is accepted
    if value <= 0:
        raise ConfigError(_("a bandwidth must be above zero: {text!r}").format(text=text))
    return value
