"""The services a socketlab server offers, as pure functions of the bytes received.

A service answers a block of complete lines (stream transports), or one datagram (UDP). It never sees
a socket: the same object serves asyncio, the teaching models and the tests.

- upper:   each line in upper case, terminator kept (the lecture's TCPServer/UDPServer)
- echo:    RFC 862, every byte back as it came, no framing
- ack:     each line answered with "ok" plus its own terminator (the lecture's first Python server)
- discard: RFC 863, read and drop everything
- package.module:function, a user's `str -> str` applied to each line (or datagram)
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

from socketlab.core.framing import content_length, split_lines
from socketlab.core.text import decode, encode, upper_bytes
from socketlab.errors import ConfigError

ErrorReporter = Callable[[bytes, BaseException], None]
"""Called with the request and the exception when a user's function fails on it."""

ERR_LINE_TOO_LONG = b"ERR line too long\n"


class Service(ABC):
    """What a server does with the bytes a client sends."""

    name: ClassVar[str]
    framed: ClassVar[bool] = True
    """True: the stream is split into lines and `answer_block` answers whole lines. False: every
    chunk goes to `answer_stream` as it arrives."""

    def answer_block(self, block: bytes) -> bytes:
        """Answer one or more complete lines (at end of input the last may lack its LF)."""
        return self.answer_stream(block)

    def answer_stream(self, data: bytes) -> bytes:
        """Answer raw stream bytes; only unframed services are called this way."""
        return self.answer_block(data)

    def ascii_block_function(self) -> Callable[[bytes], bytes]:
        """A callable that answers a block of ASCII bytes exactly as `answer_block` does.

        `StreamSession` calls it for every chunk of ASCII lines, the common case. A service that has
        a C function for that case returns it: one Python call less per chunk is a measurable share
        of a server's time (docs/performance.md).
        """
        return self.answer_block

    @abstractmethod
    def answer_datagram(self, data: bytes) -> bytes | None:
        """Answer one datagram with one datagram, or None for no answer."""

    def ascii_datagram_function(self) -> Callable[[bytes], bytes | None]:
        """A callable that answers an ASCII datagram exactly as `answer_datagram` does.

        The UDP transports call it for every ASCII datagram; as with `ascii_block_function`, a
        service with a C function for that case returns it.
        """
        return self.answer_datagram


class Upper(Service):
    name = "upper"

    def answer_block(self, block: bytes) -> bytes:
        return upper_bytes(block)

    def ascii_block_function(self) -> Callable[[bytes], bytes]:
        return bytes.upper  # what upper_bytes does with ASCII, without its Python call

    def ascii_datagram_function(self) -> Callable[[bytes], bytes | None]:
        return bytes.upper

    def answer_datagram(self, data: bytes) -> bytes | None:
        # Nothing added: the Java UDPClient sends no newline and must get none back.
        return upper_bytes(data)


class Echo(Service):
    name = "echo"
    framed = False

    def answer_stream(self, data: bytes) -> bytes:
        return data

    def answer_datagram(self, data: bytes) -> bytes | None:
        return data


class Discard(Service):
    name = "discard"
    framed = False

    def answer_stream(self, data: bytes) -> bytes:
        return b""

    def answer_datagram(self, data: bytes) -> bytes | None:
        return None


def _terminator(line: bytes) -> bytes:
    return line[content_length(line) :]


class Ack(Service):
    name = "ack"

    def answer_block(self, block: bytes) -> bytes:
        if b"\r" not in block:
            answer = b"ok\n" * block.count(b"\n")
            return answer if block.endswith(b"\n") else answer + b"ok"
        return b"".join(b"ok" + _terminator(line) for line in split_lines(block))

    def answer_datagram(self, data: bytes) -> bytes | None:
        return b"ok" + _terminator(data)


class Function(Service):
    """A user's `str -> str` function, applied to each line without its terminator."""

    name = "function"

    def __init__(self, spec: str, func: Callable[[str], str], report: ErrorReporter | None = None) -> None:
        self.spec = spec
        self.func = func
        self.report = report

    def _apply(self, request: bytes) -> bytes:
        try:
            result = self.func(decode(request))
            if not isinstance(result, str):
                raise TypeError(f"{self.spec} returned {type(result).__name__}, not str")
        except Exception as exc:  # noqa: BLE001 - any failure of user code answers that request only
            if self.report is not None:
                self.report(request, exc)
            return f"ERR {type(exc).__name__}: {exc}".replace("\n", " ").encode("utf-8", "replace")
        return encode(result)

    def answer_block(self, block: bytes) -> bytes:
        out = []
        for line in split_lines(block):
            n = content_length(line)
            out.append(self._apply(line[:n]) + line[n:])
        return b"".join(out)

    def answer_datagram(self, data: bytes) -> bytes | None:
        return self._apply(data)


BUILTIN: dict[str, type[Service]] = {cls.name: cls for cls in (Upper, Echo, Ack, Discard)}


def make_service(spec: str, report: ErrorReporter | None = None) -> Service:
    """A service by name (`upper`, `echo`, `ack`, `discard`) or `package.module:function`."""
    if spec in BUILTIN:
        return BUILTIN[spec]()
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        names = ", ".join(sorted(BUILTIN))
        raise ConfigError(f"unknown service {spec!r}: use one of {names}, or package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r} for service {spec!r}: {exc}") from exc
    func = getattr(module, attr, None)
    if not callable(func):
        raise ConfigError(f"{module_name!r} has no function {attr!r}")
    return Function(spec, func, report)
