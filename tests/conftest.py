"""Shared test helpers: every network test binds 127.0.0.1:0 or [::1]:0 and has a hard timeout."""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Several tests press Ctrl-C on a subprocess (SIGINT), as a user would at a terminal. A shell starts a
# background job (`bash .ci/run &`, some CI runners) with SIGINT ignored, every process it starts
# inherits that, and a Python started that way honours it: no KeyboardInterrupt, and those tests hang.
# A handler of our own here is reset to the default in each subprocess, as at a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def has_ipv6() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


HAS_IPV6 = has_ipv6()
needs_ipv6 = pytest.mark.skipif(not HAS_IPV6, reason="this machine has no IPv6 loopback (::1)")


@pytest.fixture
def socketlab_cmd() -> list[str]:
    """How a user runs socketlab, as a subprocess of this interpreter."""
    return [sys.executable, "-m", "socketlab"]


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """The environment for CLI subprocesses: English messages, unbuffered output."""
    env = dict(os.environ)
    env.update({"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONUNBUFFERED": "1"})
    env.pop("LANGUAGE", None)
    return env
