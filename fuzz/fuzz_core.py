"""Coverage-guided fuzzing of the sans-IO core with atheris (libFuzzer for Python).

Every input is cut into a service, a line limit, a payload and split points; the properties are the
ones the hypothesis tests state, searched for by coverage instead of by chance:
- any split of the stream gives the same answers as one chunk (TCP sessions), also when the pieces
  go through the fast-path contract of core/session.py as the asyncio transport does;
- nothing raises but our own errors, for streams and for datagrams;
- the answer to a datagram is never None for a service that answers, and upper keeps line counts.

    python fuzz/fuzz_core.py -runs=100000            # a bounded run
    python fuzz/fuzz_core.py -max_total_time=600     # ten minutes
A crash writes the input to crash-<sha1> in the current directory; rerun with that file to reproduce.
"""

from __future__ import annotations

import itertools
import sys

import atheris

with atheris.instrument_imports():
    from socketlab.core.services import make_service
    from socketlab.core.session import StreamSession

SERVICES = ["upper", "ack", "echo", "discard"]


def answers(service: str, max_line: int, chunks: list[bytes], contract: bool = False) -> tuple[bytes, bool]:
    session = StreamSession(make_service(service), max_line)
    out = b"".join(by_contract(session, c) if contract else session.receive_data(c) for c in chunks)
    return out + session.end_of_input(), session.closing


def by_contract(session: StreamSession, chunk: bytes) -> bytes:
    if chunk and len(chunk) <= session.fast_limit and chunk[-1] == 0x0A and chunk.isascii():
        return session.answer_ascii(chunk)
    return session.receive_data(chunk)


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    service = fdp.PickValueInList(SERVICES)
    max_line = fdp.ConsumeIntInRange(1, 64)
    cuts = sorted({fdp.ConsumeIntInRange(0, 512) for _ in range(fdp.ConsumeIntInRange(0, 8))})
    payload = fdp.ConsumeBytes(fdp.remaining_bytes())
    points = [0, *(c for c in cuts if c < len(payload)), len(payload)]
    pieces = [payload[a:b] for a, b in itertools.pairwise(points)]
    whole = answers(service, max_line, [payload])
    split = answers(service, max_line, pieces)
    if whole != split:
        raise AssertionError(f"{service}: one chunk {whole!r} but split {split!r}")
    fast = answers(service, max_line, pieces, contract=True)
    if fast != split:
        raise AssertionError(f"{service}: fast path {fast!r} but receive_data {split!r}")
    answer = make_service(service).answer_datagram(payload)
    if service != "discard" and answer is None:
        raise AssertionError(f"{service} did not answer a datagram")
    if service == "upper" and answer is not None and answer.count(b"\n") != payload.count(b"\n"):
        raise AssertionError("upper changed the number of lines")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
