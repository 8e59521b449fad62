"""A slow medium for `socketlab speed --netns`: the receiver in a network namespace behind a veth pair.

Loopback has no medium, so buffers there only ever sit in front of the receiving application. With
`--netns RATE` the receiver runs in a network namespace of its own, joined to this one by a veth pair
(a virtual Ethernet cable) whose sending side is limited to RATE by a token bucket (`tc qdisc tbf`)
and, with a delay, whose return side holds every packet (ACKs included) that long (`tc qdisc netem`),
so the path has a round-trip time. The sender stays in this process and namespace.

Needs Linux, root (CAP_NET_ADMIN) and the `ip` and `tc` programs; `unavailable_reason()` says why not
otherwise. Everything created is named after this process and removed on exit, even after an error.
The addresses are a /30 of the link-local 169.254.0.0/16 chosen from the process id, away from the
169.254.169.0/24 that clouds use for metadata.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from socketlab.errors import ConfigError, TransportError
from socketlab.i18n import _
from socketlab.tools.speed.model import Link

# The token bucket's queue: what the "router" in front of the link may hold (tc's own example value).
QUEUE_LATENCY_MS = 50
COMMAND_TIMEOUT = 10.0


@dataclass(frozen=True)
class Namespace:
    name: str
    sender_address: str
    receiver_address: str

    @property
    def exec_prefix(self) -> list[str]:
        """Run a command inside the receiver's namespace."""
        return ["ip", "netns", "exec", self.name]


def unavailable_reason(
    platform: str = sys.platform,
    euid: int | None = None,
    which: Callable[[str], str | None] = shutil.which,
) -> str | None:
    """Why --netns cannot run here, or None if it can."""
    if not platform.startswith("linux"):
        return "--netns needs Linux network namespaces"
    uid = os.geteuid() if euid is None else euid
    if uid != 0:
        return "--netns needs root (CAP_NET_ADMIN) to create namespaces and links"
    missing = [tool for tool in ("ip", "tc") if which(tool) is None]
    if missing:
        return f"--netns needs the {' and '.join(missing)} program(s) (package iproute2)"
    return None


def _run(args: list[str]) -> None:
    try:
        subprocess.run(args, check=True, capture_output=True, timeout=COMMAND_TIMEOUT)
    except subprocess.CalledProcessError as exc:
        detail = exc.stderr.decode(errors="replace").strip()
        if "qdisc kind is unknown" in detail:
            detail += f" (this kernel lacks the sch_{args[args.index('root') + 1]} module)"
        raise TransportError(
            _("--netns: {command} failed: {detail}").format(command=" ".join(args), detail=detail)
        ) from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TransportError(
            _("--netns: {command} failed: {reason}").format(command=" ".join(args), reason=exc)
        ) from None


def _burst_bytes(rate_bits: int) -> int:
    # tbf needs a bucket of at least one timer tick's worth of bytes (HZ is 100 to 1000) and more
    # than one full-size frame, or it cannot reach its rate.
    return max(rate_bits // 8 // 100, 10 * 1514)


@contextmanager
def slow_link(link: Link) -> Iterator[Namespace]:
    """Create the namespace, the veth pair and the qdiscs; yield the addresses; remove it all."""
    reason = unavailable_reason()
    if reason is not None:
        raise ConfigError(reason)
    pid = os.getpid()
    name = f"socketlab-speed-{pid}"
    here, there = f"slsp{pid % 10**9}a", f"slsp{pid % 10**9}b"  # interface names: 15 bytes at most
    block = pid % (64 * 100)  # 100 third octets x 64 subnets of 4 addresses
    third, fourth = 64 + block // 64, (block % 64) * 4
    ns = Namespace(name, f"169.254.{third}.{fourth + 1}", f"169.254.{third}.{fourth + 2}")
    created_ns = created_link = False
    try:
        _run(["ip", "netns", "add", name])
        created_ns = True
        _run(["ip", "link", "add", here, "type", "veth", "peer", "name", there])
        created_link = True
        _run(["ip", "link", "set", there, "netns", name])
        _run(["ip", "addr", "add", f"{ns.sender_address}/30", "dev", here])
        _run(["ip", "link", "set", here, "up"])
        _run(["ip", "-n", name, "addr", "add", f"{ns.receiver_address}/30", "dev", there])
        _run(["ip", "-n", name, "link", "set", there, "up"])
        _run(["ip", "-n", name, "link", "set", "lo", "up"])
        _run(
            ["tc", "qdisc", "add", "dev", here, "root", "tbf", "rate", f"{link.rate_bits}bit",
             "burst", str(_burst_bytes(link.rate_bits)), "latency", f"{QUEUE_LATENCY_MS}ms"]
        )  # fmt: skip
        if link.delay > 0:
            # On the way back only: delaying data on the sender's side would hold its packets in
            # this host's queue, where TCP Small Queues counts them and throttles the sender.
            _run(
                [
                    "tc",
                    "-n",
                    name,
                    "qdisc",
                    "add",
                    "dev",
                    there,
                    "root",
                    "netem",
                    "delay",
                    f"{link.delay * 1e3:g}ms",
                ]
            )
        yield ns
    finally:
        if created_link:
            subprocess.run(
                ["ip", "link", "del", here], capture_output=True, timeout=COMMAND_TIMEOUT, check=False
            )
        if created_ns:
            subprocess.run(
                ["ip", "netns", "del", name], capture_output=True, timeout=COMMAND_TIMEOUT, check=False
            )
