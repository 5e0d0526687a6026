"""Path hops from the error queue, on loopback (the lab tests see real routers and a CGNAT)."""

from __future__ import annotations

import pytest
from nattrav.hops import Hop, trace_hops

pytestmark = pytest.mark.anyio


async def test_loopback_answers_port_unreachable_at_the_first_hop() -> None:
    found = await trace_hops("127.0.0.1", max_hops=3, window=1.0)
    assert found == [Hop(1, "127.0.0.1", True)]  # reached: later hops are cut
    assert found[0].as_dict() == {"ttl": 1, "ip": "127.0.0.1", "reached": True}


async def test_silence_is_a_hop_without_an_address() -> None:
    # Port 9 on loopback answers; a target that answers nothing is modelled by a port on
    # which a socket listens (no ICMP comes back), so every hop stays unknown.
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        found = await trace_hops("127.0.0.1", port, max_hops=2, window=0.3)
    assert found == [Hop(1, None), Hop(2, None)]


async def test_unsupported_platform_says_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("nattrav.hops.sys.platform", "darwin")
    assert await trace_hops("127.0.0.1") is None


async def test_bad_arguments_are_errors() -> None:
    with pytest.raises(ValueError):
        await trace_hops("127.0.0.1", max_hops=0)
    with pytest.raises(ValueError):
        await trace_hops("not-an-ip")
