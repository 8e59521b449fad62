"""The UDP server's per-datagram loop: what a `UdpThread` runs for every datagram, and nothing else.

In a module of its own so the build can compile it with mypyc (see compiled.py); compiled, the Python
between `recvfrom` and `sendto` costs less, which the C reference server comparison of issue 4 measures
(docs/performance.md, "What each optimisation bought"). So this file must stay valid for mypyc: fully
typed, and no imports from socketlab (the build compiles it alone): the thread and its endpoint come in
as Any, and what the loop needs of them is written below.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from typing import Any, Final

# Larger than any datagram: one over IPv4 carries at most 65,507 bytes.
RECEIVE_SIZE: Final = 65_536
# A full send buffer drops the answer instead of blocking the thread (Windows has no such flag, and its
# UDP sends do not block: the stack drops the datagram itself).
SEND_FLAGS: Final[int] = getattr(socket, "MSG_DONTWAIT", 0)
# recvfrom on a socket closed under it: the thread is done.
CLOSED_ERRNOS: Final = frozenset({errno.EBADF, errno.ENOTSOCK})


def serve(thread: Any) -> None:
    """Receive, answer and send until `thread._stopping` is set.

    Of `thread` (a UdpThread) it uses `sock`, `endpoint`, `_stopping` and `crashed()`; of the endpoint
    (a UdpEndpoint), `fast_path()`, `answer(data, addr)`, `error_received(exc)` and `send_drops`.
    """
    endpoint = thread.endpoint
    receive: Callable[[int], tuple[bytes, Any]] = thread.sock.recvfrom
    sendto: Callable[[bytes, int, Any], int] = thread.sock.sendto
    answer_for: Callable[[bytes, Any], bytes | None] = endpoint.answer
    flags = SEND_FLAGS
    # The endpoint's fast path (udp_server.FastPath). Without one nobody is vetted, so the test below
    # always fails and `answer` decides.
    fast = endpoint.fast_path()
    vetted: set[Any] = set() if fast is None else fast.vetted
    bad_ports: frozenset[int] = frozenset() if fast is None else fast.bad_ports
    answer_ascii: Callable[[bytes], bytes | None] = bytes.upper if fast is None else fast.answer_ascii
    while True:
        try:
            data, addr = receive(RECEIVE_SIZE)
        except OSError as exc:
            if thread._stopping or exc.errno in CLOSED_ERRNOS:
                return
            # Windows reports an ICMP "port unreachable" for an earlier answer on the next recvfrom.
            endpoint.error_received(exc)
            continue
        if thread._stopping:
            return  # the wake-up datagram, or one that arrived after the listener was closed
        try:
            if addr[0] in vetted and addr[1] not in bad_ports and data.isascii():
                answer = answer_ascii(data)
                if answer is not None and len(answer) <= len(data):
                    sendto(answer, flags, addr)
                    continue
            answer = answer_for(data, addr)
            if answer is not None:
                sendto(answer, flags, addr)
        except BlockingIOError:
            endpoint.send_drops += 1  # the send buffer is full: UDP may lose it, the client retries
        except OSError as exc:
            endpoint.error_received(exc)  # e.g. an answer too big for one datagram
        except Exception:  # noqa: BLE001 - one bad datagram must not end the listener; crashed() logs it
            thread.crashed()
