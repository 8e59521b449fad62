"""The pure guards: source checks, token buckets, access lists, amplification, per-address caps."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from socketlab.core.guards import (
    ERR_TOO_LARGE,
    REFLECTION_PORTS,
    AccessList,
    AmplificationGuard,
    ConnectionGuard,
    ConnectionLimiter,
    DropCounters,
    DropReason,
    RateLimiter,
    TokenBucket,
    UdpGuard,
    UdpSourceGuard,
    canonical_address,
    canonical_network,
    is_loopback,
    parse_cidr_file,
)

# --- addresses ----------------------------------------------------------------------------------------


def test_mapped_ipv6_becomes_ipv4() -> None:
    assert canonical_address("::ffff:10.0.0.1") == ipaddress.IPv4Address("10.0.0.1")
    assert canonical_address(ipaddress.IPv6Address("::ffff:10.0.0.1")) == ipaddress.IPv4Address("10.0.0.1")
    assert canonical_address("2001:db8::1") == ipaddress.IPv6Address("2001:db8::1")
    assert canonical_network("::ffff:10.0.0.0/104") == ipaddress.IPv4Network("10.0.0.0/8")
    assert canonical_network("::ffff:0:0/96") == ipaddress.IPv4Network("0.0.0.0/0")
    # Wider than the mapped block: stays IPv6.
    assert canonical_network("::/0") == ipaddress.IPv6Network("::/0")


def test_network_with_host_bits_is_refused() -> None:
    with pytest.raises(ValueError):
        canonical_network("10.0.0.1/8")


def test_loopback() -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("127.3.2.1")
    assert is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("10.0.0.1")
    assert not is_loopback("/tmp/socket")


# --- UDP sources ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("port", sorted(REFLECTION_PORTS))
def test_reflection_ports_are_dropped(port: int) -> None:
    assert UdpSourceGuard().check("192.0.2.1", port) is DropReason.REFLECTION_PORT


@pytest.mark.parametrize(
    "host",
    [
        "255.255.255.255",
        "224.0.0.1",
        "239.255.255.250",
        "0.0.0.0",
        "::",
        "ff02::1",
        "::ffff:224.0.0.1",
        "::ffff:255.255.255.255",
        "not an address",
    ],
)
def test_impossible_sources_are_dropped(host: str) -> None:
    assert UdpSourceGuard().check(host, 40000) is DropReason.BAD_SOURCE


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "192.0.2.1", "2001:db8::7", "::ffff:192.0.2.1"])
def test_ordinary_sources_pass(host: str) -> None:
    guard = UdpSourceGuard()
    assert guard.check(host, 40000) is None
    assert guard.check(host, 1023) is None
    assert guard.check(host, 65535) is None


def test_directed_broadcast_given_by_caller() -> None:
    guard = UdpSourceGuard(broadcast_addresses=["192.0.2.255"])
    assert guard.check("192.0.2.255", 5000) is DropReason.BAD_SOURCE
    assert guard.check("::ffff:192.0.2.255", 5000) is DropReason.BAD_SOURCE
    assert guard.check("192.0.2.254", 5000) is None


def test_privileged_ports_on_request() -> None:
    guard = UdpSourceGuard(drop_privileged_ports=True)
    assert guard.check("192.0.2.1", 1023) is DropReason.PRIVILEGED_PORT
    assert guard.check("192.0.2.1", 53) is DropReason.PRIVILEGED_PORT
    assert guard.check("192.0.2.1", 19) is DropReason.REFLECTION_PORT
    assert guard.check("192.0.2.1", 1024) is None


# --- token buckets -------------------------------------------------------------------------------------


def test_bucket_starts_full_then_refills_at_rate() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=100.0)
    assert [bucket.take(100.0) for _ in range(6)] == [True] * 5 + [False]
    assert not bucket.take(100.05)  # half a token
    assert bucket.take(100.1)
    assert not bucket.take(100.1)
    # A long pause saves up no more than the burst.
    assert sum(bucket.take(1000.0) for _ in range(50)) == 5


def test_bucket_ignores_time_going_backwards() -> None:
    bucket = TokenBucket(rate=1, burst=1, now=10.0)
    assert bucket.take(10.0)
    assert not bucket.take(5.0)
    assert not bucket.take(10.5)
    assert bucket.take(11.0)


def test_bucket_needs_a_rate_and_a_burst() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1)
    with pytest.raises(ValueError):
        TokenBucket(rate=1, burst=0.5)


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(min_value=0.5, max_value=1000),
    burst=st.integers(min_value=1, max_value=300),
    gaps=st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=400),
)
def test_bucket_never_grants_more_than_rate_times_t_plus_burst(
    rate: float, burst: int, gaps: list[float]
) -> None:
    bucket = TokenBucket(rate, burst, now=0.0)
    times: list[float] = []
    now = 0.0
    for gap in gaps:
        now += gap
        if bucket.take(now):
            times.append(now)
    # Every window [times[i], times[j]] holds j - i + 1 grants.
    for i in range(len(times)):
        for j in range(i, len(times)):
            assert j - i + 1 <= rate * (times[j] - times[i]) + burst + 1e-6


@settings(max_examples=100, deadline=None)
@given(gaps=st.lists(st.floats(min_value=0, max_value=0.05), min_size=1, max_size=300))
def test_bucket_grants_what_a_patient_client_is_owed(gaps: list[float]) -> None:
    # A client sending no faster than the rate is never refused.
    rate = 20.0
    bucket = TokenBucket(rate, burst=1, now=0.0)
    now = 0.0
    for gap in gaps:
        now += max(gap, 1 / rate)
        assert bucket.take(now)


# --- the rate limiter --------------------------------------------------------------------------------


def test_rate_limiter_is_per_address_not_per_port() -> None:
    limiter = RateLimiter(rate=1, burst=3)
    assert [limiter.allow("192.0.2.1", 0.0) for _ in range(4)] == [True, True, True, False]
    # Another address has its own bucket; the mapped form of the first shares the first's.
    assert limiter.allow("192.0.2.2", 0.0)
    assert not limiter.allow("::ffff:192.0.2.1", 0.0)
    assert limiter.check("192.0.2.1", 0.0) is DropReason.RATE_LIMITED
    assert limiter.check("192.0.2.1", 1.0) is None


def test_rate_limiter_spares_loopback_unless_asked() -> None:
    free = RateLimiter(rate=1, burst=1)
    assert all(free.allow("127.0.0.1", 0.0) for _ in range(1000))
    assert all(free.allow("::1", 0.0) for _ in range(1000))
    assert free.tracked == 0
    strict = RateLimiter(rate=1, burst=1, limit_loopback=True)
    assert strict.allow("127.0.0.1", 0.0)
    assert not strict.allow("127.0.0.1", 0.0)


def test_rate_zero_is_off() -> None:
    limiter = RateLimiter(rate=0)
    assert not limiter.enabled
    assert all(limiter.allow("192.0.2.1", 0.0) for _ in range(10_000))


def test_rate_limiter_forgets_idle_sources() -> None:
    limiter = RateLimiter(rate=10, burst=20)
    for i in range(1000):
        limiter.allow(f"10.0.{i // 256}.{i % 256}", 0.0)
    assert limiter.tracked == 1000
    # Two seconds later every one of those buckets is full again, so remembering them is pointless.
    limiter.allow("192.0.2.1", 2.0)
    assert limiter.tracked == 1


def test_rate_limiter_memory_is_capped_by_forgetting_the_oldest() -> None:
    limiter = RateLimiter(rate=1, burst=5, max_sources=100)
    for i in range(10_000):
        assert limiter.allow(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", i * 1e-6)
        assert limiter.tracked <= 100
    # The newest sources are still remembered, with a token spent.
    newest = "10.0.39.15"  # i = 9999
    assert limiter.allow(newest, 0.01)
    assert sum(limiter.allow(newest, 0.01) for _ in range(10)) == 3


@settings(max_examples=100, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.integers(min_value=0, max_value=7), st.floats(min_value=0, max_value=0.3)),
        max_size=300,
    )
)
def test_each_source_gets_at_most_rate_times_t_plus_burst(events: list[tuple[int, float]]) -> None:
    rate, burst = 5.0, 3
    # Room for every source: forgetting idle ones must change no verdict.
    limiter = RateLimiter(rate=rate, burst=burst, max_sources=8)
    granted: dict[int, list[float]] = {}
    now = 0.0
    for source, gap in events:
        now += gap
        if limiter.allow(f"192.0.2.{source}", now):
            granted.setdefault(source, []).append(now)
    for times in granted.values():
        for i in range(len(times)):
            for j in range(i, len(times)):
                assert j - i + 1 <= rate * (times[j] - times[i]) + burst + 1e-6


# --- access lists --------------------------------------------------------------------------------------


def test_no_rules_allow_everyone() -> None:
    acl = AccessList()
    assert acl.empty
    assert acl.allows("192.0.2.1")
    assert acl.allows("not even an address")


def test_allow_list_refuses_everything_else() -> None:
    acl = AccessList(allow=["10.0.0.0/8", "2001:db8::/32"])
    assert acl.allows("10.1.2.3")
    assert acl.allows("2001:db8::1")
    assert not acl.allows("11.0.0.1")
    assert not acl.allows("127.0.0.1")
    assert not acl.allows("2001:db9::1")
    assert not acl.allows("/tmp/unix-socket")
    assert acl.check("11.0.0.1") is DropReason.DENIED


def test_deny_wins_over_allow() -> None:
    acl = AccessList(allow=["10.0.0.0/8"], deny=["10.1.0.0/16", "10.2.3.4"])
    assert acl.allows("10.0.0.1")
    assert not acl.allows("10.1.0.1")
    assert not acl.allows("10.2.3.4")
    assert acl.allows("10.2.3.5")
    # Deny alone refuses only what it names.
    only_deny = AccessList(deny=["192.0.2.0/24"])
    assert not only_deny.allows("192.0.2.9")
    assert only_deny.allows("198.51.100.1")
    # The same network allowed and denied: denied.
    assert not AccessList(allow=["192.0.2.0/24"], deny=["192.0.2.0/24"]).allows("192.0.2.1")


def test_ipv4_mapped_ipv6_matches_ipv4_rules() -> None:
    acl = AccessList(allow=["10.0.0.0/8"], deny=["::ffff:10.9.0.0/112"])
    assert acl.allows("::ffff:10.0.0.1")
    assert not acl.allows("10.9.1.1")
    assert not acl.allows("::ffff:10.9.1.1")
    # An IPv6 network does not cover IPv4 clients, however the socket reports them.
    assert not AccessList(allow=["::/0"]).allows("::ffff:10.0.0.1")
    assert AccessList(deny=["::/0"]).allows("10.0.0.1")


def test_scoped_ipv6_addresses() -> None:
    assert AccessList(allow=["fe80::/10"]).allows("fe80::1%eth0")


def test_cidr_files() -> None:
    text = "# lab machines\n10.0.0.0/8 192.168.1.0/24,  2001:db8::/32\n\n  172.16.0.1  # the teacher\n"
    nets = [str(n) for n in parse_cidr_file(text)]
    assert nets == ["10.0.0.0/8", "192.168.1.0/24", "2001:db8::/32", "172.16.0.1/32"]
    with pytest.raises(ValueError, match="line 2"):
        list(parse_cidr_file("10.0.0.0/8\n10.0.0.300\n"))
    acl = AccessList.from_files(allow=["192.0.2.0/24"], allow_texts=[text], deny_texts=["10.6.6.6\n"])
    assert acl.allows("192.0.2.1")
    assert acl.allows("172.16.0.1")
    assert not acl.allows("10.6.6.6")
    assert not acl.allows("172.16.0.2")


ipv4_networks = st.builds(
    lambda addr, prefix: ipaddress.IPv4Network((addr, prefix), strict=False),
    st.ip_addresses(v=4),
    st.integers(min_value=0, max_value=32),
)
ipv6_networks = st.builds(
    lambda addr, prefix: ipaddress.IPv6Network((addr, prefix), strict=False),
    st.ip_addresses(v=6),
    st.integers(min_value=0, max_value=128),
)
networks = st.one_of(ipv4_networks, ipv6_networks)


def _covered(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, nets: list[ipaddress.IPv4Network]) -> bool:
    return any(ip in net for net in nets)


@settings(max_examples=300, deadline=None)
@given(
    allow=st.lists(ipv4_networks, max_size=4),
    deny=st.lists(ipv4_networks, max_size=4),
    address=st.ip_addresses(v=4),
    mapped=st.booleans(),
)
def test_access_list_follows_ipaddress_semantics(
    allow: list[ipaddress.IPv4Network],
    deny: list[ipaddress.IPv4Network],
    address: ipaddress.IPv4Address,
    mapped: bool,
) -> None:
    expected = not _covered(address, deny) and (not allow or _covered(address, allow))
    acl = AccessList(allow=allow, deny=deny)
    shown = f"::ffff:{address}" if mapped else str(address)
    assert acl.allows(shown) is expected
    assert acl.allows(address) is expected


@settings(max_examples=200, deadline=None)
@given(allow=st.lists(networks, max_size=4), deny=st.lists(networks, min_size=1, max_size=4), data=st.data())
def test_deny_always_wins(
    allow: list[ipaddress.IPv4Network], deny: list[ipaddress.IPv4Network], data: st.DataObject
) -> None:
    net = canonical_network(data.draw(st.sampled_from(deny)))
    offset = data.draw(st.integers(min_value=0, max_value=net.num_addresses - 1))
    address = net.network_address + offset
    assert not AccessList(allow=[*allow, net], deny=deny).allows(address)


# --- amplification -------------------------------------------------------------------------------------


def test_answers_never_larger_than_requests() -> None:
    counters = DropCounters()
    guard = AmplificationGuard(counters)
    assert guard.limit(b"hello", b"HELLO") == b"HELLO"
    assert guard.limit(b"hello", None) is None
    assert guard.limit(b"hello", b"") == b""
    assert counters.total == 0
    # "ŉ" (2 bytes) upper-cases to "ʼN" (3 bytes): too short a request even for the error.
    assert guard.limit("ŉ".encode(), "ʼN".encode()) is None
    long_request = "ŉ".encode() * 20
    assert guard.limit(long_request, "ʼN".encode() * 20) == ERR_TOO_LARGE
    assert counters[DropReason.AMPLIFICATION] == 2


@given(request=st.binary(max_size=100), answer=st.one_of(st.none(), st.binary(max_size=300)))
def test_amplification_limit_property(request: bytes, answer: bytes | None) -> None:
    sent = AmplificationGuard().limit(request, answer)
    assert sent is None or len(sent) <= len(request)
    if answer is not None and len(answer) <= len(request):
        assert sent == answer


# --- per-address connection caps -------------------------------------------------------------------------


def test_connection_limiter() -> None:
    counters = DropCounters()
    limiter = ConnectionLimiter(max_per_address=2, counters=counters)
    assert limiter.acquire("192.0.2.1")
    assert limiter.acquire("::ffff:192.0.2.1")
    assert not limiter.acquire("192.0.2.1")
    assert limiter.acquire("192.0.2.2")
    assert counters[DropReason.PER_ADDRESS] == 1
    limiter.release("192.0.2.1")
    assert limiter.open_from("192.0.2.1") == 1
    assert limiter.acquire("192.0.2.1")
    limiter.release("192.0.2.1")
    limiter.release("192.0.2.1")
    limiter.release("192.0.2.1")  # one too many: stays at zero
    assert limiter.open_from("192.0.2.1") == 0
    assert limiter.acquire("192.0.2.1")
    # Loopback is exempt unless asked, and 0 turns the cap off.
    assert all(limiter.acquire("127.0.0.1") for _ in range(100))
    strict = ConnectionLimiter(max_per_address=1, limit_loopback=True)
    assert strict.acquire("::1")
    assert not strict.acquire("::1")
    assert all(ConnectionLimiter(max_per_address=0).acquire("192.0.2.1") for _ in range(100))


# --- everything together ---------------------------------------------------------------------------------


def test_udp_guard_counts_every_drop() -> None:
    guard = UdpGuard(
        access=AccessList(deny=["198.51.100.0/24"]),
        source=UdpSourceGuard(),
        rate=RateLimiter(rate=1, burst=2),
    )
    verdicts = [
        guard.check("192.0.2.1", 7, 0.0),
        guard.check("255.255.255.255", 5000, 0.0),
        guard.check("198.51.100.7", 5000, 0.0),
        guard.check("192.0.2.1", 5000, 0.0),
        guard.check("192.0.2.1", 5000, 0.0),
        guard.check("192.0.2.1", 5000, 0.0),
    ]
    assert verdicts == [
        DropReason.REFLECTION_PORT,
        DropReason.BAD_SOURCE,
        DropReason.DENIED,
        None,
        None,
        DropReason.RATE_LIMITED,
    ]
    assert guard.admit("127.0.0.1", 5000, 0.0)
    assert guard.limit_answer(b"x" * 40, b"y" * 41) == ERR_TOO_LARGE
    stats = guard.stats()
    assert stats == {
        "denied": 1,
        "reflection_port": 1,
        "privileged_port": 0,
        "bad_source": 1,
        "rate_limited": 1,
        "amplification": 1,
        "per_address": 0,
    }
    assert guard.counters.total == 5


def test_refused_sources_spend_no_tokens() -> None:
    guard = UdpGuard(rate=RateLimiter(rate=1, burst=1), access=AccessList(allow=["192.0.2.0/24"]))
    assert not guard.admit("198.51.100.1", 5000, 0.0)
    assert guard.rate.tracked == 0
    assert guard.admit("192.0.2.1", 5000, 0.0)


def test_connection_guard_counts_both_refusals_and_releases() -> None:
    guard = ConnectionGuard(
        access=AccessList(deny=["198.51.100.0/24"]),
        per_address=ConnectionLimiter(max_per_address=1),
    )
    assert guard.check("198.51.100.1") is DropReason.DENIED
    assert guard.admit("192.0.2.1")
    assert guard.check("::ffff:192.0.2.1") is DropReason.PER_ADDRESS
    guard.release("192.0.2.1")
    assert guard.admit("192.0.2.1")
    assert guard.counters.snapshot()["denied"] == 1
    assert guard.counters.snapshot()["per_address"] == 1
    # A denied address never takes a slot.
    assert guard.per_address.open_from("198.51.100.1") == 0
