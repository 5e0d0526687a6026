"""The sans-IO TURN client under a fake clock: allocation, refresh, deletion, permissions,
channels, the data path, keepalives and the RFC 8656 §7.4 back-off schedule.

The server side is scripted (``ScriptedServer``): these tests are about the state machine's
decisions and timing, which need exact control of every response and of the clock. The same
behaviours against a real coturn are in test_driver.py.
"""

from __future__ import annotations

import math

import pytest
from nattrav.errors import LocalProtocolError
from nattrav_relay import attributes as t
from nattrav_relay.client import ClientSettings, State, allocate_failure
from nattrav_relay.events import (
    Allocated,
    AllocationFailed,
    AllocationLost,
    ChannelBound,
    Deleted,
    PermissionCreated,
    Refreshed,
)
from nattrav_relay.framing import decode_channel_data
from nattrav_relay.testing import Harness, raw_message
from nattrav_stun import codec as c
from nattrav_stun.auth import PasswordAlgorithm
from nattrav_stun.codec import Address
from nattrav_stun.transaction import Timers

PEER = Address("203.0.113.5", 7000)
PEER2 = Address("203.0.113.6", 7001)
FAST = Timers(rto=0.5, rc=3, rm=2)


def allocated(h: Harness, **kw: object) -> Allocated:
    events = h.allocate(**kw)  # type: ignore[arg-type]
    assert len(events) == 1 and isinstance(events[0], Allocated), events
    return events[0]


# ----------------------------------------------------------------------------- allocation


def test_allocate_with_md5_when_the_server_offers_no_algorithms() -> None:
    h = Harness()
    h.client.allocate(0.0)
    first = h.one()
    assert first.method == t.ALLOCATE and first.cls == c.REQUEST
    assert first.get(t.REQUESTED_TRANSPORT) == t.UDP
    assert first.get(t.LIFETIME) == 600
    assert c.USERNAME not in first and not first.has_integrity  # §9.2.3.1: first goes bare
    h.reply(h.server.challenge(first))
    signed = h.one()
    assert signed.get(c.USERNAME) == "user" and signed.get(c.REALM) == "example.org"
    assert signed.has_integrity and not signed.has_integrity_sha256
    assert h.server.verify(signed)


def test_allocate_with_sha256_when_the_server_offers_it() -> None:
    h = Harness(sha256=True)
    h.client.allocate(0.0)
    h.reply(h.server.challenge(h.one()))
    signed = h.one()
    assert signed.has_integrity_sha256 and not signed.has_integrity
    assert signed.get(c.PASSWORD_ALGORITHM).algorithm == PasswordAlgorithm.SHA256
    assert h.server.verify(signed)


def test_allocated_event_carries_relayed_mapped_and_the_granted_lifetime() -> None:
    h = Harness(ClientSettings(lifetime=3600))
    event = allocated(h, lifetime=1200)
    assert event.relayed == (Address("192.0.2.10", 50000),)
    assert event.mapped == Address("198.51.100.7", 40000)
    assert event.lifetime == 1200 and event.expires_at == 1200.0  # T2: the received value
    assert h.client.state is State.ALLOCATED
    assert h.client.refresh_at == 1200 - 60  # a minute before expiry (§8)


def test_short_lifetimes_refresh_half_way() -> None:
    h = Harness()
    allocated(h, lifetime=30)
    assert h.client.refresh_at == 15.0


def test_refresh_before_expiry_and_the_new_lifetime_is_honoured() -> None:
    h = Harness()
    allocated(h, lifetime=600)
    h.advance(539.0)
    assert h.sent() == []
    h.advance(540.0)
    refresh = h.one()
    assert refresh.method == t.REFRESH and refresh.get(t.LIFETIME) == 600
    assert h.server.verify(refresh)
    h.reply(h.server.success(refresh, {t.LIFETIME: 300}))
    assert h.events() == [Refreshed(300, 840.0)]
    assert h.client.expires_at == 840.0 and h.client.refresh_at == 780.0
    assert h.client.stats.refreshes == 1


def test_a_failing_refresh_is_retried_until_the_allocation_expires() -> None:
    h = Harness(ClientSettings(timers=FAST, retry_interval=5.0))
    allocated(h, lifetime=100)
    h.advance(50.0)  # half-way for a 100 s lifetime
    assert h.one().method == t.REFRESH
    while (timer := h.client.get_timer()) is not None and timer < 100.0:
        h.advance(timer)
        for msg in h.sent():
            assert msg.method == t.REFRESH  # retransmissions and new attempts, never answered
    h.advance(100.0)
    events = h.events()
    assert isinstance(events[-1], AllocationLost) and "expired" in events[-1].reason
    assert h.client.state is State.LOST


def test_delete_sends_lifetime_zero_and_ends_deleted() -> None:
    h = Harness()
    allocated(h)
    h.client.delete(10.0)
    delete = h.one()
    assert delete.method == t.REFRESH and delete.get(t.LIFETIME) == 0
    h.reply(h.server.success(delete, {t.LIFETIME: 0}))
    assert h.events() == [Deleted(True)]
    assert h.client.state is State.DELETED
    assert h.client.get_timer() is None


def test_delete_before_anything_was_allocated_is_immediate() -> None:
    h = Harness()
    h.client.delete(0.0)
    assert h.events() == [Deleted(True, "nothing allocated")]
    assert h.wires() == []


def test_unanswered_delete_ends_unconfirmed() -> None:
    h = Harness(ClientSettings(timers=FAST))
    allocated(h)
    h.client.delete(1.0)
    h.sent()
    while (timer := h.client.get_timer()) is not None:
        h.advance(timer)
        h.sent()
    [event] = h.events()
    assert isinstance(event, Deleted) and not event.confirmed


def test_dual_allocation_asks_with_both_code_points_and_keeps_both_addresses() -> None:
    h = Harness(ClientSettings(families=(4, 6)))
    h.client.allocate(0.0)
    first = h.one()
    assert first.get(t.ADDITIONAL_ADDRESS_FAMILY) == 6
    assert first.get(t.LEGACY_ADDITIONAL_ADDRESS_FAMILY) == 6  # coturn's draft code point
    assert t.REQUESTED_ADDRESS_FAMILY not in first
    h.client.state = State.IDLE
    h.client._requests.clear()
    event = allocated(h, relayed=(("192.0.2.10", 50000), ("2001:db8::10", 50002)))
    assert event.relayed == (Address("192.0.2.10", 50000), Address("2001:db8::10", 50002))


def test_dual_allocation_reports_the_family_that_failed() -> None:
    h = Harness(ClientSettings(families=(4, 6)))
    error = t.AddressErrorCode(6, 440, "Address Family not Supported")
    event = allocated(h, attributes={t.LEGACY_ADDRESS_ERROR_CODE: error})
    assert event.address_errors == (error,)
    assert len(event.relayed) == 1


def test_ipv6_only_asks_for_the_family() -> None:
    h = Harness(ClientSettings(families=(6,)))
    h.client.allocate(0.0)
    assert h.one().get(t.REQUESTED_ADDRESS_FAMILY) == 6


def test_allocate_twice_is_a_local_error() -> None:
    h = Harness()
    allocated(h)
    with pytest.raises(LocalProtocolError):
        h.client.allocate(1.0)


# ----------------------------------------------------------------------------- §7.4 back-off


@pytest.mark.parametrize(
    ("code", "retry_in", "new_tuple"),
    [
        (486, 60.0, False),
        (508, 60.0, False),
        (500, 5.0, False),
        (440, None, False),
        (442, None, False),
        (403, None, False),
        (441, None, False),
        (400, None, False),
    ],
)
def test_allocate_errors_schedule_the_next_try(
    code: int, retry_in: float | None, new_tuple: bool
) -> None:
    h = Harness()
    h.now = 100.0
    h.client.allocate(100.0)
    h.reply(h.server.challenge(h.one()))
    h.reply(h.server.error(h.one(), code, "no"))
    [event] = h.events()
    assert isinstance(event, AllocationFailed) and event.code == code
    assert event.new_five_tuple is new_tuple
    if retry_in is None:
        assert event.retry_at is None
        assert h.client.not_before == math.inf
    else:
        assert event.retry_at == 100.0 + retry_in
        with pytest.raises(LocalProtocolError, match="back-off"):
            h.client.allocate(100.0 + retry_in - 1)
        h.client.allocate(100.0 + retry_in)  # allowed once the back-off is over


def test_437_on_allocate_asks_for_a_new_five_tuple_three_times_then_backs_off() -> None:
    h = Harness()
    outcomes = []
    for attempt in range(3):
        h.client.allocate(h.now)
        msg = h.one()
        if not h.client.auth.ready:
            h.reply(h.server.challenge(msg))
            msg = h.one()
        h.reply(h.server.error(msg, 437, "Allocation Mismatch"))
        [event] = h.events()
        outcomes.append(event)
        h.client.reset_transport()
        del attempt
    assert [e.new_five_tuple for e in outcomes] == [True, True, True]
    assert [e.retry_at for e in outcomes] == [0.0, 0.0, 120.0]  # §7.4: 2 minutes after 3


def test_508_with_even_port_retries_at_once_without_it() -> None:
    h = Harness(ClientSettings(even_port=True))
    h.client.allocate(0.0)
    assert h.one().get(t.EVEN_PORT) is True
    h.client._requests.clear()
    h.client.state = State.IDLE
    h.client.allocate(0.0)
    h.reply(h.server.challenge(h.one()))
    h.reply(h.server.error(h.one(), 508, "Insufficient Capacity"))
    [event] = h.events()
    assert event.retry_at == 0.0
    h.client.allocate(0.0)
    assert t.EVEN_PORT not in h.one()


def test_420_for_dont_fragment_retries_without_it() -> None:
    h = Harness(ClientSettings(dont_fragment=True))
    h.client.allocate(0.0)
    h.reply(h.server.challenge(h.one()))
    signed = h.one()
    assert t.DONT_FRAGMENT in signed
    h.reply(h.server.error(signed, 420, "Unknown Attribute", {c.UNKNOWN_ATTRIBUTES: (0x001A,)}))
    assert h.events() == []
    again = h.one()
    assert again.method == t.ALLOCATE and t.DONT_FRAGMENT not in again


def test_timeout_is_reported_with_an_immediate_retry() -> None:
    h = Harness(ClientSettings(timers=FAST))
    h.client.allocate(0.0)
    h.sent()
    while (timer := h.client.get_timer()) is not None:
        h.advance(timer)
        h.sent()
    [event] = h.events()
    assert isinstance(event, AllocationFailed) and event.timed_out
    assert event.retry_at == h.now


def test_allocate_failure_mapping_is_pure_data() -> None:
    from nattrav_stun.events import ErrorResponse

    msg = c.Message(t.ALLOCATE, c.ERROR, bytes(12), {})
    event = ErrorResponse(486, "Quota", Address("192.0.2.1", 3478), msg)
    failure = allocate_failure(event, 1000.0, ClientSettings(quota_backoff=90.0), 0)
    assert failure.retry_at == 1090.0 and failure.code == 486


# ----------------------------------------------------------------------------- permissions


def test_sending_without_channels_creates_a_permission_then_uses_send_indications() -> None:
    h = Harness(ClientSettings(use_channels=False))
    allocated(h)
    assert h.client.send(PEER, b"one", 1.0) is None  # queued
    assert h.client.send(PEER, b"two", 1.0) is None
    create = h.one()
    assert create.method == t.CREATE_PERMISSION
    assert create.get(t.XOR_PEER_ADDRESS) == Address(PEER.host, 0)
    h.now = 1.1
    h.reply(h.server.success(create))
    assert h.events() == [PermissionCreated(PEER.host, 301.1)]
    sent = h.sent()
    assert [m.method for m in sent] == [t.SEND, t.SEND]
    assert [m.get(t.DATA_INDICATION) for m in sent] == [b"one", b"two"]
    assert all(m.get(t.XOR_PEER_ADDRESS) == PEER for m in sent)
    assert all(m.cls == c.INDICATION and not m.has_integrity for m in sent)
    direct = h.client.send(PEER, b"three", 2.0)
    assert direct is not None and h.server.parse(direct).get(t.DATA_INDICATION) == b"three"
    assert h.client.stats.indication_packets_sent == 3


def test_permissions_are_refreshed_before_300_seconds_while_in_use() -> None:
    h = Harness(ClientSettings(use_channels=False))
    allocated(h)
    h.client.permit(PEER.host, 0.0)
    h.reply(h.server.success(h.one()))
    h.events()
    h.advance(239.0)
    assert h.sent() == []
    h.advance(240.0)
    refresh = h.one()
    assert refresh.method == t.CREATE_PERMISSION
    h.reply(h.server.success(refresh))
    assert h.events() == [PermissionCreated(PEER.host, 540.0, refreshed=True)]


def test_idle_permissions_are_left_to_expire() -> None:
    h = Harness(ClientSettings(use_channels=False, idle_timeout=100.0))
    allocated(h)
    assert h.client.send(PEER, b"x", 0.0) is None
    h.reply(h.server.success(h.one()))
    h.events()
    h.sent()
    h.advance(240.0)  # unused for 240 s > idle_timeout: no refresh
    assert h.sent() == []
    h.advance(300.0)
    assert not h.client.has_permission(PEER.host)


def test_sticky_permissions_come_back_after_a_reallocation() -> None:
    h = Harness()
    h.client.permit(PEER.host, 0.0)  # before any allocation: remembered
    h.allocate()
    create = h.one()
    assert create.method == t.CREATE_PERMISSION
    h.reply(h.server.success(create))
    assert h.client.has_permission(PEER.host)


def test_data_indication_from_a_permitted_peer_is_delivered() -> None:
    h = Harness()
    allocated(h)
    h.client.permit(PEER.host, 0.0)
    h.reply(h.server.success(h.one()))
    data = c.encode(
        c.Message(t.DATA, c.INDICATION, None, {t.XOR_PEER_ADDRESS: PEER, t.DATA_INDICATION: b"hi"}),
        table=t.TURN_ATTRIBUTES,
    )
    assert h.reply(data) == (b"hi", PEER)
    assert h.client.stats.indication_packets_received == 1


# ----------------------------------------------------------------------------- channels


def bound(h: Harness, peer: Address = PEER) -> int:
    assert h.client.send(peer, b"first", h.now) is None
    bind = h.one()
    assert bind.method == t.CHANNEL_BIND
    number = bind.get(t.CHANNEL_NUMBER)
    assert bind.get(t.XOR_PEER_ADDRESS) == peer
    h.reply(h.server.success(bind))
    wires = h.wires()
    assert [decode_channel_data(w) for w in wires] == [(number, b"first")]
    return int(number)


def test_first_send_binds_a_channel_and_flushes_as_channeldata() -> None:
    h = Harness()
    allocated(h)
    number = bound(h)
    assert number == 0x4000
    events = h.events()
    assert ChannelBound(PEER, 0x4000) in events
    assert PermissionCreated(PEER.host, 300.0) in events  # ChannelBind installs it (§12.2)
    wire = h.client.send(PEER, b"abcde", 1.0)
    assert wire == b"\x40\x00\x00\x05abcde"  # UDP: no padding
    assert h.client.stats.channel_packets_sent == 2


def test_channeldata_is_padded_over_tcp() -> None:
    h = Harness(transport="tcp")
    h.client.allocate(0.0)
    first = h.server.parse(h.wires()[0])
    h.client.feed_stream(h.server.challenge(first), 0.0)
    signed = h.server.parse(h.wires()[0])
    h.client.feed_stream(
        raw_message(
            t.ALLOCATE,
            c.SUCCESS,
            signed.transaction_id,
            [
                (
                    t.XOR_RELAYED_ADDRESS,
                    c.encode_xor_address(("192.0.2.10", 50000), signed.transaction_id),
                ),
                (t.LIFETIME, (600).to_bytes(4, "big")),
            ],
            server=h.server,
            sign="md5",
        ),
        0.0,
    )
    assert isinstance(h.events()[0], Allocated)
    assert h.client.send(PEER, b"abcde", 0.0) is None
    bind = h.server.parse(h.wires()[0])
    h.client.feed_stream(h.server.success(bind), 0.0)
    [wire] = h.wires()
    assert wire == b"\x40\x00\x00\x05abcde\x00\x00\x00"
    # incoming padded ChannelData split across reads is reassembled
    got = h.client.feed_stream(b"\x40\x00\x00\x03xy", 0.1)
    assert got == []
    got = h.client.feed_stream(b"z\x00" + b"\x40\x00\x00\x01q\x00\x00\x00", 0.2)
    assert got == [(b"xyz", PEER), (b"q", PEER)]


def test_channels_are_refreshed_before_600_seconds() -> None:
    """Permission (300 s) renewed at 240 s and 480 s by CreatePermission, the binding
    (600 s) at 540 s by ChannelBind, while the channel carries traffic."""
    h = Harness(ClientSettings(keepalive=None))
    allocated(h, lifetime=3600)
    bound(h)
    h.events()
    requests: list[tuple[float, int]] = []
    while (timer := h.client.get_timer()) is not None and timer <= 540.0:
        h.advance(timer)
        h.client.send(PEER, b"traffic", timer)  # the channel stays in use
        for msg in h.sent():
            requests.append((timer, msg.method))
            h.reply(h.server.success(msg))
        h.wires()
    assert requests == [
        (240.0, t.CREATE_PERMISSION),
        (480.0, t.CREATE_PERMISSION),
        (540.0, t.CHANNEL_BIND),
    ]
    assert ChannelBound(PEER, 0x4000, refreshed=True) in h.events()
    assert h.client.channels[PEER].expires_at == 1140.0


def test_each_peer_gets_its_own_channel_number() -> None:
    h = Harness()
    allocated(h)
    assert bound(h, PEER) == 0x4000
    assert bound(h, PEER2) == 0x4001


def test_an_idle_channel_expires_and_its_number_and_peer_rest_five_minutes() -> None:
    h = Harness(ClientSettings(idle_timeout=100.0))
    allocated(h, lifetime=3600)
    bound(h)
    h.client.permit(PEER.host, 0.0)  # keep the permission; only the channel goes idle
    for msg in h.sent():
        h.reply(h.server.success(msg))
    while (timer := h.client.get_timer()) is not None and timer <= 600.0:
        h.advance(timer)
        for msg in h.sent():
            assert msg.method != t.CHANNEL_BIND  # idle: never re-bound
            h.reply(h.server.success(msg))
    channel = h.client.channels[PEER]
    assert not channel.bound and channel.quarantined_until == 900.0
    assert h.client.bind(PEER, 700.0) is None  # §12: not within 5 minutes
    # meanwhile the peer is served by Send indications (its permission is alive)
    wire = h.client.send(PEER, b"x", 700.0)
    assert wire is not None and h.server.parse(wire).method == t.SEND
    h.advance(900.0)
    for msg in h.sent():
        h.reply(h.server.success(msg))
    assert PEER not in h.client.channels


# ----------------------------------------------------------------------------- data path


def test_channeldata_on_a_bound_channel_is_delivered() -> None:
    h = Harness()
    allocated(h)
    bound(h)
    assert h.reply(b"\x40\x00\x00\x03abc") == (b"abc", PEER)
    assert h.reply(b"\x40\x00\x00\x03abc\x00") == (b"abc", PEER)  # UDP padding ignored
    assert h.client.stats.channel_packets_received == 2
    assert h.client.stats.bytes_received == 6


def test_send_to_a_peer_of_a_family_without_relay_is_refused() -> None:
    h = Harness()
    allocated(h)
    with pytest.raises(LocalProtocolError, match="no IPv6 relayed address"):
        h.client.send(("2001:db8::5", 7000), b"x", 1.0)


def test_send_without_an_allocation_is_dropped_and_counted() -> None:
    h = Harness()
    assert h.client.send(PEER, b"x", 0.0) is None
    assert h.client.stats.dropped == 1


def test_the_queue_for_a_pending_permission_is_bounded() -> None:
    h = Harness(ClientSettings(max_queue=2))
    allocated(h)
    for _ in range(5):
        assert h.client.send(PEER, b"x", 0.0) is None
    assert h.client.stats.queued == 2 and h.client.stats.dropped == 3


# ----------------------------------------------------------------------------- keepalive


def test_keepalive_binding_indication_only_after_silence() -> None:
    h = Harness(ClientSettings(keepalive=15.0))
    allocated(h, lifetime=3600)
    h.advance(15.0)  # something (the Allocate) went out since the mark was taken
    assert h.wires() == []
    h.advance(30.0)
    [wire] = h.wires()
    msg = h.server.parse(wire)
    assert (msg.method, msg.cls) == (c.BINDING, c.INDICATION)
    bound(h)  # traffic flows: no keepalive needed
    h.advance(45.0)
    assert all(w[0] >= 0x40 or h.server.parse(w).method != c.BINDING for w in h.wires())
    assert h.client.stats.keepalives == 1


def test_no_keepalive_over_tcp() -> None:
    h = Harness(ClientSettings(keepalive=15.0), transport="tcp")
    h.client.allocate(0.0)
    assert h.client.keepalive_at == math.inf


# ----------------------------------------------------------------------------- losses


def test_connection_lost_over_tcp_loses_the_allocation_and_forgets_the_nonce() -> None:
    h = Harness(transport="tcp")
    h.client.allocate(0.0)
    h.client.connection_lost("reset", 1.0)
    [event] = h.events()
    assert isinstance(event, AllocationLost) and "reset" in event.reason
    assert not h.client.auth.ready  # the next Allocate starts with a fresh challenge


def test_events_and_state_after_loss_allow_a_new_allocation() -> None:
    h = Harness()
    allocated(h)
    h.advance(540.0)
    h.reply(h.server.error(h.one(), 437, "Allocation Mismatch"))
    [event] = h.events()
    assert isinstance(event, AllocationLost) and event.code == 437
    second = allocated(h, relayed=(("192.0.2.10", 50100),))
    assert second.generation == 2 and second.relayed == (Address("192.0.2.10", 50100),)


def test_after_a_loss_nothing_is_framed_for_the_old_channels() -> None:
    h = Harness()
    allocated(h)
    bound(h)
    h.client.permit("203.0.113.77", h.now)  # sticky: it comes back with the next allocation
    h.reply(h.server.success(h.one()))
    h.advance(540.0)
    [refresh] = [m for m in h.sent() if m.method == t.REFRESH]
    h.reply(h.server.error(refresh, 437, "Allocation Mismatch"))
    assert h.client.send(PEER, b"into the void", 541.0) is None
    assert h.client.stats.discarded["send without an allocation"] == 1
    assert h.reply(b"\x40\x00\x00\x01z") is None  # the old channel means nothing now
    assert list(h.client.permissions) == ["203.0.113.77"]
    assert not h.client.has_permission("203.0.113.77")
