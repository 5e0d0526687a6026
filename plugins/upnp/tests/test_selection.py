"""External-address verdicts (hostile-inputs.md H5) and service ranking (X6, H6)."""

from __future__ import annotations

import pytest
from nattrav_upnp.control import StatusInfo
from nattrav_upnp.description import ServiceInfo, ServiceKind
from nattrav_upnp.selection import ExternalVerdict, ServiceProbe, choose_best, classify_external_ip
from nattrav_upnp.urls import HttpUrl


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("203.0.113.5", ExternalVerdict.PUBLIC),  # documentation ranges count as public
        ("198.51.100.1", ExternalVerdict.PUBLIC),
        ("2001:db8::1", ExternalVerdict.PUBLIC),
        ("8.8.8.8", ExternalVerdict.PUBLIC),
        ("192.168.1.3", ExternalVerdict.DOUBLE_NAT),
        ("10.0.0.1", ExternalVerdict.DOUBLE_NAT),
        ("172.20.0.1", ExternalVerdict.DOUBLE_NAT),
        ("100.64.1.1", ExternalVerdict.DOUBLE_NAT),  # CGNAT
        ("fd00::1", ExternalVerdict.DOUBLE_NAT),
        ("0.0.0.0", ExternalVerdict.NO_ADDRESS),
        ("127.0.0.1", ExternalVerdict.NO_ADDRESS),
        ("169.254.3.3", ExternalVerdict.NO_ADDRESS),
        ("224.0.0.1", ExternalVerdict.NO_ADDRESS),
        ("", ExternalVerdict.NO_ADDRESS),
        ("(null)", ExternalVerdict.NO_ADDRESS),  # miniupnp#567: garbage
        ("203.0.113.5 ", ExternalVerdict.PUBLIC),
    ],
)
def test_external_ip_verdicts(text: str, verdict: ExternalVerdict) -> None:
    ip, got, reason = classify_external_ip(text)
    assert got is verdict, reason
    assert reason
    if verdict is ExternalVerdict.DOUBLE_NAT:
        assert "double NAT" in reason
    if verdict is not ExternalVerdict.PUBLIC:
        assert ip is None or ip != "203.0.113.5"


def test_unknown_when_router_did_not_say() -> None:
    assert classify_external_ip(None)[1] is ExternalVerdict.UNKNOWN


def _probe(
    order: int,
    *,
    kind: ServiceKind = ServiceKind.WAN_IP,
    version: int = 1,
    gateway: bool = False,
    status: str | None = "Connected",
    ip: str = "203.0.113.5",
) -> ServiceProbe:
    service = ServiceInfo(
        f"urn:x:{kind.value}:{version}", kind, version, HttpUrl("192.168.1.1", 1, f"/{order}")
    )
    _ip, verdict, reason = classify_external_ip(ip)
    return ServiceProbe(
        service=service,
        igd_version=version,
        from_gateway=gateway,
        status=None if status is None else StatusInfo(status),
        external_ip=_ip,
        verdict=verdict,
        reason=reason,
        order=order,
    )


def test_connected_beats_gateway_beats_public_beats_version() -> None:
    disconnected_gw = _probe(0, gateway=True, status="Disconnected", version=2)
    connected = _probe(1)
    assert choose_best([disconnected_gw, connected]) is connected
    gw = _probe(2, gateway=True, ip="192.168.0.2")
    assert choose_best([connected, gw]) is gw  # the default gateway's device wins
    v2 = _probe(3, version=2)
    assert choose_best([connected, v2]) is v2
    private_v2 = _probe(4, version=2, ip="10.0.0.2")
    assert choose_best([connected, private_v2]) is connected
    unknown_status = _probe(5, status=None)
    assert choose_best([unknown_status, _probe(6, status="Disconnected")]) is unknown_status


def test_up_counts_as_connected_and_ip_beats_ppp() -> None:
    ppp = _probe(0, kind=ServiceKind.WAN_PPP, status="Up")
    ip = _probe(1, kind=ServiceKind.WAN_IP)
    assert ppp.status is not None and ppp.status.connected
    assert choose_best([ppp, ip]) is ip
    assert choose_best([ppp]) is ppp


def test_ties_keep_discovery_order_and_empty_is_none() -> None:
    a, b = _probe(0), _probe(1)
    assert choose_best([a, b]) is a
    assert choose_best([]) is None
