"""argparse types shared by every subcommand: a bad value is a usage error (exit 2) with one clear line.

Sizes and durations follow socketlab.units (`16K`, `1M`, `250ms`, `2min`), imported only when an
option is parsed, so `socketlab client` keeps its start-up lean.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from socketlab.errors import ConfigError
from socketlab.i18n import _


def checked(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a parser that raises ConfigError."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__  # argparse names the type in its message
    return convert


def size(text: str) -> int:
    """Bytes: `16384`, `16K`, `16KiB`, `1M` (see socketlab.units)."""
    from socketlab.units import parse_size  # noqa: PLC0415 - start-up time

    return int(checked(parse_size)(text))


def positive_size(text: str) -> int:
    """A size that must be at least one byte (a limit where 0 would mean nothing can pass)."""
    value = size(text)
    if value < 1:
        raise argparse.ArgumentTypeError(_("must be at least 1 byte: {text!r}").format(text=text))
    return value


def duration(text: str) -> float:
    """Seconds: `30`, `1.5`, `250ms`, `2min` (see socketlab.units)."""
    from socketlab.units import parse_duration  # noqa: PLC0415 - start-up time

    return float(checked(parse_duration)(text))


def _port_number(text: str, lowest: int) -> int:
    try:
        port = int(text, 10)
    except ValueError:
        port = -1
    if not lowest <= port <= 65535:
        message = (
            _("not a port number (0-65535; 0 picks a free one): {text!r}")
            if lowest == 0
            else _("not a port number (1-65535): {text!r}")
        )
        raise argparse.ArgumentTypeError(message.format(text=text))
    return port


def listen_port(text: str) -> int:
    """A port to listen on: 0 lets the system pick a free one."""
    return _port_number(text, 0)


def remote_port(text: str) -> int:
    """A port to connect to: 1 to 65535."""
    return _port_number(text, 1)


def at_least(minimum: int) -> Callable[[str], int]:
    """A whole number of at least `minimum`."""

    def whole_number(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            message = _("not a whole number of at least {minimum}: {text!r}")
            raise argparse.ArgumentTypeError(message.format(minimum=minimum, text=text))
        return value

    return whole_number
