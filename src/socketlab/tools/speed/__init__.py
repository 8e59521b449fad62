"""`socketlab speed`: what socket buffer sizes and send()/recv() sizes do to transmission speed.

One-way bulk transfers, TCP or UDP, from a sender in this process to a receiver in a child process on
loopback (or to a remote `discard` server), swept over SO_SNDBUF, SO_RCVBUF and the chunk size, with
the latency of small probes sent behind the bulk data. Library code: it never prints; the CLI
(`socketlab.cli.speed`) reports, and `plot` draws, what `run_speed` returns.

    model   the settings and the results, and their JSON form
    ends    the send and receive loops (the only code that touches the sockets' data)
    runner  the receiver process and the sweep
    netns   the optional slow medium: a namespace behind a rate-limited veth pair (Linux, root)
    plot    matplotlib figures (imports matplotlib; only the CLI's --plot imports this module)
"""

from socketlab.tools.speed.model import (
    SCHEMA,
    BufferSize,
    Link,
    Point,
    PointResult,
    RunResult,
    SpeedConfig,
    SpeedResult,
    UdpCounts,
    make_points,
)
from socketlab.tools.speed.runner import new_result, run_speed

__all__ = [
    "SCHEMA",
    "BufferSize",
    "Link",
    "Point",
    "PointResult",
    "RunResult",
    "SpeedConfig",
    "SpeedResult",
    "UdpCounts",
    "make_points",
    "new_result",
    "run_speed",
]
