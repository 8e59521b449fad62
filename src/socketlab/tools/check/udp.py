"""The UDP checks: a datagram is a message of its own, with no line, no padding and a sender address.

Each check uses a fresh, unconnected socket, so answers from any port are seen (and an answer from
the wrong port can be reported instead of silently dropped, as a connected socket would drop it).
Checks other than same-port accept an answer from any port, and checks other than no-newline look
past NUL padding and an added newline: each check reports its own bug, not its neighbours'.
"""

from __future__ import annotations

import ipaddress
from collections import Counter

from socketlab.config import MAX_DATAGRAM, SECONDS, MiB
from socketlab.i18n import _
from socketlab.tools.check import SERVICES
from socketlab.tools.check.answers import (
    Verdict,
    ascii_upper_form,
    judge_datagram,
    latin1_form,
    other_service_answering,
    show,
    strip_datagram_extras,
)
from socketlab.tools.check.probe import (
    Datagram,
    Deadline,
    ProbeError,
    close_quietly,
    open_udp,
    receive_datagrams,
    send_datagram,
    udp_port_unreachable,
)
from socketlab.tools.check.runner import CheckFunction, Context, Outcome, Status, wrong_service

# A longer datagram first, then a shorter one: a server that reuses its buffer without using the
# length it received answers the second with the tail of the first.
NO_NEWLINE = (b"hello, world", b"hello")
PORTUGUESE = "ação".encode()
SAME_PORT = b"where do you answer from?"
BURST = 100
# 90 %: on a loopback or a quiet LAN a working server answers all 100; losing a few is UDP doing what
# it may do, losing more than a tenth means the server cannot keep up with a modest burst.
BURST_PASS_FRACTION = 0.9
# Room for 100 answers in our own receive buffer, so the losses counted are the server's, not ours.
BURST_RECEIVE_BUFFER = 1 * MiB
# More than the lecture's 1024-byte buffers and more than an Ethernet frame's 1,472 bytes of UDP payload.
LARGE = (b"abcdefghijklmnopqrstuvwxyz0123456789" * 42)[:1500]
# How long to listen for an ICMP "port unreachable" when nothing answered.
UNREACHABLE_WAIT = 0.2 * SECONDS


def _same_host(a: str, b: str) -> bool:
    try:
        x, y = (
            ipaddress.ip_address(a.split("%", maxsplit=1)[0]),
            ipaddress.ip_address(b.split("%", maxsplit=1)[0]),
        )
    except ValueError:
        return a == b
    if isinstance(x, ipaddress.IPv6Address) and x.ipv4_mapped:
        x = x.ipv4_mapped
    if isinstance(y, ipaddress.IPv6Address) and y.ipv4_mapped:
        y = y.ipv4_mapped
    return x == y


def _ask(ctx: Context, request: bytes, deadline: Deadline) -> tuple[list[Datagram], str]:
    """Send one datagram from a fresh socket; every datagram that comes back, and any send error."""
    sock = open_udp(ctx.family)
    try:
        error = send_datagram(sock, request, ctx.address)
        if error:
            return [], error
        answers, error = receive_datagrams(sock, deadline, lambda got: len(got) >= 1)
    finally:
        close_quietly(sock)
    if answers:
        ctx.mark_reached()
    return answers, error


def _no_answer(ctx: Context, sent: str, deadline: Deadline, error: str) -> Outcome:
    """The outcome when nothing came back; raises ProbeError when nothing is listening at all."""
    if not ctx.reached and udp_port_unreachable(ctx.family, ctx.address, deadline, UNREACHABLE_WAIT):
        raise ProbeError(
            _("nothing listens on UDP port {port} (the OS answered 'port unreachable')").format(
                port=ctx.port
            ),
            refused=True,
        )
    how = _(" ({reason})").format(reason=error) if error else ""
    return Outcome(
        Status.FAIL,
        sent,
        _("nothing within {seconds:g} s{how}").format(seconds=ctx.timeout, how=how),
        _(
            "No answer. UDP does not tell the sender when a datagram is lost or ignored: the request or the "
            "answer was lost, the server did not answer, or it answered to another address."
        ),
        _("Answer each datagram with sendto(answer, address), using the address recvfrom() returned."),
    )


def _datagram_problem(
    ctx: Context, verdict: Verdict, answer: bytes, expected: bytes, request: bytes
) -> tuple[str, str]:
    """Explanation and fix for a wrong UDP answer."""
    other = other_service_answering(SERVICES, ctx.service_name, request, answer, datagram=True)
    if other is not None:
        return wrong_service(ctx.service_name, other)
    if verdict is Verdict.NUL_PADDED and len(answer) - len(expected) == 1:
        return (
            _(
                "The answer ends with one NUL byte the request did not have: the server sent a C string "
                "with its terminator (strlen(buf) + 1, or sizeof for a string literal)."
            ),
            _("Send exactly the answer's bytes: sendto(sock, buf, strlen(buf), ...), without the '\\0'."),
        )
    if verdict is Verdict.NUL_PADDED:
        padding = len(answer) - len(expected)
        return (
            _(
                "The answer has {n} NUL bytes after the text ({size} bytes in all): the server answered its "
                "whole receive buffer, not just the datagram. Java's new String(packet.getData()) does "
                "this: getData() is the whole buffer, whatever arrived."
            ).format(n=padding, size=len(answer)),
            _(
                "Use only the bytes received: in Python data, address = sock.recvfrom(65535) gives exactly "
                "them; in Java new String(p.getData(), 0, p.getLength(), StandardCharsets.UTF_8)."
            ),
        )
    if verdict is Verdict.NEWLINE_ADDED:
        return (
            _(
                "The answer ends with a line terminator that the request did not have. UDP carries "
                "datagrams, not lines: the lecture's UDPClient sends no '\\n' and prints whatever comes back."
            ),
            _("Answer the transformed datagram as it is, without adding '\\n'."),
        )
    if verdict is Verdict.LEFTOVER:
        return (
            _(
                "After the right answer come {n} more bytes: pieces of an earlier, longer datagram. The "
                "server reuses its receive buffer and answers more of it than the datagram that just "
                "arrived (Java's getData() without getLength(); C's buffer without the length recvfrom "
                "returned)."
            ).format(n=len(answer) - len(expected)),
            _("Use only the length that recvfrom() (Java: getLength()) returned for this datagram."),
        )
    if verdict is Verdict.TRUNCATED:
        return (
            _(
                "The answer was cut to {got:,} of {want:,} bytes: the server received with a buffer smaller "
                "than the datagram (recvfrom({got}) or a byte[{got}]), and the OS threw away the rest of it. "
                "A UDP datagram can carry up to {max:,} bytes."
            ).format(got=len(answer), want=len(expected), max=MAX_DATAGRAM),
            _("Receive with a buffer as large as the largest datagram you accept: recvfrom(65535)."),
        )
    if verdict is Verdict.LATIN1:
        return (
            _(
                "The text is right but encoded in Latin-1 (one byte per character), not in UTF-8 as it was "
                "sent: a UTF-8 client shows '\ufffd' for each accented letter."
            ),
            _("Encode the answer in UTF-8, like the request: s.getBytes(StandardCharsets.UTF_8) in Java."),
        )
    return (
        _("The answer is not what the {service} service gives: expected {expected}.").format(
            service=ctx.service_name, expected=show(expected)
        ),
        _("Answer each datagram with the transformed datagram, nothing more, nothing less."),
    )


def check_no_newline(ctx: Context) -> Outcome:
    deadline = ctx.deadline()
    sent = _("{first}, then {second} (no newline)").format(
        first=show(NO_NEWLINE[0]), second=show(NO_NEWLINE[1])
    )
    got: list[str] = []
    for request in NO_NEWLINE:
        expected = ctx.service.answer_datagram(request) or b""
        answers, error = _ask(ctx, request, deadline)
        if not answers:
            outcome = _no_answer(ctx, sent, deadline, error)
            if got:
                return Outcome(
                    outcome.status,
                    sent,
                    ", ".join([*got, outcome.received]),
                    outcome.explanation,
                    outcome.fix,
                )
            return outcome
        answer = answers[0].data
        got.append(show(answer))
        if len(answers) > 1:
            return Outcome(
                Status.FAIL,
                sent,
                _("{n} datagrams for one request: {all}").format(
                    n=len(answers), all=", ".join(show(a.data) for a in answers)
                ),
                _(
                    "One request got {n} datagrams back: each datagram is one message and needs one answer."
                ).format(n=len(answers)),
                _("Send exactly one datagram per datagram received."),
            )
        verdict = judge_datagram(expected, answer)
        if verdict is not Verdict.EXACT:
            explanation, fix = _datagram_problem(ctx, verdict, answer, expected, request)
            return Outcome(Status.FAIL, sent, ", ".join(got), explanation, fix)
    return Outcome(
        Status.PASS,
        sent,
        ", ".join(got),
        _("Each answer is exactly the transformed datagram: no newline added, no padding, no leftovers."),
    )


def check_utf8(ctx: Context) -> Outcome:
    deadline = ctx.deadline()
    expected = ctx.service.answer_datagram(PORTUGUESE) or b""
    sent = _("{text} (UTF-8, no newline)").format(text=show(PORTUGUESE))
    answers, error = _ask(ctx, PORTUGUESE, deadline)
    if not answers:
        return _no_answer(ctx, sent, deadline, error)
    answer = answers[0].data
    core = strip_datagram_extras(answer)
    note = ""
    if core != answer:
        note = " " + _("(NUL padding or an added newline ignored here: the no-newline check judges those.)")
    if core == expected:
        return Outcome(Status.PASS, sent, show(answer), _("Portuguese text in UTF-8 came back right.") + note)
    variants: list[tuple[Verdict, bytes | None]] = []
    if ctx.service_name == "upper":
        variants = [
            (Verdict.LATIN1, latin1_form(expected)),
            (Verdict.ASCII_ONLY, ascii_upper_form(PORTUGUESE)),
        ]
    verdict = judge_datagram(expected, core, variants)
    if verdict is Verdict.ASCII_ONLY:
        return Outcome(
            Status.WARNING,
            sent,
            show(answer),
            _(
                "Only the ASCII letters were upper-cased: 'ç' and 'ã' came back unchanged. The bytes are "
                "intact, but the server upper-cases bytes, not text."
            ),
            _(
                "Decode as UTF-8, upper-case the text, encode again: "
                "data.decode('utf-8').upper().encode('utf-8')."
            ),
        )
    explanation, fix = _datagram_problem(ctx, verdict, core, expected, PORTUGUESE)
    return Outcome(Status.FAIL, sent, show(answer), explanation, fix)


def check_same_port(ctx: Context) -> Outcome:
    deadline = ctx.deadline()
    host, port = str(ctx.address[0]), int(ctx.address[1])
    sent = _("{text} to {host} port {port}").format(text=show(SAME_PORT), host=host, port=port)
    answers, error = _ask(ctx, SAME_PORT, deadline)
    if not answers:
        return _no_answer(ctx, sent, deadline, error)
    source = answers[0].source
    src_host, src_port = str(source[0]), int(source[1])
    received = _("an answer from {host} port {port}").format(host=src_host, port=src_port)
    if src_port == port and _same_host(src_host, host):
        return Outcome(
            Status.PASS,
            sent,
            received,
            _("The answer came from the address and port the request was sent to."),
        )
    return Outcome(
        Status.FAIL,
        sent,
        received,
        _(
            "The answer came from {host} port {port}, not from {want_host} port {want_port} where the "
            "request went: the server answered through another socket (or another address). A client "
            "that used connect() drops such answers, and so do firewalls and NAT; the lecture's "
            "UDPClient only accepts it because it never looks at who answered."
        ).format(host=src_host, port=src_port, want_host=host, want_port=port),
        _(
            "Answer with sendto() on the very socket that received the request (in Java, send() on the "
            "DatagramSocket that received it); bind the server to one address when the machine has several."
        ),
    )


def _matches(expected: Counter[bytes], answer: bytes) -> bool:
    """Take the longest expected answer that `answer` starts with (padding and leftovers are tolerated)."""
    best = max((e for e, n in expected.items() if n > 0 and answer.startswith(e)), key=len, default=None)
    if best is None:
        return False
    expected[best] -= 1
    return True


def check_burst(ctx: Context) -> Outcome:
    deadline = ctx.deadline()
    requests = [b"burst %03d of %d" % (i, BURST) for i in range(BURST)]
    expected: Counter[bytes] = Counter(ctx.service.answer_datagram(r) or b"" for r in requests)
    sock = open_udp(ctx.family, BURST_RECEIVE_BUFFER)
    sent_count = 0
    error = ""
    try:
        for request in requests:
            error = send_datagram(sock, request, ctx.address)
            if error:
                break
            sent_count += 1
        answers, _err = receive_datagrams(sock, deadline, lambda got: len(got) >= sent_count)
    finally:
        close_quietly(sock)
    answered = sum(1 for a in answers if _matches(expected, a.data))
    if answers:
        ctx.mark_reached()
    sent = _("{n} datagrams back to back, {first} … {last}").format(
        n=sent_count, first=show(requests[0]), last=show(requests[-1])
    )
    if error:
        sent += " " + _("(sending stopped: {reason})").format(reason=error)
    received = _("{answered} of {n} answered within {seconds:g} s").format(
        answered=answered, n=BURST, seconds=ctx.timeout
    )
    if len(answers) > answered:
        received += " " + _("({n} other datagrams)").format(n=len(answers) - answered)
    loss = _(
        "UDP does not retransmit: when datagrams arrive faster than the server reads them, its receive "
        "buffer fills and the OS drops the rest without telling anyone."
    )
    if answered >= BURST * BURST_PASS_FRACTION:
        text = _("The server kept up with a burst of {n} datagrams.").format(n=BURST)
        if answered < BURST:
            text += " " + loss
        return Outcome(Status.PASS, sent, received, text)
    fix = _(
        "Do less work per datagram (no printing per datagram, no sleeps), enlarge SO_RCVBUF, and make "
        "clients retransmit after a timeout: a UDP protocol must live with loss."
    )
    if answered == 0:
        if not answers and not ctx.reached:
            return _no_answer(ctx, sent, deadline, error)
        return Outcome(
            Status.FAIL, sent, received, _("None of the burst was answered right.") + " " + loss, fix
        )
    return Outcome(
        Status.WARNING,
        sent,
        received,
        _("{lost} of {n} datagrams got no answer.").format(lost=BURST - answered, n=BURST) + " " + loss,
        fix,
    )


def check_large_datagram(ctx: Context) -> Outcome:
    deadline = ctx.deadline()
    expected = ctx.service.answer_datagram(LARGE) or b""
    sent = _("one datagram of {size:,} bytes: {text}").format(size=len(LARGE), text=show(LARGE, 24))
    answers, error = _ask(ctx, LARGE, deadline)
    if not answers:
        outcome = _no_answer(ctx, sent, deadline, error)
        return Outcome(
            outcome.status,
            outcome.sent,
            outcome.received,
            outcome.explanation
            + " "
            + _("A server that answers short datagrams but not this one may have failed on its size."),
            _("Receive with recvfrom(65535) and answer datagrams of any size up to that."),
        )
    answer = answers[0].data
    core = strip_datagram_extras(answer)
    if core == expected:
        return Outcome(
            Status.PASS, sent, show(answer, 24), _("A datagram larger than 1024 bytes came back whole.")
        )
    verdict = judge_datagram(expected, core)
    explanation, fix = _datagram_problem(ctx, verdict, core, expected, LARGE)
    return Outcome(Status.FAIL, sent, show(answer, 24), explanation, fix)


UDP_CHECKS: dict[str, CheckFunction] = {
    "no-newline": check_no_newline,
    "utf8": check_utf8,
    "same-port": check_same_port,
    "large-datagram": check_large_datagram,
    "burst": check_burst,
}
