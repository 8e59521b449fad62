"""Sizes, durations and rates: exact values, round trips, and garbage that raises only ConfigError."""

from __future__ import annotations

import contextlib
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from socketlab.errors import ConfigError
from socketlab.units import (
    Rate,
    format_size,
    parse_duration,
    parse_rate,
    parse_size,
    parse_size_list,
    size_range,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("4096", 4096),
        ("4K", 4096),
        ("4k", 4096),
        ("4KB", 4096),
        ("4KiB", 4096),
        (" 64K ", 65536),
        ("1.5M", 1536 * 1024),
        ("1G", 1024**3),
        ("64b", 64),
        ("64 B", 64),
        (".5K", 512),
    ],
)
def test_sizes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "K", "4X", "-1", "1.1", "4ib", "1e3", "4KK", "1..2", "nan"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_size(text)


def test_lists_and_ranges() -> None:
    assert parse_size_list("1..64K") == [2**i for i in range(17)]
    assert parse_size_list("4K,64K,1M") == [4096, 65536, 1024**2]
    assert parse_size_list("1..8,4,16") == [1, 2, 4, 8, 16]  # order kept, repeats dropped
    assert parse_size_list("3..20") == [3, 6, 12]  # doubling from the first, up to the last
    for bad in ("", "4K,", "8..4", "0..4", "1..1G,x"):
        with pytest.raises(ConfigError):
            parse_size_list(bad)


@given(st.integers(min_value=0, max_value=2**50))
def test_format_size_round_trips(n: int) -> None:
    assert parse_size(format_size(n)) == n


@given(st.integers(min_value=0, max_value=10**9), st.sampled_from(["", "K", "M", "G", "KiB", "MB"]))
def test_units_multiply(n: int, unit: str) -> None:
    factor = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "KiB": 1024, "MB": 1024**2}[unit]
    assert parse_size(f"{n}{unit}") == n * factor


@given(st.integers(min_value=1, max_value=2**20), st.integers(min_value=0, max_value=20))
def test_ranges_double_from_the_start(low: int, steps: int) -> None:
    high = low * 2**steps
    values = size_range(low, high)
    assert values[0] == low
    assert values[-1] == high
    assert len(values) == steps + 1
    assert all(b == 2 * a for a, b in itertools.pairwise(values))


@given(st.text(max_size=20))
def test_garbage_raises_only_config_error(text: str) -> None:
    for parse in (parse_size, parse_size_list, parse_duration, parse_rate):
        with contextlib.suppress(ConfigError):
            parse(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1", 1.0), ("1s", 1.0), ("0.5s", 0.5), ("250ms", 0.25), ("50us", 50e-6), ("2min", 120.0), ("0", 0.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "1h", "-1s", "1 sec", "ms"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text)


def test_rates() -> None:
    assert parse_rate("20000") == Rate(20000, "datagrams")
    assert parse_rate("20000/s") == Rate(20000, "datagrams")
    assert parse_rate("10MB/s") == Rate(10 * 1024**2, "bytes")
    assert parse_rate("512KiB/s") == Rate(512 * 1024, "bytes")
    assert parse_rate("100Mbit/s") == Rate(12_500_000, "bytes")  # links are decimal, in bits
    assert parse_rate("1MB/s").datagrams_per_second(1024) == 1024
    for bad in ("0", "-5", "inf", "10M/s", "fast", "0MB/s"):
        with pytest.raises(ConfigError):
            parse_rate(bad)


def test_durations_are_finite() -> None:
    with pytest.raises(ConfigError):
        parse_duration("9" * 400 + "s")
