"""Pure guards against hostile or overwhelming clients: source checks, rate limits, access lists.

Like the rest of the core this module contains no networking code at all: it never opens a socket,
never reads a clock and never sleeps. Callers hand it addresses (strings as `getpeername()` and
`recvfrom()` return them, or `ipaddress` objects) and times (monotonic seconds) as plain values, and
act on the verdicts it returns. Every refusal is counted in a `DropCounters`, so a server can show
what it dropped in its log and its statistics.

How a transport uses it::

    # asyncio.DatagramProtocol
    def datagram_received(self, data, addr):
        if not self.guard.admit(addr[0], addr[1], loop.time()):
            return  # dropped silently, and counted
        answer = self.guard.limit_answer(data, service.answer_datagram(data))
        if answer is not None:
            self.transport.sendto(answer, addr)

    # asyncio.Protocol
    def connection_made(self, transport):
        self.host = transport.get_extra_info("peername")[0]
        if not self.guard.admit(self.host):
            transport.abort()  # before any byte is read; counted
            self.host = None

    def connection_lost(self, exc):
        if self.host is not None:
            self.guard.release(self.host)

Addresses may be given as the strings sockets report, IPv4-mapped IPv6 included (`::ffff:10.0.0.1`
is treated as 10.0.0.1 everywhere), or as `ipaddress` objects.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from enum import StrEnum

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Per-source UDP rate limit: 100 datagrams a second with bursts of 200. A person typing, or a test
# client waiting for each answer, stays far below it; a flood from one address is cut to a trickle.
UDP_RATE = 100.0  # datagrams per second
UDP_BURST = 200  # datagrams
# How many sources the rate limiter remembers at once. A source idle long enough to have a full bucket
# again is forgotten for free (it would start from a full bucket anyway); this cap only matters when
# more sources than this are active at once, which from one lab network means spoofed addresses.
# About 150 bytes each: a few MiB at most.
MAX_TRACKED_SOURCES = 16_384

# Connections open at once from one address (issue 6): a lab full of students behind one NAT stays well
# under it, one runaway script does not take every descriptor.
MAX_PER_ADDRESS = 64

# Source ports of the classic UDP reflection loops (CERT advisory CA-1996-01, "UDP port denial-of-
# service attack"): echo (7), daytime (13), chargen (19) and time (37) answer anything, so a datagram
# forged to come from one of them makes two servers bounce answers at each other forever. Port 0 is
# never a real source.
REFLECTION_PORTS = frozenset({0, 7, 13, 19, 37})
PRIVILEGED_PORT_LIMIT = 1024  # ports below this belong to system services, never to clients

# The short answer sent in place of one that would be larger than its request (see AmplificationGuard).
ERR_TOO_LARGE = b"ERR too large"


class DropReason(StrEnum):
    """Why a datagram or a connection was refused; the value is the counter's name."""

    DENIED = "denied"  # the access list refuses the address
    REFLECTION_PORT = "reflection_port"  # source port 0, 7, 13, 19 or 37
    PRIVILEGED_PORT = "privileged_port"  # source port below 1024, when asked to drop those
    BAD_SOURCE = "bad_source"  # broadcast, multicast or unspecified source address
    RATE_LIMITED = "rate_limited"  # the source spent its tokens
    AMPLIFICATION = "amplification"  # the answer would have been larger than the request
    PER_ADDRESS = "per_address"  # too many connections open from one address


class DropCounters:
    """How many datagrams (or connections) each guard refused, by reason."""

    def __init__(self) -> None:
        self._counts: dict[DropReason, int] = dict.fromkeys(DropReason, 0)

    def count(self, reason: DropReason, n: int = 1) -> None:
        self._counts[reason] += n

    def __getitem__(self, reason: DropReason) -> int:
        return self._counts[reason]

    @property
    def total(self) -> int:
        return sum(self._counts.values())

    def snapshot(self) -> dict[str, int]:
        """Every counter by name, zeros included (for JSON and `--stats`)."""
        return {reason.value: n for reason, n in self._counts.items()}

    def __repr__(self) -> str:
        counts = ", ".join(f"{name}={n}" for name, n in self.snapshot().items() if n)
        return f"DropCounters({counts})"


# --- addresses ---------------------------------------------------------------------------------------


def canonical_address(address: str | IPAddress) -> IPAddress:
    """An address in the one form every guard compares: IPv4-mapped IPv6 becomes plain IPv4.

    A dual-stack socket reports an IPv4 client as ``::ffff:10.0.0.1``, an IPv4 socket as
    ``10.0.0.1``; the same client must get the same verdict on both. Raises ValueError for text that
    is not an IP address.
    """
    if isinstance(address, str):
        return _parse_canonical(address)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=4096)
def _parse_canonical(text: str) -> IPAddress:
    # Cached: a server sees the same few addresses over and over, and parsing costs more than the
    # guard itself. A flood of distinct (spoofed) addresses only evicts entries, it cannot grow this.
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


_MAPPED_PREFIX = ipaddress.IPv6Network("::ffff:0:0/96")


def canonical_network(network: str | IPNetwork) -> IPNetwork:
    """A network in canonical form: ``::ffff:10.0.0.0/104`` becomes ``10.0.0.0/8``.

    Host bits must be zero (``10.0.0.1/8`` is refused, as a likely typo); a bare address is a /32 or
    /128. Raises ValueError for anything else.
    """
    net = ipaddress.ip_network(network, strict=True) if isinstance(network, str) else network
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_MAPPED_PREFIX):
        mapped = net.network_address.ipv4_mapped
        assert mapped is not None  # inside ::ffff:0:0/96
        return ipaddress.IPv4Network((mapped, net.prefixlen - 96))
    return net


def is_loopback(address: str | IPAddress) -> bool:
    """True for 127.0.0.0/8, ::1 and ::ffff:127.x.y.z; False for anything that is not an address."""
    try:
        return canonical_address(address).is_loopback
    except ValueError:
        return False


# --- access lists ------------------------------------------------------------------------------------


class AccessList:
    """ncat's --allow/--deny rules, for CIDR networks and single addresses.

    - with no rules at all, everyone is allowed;
    - with at least one allow rule, only the addresses it covers are allowed;
    - a deny rule wins over any allow rule that also covers the address;
    - IPv4-mapped IPv6 addresses and networks are compared as the IPv4 they carry, so
      ``::ffff:10.0.0.1`` is in ``10.0.0.0/8``. Beyond that, ``ipaddress`` semantics: an IPv6 network
      (``::/0`` included) never covers an IPv4 client.

    Anything that is not an IP address (a Unix socket path, an empty string) is refused once there is
    any rule, since no rule can vouch for it.
    """

    def __init__(self, allow: Iterable[str | IPNetwork] = (), deny: Iterable[str | IPNetwork] = ()) -> None:
        self.allow: tuple[IPNetwork, ...] = _collapse(canonical_network(n) for n in allow)
        self.deny: tuple[IPNetwork, ...] = _collapse(canonical_network(n) for n in deny)

    @classmethod
    def from_files(
        cls,
        allow: Iterable[str | IPNetwork] = (),
        deny: Iterable[str | IPNetwork] = (),
        allow_texts: Iterable[str] = (),
        deny_texts: Iterable[str] = (),
    ) -> AccessList:
        """Rules given one by one plus the contents of --allow-file/--deny-file (already read)."""
        allow_all = [*allow, *(n for text in allow_texts for n in parse_cidr_file(text))]
        deny_all = [*deny, *(n for text in deny_texts for n in parse_cidr_file(text))]
        return cls(allow_all, deny_all)

    @property
    def empty(self) -> bool:
        return not self.allow and not self.deny

    def allows(self, address: str | IPAddress) -> bool:
        if not self.allow and not self.deny:
            return True
        try:
            ip = canonical_address(address)
        except ValueError:
            return False
        if any(ip in net for net in self.deny if net.version == ip.version):
            return False
        if not self.allow:
            return True
        return any(ip in net for net in self.allow if net.version == ip.version)

    def check(self, address: str | IPAddress) -> DropReason | None:
        """`DropReason.DENIED` or None: the same verdict as `allows`, in the guards' common form."""
        return None if self.allows(address) else DropReason.DENIED


def _collapse(networks: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    # Fewer, larger networks: the same set of addresses, a shorter list to scan per client.
    v4: list[ipaddress.IPv4Network] = []
    v6: list[ipaddress.IPv6Network] = []
    for net in networks:
        if isinstance(net, ipaddress.IPv4Network):
            v4.append(net)
        else:
            v6.append(net)
    return (*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6))


def parse_cidr_file(text: str) -> Iterator[IPNetwork]:
    """The networks in the text of an --allow-file/--deny-file.

    One or more networks per line separated by blanks or commas; ``#`` starts a comment. A bad entry
    raises ValueError naming its line, since a silently skipped line of an access list is a hole.
    """
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.partition("#")[0]
        for word in line.replace(",", " ").split():
            try:
                yield canonical_network(word)
            except ValueError as exc:
                raise ValueError(f"line {number}: {exc}") from exc


# --- UDP sources -------------------------------------------------------------------------------------


class UdpSourceGuard:
    """Refuses datagrams whose source cannot be a real client, or is the classic reflection bait.

    A server answering such a datagram would send its answer to a victim: another echo/chargen
    service (CA-1996-01), a whole broadcast domain, or nobody at all.
    """

    def __init__(
        self,
        drop_privileged_ports: bool = False,
        broadcast_addresses: Iterable[str | IPAddress] = (),
    ) -> None:
        self.drop_privileged_ports = drop_privileged_ports
        # Directed broadcasts (10.0.0.255 on a /24) depend on the local netmasks, which only the
        # caller knows; 255.255.255.255 is always refused.
        self.broadcast_addresses = frozenset(canonical_address(a) for a in broadcast_addresses)

    def check(self, host: str | IPAddress, port: int) -> DropReason | None:
        """None when the source is acceptable, otherwise why it is not."""
        if port in REFLECTION_PORTS:
            return DropReason.REFLECTION_PORT
        if self.drop_privileged_ports and port < PRIVILEGED_PORT_LIMIT:
            return DropReason.PRIVILEGED_PORT
        try:
            ip = canonical_address(host)
        except ValueError:
            return DropReason.BAD_SOURCE
        if ip.is_multicast or ip.is_unspecified or ip in self.broadcast_addresses:
            return DropReason.BAD_SOURCE
        if isinstance(ip, ipaddress.IPv4Address) and ip == _LIMITED_BROADCAST:
            return DropReason.BAD_SOURCE
        return None


_LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


# --- rate limits -------------------------------------------------------------------------------------


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; each datagram spends one.

    Over any interval of T seconds it grants at most ``rate * T + burst`` tokens. Times are the
    caller's monotonic seconds; a time earlier than the last one seen counts as no time passing.
    It starts full at time `now`.
    """

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float = 0.0) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.last = now

    def take(self, now: float, n: float = 1.0) -> bool:
        """Spend `n` tokens at time `now` if there are enough; False (nothing spent) otherwise."""
        if now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
        # The slack forgives float rounding (0.05 s at 20/s must make one whole token), not clients.
        if self.tokens >= n - 1e-9:
            self.tokens -= n
            return True
        return False

    def full_at(self) -> float:
        """The time at which the bucket will be full again if nothing is spent."""
        return self.last + (self.burst - self.tokens) / self.rate


class RateLimiter:
    """One token bucket per source address, with memory bounded by `max_sources`.

    `rate` 0 turns the limit off. Loopback sources are exempt unless `limit_loopback` is set, so a
    benchmark on the same machine is not throttled. Only the address counts, not the port: a client
    cannot get more by opening more sockets.
    """

    def __init__(
        self,
        rate: float = UDP_RATE,
        burst: float = UDP_BURST,
        limit_loopback: bool = False,
        max_sources: int = MAX_TRACKED_SOURCES,
    ) -> None:
        if rate < 0 or (rate > 0 and burst < 1) or max_sources < 1:
            raise ValueError("rate must be >= 0, burst >= 1 and max_sources >= 1")
        self.rate = rate
        self.burst = burst
        self.limit_loopback = limit_loopback
        self.max_sources = max_sources
        # Least recently seen first: idle sources are found at the front, in O(1) per call.
        self._buckets: OrderedDict[IPAddress, TokenBucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    @property
    def tracked(self) -> int:
        """How many sources are remembered right now."""
        return len(self._buckets)

    def allow(self, address: str | IPAddress, now: float) -> bool:
        """Spend one token of `address`'s bucket at `now`; False when it has none left."""
        if not self.rate:
            return True
        try:
            ip = canonical_address(address)
        except ValueError:
            return False
        if ip.is_loopback and not self.limit_loopback:
            return True
        buckets = self._buckets
        bucket = buckets.get(ip)
        if bucket is None:
            self._forget_idle(now)
            if len(buckets) >= self.max_sources:
                # Every remembered source is active: forget the one seen longest ago. It starts
                # afresh if it comes back, which costs at most one extra burst; refusing newcomers
                # instead would let a spoofed flood lock every new client out.
                buckets.popitem(last=False)
            bucket = buckets[ip] = TokenBucket(self.rate, self.burst, now)
        else:
            buckets.move_to_end(ip)
        return bucket.take(now)

    def check(self, address: str | IPAddress, now: float) -> DropReason | None:
        return None if self.allow(address, now) else DropReason.RATE_LIMITED

    def _forget_idle(self, now: float) -> None:
        # A bucket that has filled up again is the same as no bucket: dropping it changes no verdict.
        buckets = self._buckets
        while buckets:
            ip, bucket = next(iter(buckets.items()))
            if bucket.full_at() > now:
                break
            del buckets[ip]


# --- connections per address ---------------------------------------------------------------------------


class ConnectionLimiter:
    """At most `max_per_address` connections open at once from one address; 0 turns the cap off.

    Loopback is exempt unless `limit_loopback` is set. Memory is one entry per address with a
    connection open: an address is forgotten when its last connection closes. Call `release` exactly
    once for every `acquire` that returned True.
    """

    def __init__(
        self,
        max_per_address: int = MAX_PER_ADDRESS,
        limit_loopback: bool = False,
        counters: DropCounters | None = None,
    ) -> None:
        if max_per_address < 0:
            raise ValueError("max_per_address must be >= 0")
        self.max_per_address = max_per_address
        self.limit_loopback = limit_loopback
        self.counters = counters if counters is not None else DropCounters()
        self._open: dict[IPAddress, int] = {}

    def acquire(self, address: str | IPAddress) -> bool:
        """True: the connection may stay (and is counted as open); False: refuse it (counted)."""
        if not self.max_per_address:
            return True
        try:
            ip = canonical_address(address)
        except ValueError:
            return True  # not an IP peer (a Unix socket): nothing to group it by
        if ip.is_loopback and not self.limit_loopback:
            return True
        n = self._open.get(ip, 0)
        if n >= self.max_per_address:
            self.counters.count(DropReason.PER_ADDRESS)
            return False
        self._open[ip] = n + 1
        return True

    def release(self, address: str | IPAddress) -> None:
        """A connection that `acquire` accepted has closed."""
        try:
            ip = canonical_address(address)
        except ValueError:
            return
        n = self._open.get(ip, 0)
        if n <= 1:
            # Also covers addresses acquire() never counted (exempt, or the cap was off), so a
            # release without its acquire cannot go negative.
            self._open.pop(ip, None)
        else:
            self._open[ip] = n - 1

    def open_from(self, address: str | IPAddress) -> int:
        """How many counted connections `address` has open."""
        try:
            return self._open.get(canonical_address(address), 0)
        except ValueError:
            return 0


# --- amplification -----------------------------------------------------------------------------------


class AmplificationGuard:
    """An answer is never larger than its request, so a forged source gains nothing by our answer.

    UDP reflection attacks look for services whose answers are bigger than the questions. `upper` can
    grow text (``ŉ`` is 2 bytes in UTF-8, its capital ``ʼN`` is 3) and a user's function can return
    anything, so every answer goes through `limit`: one that is too large becomes `error` if that is
    itself no larger than the request, and nothing otherwise.
    """

    def __init__(self, counters: DropCounters | None = None, error: bytes = ERR_TOO_LARGE) -> None:
        self.counters = counters if counters is not None else DropCounters()
        self.error = error

    def limit(self, request: bytes, answer: bytes | None) -> bytes | None:
        """What to send for `request` instead of `answer` (None: send nothing)."""
        if answer is None or len(answer) <= len(request):
            return answer
        self.counters.count(DropReason.AMPLIFICATION)
        return self.error if len(self.error) <= len(request) else None


# --- all together: one guard per kind of server ---------------------------------------------------------


class ConnectionGuard:
    """The checks for a new TCP connection, access list first; refusals are counted in `counters`."""

    def __init__(
        self,
        access: AccessList | None = None,
        per_address: ConnectionLimiter | None = None,
        counters: DropCounters | None = None,
    ) -> None:
        self.counters = counters if counters is not None else DropCounters()
        self.access = access if access is not None else AccessList()
        self.per_address = per_address if per_address is not None else ConnectionLimiter()
        # The limiter counts its own refusals: make it count them here.
        self.per_address.counters = self.counters

    def check(self, host: str | IPAddress) -> DropReason | None:
        """None to keep the connection (it is then counted as open until `release`), or why not."""
        if not self.access.allows(host):
            self.counters.count(DropReason.DENIED)
            return DropReason.DENIED
        if not self.per_address.acquire(host):
            return DropReason.PER_ADDRESS
        return None

    def admit(self, host: str | IPAddress) -> bool:
        return self.check(host) is None

    def release(self, host: str | IPAddress) -> None:
        """A connection that was admitted has closed."""
        self.per_address.release(host)


class UdpGuard:
    """Every UDP check in the order that costs least: port, address, access list, rate.

    Refused datagrams are counted in `counters` by reason; answers go through `limit_answer`.
    """

    def __init__(
        self,
        access: AccessList | None = None,
        source: UdpSourceGuard | None = None,
        rate: RateLimiter | None = None,
        counters: DropCounters | None = None,
        amplification_error: bytes = ERR_TOO_LARGE,
    ) -> None:
        self.counters = counters if counters is not None else DropCounters()
        self.access = access if access is not None else AccessList()
        self.source = source if source is not None else UdpSourceGuard()
        self.rate = rate if rate is not None else RateLimiter()
        self.amplification = AmplificationGuard(self.counters, amplification_error)

    def check(self, host: str | IPAddress, port: int, now: float) -> DropReason | None:
        """None to serve the datagram, or why it is dropped (already counted)."""
        reason = self.source.check(host, port)
        if reason is None:
            reason = self.access.check(host)
        if reason is None and not self.rate.allow(host, now):
            reason = DropReason.RATE_LIMITED
        if reason is not None:
            self.counters.count(reason)
        return reason

    def admit(self, host: str | IPAddress, port: int, now: float) -> bool:
        """True to serve the datagram; False to drop it silently (already counted)."""
        return self.check(host, port, now) is None

    def limit_answer(self, request: bytes, answer: bytes | None) -> bytes | None:
        return self.amplification.limit(request, answer)

    def stats(self) -> Mapping[str, int]:
        return self.counters.snapshot()
