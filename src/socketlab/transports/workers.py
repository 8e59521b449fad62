"""Several server processes on one port: `socketlab serve --workers N`.

The parent binds every listener, forks N workers and waits for them; each worker runs the ordinary
asyncio server (`run_server`) on sockets it inherited. Where the system has SO_REUSEPORT (Linux, the
BSDs, macOS) each worker gets sockets of its own on the shared port and the kernel spreads new
connections and UDP flows between them; elsewhere every worker serves the same inherited sockets
(accept races are harmless there: the loser of a race only sees EAGAIN).

Signals: workers run in a process group of their own, so a terminal's Ctrl-C reaches only the parent,
which passes each SIGINT or SIGTERM on to every worker as SIGTERM. The first makes each worker stop
gracefully (answer what it received, within --grace); a second ends them at once, exactly as for a
single server.

POSIX only (it needs fork); the CLI refuses --workers above 1 elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType

from socketlab.config import ServerConfig
from socketlab.errors import ConfigError
from socketlab.i18n import _
from socketlab.transports.binding import open_listening_sockets
from socketlab.transports.server import BoundListener, OnListening, run_server

SocketSets = list[list[list[socket.socket]]]
"""For each worker, for each listener of the config, its bound sockets."""

# The exit status a worker reports when a second signal cut its grace period short (as a single
# server's CLI does: 128 + SIGINT).
FORCED_EXIT = 130
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


def can_fork() -> bool:
    return hasattr(os, "fork")


def bind_for_workers(config: ServerConfig, count: int) -> SocketSets:
    """Bind every listener once per worker with SO_REUSEPORT, or once for all where it is missing."""
    reuse = count > 1 and hasattr(socket, "SO_REUSEPORT")
    sets: SocketSets = []
    try:
        first = [
            open_listening_sockets(lst.proto, lst.host, lst.port, reuse_port=reuse)
            for lst in config.listeners
        ]
        sets.append(first)
        if not reuse:
            return [first] * count
        for _worker in range(count - 1):
            # The same port as the first set, which may have been picked by the kernel (port 0).
            sets.append(
                [
                    open_listening_sockets(lst.proto, lst.host, socks[0].getsockname()[1], reuse_port=True)
                    for lst, socks in zip(config.listeners, first, strict=True)
                ]
            )
    except BaseException:
        close_all(sets)
        raise
    return sets


def close_all(sets: SocketSets) -> None:
    for listener_sets in sets:
        for socks in listener_sets:
            for sock in socks:
                sock.close()


def run_workers(
    config: ServerConfig,
    count: int,
    *,
    on_listening: OnListening | None = None,
    in_worker: Callable[[], None] | None = None,
) -> int:
    """Serve `config` from `count` processes until a signal; return the worst worker exit status.

    `in_worker` runs first thing in each worker (the CLI sets up its log output there: threads of the
    parent do not survive fork). Raises `BindError` before any worker starts if a port cannot be had.
    """
    if not can_fork():
        raise ConfigError(_("--workers above 1 needs fork(), which this system does not have"))
    sets = bind_for_workers(config, count)
    bound = [
        BoundListener(listener, tuple((s.getsockname()[0], s.getsockname()[1]) for s in socks))
        for listener, socks in zip(config.listeners, sets[0], strict=True)
    ]
    sys.stdout.flush()  # else what is buffered would be written once more by every worker
    sys.stderr.flush()
    pids: list[int] = []
    parent = os.getpid()
    # Signals wait until every worker exists and the parent's handler is in place; otherwise a Ctrl-C
    # in between would stop the parent and leave workers serving in their own process group.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        for worker_socks in sets:
            pid = os.fork()
            if pid == 0:
                _worker_main(config, worker_socks, sets, in_worker, parent)  # never returns
            pids.append(pid)
    except BaseException:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)  # workers of a start that failed half-way: nothing to keep
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        raise
    finally:
        close_all(sets)  # the workers hold their own copies
    # Announced once every worker exists: the sockets listen already, so no client is turned away.
    if on_listening is not None:
        for b in bound:
            on_listening(b.proto, b.service, b.host, b.port)
    return _wait(pids)


def _stop_with_parent(parent: int) -> None:
    """Linux: a SIGTERM when the parent dies, however it dies (kill -9 included).

    Workers live in their own process group, so nothing else would ever stop them: without this, a
    parent killed outright would leave servers running that nobody knows about.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes  # noqa: PLC0415 - only workers on Linux need it

    pr_set_pdeathsig = 1  # from <sys/prctl.h>
    with contextlib.suppress(OSError, AttributeError):  # no libc prctl: the parent's signals still work
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _worker_main(
    config: ServerConfig,
    socks: list[list[socket.socket]],
    sets: SocketSets,
    in_worker: Callable[[], None] | None,
    parent: int,
) -> None:
    code = 1
    try:
        os.setpgid(0, 0)  # out of the terminal's group: Ctrl-C goes to the parent, which passes it on
        _stop_with_parent(parent)
        # The parent's way of handling signals is not the worker's: back to Python's defaults until
        # the server installs its own, then let the signals blocked around fork() through.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        # Other workers' sockets (with SO_REUSEPORT each has its own set; without, all share one).
        close_all([other for other in sets if other is not socks])
        if in_worker is not None:
            in_worker()
        result = run_server(config, sockets=socks)
        code = FORCED_EXIT if result.forced else 0
    except KeyboardInterrupt:
        code = FORCED_EXIT
    finally:
        with contextlib.suppress(Exception):  # flushing a closed or broken stream must not stop the exit
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)  # never run the parent's cleanup (atexit, finally blocks) a second time


def _wait(pids: list[int]) -> int:
    live = set(pids)

    def forward(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        for pid in live:
            with contextlib.suppress(ProcessLookupError):  # it has just exited on its own
                os.kill(pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    worst = 0
    try:
        while live:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            if pid in live:
                live.discard(pid)
                worst = max(worst, os.waitstatus_to_exitcode(status) & 0xFF)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return worst
