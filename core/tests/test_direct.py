from __future__ import annotations

import pytest
from nattrav.direct import DirectMethod
from nattrav.errors import MethodUnavailable
from nattrav.interfaces import list_addresses
from nattrav.method import AttemptContext
from nattrav.models import CandidateKind, Inbound, Transport, TraversalRequest

pytestmark = pytest.mark.anyio

RECORDED = [
    ("lo", "127.0.0.1", 8),
    ("lo", "::1", 128),
    ("eth0", "192.168.1.20", 24),
    ("eth0", "fe80::1%eth0", 64),
    ("eth0", "fd00::20", 64),
    ("wan0", "203.0.113.10", 24),
    ("wan0", "2001:db8:1::10", 64),
    ("cg0", "100.64.3.4", 10),
]


def test_list_addresses_classifies_and_filters() -> None:
    found = list_addresses(source=lambda: RECORDED)
    scopes = {a.ip: a.scope.value for a in found}
    assert scopes["192.168.1.20"] == "private"
    assert scopes["fe80::1"] == "link-local"
    assert scopes["203.0.113.10"] == "public"
    assert scopes["100.64.3.4"] == "shared"
    v4 = list_addresses(families=(4,), source=lambda: RECORDED)
    assert all(a.family == 4 for a in v4)


async def test_direct_succeeds_only_for_public_addresses() -> None:
    method = DirectMethod(lambda: list_addresses(source=lambda: RECORDED))
    ctx = AttemptContext(
        request=TraversalRequest(port=4000, transport=Transport.TCP), method="direct"
    )
    async with method.acquire(ctx) as acq:
        c = acq.candidate
        assert c.kind is CandidateKind.HOST
        assert str(c.address) == "203.0.113.10:4000"
        assert c.address.transport is Transport.TCP
        assert c.reachability.inbound is Inbound.UNKNOWN
        assert [str(a.address) for a in acq.also] == ["[2001:db8:1::10]:4000"]


async def test_direct_is_unavailable_behind_nat() -> None:
    private = [r for r in RECORDED if r[0] != "wan0"]
    method = DirectMethod(lambda: list_addresses(source=lambda: private))
    ctx = AttemptContext(request=TraversalRequest(port=4000), method="direct")
    with pytest.raises(
        MethodUnavailable, match=r"no interface has a public address .*192\.168\.1\.20 \(private\)"
    ):
        async with method.acquire(ctx):
            pass
