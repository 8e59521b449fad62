"""Fixtures for interoperation with the lecture's programs: the Java ones compiled once per session."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.helpers import ServerProcess, start_serve
from tests.interop.programs import (
    JAVA_SOURCES,
    LOOPBACK,
    Java,
    LectureServer,
    start_java_tcp_server,
    start_java_udp_server,
)

JAVAC_MISSING = (
    "javac not found: run scripts/install-system-deps (Debian: apt-get install default-jdk-headless)"
)


@pytest.fixture(scope="session")
def java(tmp_path_factory: pytest.TempPathFactory) -> Java:
    """The slides' Java programs, compiled from tests/fixtures/java into a temporary directory."""
    javac = shutil.which("javac")
    java = shutil.which("java")
    if javac is None or java is None:
        pytest.skip(JAVAC_MISSING)
    classes = tmp_path_factory.mktemp("java-classes")
    sources = sorted(str(p) for p in JAVA_SOURCES.glob("*.java"))
    result = subprocess.run(
        [javac, "-encoding", "UTF-8", "-d", str(classes), *sources],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"javac failed:\n{result.stdout}{result.stderr}")
    return Java(java, classes)


@pytest.fixture
def java_tcp_server(java: Java) -> Iterator[LectureServer]:
    with start_java_tcp_server(java) as server:
        yield server


@pytest.fixture
def java_udp_server(java: Java) -> Iterator[LectureServer]:
    with start_java_udp_server(java) as server:
        yield server


def _serve(proto: str, service: str) -> Iterator[ServerProcess]:
    with start_serve([proto, "--service", service, "--host", LOOPBACK, "--port", "0"]) as server:
        yield server


# One socketlab server per module for each service: every test opens its own connections, and a
# server start per test would cost more than the test itself.
@pytest.fixture(scope="module")
def serve_tcp_upper() -> Iterator[ServerProcess]:
    yield from _serve("tcp", "upper")


@pytest.fixture(scope="module")
def serve_udp_upper() -> Iterator[ServerProcess]:
    yield from _serve("udp", "upper")


@pytest.fixture
def serve_tcp_ack() -> Iterator[ServerProcess]:
    yield from _serve("tcp", "ack")
