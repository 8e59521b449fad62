"""The checker's types and its runner: run the chosen checks one after the other, collect results.

Library code: it returns a `Report`; printing and exit codes are the CLI's job.
"""

from __future__ import annotations

import enum
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from socketlab.core.services import Service, make_service
from socketlab.errors import ConfigError, ConnectError
from socketlab.i18n import _
from socketlab.tools.check import DEFAULT_TIMEOUT, JSON_SCHEMA, SERVICES, TCP_CHECK_IDS, UDP_CHECK_IDS
from socketlab.tools.check.probe import (
    Deadline,
    ProbeError,
    SockAddr,
    connect_tcp,
    resolve,
    udp_port_unreachable,
)
from socketlab.transports.binding import format_peer

# How long to listen for an ICMP "port unreachable" per address when choosing among several.
UDP_PICK_WAIT = 0.1


class Status(enum.StrEnum):
    PASS = "pass"  # noqa: S105 - a status, not a password
    WARNING = "warning"
    FAIL = "fail"


@dataclass(frozen=True)
class Outcome:
    """What a check found, before the runner adds its id and duration."""

    status: Status
    sent: str
    received: str
    explanation: str
    fix: str = ""


@dataclass(frozen=True)
class CheckResult:
    id: str
    status: Status
    sent: str
    received: str
    explanation: str
    fix: str
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": str(self.status),
            "sent": self.sent,
            "received": self.received,
            "explanation": self.explanation,
            "fix": self.fix,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class Context:
    """What every check of one run shares: where the server is, what it should answer, the history."""

    proto: str
    host: str
    port: int
    service_name: str
    service: Service
    timeout: float
    addresses: list[tuple[int, SockAddr]]
    reached: bool = False  # some check got through to the server (a connection, an answer)
    answered: bool = False  # an earlier check passed or warned: the server answers lines
    last_reached: str = ""  # the id of the last check that did
    current: str = ""

    @property
    def family(self) -> int:
        return self.addresses[0][0]

    @property
    def address(self) -> SockAddr:
        return self.addresses[0][1]

    def deadline(self) -> Deadline:
        return Deadline(self.timeout)

    def connect(self, deadline: Deadline) -> Any:
        """A TCP connection to the server; tries each resolved address until one accepts.

        The address that worked moves to the front, so later checks use it first.
        """
        error: ProbeError | None = None
        for i, (family, address) in enumerate(self.addresses):
            try:
                sock = connect_tcp(family, address, deadline)
            except ProbeError as exc:
                error = error or exc
                if deadline.expired():
                    break
                continue
            if i:
                self.addresses.insert(0, self.addresses.pop(i))
            self.mark_reached()
            return sock
        assert error is not None
        raise error

    def mark_reached(self) -> None:
        self.reached = True
        self.last_reached = self.current


CheckFunction = Callable[[Context], Outcome]


@dataclass(frozen=True)
class Check:
    id: str
    run: CheckFunction


@dataclass
class Report:
    proto: str
    host: str
    port: int
    service: str
    timeout: float
    address: str = ""
    results: list[CheckResult] = field(default_factory=list)

    def count(self, status: Status) -> int:
        return sum(1 for r in self.results if r.status is status)

    @property
    def failed(self) -> bool:
        return self.count(Status.FAIL) > 0

    def to_json(self) -> dict[str, Any]:
        """The stable machine-readable form (documented in docs/check.md)."""
        return {
            "schema": JSON_SCHEMA,
            "target": {
                "proto": self.proto,
                "host": self.host,
                "port": self.port,
                "address": self.address,
                "service": self.service,
            },
            "timeout": self.timeout,
            "checks": [r.to_json() for r in self.results],
            "summary": {
                "total": len(self.results),
                "pass": self.count(Status.PASS),
                "warning": self.count(Status.WARNING),
                "fail": self.count(Status.FAIL),
            },
        }


def checks_for(proto: str) -> list[Check]:
    """The checks of a protocol, in the order they run."""
    if proto == "tcp":
        from socketlab.tools.check.tcp import TCP_CHECKS  # noqa: PLC0415 - tcp imports this module

        return [Check(check_id, TCP_CHECKS[check_id]) for check_id in TCP_CHECK_IDS]
    if proto == "udp":
        from socketlab.tools.check.udp import UDP_CHECKS  # noqa: PLC0415 - udp imports this module

        return [Check(check_id, UDP_CHECKS[check_id]) for check_id in UDP_CHECK_IDS]
    raise ConfigError(_("unknown protocol {proto!r}: use tcp or udp").format(proto=proto))


def check_ids(proto: str) -> list[str]:
    return [c.id for c in checks_for(proto)]


def select_checks(proto: str, only: Iterable[str] = (), skip: Iterable[str] = ()) -> list[Check]:
    """The checks to run, in their fixed order.

    Ids of the other protocol's checks are ignored, so one --skip list can serve a TCP and a UDP run;
    ConfigError names an id that no check has, or an --only that leaves nothing to run.
    """
    checks = checks_for(proto)
    known = [c.id for c in checks]
    only_set, skip_set = set(only), set(skip)
    unknown = sorted((only_set | skip_set) - set(TCP_CHECK_IDS) - set(UDP_CHECK_IDS))
    if unknown:
        raise ConfigError(
            _("unknown check(s): {unknown}; the {proto} checks are: {known}").format(
                proto=proto, unknown=", ".join(unknown), known=", ".join(known)
            )
        )
    selected = [c for c in checks if (not only_set or c.id in only_set) and c.id not in skip_set]
    if not selected:
        raise ConfigError(
            _("no {proto} check left to run; the {proto} checks are: {known}").format(
                proto=proto, known=", ".join(known)
            )
        )
    return selected


def run_checks(
    proto: str,
    host: str,
    port: int,
    *,
    service: str = "upper",
    timeout: float = DEFAULT_TIMEOUT,
    only: Sequence[str] = (),
    skip: Sequence[str] = (),
    on_result: Callable[[CheckResult], None] | None = None,
) -> Report:
    """Run the chosen checks against the server at host:port, one after the other.

    `on_result` is called after each check (the CLI prints as the run goes). Raises ConfigError for a
    bad service, protocol or check id, ConnectError when the host name does not resolve.
    """
    if service not in SERVICES:
        raise ConfigError(
            _("the checker knows the services {services}, not {service!r}").format(
                services=", ".join(SERVICES), service=service
            )
        )
    if timeout <= 0:
        raise ConfigError(_("the timeout must be more than 0 seconds"))
    selected = select_checks(proto, only, skip)
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    try:
        addresses = resolve(host, port, kind)
    except ProbeError as exc:
        raise ConnectError(exc.reason) from exc
    if proto == "udp" and len(addresses) > 1:
        addresses = udp_addresses_listening_first(addresses, timeout)
    ctx = Context(proto, host, port, service, make_service(service), timeout, addresses)
    report = Report(proto, host, port, service, timeout, format_peer(ctx.address))
    abandoned = ""
    for check in selected:
        ctx.current = check.id
        started = time.monotonic()
        if abandoned:
            outcome = Outcome(Status.FAIL, "", "", abandoned)
        else:
            try:
                outcome = check.run(ctx)
            except ProbeError as exc:
                outcome = unreachable_outcome(ctx, exc)
                if not ctx.reached:
                    # Nothing ever answered: every other check would only wait and say the same.
                    abandoned = _("Not run: the server could not be reached: {reason}.").format(
                        reason=exc.reason
                    )
        result = CheckResult(
            check.id,
            outcome.status,
            outcome.sent,
            outcome.received,
            outcome.explanation,
            outcome.fix,
            time.monotonic() - started,
        )
        report.results.append(result)
        # half-close is passed even by servers that answer only once the client stops sending, so it
        # proves nothing about answering lines on an open connection.
        if result.status is not Status.FAIL and check.id != "half-close":
            ctx.answered = True
        report.address = format_peer(ctx.address)
        if on_result is not None:
            on_result(result)
    return report


def udp_addresses_listening_first(
    addresses: list[tuple[int, SockAddr]], timeout: float
) -> list[tuple[int, SockAddr]]:
    """The addresses with the first one where something listens moved to the front.

    `localhost` is often ::1 first, while a student's UDP server listens on 0.0.0.0 only; unlike TCP,
    which tries each address in turn, UDP would just hear nothing. A connected UDP socket is told
    when nothing listens (ICMP port unreachable), which is what this asks each address, in order,
    until one does not say so. The one datagram sent to a listening server is a bare '\n'.
    """
    deadline = Deadline(timeout)
    for i, (family, address) in enumerate(addresses):
        if not udp_port_unreachable(family, address, deadline, UDP_PICK_WAIT):
            return [addresses[i], *addresses[:i], *addresses[i + 1 :]]
    return addresses


def wrong_service(current: str, other: str) -> tuple[str, str]:
    """Explanation and fix when the answers are another service's: most likely a wrong --service."""
    return (
        _(
            "These are the answers of the {other} service, not of {current}: the server may be right "
            "and the checker told the wrong service."
        ).format(other=other, current=current),
        _("If the server is meant to be {other}, run the checker with --service {other}.").format(
            other=other
        ),
    )


def unreachable_outcome(ctx: Context, exc: ProbeError) -> Outcome:
    """The result of a check that could not reach the server at all."""
    if ctx.reached:
        explanation = _(
            "Could not reach the server: {reason}. It accepted connections earlier in this run (last "
            "in check {check}), so it has probably crashed, or it ended after serving its clients: "
            "look for an exception in its console."
        ).format(reason=exc.reason, check=ctx.last_reached)
        fix = _(
            "Find out why it stopped (an exception in its console after check {check}, or a program "
            "that serves one client and exits), fix that, and run the checker again."
        ).format(check=ctx.last_reached)
    else:
        explanation = _(
            "Could not reach the server: {reason}. Is it running, on this host and port, with this protocol?"
        ).format(reason=exc.reason)
        fix = _("Start the server first; check the host, the port and tcp/udp.")
    sent = _("a connection request") if ctx.proto == "tcp" else _("a datagram")
    return Outcome(Status.FAIL, sent, _("nothing"), explanation, fix)
