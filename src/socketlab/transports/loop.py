"""Choosing the event loop: uvloop when it is installed, plain asyncio otherwise or when asked.

uvloop (libuv) is several times faster than asyncio's selector loop for many small reads and writes,
but it only has wheels for Unix-like systems; students on Windows get asyncio and the same behaviour.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from socketlab.errors import ConfigError
from socketlab.i18n import _

T = TypeVar("T")

LOOP_CHOICES = ("auto", "asyncio", "uvloop")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401, PLC0415 - importing is the only reliable test
    except ImportError:
        return False
    return True


def available_loops() -> tuple[str, ...]:
    """The concrete loops this machine can run: always "asyncio", "uvloop" when installed."""
    return ("asyncio", "uvloop") if has_uvloop() else ("asyncio",)


def resolve_loop(name: str) -> str:
    """ "auto" -> the best loop installed; "asyncio"/"uvloop" as asked (ConfigError if missing)."""
    if name == "auto":
        return "uvloop" if has_uvloop() else "asyncio"
    if name == "asyncio":
        return name
    if name == "uvloop":
        if not has_uvloop():
            raise ConfigError(_("uvloop is not installed here; use --loop asyncio (or auto)"))
        return name
    raise ConfigError(_("unknown event loop {name!r}: use auto, asyncio or uvloop").format(name=name))


def loop_factory(name: str) -> LoopFactory:
    """A function that makes a new event loop of the kind named (see `resolve_loop`)."""
    if resolve_loop(name) == "uvloop":
        import uvloop  # noqa: PLC0415 - optional, and only the server pays for importing it

        factory: LoopFactory = uvloop.new_event_loop
        return factory
    # The platform's own loop class, whatever event loop policy someone may have installed globally.
    return asyncio.DefaultEventLoopPolicy().new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """ "uvloop" or "asyncio", for log lines and benchmark records."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run(main: Coroutine[Any, Any, T], loop: str = "auto") -> T:
    """Run `main` to completion on a new loop of the kind named, then close that loop."""
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        return runner.run(main)
