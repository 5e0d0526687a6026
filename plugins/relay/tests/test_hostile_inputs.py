"""Every TURN row (T1-T8) of shared/research/hostile-inputs.md, under a fake clock.

The responses are scripted (``ScriptedServer``, ``raw_message``): coturn cannot be made to
send an unknown address family, an unauthenticated success, a reserved channel number or a
Data indication without DATA. The rows a real coturn can produce (T2 lifetime clamping, T3
437 after a restart, T4 stale nonces and wrong passwords, T7 a ChannelBind 400) are also
tested against coturn in test_driver.py.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nattrav.errors import LocalProtocolError
from nattrav_relay import attributes as t
from nattrav_relay.client import ClientSettings, State
from nattrav_relay.events import (
    Allocated,
    AllocationFailed,
    AllocationLost,
    ChannelBound,
    ChannelFailed,
    Deleted,
    IcmpReceived,
    PermissionCreated,
    PermissionFailed,
    Refreshed,
)
from nattrav_relay.testing import Harness, raw_message
from nattrav_stun import codec as c
from nattrav_stun.codec import Address
from nattrav_stun.transaction import Timers

PEER = Address("203.0.113.5", 7000)
FAST = Timers(rto=0.5, rc=3, rm=2)


def allocated(h: Harness, **kw: object) -> Allocated:
    events = h.allocate(**kw)  # type: ignore[arg-type]
    assert isinstance(events[0], Allocated), events
    return events[0]


def bound(h: Harness, peer: Address = PEER) -> None:
    assert h.client.send(peer, b"first", h.now) is None
    h.reply(h.server.success(h.one()))
    h.wires()
    h.events()


def data_indication(attributes: dict[int, object]) -> bytes:
    return c.encode(c.Message(t.DATA, c.INDICATION, None, attributes), table=t.TURN_ATTRIBUTES)


# ----------------------------------------------------------------------------- T1


def _unknown_family_allocate(h: Harness, attribute: int) -> list[object]:
    h.client.allocate(0.0)
    h.reply(h.server.challenge(h.one()))
    signed = h.one()
    tid = signed.transaction_id
    good = c.encode_xor_address(("192.0.2.10", 50000), tid)
    weird = b"\x00\x03" + good[2:]  # family 0x03: neither IPv4 nor IPv6
    tlvs = [
        (t.XOR_RELAYED_ADDRESS, weird if attribute == t.XOR_RELAYED_ADDRESS else good),
        (c.XOR_MAPPED_ADDRESS, weird if attribute == c.XOR_MAPPED_ADDRESS else good),
        (t.LIFETIME, (600).to_bytes(4, "big")),
    ]
    h.reply(raw_message(t.ALLOCATE, c.SUCCESS, tid, tlvs, server=h.server, sign="md5"))
    return h.events()


@pytest.mark.parametrize("attribute", [t.XOR_RELAYED_ADDRESS, c.XOR_MAPPED_ADDRESS])
def test_t1_unknown_address_family_deletes_the_allocation_and_blocks_the_server(
    attribute: int,
) -> None:
    h = Harness()
    [event] = _unknown_family_allocate(h, attribute)
    assert isinstance(event, AllocationFailed) and event.blocked and event.retry_at is None
    assert "unknown family 0x03" in event.reason
    delete = h.one()  # MUST delete it (§7.3) ...
    assert delete.method == t.REFRESH and delete.get(t.LIFETIME) == 0
    assert h.server.verify(delete)
    h.reply(h.server.success(delete))
    assert h.events() == [Deleted(True)]
    with pytest.raises(LocalProtocolError, match="must not be used"):  # ... and not retry
        h.client.allocate(1000.0)


def test_t1_relayed_family_we_did_not_ask_for_is_treated_the_same() -> None:
    h = Harness(ClientSettings(families=(4,)))
    [event] = h.allocate(relayed=(("2001:db8::10", 50000),))
    assert isinstance(event, AllocationFailed) and event.blocked
    assert h.one().get(t.LIFETIME) == 0


def test_t1_success_without_relayed_address_is_deleted() -> None:
    h = Harness()
    [event] = h.allocate(relayed=())
    assert isinstance(event, AllocationFailed) and "without XOR-RELAYED-ADDRESS" in event.reason
    assert h.one().get(t.LIFETIME) == 0


# ----------------------------------------------------------------------------- T2


def test_t2_lifetime_different_from_requested_is_the_one_used() -> None:
    h = Harness(ClientSettings(lifetime=3600))
    event = allocated(h, lifetime=120)
    assert event.lifetime == 120 and not event.lifetime_assumed
    assert h.client.expires_at == 120.0 and h.client.refresh_at == 60.0


def test_t2_success_without_lifetime_assumes_the_default_and_refreshes_early() -> None:
    h = Harness(ClientSettings(lifetime=3600))
    event = allocated(h, lifetime=None)
    assert event.lifetime_assumed and event.lifetime == 600
    assert h.client.refresh_at <= 300.0  # never trust an unknown lifetime to the last minute


def test_t2_refresh_success_without_lifetime_keeps_the_previous_one() -> None:
    h = Harness()
    allocated(h, lifetime=200)
    h.advance(h.client.refresh_at)
    h.reply(h.server.success(h.one()))  # no LIFETIME
    [event] = h.events()
    assert isinstance(event, Refreshed) and event.lifetime == 200


# ----------------------------------------------------------------------------- T3


def test_t3_437_on_allocate_asks_for_a_new_client_address() -> None:
    h = Harness()
    h.client.allocate(0.0)
    h.reply(h.server.challenge(h.one()))
    h.reply(h.server.error(h.one(), 437, "Allocation Mismatch"))
    [event] = h.events()
    assert isinstance(event, AllocationFailed) and event.new_five_tuple and event.retry_at == 0.0


def test_t3_437_on_refresh_means_the_allocation_is_gone() -> None:
    h = Harness()
    allocated(h)
    h.advance(540.0)
    h.reply(h.server.error(h.one(), 437, "Allocation Mismatch"))
    [event] = h.events()
    assert isinstance(event, AllocationLost) and event.code == 437
    assert h.client.state is State.LOST


def test_t3_437_on_delete_counts_as_success() -> None:
    h = Harness()
    allocated(h)
    h.client.delete(1.0)
    h.reply(h.server.error(h.one(), 437, "Allocation Mismatch"))
    assert h.events() == [Deleted(True, "already gone (437)")]


def test_t3_437_on_create_permission_means_the_allocation_is_gone() -> None:
    h = Harness()
    allocated(h)
    h.client.permit(PEER.host, 1.0)
    h.reply(h.server.error(h.one(), 437, "Allocation Mismatch"))
    [event] = h.events()
    assert isinstance(event, AllocationLost)


# ----------------------------------------------------------------------------- T4


def test_t4_438_is_retried_with_the_new_nonce() -> None:
    h = Harness()
    allocated(h)
    h.advance(540.0)
    refresh = h.one()
    old_nonce = refresh.get(c.NONCE)
    h.server.new_nonce()
    h.reply(h.server.challenge(refresh, 438))
    retry = h.one()
    assert retry.method == t.REFRESH and retry.transaction_id != refresh.transaction_id
    assert retry.get(c.NONCE) == h.server.nonce != old_nonce
    h.reply(h.server.success(retry, {t.LIFETIME: 600}))
    assert isinstance(h.events()[0], Refreshed)
    assert h.client.stats.auth_retries == 2  # the 401 at allocation and this 438


def test_t4_438_retries_are_bounded() -> None:
    h = Harness(ClientSettings(max_auth_retries=3))
    h.client.allocate(0.0)
    msg = h.one()
    h.reply(h.server.challenge(msg))
    requests = 1
    while msgs := h.sent():  # a server that says "stale" forever, with a fresh nonce each time
        [msg] = msgs
        requests += 1
        h.server.new_nonce()
        h.reply(h.server.challenge(msg, 438))
        assert requests < 10
    assert requests == 4  # the bare request and three authenticated retries, then stop
    [event] = h.events()
    assert isinstance(event, AllocationFailed) and event.retry_at is None
    assert h.wires() == []


def test_t4_438_repeating_a_stale_nonce_stops() -> None:
    h = Harness()
    h.client.allocate(0.0)
    h.reply(h.server.challenge(h.one()))
    signed = h.one()
    h.server.new_nonce()
    h.reply(h.server.challenge(signed, 438))
    again = h.one()
    h.server.nonce = signed.get(c.NONCE)  # back to the nonce it called stale
    h.reply(h.server.challenge(again, 438))
    [event] = h.events()
    assert isinstance(event, AllocationFailed) and "stale" in event.reason


def test_t4_401_after_credentials_stops_and_notifies() -> None:
    h = Harness()
    h.client.allocate(0.0)
    h.reply(h.server.challenge(h.one()))
    h.reply(h.server.challenge(h.one(), 401))  # same realm and nonce: credentials refused
    [event] = h.events()
    assert isinstance(event, AllocationFailed) and event.code == 401
    assert event.retry_at is None and "rejected" in event.reason
    assert h.client.not_before == math.inf


@pytest.mark.parametrize("code", [440, 441, 442])
def test_t4_440_441_442_are_not_retried(code: int) -> None:
    h = Harness()
    h.client.allocate(0.0)
    h.reply(h.server.challenge(h.one()))
    h.reply(h.server.error(h.one(), code, "no"))
    [event] = h.events()
    assert isinstance(event, AllocationFailed) and event.retry_at is None
    with pytest.raises(LocalProtocolError):
        h.client.allocate(10_000.0)


@pytest.mark.parametrize("code", [486, 508])
def test_t4_486_and_508_wait_at_least_a_minute(code: int) -> None:
    h = Harness()
    h.now = 50.0
    h.client.allocate(50.0)
    h.reply(h.server.challenge(h.one()))
    h.reply(h.server.error(h.one(), code, "busy"))
    [event] = h.events()
    assert isinstance(event, AllocationFailed) and event.retry_at is not None
    assert event.retry_at - 50.0 >= 60.0


# ----------------------------------------------------------------------------- T5


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"\x50\x00\x00\x03abc", "reserved"),
        (b"\x7f\xff\x00\x03abc", "reserved"),
        (b"\x40\x00\x00\x09abc", "shorter"),
        (b"\x40\x01\x00\x03abc", "unbound"),
    ],
)
def test_t5_bad_channeldata_is_discarded(wire: bytes, reason: str) -> None:
    h = Harness()
    allocated(h)
    bound(h)  # channel 0x4000 is bound; 0x4001 is not
    assert h.reply(wire) is None
    assert any(reason in k for k in h.client.stats.discarded), h.client.stats.discarded
    assert h.client.stats.packets_received == 0


def test_t5_channeldata_from_a_peer_whose_permission_lapsed_is_discarded() -> None:
    h = Harness(ClientSettings(keepalive=None))
    allocated(h, lifetime=3600)
    bound(h)
    h.advance(240.0)  # the permission refresh is refused; the binding itself lives on
    h.reply(h.server.error(h.one(), 403, "Forbidden"))
    assert isinstance(h.events()[0], PermissionFailed)
    h.advance(300.0)
    assert h.client.channels[PEER].bound and not h.client.has_permission(PEER.host)
    assert h.reply(b"\x40\x00\x00\x03abc") is None
    assert h.client.stats.discarded["ChannelData from a peer without permission"] == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=80))
def test_t5_t6_random_bytes_never_raise_and_never_reach_the_application(data: bytes) -> None:
    h = Harness()
    allocated(h)
    got = h.reply(data)
    assert got is None  # nothing is bound or permitted: nothing may be delivered


# ----------------------------------------------------------------------------- T6


def permitted(h: Harness) -> None:
    h.client.permit(PEER.host, h.now)
    h.reply(h.server.success(h.one()))
    h.events()


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [
        ({t.DATA_INDICATION: b"x"}, "without XOR-PEER-ADDRESS"),
        ({t.XOR_PEER_ADDRESS: PEER}, "without DATA"),
        (
            {t.XOR_PEER_ADDRESS: Address("203.0.113.99", 7000), t.DATA_INDICATION: b"x"},
            "without permission",
        ),
        (
            {t.XOR_PEER_ADDRESS: PEER, t.DATA_INDICATION: b"x", 0x7777: b"??"},
            "comprehension-required",
        ),
    ],
)
def test_t6_bad_data_indications_are_discarded(attributes: dict[int, object], reason: str) -> None:
    h = Harness()
    allocated(h)
    permitted(h)
    assert h.reply(data_indication(attributes)) is None
    assert any(reason in k for k in h.client.stats.discarded), h.client.stats.discarded


def test_t6_a_data_indication_before_any_permission_is_discarded() -> None:
    h = Harness()
    allocated(h)
    msg = data_indication({t.XOR_PEER_ADDRESS: PEER, t.DATA_INDICATION: b"x"})
    assert h.reply(msg) is None


def test_t6_icmp_in_a_data_indication_is_an_event_not_data() -> None:
    h = Harness()
    allocated(h)
    permitted(h)
    msg = data_indication({t.XOR_PEER_ADDRESS: PEER, t.ICMP: t.Icmp(3, 3, 0)})
    assert h.reply(msg) is None
    assert h.events() == [IcmpReceived(PEER, t.Icmp(3, 3, 0))]


# ----------------------------------------------------------------------------- T7


def test_t7_unexpected_400_on_channel_bind_deletes_and_starts_afresh() -> None:
    h = Harness()
    allocated(h)
    assert h.client.send(PEER, b"x", 1.0) is None
    h.reply(h.server.error(h.one(), 400, "Bad Request"))
    delete = h.one()
    assert delete.method == t.REFRESH and delete.get(t.LIFETIME) == 0
    assert h.client.state is State.DELETING
    h.reply(h.server.success(delete))
    failed, event = h.events()
    assert isinstance(failed, ChannelFailed) and failed.code == 400  # bind() waiters learn it
    assert isinstance(event, AllocationLost) and event.code == 400
    assert "out of sync" in event.reason
    assert h.client.stats.dropped == 1  # the queued datagram went with it
    again = h.allocate(relayed=(("192.0.2.10", 50500),))
    assert isinstance(again[0], Allocated) and again[0].generation == 2
    assert h.client.channels == {}


# ----------------------------------------------------------------------------- T8


def test_t8_unsigned_success_to_refresh_changes_nothing() -> None:
    h = Harness(ClientSettings(timers=FAST, keepalive=None))
    allocated(h, lifetime=600)
    h.advance(540.0)
    refresh = h.one()
    h.reply(h.server.success(refresh, {t.LIFETIME: 3600}, sign=None))
    assert h.events() == [] and h.client.expires_at == 600.0  # not extended
    assert h.client.stats.refreshes == 0
    h.advance(h.client.get_timer() or 0.0)
    assert h.one().transaction_id == refresh.transaction_id  # retransmission goes on


def test_t8_success_signed_with_the_wrong_key_changes_nothing() -> None:
    from nattrav_stun.codec import IntegrityKey

    h = Harness()
    allocated(h)
    h.advance(540.0)
    refresh = h.one()
    h.server.md5_key = IntegrityKey(b"not the key")
    h.reply(h.server.success(refresh, {t.LIFETIME: 3600}))
    assert h.events() == [] and h.client.expires_at == 600.0


def test_t8_integrity_violations_end_as_a_refresh_failure_not_a_refresh() -> None:
    h = Harness(ClientSettings(timers=FAST, keepalive=None))
    allocated(h, lifetime=600)
    h.advance(540.0)
    refresh = h.one()
    while (timer := h.client.get_timer()) is not None and timer < 545.0:
        h.reply(h.server.success(refresh, {t.LIFETIME: 3600}, sign=None))
        h.advance(timer)
        h.sent()
    assert h.client.state is State.ALLOCATED and h.client.expires_at == 600.0
    assert "integrity" in h.client._refresh_failure


def test_t8_unsigned_success_to_create_permission_installs_nothing() -> None:
    h = Harness(ClientSettings(use_channels=False))
    allocated(h)
    assert h.client.send(PEER, b"x", 1.0) is None
    h.reply(h.server.success(h.one(), sign=None))
    assert not h.client.has_permission(PEER.host)
    assert not any(isinstance(e, PermissionCreated) for e in h.events())
    assert h.client.permissions[PEER.host].queue  # the datagram still waits


def test_t8_unsigned_success_to_channel_bind_binds_nothing() -> None:
    h = Harness()
    allocated(h)
    assert h.client.send(PEER, b"x", 1.0) is None
    h.reply(h.server.success(h.one(), sign=None))
    assert not any(isinstance(e, ChannelBound) for e in h.events())
    assert h.reply(b"\x40\x00\x00\x01z") is None  # channel not bound: discarded


def test_t8_success_to_the_unsigned_first_allocate_is_ignored() -> None:
    h = Harness()
    h.client.allocate(0.0)
    first = h.one()
    forged = raw_message(
        t.ALLOCATE,
        c.SUCCESS,
        first.transaction_id,
        [
            (t.XOR_RELAYED_ADDRESS, c.encode_xor_address(("192.0.2.66", 1), first.transaction_id)),
            (t.LIFETIME, (600).to_bytes(4, "big")),
        ],
    )
    h.reply(forged)
    assert h.events() == [] and h.client.state is State.ALLOCATING
    assert h.client.stats.discarded["unauthenticated success response"] == 1


def test_t8_sha1_answer_to_a_sha256_request_is_discarded() -> None:
    h = Harness(sha256=True)
    h.client.allocate(0.0)
    h.reply(h.server.challenge(h.one()))
    signed = h.one()
    assert signed.has_integrity_sha256
    h.reply(
        h.server.success(
            signed, {t.XOR_RELAYED_ADDRESS: ("192.0.2.10", 5), t.LIFETIME: 600}, sign="md5"
        )
    )
    assert h.events() == [] and h.client.state is State.ALLOCATING
