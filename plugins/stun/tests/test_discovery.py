"""RFC 5780 discovery: the sans-IO test machines with canned outcomes, then end to end
against coturn on loopback (the lab tests cover real NATs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from nattrav_stun.codec import CHANGE_IP, CHANGE_PORT, Address
from nattrav_stun.discovery import (
    ADDRESS_AND_PORT_DEPENDENT,
    ADDRESS_DEPENDENT,
    ENDPOINT_INDEPENDENT,
    NO_NAT,
    UDP_BLOCKED,
    UNKNOWN,
    Outcome,
    Probe,
    TestMachine,
    Verdict,
    discover_nat_behaviour,
    filtering_test,
    mapping_test,
)
from nattrav_stun.events import BindingResult
from nattrav_stun.testing import Coturn

P = Address("203.0.113.1", 3478)
A = Address("203.0.113.2", 3479)
LOCAL = Address("192.168.1.10", 40000)


def answer(mapped: Address, source: Address = P, other: Address | None = A) -> Outcome:
    return Outcome(
        BindingResult(mapped=mapped, server=source, source=source, other_address=other), "", LOCAL
    )


SILENCE = Outcome(None, "no response after 2 sends", LOCAL)


def drive(machine: TestMachine, outcomes: list[Outcome]) -> tuple[list[Probe], Verdict]:
    probes = [next(machine)]
    for outcome in outcomes:
        try:
            probes.append(machine.send(outcome))
        except StopIteration as stop:
            return probes, stop.value
    raise AssertionError(f"machine wants more than {len(outcomes)} outcomes: {probes}")


M1 = Address("198.51.100.2", 40000)
M2 = Address("198.51.100.2", 40001)
M3 = Address("198.51.100.2", 40002)


def test_mapping_endpoint_independent() -> None:
    probes, verdict = drive(mapping_test(P), [answer(M1), answer(M1, Address(A.host, P.port))])
    assert [p.destination for p in probes] == [P, Address(A.host, P.port)]
    assert verdict.behaviour == ENDPOINT_INDEPENDENT and verdict.trusted
    assert verdict.mapped == M1 and verdict.other_address == A


def test_mapping_address_dependent() -> None:
    probes, verdict = drive(
        mapping_test(P), [answer(M1), answer(M2, Address(A.host, P.port)), answer(M2, A)]
    )
    assert probes[2].destination == A
    assert verdict.behaviour == ADDRESS_DEPENDENT


def test_mapping_address_and_port_dependent() -> None:
    _, verdict = drive(
        mapping_test(P), [answer(M1), answer(M2, Address(A.host, P.port)), answer(M3, A)]
    )
    assert verdict.behaviour == ADDRESS_AND_PORT_DEPENDENT
    assert "40002" in verdict.reason


def test_mapping_no_nat_and_udp_blocked() -> None:
    _, verdict = drive(mapping_test(P), [answer(LOCAL)])
    assert verdict.behaviour == NO_NAT
    _, verdict = drive(mapping_test(P), [SILENCE])
    assert verdict.behaviour == UDP_BLOCKED


@pytest.mark.parametrize(
    ("other", "why"),
    [
        (None, "does not support RFC 5780"),
        (Address(P.host, 3479), "primary's IP"),
        (Address("203.0.113.2", P.port), "primary's port"),
    ],
)
def test_mapping_untrusted_servers(other: Address | None, why: str) -> None:
    _, verdict = drive(mapping_test(P), [answer(M1, other=other)])
    assert verdict.behaviour == UNKNOWN and not verdict.trusted and why in verdict.reason


def test_mapping_alternate_silent_is_unknown() -> None:
    _, verdict = drive(mapping_test(P), [answer(M1), SILENCE])
    assert verdict.behaviour == UNKNOWN and "did not answer" in verdict.reason


def test_filtering_endpoint_independent() -> None:
    probes, verdict = drive(filtering_test(P), [answer(M1), answer(M1, A)])
    assert probes[1].change == CHANGE_IP | CHANGE_PORT and probes[1].any_source
    assert probes[1].may_fail
    assert verdict.behaviour == ENDPOINT_INDEPENDENT


def test_filtering_address_dependent() -> None:
    probes, verdict = drive(
        filtering_test(P),
        [answer(M1), SILENCE, answer(M1, Address(P.host, A.port)), answer(M1, A)],
    )
    assert probes[2].change == CHANGE_PORT
    assert probes[3].destination == A and probes[3].change == 0  # the trust check
    assert verdict.behaviour == ADDRESS_DEPENDENT


def test_filtering_address_and_port_dependent_needs_a_live_alternate() -> None:
    _, verdict = drive(filtering_test(P), [answer(M1), SILENCE, SILENCE, answer(M1, A)])
    assert verdict.behaviour == ADDRESS_AND_PORT_DEPENDENT and verdict.trusted
    _, verdict = drive(filtering_test(P), [answer(M1), SILENCE, SILENCE, SILENCE])
    assert verdict.behaviour == UNKNOWN and not verdict.trusted


def test_filtering_server_ignoring_change_request() -> None:
    _, verdict = drive(filtering_test(P), [answer(M1), answer(M1, P)])
    assert verdict.behaviour == UNKNOWN and "ignores CHANGE-REQUEST" in verdict.reason


def test_filtering_udp_blocked() -> None:
    _, verdict = drive(filtering_test(P), [SILENCE])
    assert verdict.behaviour == UDP_BLOCKED


@pytest.mark.anyio
async def test_loopback_coturn_is_no_nat_and_open(coturn: Coturn) -> None:
    behaviour = await discover_nat_behaviour(
        coturn.uri, window=0.3, hairpinning=True, lifetime=(0.2,)
    )
    report = behaviour.to_json()
    assert report["mapping"] == NO_NAT
    assert report["filtering"] == ENDPOINT_INDEPENDENT
    assert report["nat"] is False and report["rfc5780"] is True
    assert report["other_address"] == f"127.0.0.2:{coturn.port + 1}"
    assert report["hairpinning"]["supported"] is True
    assert report["binding_lifetime"]["alive_after"] == 0.2  # RESPONSE-PORT honoured
    assert [t["test"] for t in report["tests"]] == ["mapping I", "filtering I", "filtering II"]


@pytest.mark.anyio
async def test_server_without_rfc5780_gives_unknown_with_reason(
    tmp_path: Path,
) -> None:
    from nattrav_stun.testing import run_coturn

    with run_coturn(tmp_path) as server:  # one listening IP: no OTHER-ADDRESS
        behaviour = await discover_nat_behaviour(server.uri, window=0.3)
    report = behaviour.to_json()
    assert report["filtering"] == UNKNOWN
    assert "does not support RFC 5780" in report["filtering_reason"]
    assert report["trusted"] is False and report["rfc5780"] is False


@pytest.mark.anyio
async def test_unreachable_server_is_udp_blocked() -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        behaviour = await discover_nat_behaviour(f"127.0.0.1:{port}", answer_timeout=0.4)
    assert behaviour.to_json()["mapping"] == UDP_BLOCKED
    assert behaviour.to_json()["filtering"] == UDP_BLOCKED
