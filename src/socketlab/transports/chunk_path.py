"""The TCP server's per-chunk path: what runs for every chunk a client sends, and nothing else.

`TcpConnection` (tcp_server.py) inherits `data_received` from `ChunkPath`. It is in a module of its own
so the build can compile it with mypyc (compiled.py says how the compiled copy is chosen, and
`tcp_server.CHUNK_PATH` which one runs). Compiled, one 64-byte chunk costs about 95 ns instead of 130 ns,
as little as the minimal uvloop server's one-line method (docs/performance.md, "What each optimisation
bought").

So this file must stay valid for mypyc: fully typed, no imports from socketlab (the build compiles it
alone), attributes declared here with their types. `allow_interpreted_subclasses` is what lets the
Python class TcpConnection inherit from the compiled one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mypy_extensions import mypyc_attr


@mypyc_attr(allow_interpreted_subclasses=True)
class ChunkPath:
    """`data_received` under the session's fast-path contract (core/session.py); the subclass sets
    every attribute below before the first chunk and supplies `_refuse`."""

    __slots__ = ("_answer_ascii", "_fast_limit", "_session", "_transport", "quiet")

    _answer_ascii: Callable[[bytes], bytes]  # the session's answer_ascii
    # A copy of session.fast_limit, so the per-chunk test touches this object only (one object less in
    # the CPU's cache per chunk); the session changes it only in receive_data and stop, and the copy is
    # taken again after each.
    _fast_limit: int
    _session: Any  # StreamSession; Any because this module is compiled without the rest of socketlab
    _transport: Any  # asyncio.Transport, or uvloop's look-alike
    quiet: int  # idle sweeps since the client last showed life

    def data_received(self, data: bytes) -> None:
        self.quiet = 0
        # asyncio never hands over an empty chunk, so data[-1] is safe.
        if len(data) <= self._fast_limit and data[-1] == 0x0A and data.isascii():
            self._transport.write(self._answer_ascii(data))
            return
        session = self._session
        answer: bytes = session.receive_data(data)
        self._fast_limit = session.fast_limit
        if answer:
            self._transport.write(answer)
            if session.closing:
                self._refuse()

    def _refuse(self) -> None:
        """The session refused the client (a line too long): say why and close. The subclass's job."""
        raise NotImplementedError
