"""The TCP checks: each one a way a student's server can misread a byte stream.

Every check opens fresh connections, sends known bytes, and judges the answer against the core
service's answer for the same bytes (`answers.expected_stream`). The texts explain each finding in
the lecture's terms (recv(), sendall(), readLine(), accept()) and say how to fix it.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from socketlab.config import SECONDS, KiB
from socketlab.i18n import _
from socketlab.tools.check import SERVICES
from socketlab.tools.check.answers import (
    Verdict,
    ascii_upper_form,
    expected_stream,
    judge_stream,
    latin1_form,
    other_service_answering,
    show,
)
from socketlab.tools.check.probe import (
    MAX_READ,
    Deadline,
    ProbeError,
    Reading,
    close_quietly,
    read_answer,
    send_all,
    send_segments,
)
from socketlab.tools.check.runner import CheckFunction, Context, Outcome, Status, wrong_service

# Long enough for each byte to travel and be read on its own by the server (a loopback or LAN
# delivers in well under a millisecond), short enough that the check takes a tenth of a second.
SEGMENT_PAUSE = 0.02 * SECONDS
# A client that connects and leaves: give the server this long to notice before the next client,
# so a crash shows as "connection refused" rather than a race.
SETTLE = 0.1 * SECONDS
CLIENTS = 50

SHORT_LINE = b"hello\n"
PORTUGUESE = "ação\n".encode()
# "ação" is 61 c3a7 c3a3 6f: both accented letters are cut in half between segments.
PORTUGUESE_SPLIT = (b"a\xc3", b"\xa7\xc3", b"\xa3o\n")
CRLF_LINE = b"hello\r\n"
# Only the empty line: with a second line, a server that answers one line per connection (the
# lecture's TCPServer) would fail here for what many-lines already reports.
EMPTY_LINE = b"\n"
# 28 lines of 48 bytes: 1,344 bytes fit one Ethernet segment (MSS 1,448 with timestamps), and a
# recv(1024) cuts the 22nd line in half, as it would on a real network.
MANY_LINES = b"".join(b"line %02d of 28, all of them sent in one segment.\n" % i for i in range(1, 29))
# 8 KiB of a repeating pattern, so a lost or repeated piece changes the answer, not only its length.
LONG_LINE = (b"abcdefghijklmnopqrstuvwxyz0123456789" * 228)[: 8 * KiB] + b"\n"
HALF_CLOSE_LINE = b"last line before shutdown(SHUT_WR)\n"
FIRST_CLIENT_LINE = b"first client, at last\n"
SECOND_CLIENT_LINE = b"second client\n"


def _completion(expected: bytes) -> Callable[[bytes], bool]:
    """When an answer can be judged: as many LFs as expected, or as many bytes for an answer without LF."""
    want_lines = expected.count(b"\n")
    if want_lines:
        return lambda data: data.count(b"\n") >= want_lines
    return lambda data: len(data) >= len(expected)


@dataclass
class Exchange:
    expected: bytes
    reading: Reading
    send_error: str = ""
    request: bytes = b""  # every byte sent on this connection
    half_closed: bool = False


def _exchange(
    ctx: Context,
    segments: Sequence[bytes],
    *,
    pause: float = 0.0,
    half_close: bool = False,
    deadline: Deadline | None = None,
) -> Exchange:
    """One connection: send `segments` (each its own send, `pause` apart), read the answer, close."""
    deadline = deadline or ctx.deadline()
    expected = expected_stream(ctx.service, b"".join(segments), end_of_input=half_close)
    sock = ctx.connect(deadline)
    try:
        error = send_segments(sock, segments, pause, deadline)
        if half_close and not error:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                error = exc.strerror or str(exc)
        reading = read_answer(sock, deadline, _completion(expected))
    finally:
        close_quietly(sock)
    if reading.reset and not reading.data and error:
        reading.reset = error
    return Exchange(expected, reading, error, b"".join(segments), half_close)


def _variants(ctx: Context, request: bytes, expected: bytes) -> list[tuple[Verdict, bytes | None]]:
    if ctx.service_name != "upper":
        return []
    return [(Verdict.LATIN1, latin1_form(expected)), (Verdict.ASCII_ONLY, ascii_upper_form(request))]


def describe_reading(reading: Reading, timeout: float) -> str:
    """What came back, and how it ended, for the report's "received" part."""
    shown = show(reading.data) if reading.data else _("nothing")
    if reading.reset:
        return _("{data}, then the connection broke ({reason})").format(data=shown, reason=reading.reset)
    if reading.eof and not reading.complete:
        return _("{data}, then the server closed the connection").format(data=shown)
    if reading.timed_out:
        if not reading.data:
            return _("nothing within {seconds:g} s").format(seconds=timeout)
        return _("{data}, then nothing more within {seconds:g} s").format(data=shown, seconds=timeout)
    return shown


def service_rule(service: str) -> str:
    if service == "upper":
        return _("each line in upper case, with the line's own terminator")
    if service == "ack":
        return _("'ok' plus the line's own terminator for each line")
    return _("every byte back as it came")


def generic_problem(ctx: Context, ex: Exchange, verdict: Verdict) -> tuple[Status, str, str]:
    """Status, explanation and fix for an answer that is not right, whatever the check."""
    reading = ex.reading
    got_lines = reading.data.count(b"\n")
    want_lines = ex.expected.count(b"\n")
    if verdict is Verdict.NOTHING:
        if reading.reset:
            return (
                Status.FAIL,
                _(
                    "The connection broke before any answer ({reason}). A reset usually means the server "
                    "closed its socket with bytes still unread, or crashed (its process died)."
                ).format(reason=reading.reset),
                _(
                    "Look for an exception in the server's console; close a connection only after "
                    "answering it."
                ),
            )
        if reading.eof:
            return (
                Status.FAIL,
                _(
                    "The server closed the connection without answering, or its process ended (the OS "
                    "closes every socket of a process that exits)."
                ),
                _(
                    "Answer every line received before closing, and close only when recv() returns b'' "
                    "(Java: readLine() returns null)."
                ),
            )
        return (
            Status.FAIL,
            _(
                "No answer within {seconds:g} s. The server may be waiting for more bytes than the line: "
                "reading a fixed size, or until the client closes; or it is busy with another client."
            ).format(seconds=ctx.timeout),
            _("Answer each line as soon as its '\\n' arrives, whatever recv() returned around it."),
        )
    if verdict is Verdict.DOUBLE_NEWLINE:
        return (
            Status.FAIL,
            _(
                "Each answer line is followed by an empty line: the server adds '\\n' to a line that "
                "still has its own (readline() and makefile() keep the terminator; print() adds another)."
            ),
            _(
                "Remove the line's terminator before adding one (line.rstrip('\\r\\n')), "
                "or keep it and add none."
            ),
        )
    if verdict is Verdict.GREETING:
        return (
            Status.FAIL,
            _(
                "The right answer came, but after {n} line(s) no request asked for: a greeting or a prompt "
                "(first: {first}). The lecture's protocol has none: a client that reads one line per line "
                "it sent takes the greeting for its answer, and every answer after it is one line late."
            ).format(
                n=max(0, got_lines - want_lines),
                first=show(reading.data.split(b"\n", 1)[0] + b"\n"),
            ),
            _("Send nothing but the answers: no greeting, no prompt."),
        )
    if verdict is Verdict.NUL_PADDED:
        return (
            Status.FAIL,
            _(
                "The right answer, followed by {n} NUL bytes: the server sends its whole buffer (C's "
                "sizeof(buffer), a fixed-size byte[]) instead of just the bytes of the answer."
            ).format(n=reading.data.count(b"\0")),
            _(
                "Send only the answer's own length: send(buf, strlen(answer)) in C, or the bytes "
                "of the string."
            ),
        )
    if verdict is Verdict.UNTERMINATED:
        return (
            Status.FAIL,
            _(
                "The text is right but the answer has no line terminator: a client that reads lines "
                "(readLine(), makefile().readline()) waits for a '\\n' that never comes. The lecture's "
                'first Python server does this: sendall(b"ok").'
            ),
            _("End each answer with '\\n' (or with the terminator of the line it answers)."),
        )
    if verdict is Verdict.TRUNCATED:
        return (
            Status.FAIL,
            _(
                "Only {got:,} of the {want:,} bytes of the answer arrived. send() may send only part of "
                "what it is given (when the socket's buffer is full) and returns how many bytes it sent; a "
                "server that ignores that number loses the rest."
            ).format(got=len(reading.data), want=len(ex.expected)),
            _(
                "Send with sendall() (Python), which loops until every byte is sent, or loop on send()'s "
                "result yourself; in Java, flush the stream after writing."
            ),
        )
    if verdict is Verdict.EXTRA_LINES:
        return (
            Status.FAIL,
            _(
                "More answer lines ({got}) than lines sent ({want}): the server answered pieces of a line. "
                "TCP is a byte stream, not a message service: recv(1024) returns whatever has arrived, "
                'part of a line or several lines, never "one message".'
            ).format(got=got_lines, want=want_lines),
            _(
                "Keep the received bytes in a buffer and answer only complete lines (up to '\\n'), keeping "
                "the rest for the next recv(); in Python conn.makefile('rb').readline() does this, in Java "
                "BufferedReader.readLine()."
            ),
        )
    if verdict is Verdict.FEWER_LINES:
        closed = ""
        if reading.eof:
            closed = " " + _(
                "Then the server closed the connection: it serves a fixed number of lines per "
                "connection instead of every line until the client leaves."
            )
        return (
            Status.FAIL,
            _(
                "Fewer answer lines ({got}) than lines sent ({want}): lines were merged or lost. When "
                "several lines arrive in one recv(), each one still needs its own answer, in order."
            ).format(got=got_lines, want=want_lines)
            + closed,
            _(
                "Split what recv() returns into lines and answer every one; keep an incomplete last line "
                "for the next recv(). Do not read just one line per recv() or per connection."
            ),
        )
    if verdict is Verdict.LATIN1:
        return (
            Status.FAIL,
            _(
                "The text is right but encoded in Latin-1 (one byte per character), not in UTF-8 as it was "
                "sent: a UTF-8 client shows '\ufffd' for each accented letter. Java's "
                "DataOutputStream.writeBytes() does this: it keeps only the low byte of each char."
            ),
            _(
                "Encode the answer in UTF-8, like the request: out.write(s.getBytes(StandardCharsets.UTF_8)) "
                "in Java, text.encode('utf-8') in Python."
            ),
        )
    if verdict is Verdict.ASCII_ONLY:
        # A warning, not a failure: the bytes are intact, valid UTF-8 and in order; only the
        # transformation is incomplete. Clients work; Portuguese words come back half upper-cased.
        return (
            Status.WARNING,
            _(
                "Only the ASCII letters were upper-cased: 'ç' and 'ã' came back unchanged. The bytes are "
                "intact, but the server upper-cases bytes (bytes.upper(), or 'a'..'z' arithmetic in C), not "
                "text; the lecture's server upper-cases text (String.toUpperCase())."
            ),
            _(
                "Decode the line as UTF-8, upper-case the text, encode it again: "
                "line.decode('utf-8').upper().encode('utf-8')."
            ),
        )
    return (
        Status.FAIL,
        _("The answer is not what the {service} service gives ({rule}).").format(
            service=ctx.service_name, rule=service_rule(ctx.service_name)
        ),
        _("Compare what was expected with what came back: expected {expected}.").format(
            expected=show(ex.expected)
        ),
    )


def _judge(
    ctx: Context,
    sent: str,
    ex: Exchange,
    passed: str,
    *,
    specific: Callable[[Verdict, Exchange], tuple[Status, str, str] | None] | None = None,
) -> Outcome:
    """The usual ending of a check: judge the answer, pick the check's own words or the generic ones."""
    framed = ctx.service.framed
    verdict = judge_stream(ex.expected, ex.reading.data, framed, _variants(ctx, ex.request, ex.expected))
    if ex.reading.data:
        ctx.mark_reached()
    received = describe_reading(ex.reading, ctx.timeout)
    if verdict is Verdict.EXACT:
        return Outcome(Status.PASS, sent, received, passed)
    if verdict is Verdict.SAME_LINES:
        note = _(
            "The same lines came back with another line terminator (LF for CR LF); line readers accept both."
        )
        return Outcome(Status.PASS, sent, received, passed + " " + note)
    other = other_service_answering(
        SERVICES, ctx.service_name, ex.request, ex.reading.data, datagram=False, end=ex.half_closed
    )
    if other is not None:
        return Outcome(Status.FAIL, sent, received, *wrong_service(ctx.service_name, other))
    found = specific(verdict, ex) if specific else None
    status, explanation, fix = found or generic_problem(ctx, ex, verdict)
    return Outcome(status, sent, received, explanation, fix)


def check_short_line(ctx: Context) -> Outcome:
    ex = _exchange(ctx, [SHORT_LINE])
    return _judge(
        ctx,
        show(SHORT_LINE),
        ex,
        _("One line in, one answer line out: the basic conversation works."),
    )


def check_byte_by_byte(ctx: Context) -> Outcome:
    segments = [SHORT_LINE[i : i + 1] for i in range(len(SHORT_LINE))]
    ex = _exchange(ctx, segments, pause=SEGMENT_PAUSE)
    sent = _("{line} as {n} segments of 1 byte, {ms:g} ms apart").format(
        line=show(SHORT_LINE), n=len(segments), ms=SEGMENT_PAUSE * 1000
    )
    return _judge(
        ctx,
        sent,
        ex,
        _(
            "The line arrived in 1-byte pieces and was answered once, whole: the server reads a stream "
            "until '\\n', not one recv() as one message."
        ),
    )


def check_many_lines(ctx: Context) -> Outcome:
    ex = _exchange(ctx, [MANY_LINES])
    sent = _("{n} lines ({size:,} bytes) in one send(): {first}").format(
        n=MANY_LINES.count(b"\n"), size=len(MANY_LINES), first=show(MANY_LINES, 30)
    )
    return _judge(
        ctx,
        sent,
        ex,
        _("Many lines arriving together were each answered, in order, none merged or lost."),
    )


def _utf8_split_problem(verdict: Verdict, ex: Exchange) -> tuple[Status, str, str] | None:
    garbled = "\ufffd".encode() in ex.reading.data
    if verdict in (Verdict.NOTHING, Verdict.TRUNCATED, Verdict.DIFFERENT) or garbled:
        if verdict is Verdict.NOTHING and ex.reading.timed_out:
            return None
        return (
            Status.FAIL,
            _(
                "A character was cut between two segments ('ç' is 2 bytes in UTF-8, c3 a7). A server that "
                "decodes each recv() on its own fails on half a character (UnicodeDecodeError, which here "
                "ended the connection) or turns it into '\ufffd'."
            ),
            _(
                "Decode complete lines only (split the bytes at b'\\n' first, then decode), or decode "
                "incrementally: conn.makefile('r', encoding='utf-8') or "
                "codecs.getincrementaldecoder('utf-8')."
            ),
        )
    return None


def check_utf8(ctx: Context) -> Outcome:
    ex = _exchange(ctx, [PORTUGUESE])
    return _judge(
        ctx,
        _("{line} (UTF-8)").format(line=show(PORTUGUESE)),
        ex,
        _("Portuguese text in UTF-8 came back right, in UTF-8."),
    )


def check_utf8_split(ctx: Context) -> Outcome:
    ex = _exchange(ctx, PORTUGUESE_SPLIT, pause=SEGMENT_PAUSE)
    sent = _("{line} in 3 segments, 'ç' and 'ã' each cut in half: {parts}").format(
        line=show(PORTUGUESE), parts=" | ".join(show(p) for p in PORTUGUESE_SPLIT)
    )
    return _judge(
        ctx,
        sent,
        ex,
        _("Characters cut between segments were put back together before decoding."),
        specific=_utf8_split_problem,
    )


def check_crlf(ctx: Context) -> Outcome:
    def crlf_problem(verdict: Verdict, ex: Exchange) -> tuple[Status, str, str] | None:
        # 'HELLO\r\n\n' is also what a server that doubles every newline sends; only when plain lines
        # were answered right (an earlier check passed) is the CR to blame.
        if verdict not in (Verdict.EXTRA_LINES, Verdict.DOUBLE_NEWLINE) or not ctx.answered:
            return None
        return (
            Status.FAIL,
            _(
                "The client ended its line with CR LF, as telnet and Windows programs do, and the server "
                "answered an extra line: it took the '\\r' (or what follows it) for a line of its own."
            ),
            _(
                "Treat '\\r\\n' as one terminator: drop one '\\r' right before the '\\n' "
                "(Java's readLine() does)."
            ),
        )

    ex = _exchange(ctx, [CRLF_LINE])
    return _judge(
        ctx,
        show(CRLF_LINE),
        ex,
        _("A line ended by CR LF was answered as one line."),
        specific=crlf_problem,
    )


def _empty_line_problem(verdict: Verdict, ex: Exchange) -> tuple[Status, str, str] | None:
    if verdict is Verdict.NOTHING and ex.reading.timed_out:
        return (
            Status.FAIL,
            _(
                "No answer to the empty line: an empty line is still a line, and a client that sends one "
                "waits for one answer line. The server skipped it (a test such as `if not line.strip(): "
                "continue`), unless it answers no line at all (see short-line)."
            ),
            _("Answer every line, the empty ones too."),
        )
    if verdict is Verdict.NOTHING and ex.reading.eof:
        return (
            Status.FAIL,
            _(
                "The server closed the connection at the empty line: it took an empty line (b'\\n'; Java's "
                "readLine() returns \"\") for the end of the stream (recv() returns b''; readLine() "
                "returns null)."
            ),
            _(
                "End the conversation only when recv() returns b'' (readLine() returns null); "
                "answer empty lines."
            ),
        )
    return None


def check_empty_line(ctx: Context) -> Outcome:
    ex = _exchange(ctx, [EMPTY_LINE])
    sent = _("an empty line: {empty}").format(empty=show(EMPTY_LINE))
    return _judge(
        ctx,
        sent,
        ex,
        _("An empty line got its answer: an empty line is a line too."),
        specific=_empty_line_problem,
    )


def check_long_line(ctx: Context) -> Outcome:
    ex = _exchange(ctx, [LONG_LINE])
    sent = _("one line of {size:,} bytes: {line}").format(size=len(LONG_LINE), line=show(LONG_LINE, 24))
    return _judge(
        ctx,
        sent,
        ex,
        _("An 8 KiB line, more than one recv(1024) and more than one segment, came back whole."),
    )


def _half_close_problem(verdict: Verdict, ex: Exchange) -> tuple[Status, str, str] | None:
    if verdict is not Verdict.NOTHING or not (ex.reading.eof or ex.reading.reset):
        return None
    return (
        Status.FAIL,
        _(
            "The client half-closed after its line (shutdown(SHUT_WR)): it sends nothing more but still "
            "reads. The server closed without sending the answer it owed for the line it had received."
        ),
        _("When recv() returns b'', first finish answering what was received, then close the connection."),
    )


def check_half_close(ctx: Context) -> Outcome:
    ex = _exchange(ctx, [HALF_CLOSE_LINE], half_close=True)
    sent = _("{line}, then shutdown(SHUT_WR) (half-close: no more data, still reading)").format(
        line=show(HALF_CLOSE_LINE)
    )
    return _judge(
        ctx,
        sent,
        ex,
        _("After the client half-closed, the answer to its last line was still delivered."),
        specific=_half_close_problem,
    )


def check_idle_client(ctx: Context) -> Outcome:
    deadline = ctx.deadline()
    expected_second = expected_stream(ctx.service, SECOND_CLIENT_LINE)
    expected_first = expected_stream(ctx.service, FIRST_CLIENT_LINE)
    sent = _(
        "client 1 connects and sends nothing; client 2 connects and sends {second}; after {wait:g} s "
        "without an answer to client 2, client 1 sends {first} and leaves"
    ).format(second=show(SECOND_CLIENT_LINE), first=show(FIRST_CLIENT_LINE), wait=ctx.timeout / 2)
    first = ctx.connect(deadline)
    second = None
    try:
        second = ctx.connect(deadline)
        error = send_all(second, SECOND_CLIENT_LINE, deadline)
        early = read_answer(second, deadline.part(ctx.timeout / 2), _completion(expected_second))
        if early.complete or early.eof or early.reset or error:
            ex = Exchange(expected_second, early, error, SECOND_CLIENT_LINE)
            return _judge(
                ctx,
                sent,
                ex,
                _(
                    "Client 2 was answered while client 1 sat idle: the server serves clients "
                    "concurrently (a thread per client, selectors or asyncio)."
                ),
            )
        send_all(first, FIRST_CLIENT_LINE, deadline)
        first_reading = read_answer(first, deadline, _completion(expected_first))
        close_quietly(first)
        late = read_answer(second, deadline, _completion(expected_second))
        late.data = early.data + late.data
    finally:
        close_quietly(first)
        if second is not None:
            close_quietly(second)
    verdict = judge_stream(expected_second, late.data, ctx.service.framed)
    received = _("client 2: nothing within {wait:g} s; after client 1 spoke and left: {late}").format(
        wait=ctx.timeout / 2, late=describe_reading(late, ctx.timeout)
    )
    if verdict in (Verdict.EXACT, Verdict.SAME_LINES):
        ctx.mark_reached()
        return Outcome(
            Status.WARNING,
            sent,
            received,
            _(
                "The server serves one client at a time (an iterative server: accept(), serve that client "
                "until it leaves, then accept() the next). Client 2 waited until client 1 was done: one idle "
                "or slow client blocks everyone, as the lecture's TCPServer does."
            ),
            _(
                "Serve each connection in its own thread (threading.Thread per accept(); in Java, a "
                "Thread per Socket), or serve all of them from one loop with selectors or asyncio."
            ),
        )
    first_note = describe_reading(first_reading, ctx.timeout)
    if not first_reading.data and not late.data:
        return Outcome(
            Status.FAIL,
            sent,
            received,
            _(
                "Neither client got an answer, so this check cannot tell whether the server serves "
                "clients concurrently: it does not answer a line while the connection stays open (see "
                "short-line)."
            ),
            _("Answer each line as soon as its '\\n' arrives; then run this check again."),
        )
    return Outcome(
        Status.FAIL,
        sent,
        received,
        _(
            "Client 2 got no right answer, not even after client 1 spoke and left (client 1 got {first}). "
            "The server serves at most one client, or stopped after the first."
        ).format(first=first_note),
        _(
            "Loop back to accept() after each client (or accept in a loop and serve clients in threads); "
            "do not end the server when one client leaves."
        ),
    )


@dataclass
class _Client:
    index: int
    sock: socket.socket
    request: bytes
    expected: bytes
    connected: bool = False
    data: bytes = b""
    done: bool = False
    problem: str = ""  # "refused", "reset", "closed", "wrong"


def check_many_clients(ctx: Context) -> Outcome:
    """50 clients connect at once, each sends one line and is closed as soon as it has its answer.

    Closing each client once answered lets an iterative server with a big enough backlog get through
    all of them: this check is about capacity (backlog, crashes under load), the idle-client check is
    about concurrency.
    """
    deadline = ctx.deadline()
    sel = selectors.DefaultSelector()
    clients: list[_Client] = []
    try:
        for i in range(CLIENTS):
            request = b"client %02d of %d\n" % (i + 1, CLIENTS)
            sock = socket.socket(ctx.family, socket.SOCK_STREAM)
            sock.setblocking(False)
            client = _Client(i, sock, request, expected_stream(ctx.service, request))
            clients.append(client)
            code = sock.connect_ex(ctx.address)
            if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
                client.problem = "refused" if code == errno.ECONNREFUSED else "reset"
                client.done = True
                continue
            sel.register(sock, selectors.EVENT_WRITE, client)
        while not all(c.done for c in clients):
            events = sel.select(deadline.left())
            if not events:
                break
            for key, mask in events:
                _service_client(sel, key.data, mask)
    finally:
        for c in clients:
            if not c.done:
                _close(sel, c)  # still owed an answer: counted below as not served
        sel.close()
    right = sum(1 for c in clients if c.done and not c.problem)
    if any(c.connected for c in clients):
        ctx.mark_reached()
    counts = {
        "refused": sum(1 for c in clients if c.problem == "refused"),
        "reset": sum(1 for c in clients if c.problem in ("reset", "closed")),
        "wrong": sum(1 for c in clients if c.problem == "wrong"),
        "unaccepted": sum(1 for c in clients if not c.done and not c.connected),
        "silent": sum(1 for c in clients if not c.done and c.connected),
    }
    sent = _("{n} clients connect at the same time, each sends one line such as {line}").format(
        n=CLIENTS, line=show(clients[0].request)
    )
    received = _(
        "{right} right answers; {refused} refused, {reset} reset or closed, {unaccepted} not accepted in "
        "time, {silent} connected but unanswered, {wrong} wrong answers"
    ).format(right=right, **counts)
    if right == CLIENTS:
        return Outcome(Status.PASS, sent, received, _("All {n} clients were served.").format(n=CLIENTS))
    parts = [
        _("Only {right} of {n} clients got the right answer within {seconds:g} s.").format(
            right=right, n=CLIENTS, seconds=ctx.timeout
        )
    ]
    fixes = []
    if counts["refused"] or counts["unaccepted"]:
        parts.append(
            _(
                "Connections refused or never accepted point to a small listen() backlog: with listen(1) "
                "the OS turns connection requests away while its queue is full."
            )
        )
        fixes.append(
            _("Listen with a large backlog: listen(socket.SOMAXCONN) (Java's ServerSocket uses 50).")
        )
    if counts["silent"] or counts["reset"]:
        parts.append(
            _(
                "Clients that were connected but not answered, or were cut off, point to a server that "
                "falls behind, crashes or stops under load."
            )
        )
        fixes.append(
            _(
                "Serve clients concurrently (or at least quickly one after the other), and never let one "
                "client's error stop the server."
            )
        )
    wrong = next((c for c in clients if c.problem == "wrong"), None)
    if wrong is not None:
        parts.append(
            _(
                "{n} answers were wrong, for example {got} for {sent}: if the other checks pass, clients' "
                "answers got mixed up, which points to state shared between threads (a global buffer)."
            ).format(n=counts["wrong"], got=show(wrong.data), sent=show(wrong.request))
        )
        fixes.append(_("Keep each client's buffer and variables local to the code serving that client."))
    return Outcome(Status.FAIL, sent, received, " ".join(parts), " ".join(fixes))


def _service_client(sel: selectors.BaseSelector, client: _Client, mask: int) -> None:
    sock = client.sock
    if not client.connected:
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            client.problem = "refused" if code == errno.ECONNREFUSED else "reset"
            _finish(sel, client)
            return
        client.connected = True
        try:
            sock.send(client.request)  # a few bytes into an empty send buffer: all of it goes
        except OSError:
            client.problem = "reset"
            _finish(sel, client)
            return
        sel.modify(sock, selectors.EVENT_READ, client)
        return
    if not mask & selectors.EVENT_READ:
        return
    try:
        chunk = sock.recv(4 * KiB)
    except BlockingIOError:
        return
    except OSError:
        client.problem = "reset"
        _finish(sel, client)
        return
    if not chunk:
        client.problem = "closed" if client.data != client.expected else ""
        _finish(sel, client)
        return
    client.data += chunk
    if len(client.data) > MAX_READ:
        client.problem = "wrong"
        _finish(sel, client)
        return
    if client.data.count(b"\n") >= client.expected.count(b"\n"):
        verdict = judge_stream(client.expected, client.data, framed=True)
        if verdict not in (Verdict.EXACT, Verdict.SAME_LINES):
            client.problem = "wrong"
        _finish(sel, client)


def _finish(sel: selectors.BaseSelector, client: _Client) -> None:
    client.done = True
    _close(sel, client)


def _close(sel: selectors.BaseSelector, client: _Client) -> None:
    # A client that never got past connect_ex() was never registered.
    with contextlib.suppress(KeyError, ValueError):
        sel.unregister(client.sock)
    close_quietly(client.sock)


def check_connect_close(ctx: Context) -> Outcome:
    deadline = ctx.deadline()
    silent = ctx.connect(deadline)
    close_quietly(silent)
    deadline.sleep(SETTLE)
    sent = _("client 1 connects and closes without sending anything; then client 2 sends {line}").format(
        line=show(SHORT_LINE)
    )
    crash_explanation = _(
        "After a client connected and left without sending anything, the next client {what}. The server "
        "most likely crashed: recv() returned b'' (Java: readLine() returned null) and the server used it "
        "as if it were a line (Java: a NullPointerException at clientSentence.toUpperCase())."
    )
    crash_fix = _(
        "Check for the end of the stream before using what was read: `if not data: break` in Python, "
        "`if (line == null) break;` in Java; then close that connection and accept() the next."
    )
    try:
        ex = _exchange(ctx, [SHORT_LINE], deadline=deadline)
    except ProbeError as exc:
        return Outcome(
            Status.FAIL,
            sent,
            _("client 2: {reason}").format(reason=exc.reason),
            crash_explanation.format(what=_("got no connection ({reason})").format(reason=exc.reason)),
            crash_fix,
        )

    def crashed(verdict: Verdict, ex: Exchange) -> tuple[Status, str, str] | None:
        if verdict is not Verdict.NOTHING:
            return None
        if not ex.reading.timed_out:
            what = _("got no answer ({how})").format(how=describe_reading(ex.reading, ctx.timeout))
            return Status.FAIL, crash_explanation.format(what=what), crash_fix
        if not ctx.answered:
            return None  # it never answered a line in this run: the generic words fit better
        return (
            Status.FAIL,
            _(
                "After a client connected and left without sending anything, the next client got no "
                "answer within {seconds:g} s, though the server answered earlier checks: it is stuck on "
                "the client that left. When recv() returns b'' (Java: readLine() returns null) that "
                "conversation is over, but the server keeps reading it (a loop on recv() that never "
                "breaks spins forever on b'') instead of closing it and accepting the next client."
            ).format(seconds=ctx.timeout),
            crash_fix,
        )

    return _judge(
        ctx,
        sent,
        ex,
        _("A client that left without a word did not hurt the server: the next one was served."),
        specific=crashed,
    )


TCP_CHECKS: dict[str, CheckFunction] = {
    "short-line": check_short_line,
    "byte-by-byte": check_byte_by_byte,
    "many-lines": check_many_lines,
    "utf8": check_utf8,
    "utf8-split": check_utf8_split,
    "crlf": check_crlf,
    "empty-line": check_empty_line,
    "long-line": check_long_line,
    "half-close": check_half_close,
    "idle-client": check_idle_client,
    "many-clients": check_many_clients,
    "connect-close": check_connect_close,
}
