"""Padded STUN probes over the search, sans-IO: exact sizes, unguessable confirmation, and
ICMP PTBs validated against our own probes (hostile-inputs M1-M3). The other end is our own
``EchoResponder`` called in-process."""

from __future__ import annotations

import attrs
import pytest
from nattrav.errors import LocalProtocolError
from nattrav_pmtud.echo import EchoResponder
from nattrav_pmtud.errqueue import ExtendedError, QueuedError
from nattrav_pmtud.prober import ProbeCredentials, StunPmtuProber, min_probe_size
from nattrav_pmtud.search import Phase, SearchSettings
from nattrav_stun.codec import (
    BINDING,
    ERROR,
    ERROR_CODE,
    PADDING,
    SUCCESS,
    XOR_MAPPED_ADDRESS,
    ErrorCode,
    IntegrityKey,
    Message,
    decode,
    encode,
)

SERVER4 = ("203.0.113.1", 3478)
SERVER6 = ("2001:db8::1", 3478)


def prober(
    target: tuple[str, int] = SERVER4, creds: ProbeCredentials | None = None, **kw: object
) -> StunPmtuProber:
    family = 6 if ":" in target[0] else 4
    return StunPmtuProber(target, SearchSettings(family=family, **kw), credentials=creds)  # type: ignore[arg-type]


def ptb(data: bytes, mtu: int, dest: tuple[str, int] = SERVER4, quote: int = 520) -> QueuedError:
    origin, typ, code = (2, 3, 4) if ":" not in dest[0] else (3, 2, 0)
    return QueuedError(
        ExtendedError(90, origin, typ, code, mtu, 0, ("192.168.1.1", 0)), data[:quote], dest
    )


def test_probes_have_exactly_the_ordered_size() -> None:
    for target, overhead in ((SERVER4, 28), (SERVER6, 48)):
        p = prober(target)
        for size in (1200, 1280, 1400, 1500, 9000, 65532):
            if size < p.search.base:
                continue
            data, txid = p.build_probe(size)
            assert len(data) == size - overhead
            msg = decode(data)
            assert msg.transaction_id == txid and PADDING in msg and msg.fingerprint


def test_signed_probes_with_username_still_hit_the_size() -> None:
    p = prober(creds=ProbeCredentials("s3cret", "alice"))
    data, _ = p.build_probe(1400)
    assert len(data) == 1372 and decode(data).has_integrity
    assert min_probe_size(4) == 60 and min_probe_size(6) == 80


def test_search_against_an_echo_peer_confirms_by_reply() -> None:
    p = prober()
    echo = EchoResponder()
    p.start(0.0)
    [(data, dest)] = p.datagrams_to_send()
    assert dest == SERVER4 and len(data) == 1172
    reply = echo.respond(data, ("198.51.100.2", 40000))
    assert reply is not None and len(reply) < len(data)  # never amplifies
    assert p.receive_datagram(reply, SERVER4, 0.01)
    assert p.search.confirmed and p.mapped == ("198.51.100.2", 40000)
    [(data, _)] = p.datagrams_to_send()
    assert len(data) == 9000 - 28


def test_replies_that_must_not_confirm() -> None:
    p = prober()
    p.start(0.0)
    [(data, _)] = p.datagrams_to_send()
    req = decode(data)
    good = encode(
        Message(BINDING, SUCCESS, req.transaction_id, {XOR_MAPPED_ADDRESS: ("192.0.2.1", 9)})
    )
    other_tid = encode(Message(BINDING, SUCCESS, bytes(12), {}))
    assert not p.receive_datagram(other_tid, SERVER4, 0.01)  # guessed transaction ID
    assert not p.receive_datagram(good, ("203.0.113.66", 3478), 0.01)  # spoofed elsewhere
    assert not p.receive_datagram(data, SERVER4, 0.01)  # our own request reflected
    assert not p.receive_datagram(b"\x17\x03\x03garbage-not-stun", SERVER4, 0.01)
    assert not p.receive_datagram(good[:-4], SERVER4, 0.01)  # truncated
    assert not p.search.confirmed
    assert p.discarded == {
        "unknown-transaction": 1,
        "wrong-source": 1,
        "not-a-binding-response": 1,
        "not-stun": 1,
        "malformed": 1,
    }
    assert p.receive_datagram(good, SERVER4, 0.01) and p.search.confirmed


def test_with_credentials_an_unsigned_or_badly_signed_reply_is_rejected() -> None:
    creds = ProbeCredentials("s3cret")
    p = prober(creds=creds)
    p.start(0.0)
    [(data, _)] = p.datagrams_to_send()
    tid = decode(data).transaction_id
    unsigned = encode(Message(BINDING, SUCCESS, tid, {}))
    wrong_key = encode(Message(BINDING, SUCCESS, tid, {}), integrity=IntegrityKey(b"guess"))
    assert not p.receive_datagram(unsigned, SERVER4, 0.01)
    assert not p.receive_datagram(wrong_key, SERVER4, 0.01)
    assert p.discarded["integrity"] == 2 and not p.search.confirmed
    reply = EchoResponder(creds).respond(data, ("198.51.100.2", 1))
    assert reply is not None and p.receive_datagram(reply, SERVER4, 0.02)


def test_an_error_response_proves_arrival_and_flags_padding_rejection() -> None:
    p = prober()
    p.start(0.0)
    [(data, _)] = p.datagrams_to_send()
    tid = decode(data).transaction_id
    e420 = encode(Message(BINDING, ERROR, tid, {ERROR_CODE: ErrorCode(420, "Unknown Attribute")}))
    assert p.receive_datagram(e420, SERVER4, 0.01)
    assert p.padding_rejected and p.search.confirmed
    assert p.result().details["server_rejected_padding"] is True


def _to_search(p: StunPmtuProber) -> bytes:
    p.start(0.0)
    [(base, _)] = p.datagrams_to_send()
    reply = EchoResponder().respond(base, ("198.51.100.2", 1))
    assert reply is not None
    p.receive_datagram(reply, p.target, 0.01)
    [(big, _)] = p.datagrams_to_send()
    return big


@pytest.mark.parametrize(("target", "quote"), [(SERVER4, 520), (SERVER6, 1184), (SERVER4, 20)])
def test_a_ptb_quoting_our_probe_is_used(target: tuple[str, int], quote: int) -> None:
    p = prober(target, rtt_floor=0.001)
    big = _to_search(p)
    assert p.receive_error(ptb(big, 1400, target, quote), 0.011) == "used"
    assert not p.datagrams_to_send()  # one RTT (10 ms) after the last probe at the earliest
    assert p.get_timer() == pytest.approx(0.02)
    p.handle_timer(0.02)
    [(nxt, _)] = p.datagrams_to_send()
    assert len(nxt) == 1400 - (28 if target is SERVER4 else 48)
    assert p.search.plpmtu == p.search.base  # the PTB alone set nothing


def test_forged_ptbs_are_ignored() -> None:
    p = prober()
    big = _to_search(p)
    forged_tid = big[:8] + bytes(12) + big[20:]
    not_stun = b"\xff" * 64
    cases = {
        "unknown-transaction": ptb(forged_tid, 1300),
        "wrong-destination": ptb(big, 1300, ("203.0.113.9", 3478)),
        "quote-too-short": ptb(big, 1300, quote=8),  # an RFC 792 router quoting 8 bytes
        "not-our-probe": ptb(not_stun, 1300),
        "wrong-family": QueuedError(ExtendedError(90, 3, 2, 0, 1300, 0, None), big, SERVER4),
    }
    for reason, entry in cases.items():
        assert p.receive_error(entry, 0.02) == reason
    assert p.search.in_flight is not None and p.search.in_flight.size == 9000
    assert p.search.ptb_used == 0 and p.search.upper_bound is None
    # And sizes the search must not believe (M2), even when the quote is ours:
    assert p.receive_error(ptb(big, 9000), 0.02) == "not-smaller-than-probe"
    assert p.receive_error(ptb(big, 600), 0.02) == "below-base-plpmtu"
    assert p.receive_error(ptb(big, 40), 0.02) == "below-min-plpmtu"
    assert p.search.in_flight is not None and p.search.plpmtu == 1200


def test_local_emsgsize_lowers_the_maximum_and_port_unreachable_is_noted() -> None:
    p = prober(max_plpmtu=65535)
    big = _to_search(p)
    unreach = QueuedError(ExtendedError(111, 2, 3, 3, 0, 0, ("203.0.113.1", 0)), big[:100], SERVER4)
    p.send_failed(big, 0.02, local_mtu=1500)
    assert p.search.max_plpmtu == 1500 and p.search.local_mtu == 1500
    local = QueuedError(ExtendedError(90, 1, 0, 0, 1400, 0, None), b"", SERVER4)
    assert p.receive_error(local, 0.03) == "local-mtu" and p.search.max_plpmtu == 1400
    assert p.receive_error(unreach, 0.04) == "unknown-transaction"  # that probe is gone
    nxt = p.datagrams_to_send()[0][0]
    unreach = attrs.evolve(unreach, quoted=nxt[:100])
    assert p.receive_error(unreach, 0.04) == "port-unreachable"
    assert p.result().details["port_unreachable_from"] == "203.0.113.1"


def test_family_mismatch_and_bad_step_are_local_errors() -> None:
    with pytest.raises(LocalProtocolError):
        StunPmtuProber(SERVER6, SearchSettings(family=4))
    with pytest.raises(LocalProtocolError):
        StunPmtuProber(SERVER4, SearchSettings(family=4, step=2))


def test_result_is_json_ready() -> None:
    p = prober()
    p.start(0.0)
    for _ in range(3):
        p.handle_timer(p.get_timer() or 0.0)
    res = p.result()
    assert res.phase is Phase.ERROR and not res.confirmed
    d = res.to_dict()
    assert (
        d["target"] == "203.0.113.1:3478" and d["probes"]["lost"] == 3 and d["confirmed"] is False
    )
