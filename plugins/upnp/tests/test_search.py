"""The SSDP search state machine with a fake clock (hostile-inputs.md U1-U7)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nattrav_upnp.search import SearchTarget, SsdpSearch
from nattrav_upnp.ssdp import SEARCH_TARGETS

Read = Callable[[str], bytes]
GW = "192.168.1.1"


def _answer(location: str, st_: str = SEARCH_TARGETS[0], udn: str = "uuid:gw") -> bytes:
    return (
        f"HTTP/1.1 200 OK\r\nLOCATION: {location}\r\nST: {st_}\r\nUSN: {udn}::{st_}\r\n\r\n"
    ).encode()


def _search(**kw: object) -> SsdpSearch:
    targets = (
        SearchTarget("eth0", "239.255.255.250"),
        SearchTarget("eth0", GW, multicast=False),
    )
    return SsdpSearch(targets, gateways=frozenset({GW}), **kw)  # type: ignore[arg-type]


def test_sends_every_search_type_to_every_target_then_resends() -> None:
    s = _search(window=2.0, resend_at=(0.0, 0.25))
    s.start(0.0)
    first = s.datagrams_to_send()
    assert len(first) == 2 * len(SEARCH_TARGETS)
    assert {o.host for o in first} == {"239.255.255.250", GW}
    assert all(b"MX:" in o.data for o in first if o.host != GW)
    assert all(b"MX:" not in o.data for o in first if o.host == GW)
    assert s.get_timer() == 0.25
    s.handle_timer(0.25)
    assert len(s.datagrams_to_send()) == 2 * len(SEARCH_TARGETS)
    assert s.get_timer() == 2.0
    s.handle_timer(2.0)
    assert s.done
    assert s.responders == []
    assert s.datagrams_to_send() == []


def test_gateway_answer_settles_quickly(fixture_bytes: Read) -> None:
    s = _search(window=2.0, settle=0.05)
    s.start(10.0)
    s.receive_datagram(fixture_bytes("ssdp_miniupnpd.txt"), GW, "eth0", 10.01)
    assert s.get_timer() == 10.06
    s.handle_timer(10.06)
    assert s.done
    (r,) = s.responders
    assert r.from_gateway
    assert str(r.location.url) == "http://192.168.1.1:5000/rootDesc.xml"


def test_other_device_waits_longer_for_the_gateway() -> None:
    s = _search(window=2.0, settle=0.05, settle_other=0.25)
    s.start(0.0)
    s.receive_datagram(
        _answer("http://192.168.1.7:1780/d.xml", udn="uuid:other"), "192.168.1.7", "eth0", 0.1
    )
    assert s.deadline == 0.35
    s.receive_datagram(_answer("http://192.168.1.1:5000/d.xml"), GW, "eth0", 0.2)
    assert s.deadline == 0.25
    assert [r.source for r in s.responders] == [GW, "192.168.1.7"]


def test_junk_flood_does_not_extend_the_absolute_deadline() -> None:
    """U3: continuous junk; the search still ends at start + window."""
    s = _search(window=1.0)
    s.start(0.0)
    t = 0.0
    while not s.done and t < 5.0:
        s.receive_datagram(b"\x00junk" * 10, "192.168.1.99", "eth0", t)
        timer = s.get_timer()
        if timer is not None and t >= timer:
            s.handle_timer(t)
        t += 0.001
    assert s.done
    assert t <= 1.002
    assert s.discarded["malformed"] > 900


def test_duplicates_and_cap() -> None:
    """U4: a device answers per ST and per resend: one responder; at most N devices."""
    s = _search(window=2.0, max_responders=3, settle=10, settle_other=10)
    s.start(0.0)
    for st_ in SEARCH_TARGETS:
        s.receive_datagram(_answer("http://192.168.1.1:5000/d.xml", st_), GW, "eth0", 0.1)
    (r,) = s.responders
    assert r.search_types == frozenset(SEARCH_TARGETS)
    for i in range(2, 30):
        host = f"192.168.1.{i}"
        s.receive_datagram(_answer(f"http://{host}:1/d.xml", udn=f"uuid:{i}"), host, "eth0", 0.2)
    assert len(s.responders) == 3
    assert s.discarded["over-cap"] == 26
    assert s.discarded["duplicate"] == len(SEARCH_TARGETS) - 1


def test_unsafe_and_non_igd_answers_are_discarded(fixture_bytes: Read) -> None:
    """U1, U2, U7."""
    s = _search()
    s.start(0.0)
    s.receive_datagram(fixture_bytes("ssdp_wfa_device.txt"), GW, "eth0", 0.01)
    s.receive_datagram(_answer("https://192.168.1.1/x"), GW, "eth0", 0.01)
    s.receive_datagram(_answer("http://192.168.1.1:0/x"), GW, "eth0", 0.01)
    s.receive_datagram(_answer("http://192.168.1.1/x"), "127.0.0.1", "eth0", 0.01)
    s.receive_datagram(_answer("http://192.168.1.1/x"), "fe80::1", "eth0", 0.01)
    assert s.responders == []
    assert s.discarded["not-igd"] == 1
    assert s.discarded["unsafe-url"] == 4


def test_bogus_location_is_repointed_to_responder(fixture_bytes: Read) -> None:
    """U1/U6: TP-Link's [::1] LOCATION and a CARP static address are re-pointed."""
    s = _search()
    s.start(0.0)
    s.receive_datagram(fixture_bytes("ssdp_tplink_loopback.txt"), GW, "eth0", 0.01)
    (r,) = s.responders
    assert str(r.location.url) == "http://192.168.1.1:1900/rootDesc.xml"
    assert r.location.repointed


def test_late_answers_are_discarded() -> None:
    s = _search(window=0.5)
    s.start(0.0)
    s.receive_datagram(_answer("http://192.168.1.1:5000/d.xml"), GW, "eth0", 0.6)
    assert s.done
    assert s.responders == []
    assert s.discarded["late"] == 1


def test_no_targets_is_done_at_once() -> None:
    s = SsdpSearch(())
    s.start(0.0)
    assert s.done
    assert s.get_timer() is None


@given(st.lists(st.tuples(st.binary(max_size=300), st.floats(0, 3)), max_size=30))
@settings(max_examples=100)
def test_any_input_sequence_ends_by_the_deadline(items: list[tuple[bytes, float]]) -> None:
    s = _search(window=2.0)
    s.start(0.0)
    for data, t in sorted(items, key=lambda x: x[1]):
        s.receive_datagram(data, GW, "eth0", t)
    s.handle_timer(2.0)
    assert s.done
    assert s.get_timer() is None


def test_waits_for_a_device_of_every_needed_family() -> None:
    """A pinhole needs the router reached over IPv6: wait (a little) for that answer too."""
    gw6 = "2001:db8:1:1::1"
    s = SsdpSearch(
        (SearchTarget("eth0", "239.255.255.250"), SearchTarget("eth0v6", "ff02::c")),
        gateways=frozenset({GW, gw6}),
        families=frozenset({4, 6}),
        settle=0.05,
        settle_other=0.25,
    )
    s.start(0.0)
    s.receive_datagram(_answer("http://192.168.1.1:5000/d.xml"), GW, "eth0", 0.05)
    assert s.deadline == pytest.approx(0.30)  # the IPv4 gateway alone is not enough
    s.receive_datagram(_answer(f"http://[{gw6}]:5000/d.xml"), gw6, "eth0v6", 0.12)
    assert s.deadline == pytest.approx(0.17)
    assert {r.location.url.family for r in s.responders} == {4, 6}


def test_missing_family_ends_after_settle_other() -> None:
    s = SsdpSearch(
        (SearchTarget("eth0", "239.255.255.250"),),
        gateways=frozenset({GW}),
        families=frozenset({4, 6}),
        settle_other=0.25,
    )
    s.start(0.0)
    s.receive_datagram(_answer("http://192.168.1.1:5000/d.xml"), GW, "eth0", 0.05)
    s.handle_timer(0.30)
    assert s.done
    assert len(s.responders) == 1


def test_a_gateway_without_ssdp_ends_the_search_after_refused_wait() -> None:
    """The unicast M-SEARCH to the gateway drew ICMP Port Unreachable: no UPnP there. Other
    devices get ``refused_wait`` (an MX delay), not the whole window."""
    s = _search(window=2.0, refused_wait=1.0)
    s.start(0.0)
    s.gateway_refused("198.51.100.9", 0.01)  # not a gateway: ignored, counted
    assert s.deadline == 2.0 and s.discarded["refused-by-stranger"] == 1
    s.gateway_refused(GW, 0.02)
    assert s.deadline == 1.02 and s.refused == {GW}
    s.handle_timer(1.02)
    assert s.done and s.responders == []


def test_every_gateway_must_refuse_and_a_late_igd_still_counts() -> None:
    targets = (
        SearchTarget("eth0", "239.255.255.250"),
        SearchTarget("eth0", GW, multicast=False),
        SearchTarget("eth0v6", "2001:db8:1:1::1", multicast=False),
    )
    s = SsdpSearch(targets, gateways=frozenset({GW, "2001:db8:1:1::1"}), window=2.0, settle=0.05)
    s.start(0.0)
    s.gateway_refused(GW, 0.01)
    assert s.deadline == 2.0  # the IPv6 gateway may still answer
    s.gateway_refused("2001:db8:1:1::1", 0.02)
    assert s.deadline == 1.02
    # An IGD that is not the gateway answers the multicast search: it is enough now.
    s.receive_datagram(
        _answer("http://192.168.1.7:1780/d.xml", udn="uuid:other"), "192.168.1.7", "eth0", 0.3
    )
    assert s.deadline == 0.35
    assert [r.source for r in s.responders] == ["192.168.1.7"]
