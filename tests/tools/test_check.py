"""`socketlab check`: right servers pass, and each classic bug is caught by its check and only by it.

The servers are real processes on 127.0.0.1 port 0: socketlab's own (`socketlab serve`), a gallery of
small deliberately buggy servers (tests/fixtures/buggy_servers, one bug each), and the lecture's Java
servers as on the slides. The checker runs in-process, through its library API, except where the
command line itself is under test. Each check waits at most CHECK_TIMEOUT, so a failing check costs
about that long; the whole module stays well under a minute.
"""

from __future__ import annotations

import json
import re
import select
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from socketlab.core.services import make_service
from socketlab.tools.check import TCP_CHECK_IDS, UDP_CHECK_IDS
from socketlab.tools.check.answers import (
    Verdict,
    expected_stream,
    judge_datagram,
    judge_stream,
    latin1_form,
    show,
)
from socketlab.tools.check.runner import (
    Report,
    Status,
    run_checks,
    select_checks,
    udp_addresses_listening_first,
)
from socketlab.tools.check.tcp import (
    LONG_LINE,
    MANY_LINES,
    PORTUGUESE,
    PORTUGUESE_SPLIT,
    TCP_CHECKS,
)
from socketlab.tools.check.udp import UDP_CHECKS
from tests.conftest import needs_ipv6
from tests.helpers import cli_env, start_serve

GALLERY = Path(__file__).resolve().parent.parent / "fixtures" / "buggy_servers"
LOOPBACK = "127.0.0.1"
# Per check. A right answer on the loopback takes milliseconds, even on a busy 2-core machine; a
# wrong one is often known only when this runs out.
CHECK_TIMEOUT = 1.0
ANNOUNCED = re.compile(r"^(tcp|udp) listening on (\S+):(\d+)$")


# --- the pure parts: payloads, judging, display -------------------------------------------------


def test_every_check_id_has_a_check_and_the_order_is_fixed() -> None:
    assert set(TCP_CHECKS) == set(TCP_CHECK_IDS)
    assert set(UDP_CHECKS) == set(UDP_CHECK_IDS)
    assert [c.id for c in select_checks("tcp")] == list(TCP_CHECK_IDS)
    assert TCP_CHECK_IDS[-1] == "connect-close"  # it can kill the server: last


def test_only_and_skip_keep_the_fixed_order_and_ignore_the_other_protocols_ids() -> None:
    chosen = select_checks("tcp", only=["connect-close", "short-line", "burst"], skip=["burst"])
    assert [c.id for c in chosen] == ["short-line", "connect-close"]
    assert [c.id for c in select_checks("udp", skip=["crlf", "burst"])] == [
        "no-newline",
        "utf8",
        "same-port",
        "large-datagram",
    ]


def test_payloads_do_what_their_checks_claim() -> None:
    # many-lines: one Ethernet segment, and a recv(1024) ends in the middle of a line.
    assert len(MANY_LINES) < 1448
    assert MANY_LINES[1023:1024] != b"\n"
    assert MANY_LINES.count(b"\n") == 28
    assert len(LONG_LINE) == 8 * 1024 + 1
    # utf8-split: the pieces are the line, and each cut falls inside a character.
    assert b"".join(PORTUGUESE_SPLIT) == PORTUGUESE
    for piece in PORTUGUESE_SPLIT[:-1]:
        with pytest.raises(UnicodeDecodeError):
            piece.decode("utf-8")


def test_judging_stream_answers_names_the_way_they_differ() -> None:
    upper = make_service("upper")
    expected = expected_stream(upper, b"hello\r\n")
    assert expected == b"HELLO\r\n"
    assert judge_stream(expected, b"HELLO\r\n", framed=True) is Verdict.EXACT
    assert judge_stream(expected, b"HELLO\n", framed=True) is Verdict.SAME_LINES
    assert judge_stream(expected, b"HELLO", framed=True) is Verdict.UNTERMINATED
    assert judge_stream(b"HELLO\n", b"H\nE\nL\nL\nO\n\n", framed=True) is Verdict.EXTRA_LINES
    assert judge_stream(expected, b"", framed=True) is Verdict.NOTHING
    lines = b"A\nB\nC\n"
    assert judge_stream(lines, b"A\n", framed=True) is Verdict.FEWER_LINES
    assert judge_stream(lines, b"A\nB", framed=True) is Verdict.TRUNCATED
    assert judge_stream(lines, b"A\nB\nD\n", framed=True) is Verdict.DIFFERENT
    portuguese = expected_stream(upper, PORTUGUESE)
    variants = [(Verdict.LATIN1, latin1_form(portuguese)), (Verdict.ASCII_ONLY, PORTUGUESE.upper())]
    assert judge_stream(portuguese, "AÇÃO\n".encode("latin-1"), True, variants) is Verdict.LATIN1
    assert judge_stream(portuguese, "AçãO\n".encode(), True, variants) is Verdict.ASCII_ONLY


def test_judging_names_the_habits_that_break_a_line_protocol() -> None:
    two = b"ONE\nTWO\n"
    assert judge_stream(two, b"ONE\n\nTWO\n\n", framed=True) is Verdict.DOUBLE_NEWLINE
    assert judge_stream(two, b"Welcome!\nONE\nTWO\n", framed=True) is Verdict.GREETING
    padded = b"ONE\n" + b"\0" * 1020 + b"TWO\n" + b"\0" * 1020
    assert judge_stream(two, padded, framed=True) is Verdict.NUL_PADDED
    # A terminator the server adds where the core answers an unterminated last line is fine.
    assert judge_stream(b"ONE\nTWO", two, framed=True) is Verdict.SAME_LINES


def test_judging_datagrams_names_padding_newlines_leftovers_and_cuts() -> None:
    assert judge_datagram(b"HELLO", b"HELLO") is Verdict.EXACT
    assert judge_datagram(b"HELLO", b"HELLO" + b"\0" * 1019) is Verdict.NUL_PADDED
    assert judge_datagram(b"HELLO", b"HELLO\n") is Verdict.NEWLINE_ADDED
    assert judge_datagram(b"HELLO", b"HELLO, WORLD") is Verdict.LEFTOVER
    assert judge_datagram(b"HELLO", b"HEL") is Verdict.TRUNCATED
    assert judge_datagram(b"HELLO", b"") is Verdict.NOTHING


def test_show_makes_bytes_readable_and_short() -> None:
    assert show(b"hello\r\n") == "'hello\\r\\n'"
    assert show("ação\n".encode()) == "'ação\\n'"
    assert show("AÇÃO".encode("latin-1")) == "'A\\xc7\\xc3O'"
    assert show(b"HELLO" + b"\0" * 1019) == "'HELLO' + '\\0'×1019"
    long = show(bytes(range(65, 91)) * 10)
    assert long.endswith("… (260 bytes)")
    assert len(long) < 100


@needs_ipv6
@pytest.mark.timeout(20)
def test_udp_picks_the_address_where_something_listens() -> None:
    # As for `localhost` resolved to ::1 first while the server listens on IPv4 only. Port numbers
    # of the two families are separate, so nothing listens on [::1] at the IPv4 socket's port.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listening:
        listening.bind((LOOPBACK, 0))
        port = listening.getsockname()[1]
        v6: tuple[int, tuple[object, ...]] = (int(socket.AF_INET6), ("::1", port, 0, 0))
        v4: tuple[int, tuple[object, ...]] = (int(socket.AF_INET), (LOOPBACK, port))
        assert udp_addresses_listening_first([v6, v4], timeout=5) == [v4, v6]
        assert udp_addresses_listening_first([v4, v6], timeout=5) == [v4, v6]


@given(st.binary(max_size=4096))
def test_show_never_fails_and_stays_short_whatever_the_bytes(data: bytes) -> None:
    text = show(data)
    assert text.startswith("'")
    assert len(text) < 600


@given(st.binary(max_size=300), st.binary(max_size=300), st.booleans())
def test_judging_any_bytes_gives_a_verdict_and_exact_only_for_equal_bytes(
    expected: bytes, received: bytes, framed: bool
) -> None:
    assert (judge_stream(expected, received, framed) is Verdict.EXACT) == (expected == received)
    assert (judge_datagram(expected, received) is Verdict.EXACT) == (expected == received)


# --- servers as real processes -----------------------------------------------------------------


@contextmanager
def gallery_server(name: str, host: str = LOOPBACK) -> Iterator[tuple[str, int]]:
    """Run tests/fixtures/buggy_servers/NAME.py on HOST port 0; yield its protocol and port."""
    proc = subprocess.Popen(
        [sys.executable, str(GALLERY / f"{name}.py"), host],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # the buggy ones print tracebacks on purpose
        stdin=subprocess.DEVNULL,
        env=cli_env(),
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        line = proc.stdout.readline().decode() if ready else ""
        found = ANNOUNCED.match(line.strip())
        assert found, f"{name} did not announce its port: {line!r}"
        yield found[1], int(found[3])
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def run(proto: str, port: int, **kwargs: object) -> Report:
    return run_checks(proto, LOOPBACK, port, timeout=CHECK_TIMEOUT, **kwargs)  # type: ignore[arg-type]


def ids(report: Report, status: Status) -> set[str]:
    return {r.id for r in report.results if r.status is status}


def explanation(report: Report, check_id: str) -> str:
    return next(r.explanation + " " + r.fix for r in report.results if r.id == check_id)


# name, failing checks, checks with a warning, (the check meant for the bug, words its report must use)
GALLERY_CASES = [
    ("tcp_correct", set(), set(), None),
    ("udp_correct", set(), set(), None),
    (
        "tcp_recv_is_message",
        {"byte-by-byte", "many-lines", "utf8-split", "long-line"},
        set(),
        ("byte-by-byte", "byte stream"),
    ),
    ("tcp_send_not_sendall", {"long-line"}, set(), ("long-line", "sendall()")),
    ("tcp_one_client_at_a_time", set(), {"idle-client"}, ("idle-client", "one client at a time")),
    ("tcp_crash_on_silent_client", {"connect-close"}, {"idle-client"}, ("connect-close", "crashed")),
    ("udp_whole_buffer", {"no-newline", "large-datagram"}, set(), ("no-newline", "NUL bytes")),
    ("udp_newline_added", {"no-newline"}, set(), ("no-newline", "line terminator")),
    ("udp_other_port", {"same-port"}, set(), ("same-port", "another socket")),
    # Beyond the classic five: habits seen in students' servers.
    ("tcp_double_newline", set(TCP_CHECK_IDS), set(), ("short-line", "followed by an empty line")),
    ("tcp_ascii_upper", set(), {"utf8", "utf8-split"}, ("utf8", "Only the ASCII letters")),
]


@pytest.mark.timeout(40)
@pytest.mark.parametrize(
    ("name", "failing", "warned", "meant"), GALLERY_CASES, ids=[case[0] for case in GALLERY_CASES]
)
def test_each_classic_bug_is_caught_by_its_checks_and_only_by_them(
    name: str, failing: set[str], warned: set[str], meant: tuple[str, str] | None
) -> None:
    with gallery_server(name) as (proto, port):
        report = run(proto, port)
    assert [r.id for r in report.results] == list(TCP_CHECK_IDS if proto == "tcp" else UDP_CHECK_IDS)
    assert ids(report, Status.FAIL) == failing
    assert ids(report, Status.WARNING) == warned
    assert report.failed == bool(failing)
    if meant is not None:
        check_id, words = meant
        assert words in explanation(report, check_id)
    for result in report.results:
        assert result.sent
        assert result.received
        assert result.explanation
        assert bool(result.fix) == (result.status is not Status.PASS)
        # Bounded: a check never waits past its timeout (the slack is for a busy machine).
        assert result.seconds < CHECK_TIMEOUT + 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("proto", "service"),
    [("tcp", "upper"), ("udp", "upper"), ("tcp", "echo"), ("tcp", "ack"), ("udp", "ack")],
)
def test_socketlab_serve_passes_every_check(proto: str, service: str) -> None:
    with start_serve([proto, "--service", service, "--host", LOOPBACK, "--port", "0"]) as server:
        report = run(proto, server.port(proto), service=service)
    assert {r.id: str(r.status) for r in report.results if r.status is not Status.PASS} == {}
    assert len(report.results) == len(TCP_CHECK_IDS if proto == "tcp" else UDP_CHECK_IDS)


def _serve_has_model(model: str) -> bool:
    helped = subprocess.run(
        [sys.executable, "-m", "socketlab", "serve", "--help"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=30,
        check=False,
    )
    choices = re.search(r"--model \{([^}]*)\}", helped.stdout)
    return choices is not None and model in choices[1].split(",")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("proto", "model", "warned"),
    [
        ("tcp", "iterative", {"idle-client"}),
        ("tcp", "threads", set()),
        ("tcp", "selectors", set()),
        ("udp", "iterative", set()),
    ],
)
def test_the_teaching_models_pass_and_the_iterative_one_gets_its_warning(
    proto: str, model: str, warned: set[str]
) -> None:
    if not _serve_has_model(model):
        pytest.skip(f"socketlab serve does not accept --model {model} yet")
    with start_serve([proto, "--model", model, "--host", LOOPBACK, "--port", "0"]) as server:
        report = run(proto, server.port(proto))
    assert ids(report, Status.FAIL) == set()
    assert ids(report, Status.WARNING) == warned
    if warned:
        assert "one client at a time" in explanation(report, "idle-client")


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("name", "told"), [("tcp_correct", "echo"), ("udp_correct", "ack")])
def test_checking_with_the_wrong_service_says_which_service_the_answers_belong_to(
    name: str, told: str
) -> None:
    with gallery_server(name) as (proto, port):
        report = run(proto, port, service=told, only=["short-line", "crlf", "no-newline", "utf8"])
    assert report.results
    for result in report.results:
        assert result.status is Status.FAIL
        assert "answers of the upper service" in result.explanation
        assert "--service upper" in result.fix


@pytest.mark.timeout(30)
def test_a_server_that_answers_only_at_the_end_of_the_stream_is_not_taken_for_a_crash() -> None:
    with gallery_server("tcp_answers_at_close") as (proto, port):
        report = run(proto, port, only=["short-line", "half-close", "many-clients", "connect-close"])
    statuses = {r.id: r.status for r in report.results}
    assert statuses == {
        "short-line": Status.FAIL,
        "half-close": Status.PASS,
        "many-clients": Status.FAIL,
        "connect-close": Status.FAIL,
    }
    assert "until the client closes" in explanation(report, "short-line")
    assert "50 connected but unanswered" in next(r.received for r in report.results if r.id == "many-clients")
    # It never answered a line on an open connection, so nothing says it crashed or got stuck.
    assert "crashed" not in explanation(report, "connect-close")
    assert "stuck" not in explanation(report, "connect-close")


@needs_ipv6
@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("name", "only"),
    [
        ("tcp_correct", ["short-line", "many-clients", "connect-close"]),
        ("udp_correct", ["same-port", "burst"]),
    ],
)
def test_ipv6_servers_are_checked_the_same_way(name: str, only: list[str]) -> None:
    with gallery_server(name, "::1") as (proto, port):
        report = run_checks(proto, "::1", port, timeout=CHECK_TIMEOUT, only=only)
    assert report.address == f"[::1]:{port}"
    assert [(r.id, r.status) for r in report.results] == [(check_id, Status.PASS) for check_id in only]


# --- the lecture's own servers, as on the slides -------------------------------------------------


@pytest.fixture(scope="module")
def java_classes(tmp_path_factory: pytest.TempPathFactory) -> object:
    from tests.interop.programs import JAVA_SOURCES, Java  # noqa: PLC0415 - only the java tests need it

    javac, java = shutil.which("javac"), shutil.which("java")
    if javac is None or java is None:
        pytest.skip("javac not found: run scripts/install-system-deps (Debian: default-jdk-headless)")
    classes = tmp_path_factory.mktemp("check-java")
    sources = [str(JAVA_SOURCES / "TCPServer.java"), str(JAVA_SOURCES / "UDPServer.java")]
    built = subprocess.run(
        [javac, "-encoding", "UTF-8", "-d", str(classes), *sources],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    return Java(java, classes)


@pytest.mark.java
@pytest.mark.timeout(90)
def test_the_lectures_java_tcp_server_has_the_bugs_the_lecture_warns_about(java_classes: object) -> None:
    from tests.interop.programs import Java, start_java_tcp_server  # noqa: PLC0415

    assert isinstance(java_classes, Java)
    with start_java_tcp_server(java_classes) as server:
        report = run("tcp", server.port)
    # One line per connection (the rest is never read), writeBytes (Latin-1 for Portuguese), and the
    # NullPointerException when a client leaves without a line; iterative, so a warning too.
    assert ids(report, Status.FAIL) == {"many-lines", "utf8", "utf8-split", "connect-close"}
    assert ids(report, Status.WARNING) == {"idle-client"}
    assert "writeBytes" in explanation(report, "utf8")
    assert "Fewer answer lines (1)" in explanation(report, "many-lines")


@pytest.mark.java
@pytest.mark.timeout(90)
def test_the_lectures_java_udp_server_answers_its_whole_buffer(java_classes: object) -> None:
    from tests.interop.programs import Java, start_java_udp_server  # noqa: PLC0415

    assert isinstance(java_classes, Java)
    with start_java_udp_server(java_classes) as server:
        report = run("udp", server.port)
    # new String(getData()) on a reused 1024-byte buffer: NUL padding, then the tail of an earlier
    # datagram after a shorter one, and a 1,500-byte datagram cut to 1024.
    assert ids(report, Status.FAIL) == {"no-newline", "utf8", "large-datagram"}
    assert "NUL bytes" in explanation(report, "no-newline")
    assert "earlier, longer datagram" in explanation(report, "utf8")
    assert "1,024 of 1,500" in explanation(report, "large-datagram")


@pytest.mark.timeout(40)
def test_the_lectures_first_python_server_is_reported_for_its_missing_newline_and_exit() -> None:
    from tests.interop.programs import start_lecture_python_server  # noqa: PLC0415

    with start_lecture_python_server() as server:
        report = run("tcp", server.port, service="ack", only=["short-line", "crlf"])
    short, crlf = report.results
    # b"ok" with no newline, then the server ends after its one and only client.
    assert short.status is Status.FAIL
    assert "no line terminator" in short.explanation
    assert crlf.status is Status.FAIL
    # Refused, reset or closed, depending on how far the process got in exiting: each says why.
    assert "crashed" in crlf.explanation or "process ended" in crlf.explanation


# --- the command line ----------------------------------------------------------------------------


def socketlab_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "socketlab", "check", *args],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
        check=False,
    )


@pytest.mark.timeout(40)
def test_cli_json_follows_the_documented_schema_and_a_failure_exits_1() -> None:
    with gallery_server("tcp_send_not_sendall") as (_proto, port):
        done = socketlab_check(
            "tcp",
            LOOPBACK,
            str(port),
            "--json",
            "--timeout",
            "1",
            "--only",
            "long-line",
            "--only",
            "short-line",
        )
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert set(report) == {"schema", "target", "timeout", "checks", "summary"}
    assert report["schema"] == 1
    assert report["target"] == {
        "proto": "tcp",
        "host": LOOPBACK,
        "port": port,
        "address": f"{LOOPBACK}:{port}",
        "service": "upper",
    }
    assert [c["id"] for c in report["checks"]] == ["short-line", "long-line"]
    assert [c["status"] for c in report["checks"]] == ["pass", "fail"]
    for check in report["checks"]:
        assert set(check) == {"id", "status", "sent", "received", "explanation", "fix", "seconds"}
        assert isinstance(check["seconds"], float)
    assert report["summary"] == {"total": 2, "pass": 1, "warning": 0, "fail": 1}
    assert "sendall()" in report["checks"][1]["fix"]


@pytest.mark.timeout(40)
def test_cli_warnings_alone_exit_0_and_the_report_explains_them() -> None:
    with gallery_server("tcp_one_client_at_a_time") as (_proto, port):
        done = socketlab_check(
            "tcp", LOOPBACK, str(port), "--timeout", "1", "--only", "idle-client,short-line"
        )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^WARNING +idle-client", done.stdout, re.MULTILINE)
    assert re.search(r"^PASS +short-line", done.stdout, re.MULTILINE)
    assert "one client at a time" in done.stdout
    assert "2 checks: 1 passed, 1 with a warning, 0 failed." in done.stdout


@pytest.mark.timeout(30)
def test_cli_a_server_that_is_not_there_fails_fast_without_waiting_for_each_check() -> None:
    # A bound socket that does not listen: connections are refused, and no other process can take
    # the port while we hold it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind((LOOPBACK, 0))
        port = holder.getsockname()[1]
        done = socketlab_check("tcp", LOOPBACK, str(port), "--json", "--timeout", "5")
    assert done.returncode == 1
    checks = json.loads(done.stdout)["checks"]
    assert len(checks) == len(TCP_CHECK_IDS)
    assert all(c["status"] == "fail" for c in checks)
    assert "Is it running" in checks[0]["explanation"]
    # Not 12 checks each waiting 5 s: after the first refusal the others are not run at all.
    assert all(c["explanation"].startswith("Not run") for c in checks[1:])


@pytest.mark.timeout(30)
def test_cli_json_texts_are_english_whatever_lang_says_unless_lang_is_given() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind((LOOPBACK, 0))
        target = ["tcp", LOOPBACK, str(holder.getsockname()[1]), "--only", "short-line", "--json"]
        portuguese_env = cli_env(LANG="pt_BR.UTF-8", LC_ALL="pt_BR.UTF-8")
        by_env = subprocess.run(
            [sys.executable, "-m", "socketlab", "check", *target],
            capture_output=True,
            text=True,
            env=portuguese_env,
            timeout=30,
            check=False,
        )
        by_option = subprocess.run(
            [sys.executable, "-m", "socketlab", "--lang", "pt", "check", *target],
            capture_output=True,
            text=True,
            env=cli_env(),
            timeout=30,
            check=False,
        )
    english = json.loads(by_env.stdout)["checks"][0]
    chosen = json.loads(by_option.stdout)["checks"][0]
    assert english["explanation"].startswith("Could not reach the server")
    assert chosen["explanation"] != english["explanation"]
    # What programs read does not change with the language.
    assert (chosen["id"], chosen["status"]) == (english["id"], english["status"]) == ("short-line", "fail")


@pytest.mark.timeout(30)
def test_cli_a_udp_server_that_never_answers_fails_with_an_explanation() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind((LOOPBACK, 0))
        port = silent.getsockname()[1]
        done = socketlab_check("udp", LOOPBACK, str(port), "--timeout", "0.5", "--only", "no-newline")
    assert done.returncode == 1
    assert re.search(r"^FAIL +no-newline", done.stdout, re.MULTILINE)
    assert "No answer" in done.stdout


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tcp", LOOPBACK, "0"], "not a port number (1-65535)"),
        (["sctp", LOOPBACK, "80"], "invalid choice"),
        (["tcp", LOOPBACK, "80", "--timeout", "0"], "the timeout must be above 0"),
        (["tcp", LOOPBACK, "80", "--service", "discard"], "invalid choice"),
        (["tcp", LOOPBACK, "80", "--only", "nonsense"], "unknown check(s): nonsense"),
        (["udp", LOOPBACK, "80", "--only", "crlf"], "no udp check left to run"),
    ],
)
def test_cli_bad_arguments_exit_2_before_touching_the_network(args: list[str], message: str) -> None:
    done = socketlab_check(*args)
    assert done.returncode == 2
    assert message in done.stderr
    assert done.stdout == ""
