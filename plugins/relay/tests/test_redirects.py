"""300 (Try Alternate) redirects of Allocate, sans-IO: which ones the client reports as
followable (RFC 8489 §10 and §14.8, RFC 8656 §7.2 step 8), ``retarget`` to the alternate, and
the ``RedirectGuard`` loop protection and bound, under a fake clock.

The server side is scripted (``ScriptedServer``) because coturn cannot send what these tests
need: an *authenticated* 300, ALTERNATE-DOMAIN, a forged (unprotected or wrongly signed) 300
to a signed request, an alternate in another family or scope. coturn's own 300 (unprotected,
to the unsigned first Allocate) is followed end to end in test_driver_redirects.py.
"""

from __future__ import annotations

import pytest
from nattrav.errors import LocalProtocolError
from nattrav_relay import attributes as t
from nattrav_relay.client import ClientSettings, State
from nattrav_relay.events import Allocated, AllocationFailed
from nattrav_relay.redirects import RedirectGuard
from nattrav_relay.testing import SERVER, Harness, ScriptedServer, raw_message
from nattrav_stun import codec as c
from nattrav_stun.codec import Address
from nattrav_stun.transaction import Timers

ALT = Address("192.0.2.20", 3478)
FAST = Timers(rto=0.5, rc=3, rm=2)


def try_alternate(
    server: ScriptedServer, request: c.Message, sign: str | None = "auto", **attributes: object
) -> bytes:
    body: dict[int, object] = {c.ALTERNATE_SERVER: attributes.get("alternate", ALT)}
    if "domain" in attributes:
        body[c.ALTERNATE_DOMAIN] = attributes["domain"]
    return server.error(request, 300, "Try Alternate", body, sign=sign)


def challenged(h: Harness) -> c.Message:
    """Allocate, answer the unsigned first request with a 401; the signed retry."""
    h.client.allocate(h.now)
    h.reply(h.server.challenge(h.one()))
    signed = h.one()
    assert h.server.verify(signed)
    return signed


def run_out(h: Harness, until: float = 60.0) -> None:
    while (timer := h.client.get_timer()) is not None and timer <= until:
        h.advance(timer)


# ----------------------------------------------------------------------------- the client


def test_coturns_unprotected_300_to_the_unsigned_first_allocate_is_followable() -> None:
    """What coturn --alternate-server answers (before any authentication): no credentials
    were sent, so the 300 cannot be signed; it is reported as a redirect to follow."""
    h = Harness()
    h.client.allocate(0.0)
    first = h.one()
    assert not first.has_integrity and c.USERNAME not in first
    h.reply(try_alternate(h.server, first, sign=None))
    [failed] = h.events()
    assert isinstance(failed, AllocationFailed)
    assert failed.code == 300 and failed.redirect == ALT and failed.redirect_domain is None
    assert not failed.redirect_authenticated and "unprotected" in failed.reason
    assert failed.retry_at is None and h.client.state is State.FAILED
    with pytest.raises(LocalProtocolError, match="back-off"):
        h.client.allocate(1.0)  # not at the redirecting server again


def test_retarget_allocates_at_the_alternate_with_the_same_credentials() -> None:
    """The followed Allocate starts over at the alternate: unsigned, challenged by *its*
    realm and nonce, signed with the same username and password; sticky permissions and
    the statistics carry over."""
    h = Harness()
    h.client.permit(str(ALT.host), 0.0)  # sticky: must come back at the alternate
    h.client.allocate(0.0)
    h.reply(try_alternate(h.server, h.one(), sign=None))
    h.events()
    h.client.retarget(ALT)
    assert h.client.server == ALT and h.client.state is State.IDLE
    h.server = ScriptedServer("user", "pass", "alt.example.org")  # another realm and nonce
    [granted] = h.allocate()
    assert isinstance(granted, Allocated) and granted.generation == 1
    [permission] = h.sent()
    assert permission.method == t.CREATE_PERMISSION and h.server.verify(permission)
    assert h.client.stats.allocations == 1


def test_an_authenticated_300_to_a_signed_allocate_is_followable_with_its_domain() -> None:
    h = Harness()
    signed = challenged(h)
    h.reply(try_alternate(h.server, signed, domain="turn-b.example.org"))
    [failed] = h.events()
    assert isinstance(failed, AllocationFailed)
    assert failed.redirect == ALT and failed.redirect_authenticated
    assert failed.redirect_domain == "turn-b.example.org"


@pytest.mark.parametrize("forgery", ["unprotected", "wrong key"])
def test_a_forged_300_to_a_signed_allocate_is_ignored_and_the_answer_still_counts(
    forgery: str,
) -> None:
    """§14.8: a 300 to a request with credentials must verify. A forged one is dropped as
    if never received: retransmission goes on and the real success is taken."""
    h = Harness(ClientSettings(timers=FAST, keepalive=None))
    signed = challenged(h)
    if forgery == "unprotected":
        h.reply(try_alternate(h.server, signed, sign=None))
    else:
        h.reply(try_alternate(ScriptedServer("user", "guess"), signed, sign="md5"))
    assert h.events() == [] and h.client.state is State.ALLOCATING
    h.advance(0.5)
    retransmitted = h.one()
    assert retransmitted.transaction_id == signed.transaction_id
    tid = signed.transaction_id
    encode_relayed = t.TURN_ATTRIBUTES.encoders[t.XOR_RELAYED_ADDRESS]
    h.reply(
        raw_message(
            signed.method,
            c.SUCCESS,
            tid,
            [(t.XOR_RELAYED_ADDRESS, encode_relayed((SERVER[0], 50000), tid))],
            server=h.server,
            sign="md5",
        )
    )
    [granted] = h.events()
    assert isinstance(granted, Allocated)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_an_unprotected_300_to_a_signed_allocate_ends_as_an_error_not_a_redirect(
    transport: str,
) -> None:
    """Nothing else comes: over UDP the transaction times out with the integrity failure
    on record, over TCP it ends at once (§9.2.5); either way no redirect is reported."""
    h = Harness(ClientSettings(timers=FAST, keepalive=None), transport=transport)
    signed = challenged(h)
    h.reply(try_alternate(h.server, signed, sign=None))
    if transport == "udp":
        assert h.events() == []
        run_out(h)
    [failed] = h.events()
    assert isinstance(failed, AllocationFailed)
    assert failed.redirect is None and "integrity" in failed.reason


@pytest.mark.parametrize(
    ("alternate", "why"),
    [
        (Address("127.0.0.1", 3478), "loopback"),
        (Address("169.254.1.1", 3478), "link"),
        (Address("2001:db8::20", 3478), "another address family"),
        (Address("192.0.2.20", 0), "port 0"),
    ],
)
def test_redirects_to_unsafe_targets_are_refused(alternate: Address, why: str) -> None:
    """S20, for the unprotected and the authenticated 300 alike."""
    for signed in (False, True):
        h = Harness()
        if signed:
            request = challenged(h)
            h.reply(try_alternate(h.server, request, alternate=alternate))
        else:
            h.client.allocate(0.0)
            h.reply(try_alternate(h.server, h.one(), sign=None, alternate=alternate))
        [failed] = h.events()
        assert isinstance(failed, AllocationFailed)
        assert failed.redirect is None and why in failed.reason, failed


def test_a_300_without_alternate_server_is_a_plain_failure() -> None:
    h = Harness()
    h.client.allocate(0.0)
    first = h.one()
    h.reply(h.server.error(first, 300, "Try Alternate", sign=None))
    [failed] = h.events()
    assert isinstance(failed, AllocationFailed)
    assert failed.redirect is None and "without ALTERNATE-SERVER" in failed.reason


def test_retarget_is_refused_while_an_allocation_is_held() -> None:
    h = Harness()
    h.allocate()
    with pytest.raises(LocalProtocolError, match="allocated"):
        h.client.retarget(ALT)


# ----------------------------------------------------------------------------- the guard

A, B, C, D, E = (Address(f"192.0.2.{n}", 3478) for n in (1, 2, 3, 4, 5))


def test_a_redirect_loop_a_b_a_is_stopped() -> None:
    guard = RedirectGuard()
    guard.begin()
    guard.sent("udp", A, 0.0)
    assert guard.refusal("udp", B, 0.1) is None
    guard.follow(A, B)
    guard.sent("udp", B, 0.1)
    why = guard.refusal("udp", A, 0.2)
    assert why is not None and "redirect loop" in why and str(A) in why
    assert guard.refusal("udp", B, 0.2) is not None  # a redirect to itself too
    assert guard.refusal("tcp", A, 0.2) is None  # another transport is another request


def test_the_loop_memory_lasts_five_minutes_across_attempts() -> None:
    guard = RedirectGuard()
    guard.sent("udp", A, 0.0)
    guard.begin()  # a re-allocation later in the endpoint's life
    assert guard.refusal("udp", A, 299.0) is not None
    assert guard.refusal("udp", A, 300.0) is None
    guard.sent("udp", B, 301.0)
    assert guard.refusal("udp", A, 301.0) is None  # forgotten (and pruned)


def test_redirects_are_bounded_per_attempt() -> None:
    guard = RedirectGuard(limit=3)
    guard.begin()
    now = 0.0
    for origin, target in ((A, B), (B, C), (C, D)):
        guard.sent("udp", origin, now)
        assert guard.refusal("udp", target, now) is None
        guard.follow(origin, target)
        now += 1.0
    guard.sent("udp", D, now)
    why = guard.refusal("udp", E, now)
    assert why is not None and "3 times" in why
    assert f"{A} -> {B} -> {C} -> {D}" in why
    guard.begin()
    assert guard.refusal("udp", E, now) is None


def test_max_redirects_zero_follows_none() -> None:
    guard = RedirectGuard(limit=0)
    guard.begin()
    why = guard.refusal("udp", B, 0.0)
    assert why is not None and "off" in why
    with pytest.raises(ValueError):
        RedirectGuard(limit=-1)
