"""Sizes, durations and rates written the way people write them: `4K`, `1..64K`, `250ms`, `10MB/s`.

Pure functions from text to numbers, shared by every tool that takes such arguments. No I/O, and every
bad input raises `ConfigError` (never ValueError), so the CLI turns any of them into one usage message.

Sizes are binary, as the kernel counts socket buffers: K = 1024, M = 1024², G = 1024³ (`K`, `KB`,
`KiB` all mean the same). Link rates in bits are decimal, as network links are sold and `tc` reads
them: `10Mbit/s` is 10,000,000 bits per second.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from socketlab.errors import ConfigError
from socketlab.i18n import _

SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
BIT_PREFIXES = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3}
DURATION_UNITS = {
    u: Decimal(v)
    for u, v in (("ns", "1e-9"), ("us", "1e-6"), ("µs", "1e-6"), ("ms", "1e-3"), ("s", "1"), ("min", "60"))
}
# A range `A..B` doubles from A; more points than this is a typing mistake, not a sweep.
MAX_RANGE_POINTS = 64

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_SIZE = re.compile(_NUMBER + r"\s*(?:([kmg])(?:i?b)?|b)?", re.IGNORECASE)
_DURATION = re.compile(_NUMBER + r"\s*(ns|us|µs|ms|s|min)?", re.IGNORECASE)
_BITS = re.compile(_NUMBER + r"\s*([kmg]?)bit(?:/s)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """`4096`, `4K`, `4KiB`, `1.5M`, `64b` to bytes. The result must be a whole number of bytes."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise ConfigError(_("not a size: {text!r} (examples: 512, 4K, 64KiB, 1.5M)").format(text=text))
    # Decimal, not float: `1.1M` must be exact or refused, never rounded to a nearby byte count.
    value = Decimal(m.group(1)) * SIZE_UNITS[(m.group(2) or "").lower()]
    if value != value.to_integral_value():
        raise ConfigError(_("not a whole number of bytes: {text!r}").format(text=text))
    return int(value)


def format_size(n: int) -> str:
    """The shortest exact spelling of a byte count: 65536 -> `64K`, 1000 -> `1000`."""
    for suffix, factor in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{suffix}"
    return str(n)


def parse_size_list(text: str) -> list[int]:
    """`4K,64K,1M` or ranges `1..64K` (doubling from the first: 1, 2, 4, ... 64K), mixed freely.

    Order is kept and repeats are dropped, so `1..8,4` is [1, 2, 4, 8].
    """
    out: list[int] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            raise ConfigError(_("empty item in size list {text!r}").format(text=text))
        if ".." in item:
            low_text, _dots, high_text = item.partition("..")
            values = size_range(parse_size(low_text), parse_size(high_text))
        else:
            values = [parse_size(item)]
        out.extend(v for v in values if v not in out)
    return out


def size_range(low: int, high: int) -> list[int]:
    """low, 2·low, 4·low, ... up to and including high when it falls on the doubling."""
    if low <= 0:
        raise ConfigError(_("a range must start above 0, not {low}").format(low=low))
    if high < low:
        raise ConfigError(
            _("a range must not go down: {low}..{high}").format(low=format_size(low), high=format_size(high))
        )
    values = []
    v = low
    while v <= high:
        values.append(v)
        if len(values) > MAX_RANGE_POINTS:
            raise ConfigError(
                _("range {low}..{high} has too many points").format(
                    low=format_size(low), high=format_size(high)
                )
            )
        v *= 2
    return values


def parse_duration(text: str) -> float:
    """`1`, `1s`, `250ms`, `50us`, `2min` to seconds; a bare number is seconds. Never negative."""
    m = _DURATION.fullmatch(text.strip())
    if m is None:
        raise ConfigError(_("not a duration: {text!r} (examples: 1, 0.5s, 250ms, 50us)").format(text=text))
    unit = (m.group(2) or "s").lower()
    seconds = float(Decimal(m.group(1)) * DURATION_UNITS[unit])
    if not math.isfinite(seconds):
        raise ConfigError(_("duration too long: {text!r}").format(text=text))
    return seconds


def format_duration(seconds: float) -> str:
    """Seconds for people, in the unit that gives 1 to 999 of it: 0.00025 -> `250us`."""
    if seconds >= 1 or seconds == 0:
        return f"{seconds:.3g}s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g}ms"
    return f"{seconds * 1e6:.3g}us"


@dataclass(frozen=True)
class Rate:
    """A sending rate: so many datagrams, or so many bytes, per second."""

    per_second: float
    unit: Literal["datagrams", "bytes"]

    def datagrams_per_second(self, datagram_size: int) -> float:
        if self.unit == "datagrams":
            return self.per_second
        return self.per_second / datagram_size


def parse_rate(text: str) -> Rate:
    """A rate: `20000` or `20000/s` datagrams per second; `10MB/s`, `512KiB/s` bytes per second
    (binary, like sizes); `100Mbit/s` bits per second (decimal, like links)."""
    s = text.strip()
    m = _BITS.fullmatch(s)
    if m is not None:
        bits = float(m.group(1)) * BIT_PREFIXES[m.group(2).lower()]
        return _positive(Rate(bits / 8, "bytes"), text)
    body = s[:-2] if s.lower().endswith("/s") else s
    body = body.strip()
    if body and body[-1] in "bB":
        return _positive(Rate(float(parse_size(body)), "bytes"), text)
    try:
        value = float(body)
    except ValueError:
        raise ConfigError(
            _("not a rate: {text!r} (examples: 20000 datagrams/s, 10MB/s, 100Mbit/s)").format(text=text)
        ) from None
    return _positive(Rate(value, "datagrams"), text)


def _positive(rate: Rate, text: str) -> Rate:
    if not (math.isfinite(rate.per_second) and rate.per_second > 0):
        raise ConfigError(_("a rate must be above zero: {text!r}").format(text=text))
    return rate


def format_rate(bytes_per_second: float) -> str:
    """Throughput for people, in bytes per second with binary prefixes: `1.23 GiB/s`."""
    value = bytes_per_second
    for prefix in ("", "Ki", "Mi", "Gi"):
        if abs(value) < 1024 or prefix == "Gi":
            return f"{value:.3g} {prefix}B/s" if prefix else f"{value:.3g} B/s"
        value /= 1024
    raise AssertionError("unreachable")
