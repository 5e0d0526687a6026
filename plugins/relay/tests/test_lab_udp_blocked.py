"""Through the lab's ``udp-blocked`` topology (outbound UDP dropped at the router): a
``turn:`` URI without a transport gets no answer over UDP, so the method falls back to TCP
on the same port, and an internet peer still reaches the LAN host through the relay."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.abc
import pytest
from nattrav.method import AttemptContext
from nattrav.models import TransportAddress, TraversalRequest
from nattrav_relay.config import load_config
from nattrav_relay.driver import RelayEndpoint
from nattrav_relay.method import RelayMethod
from nattrav_relay.transport import Transport, open_transport

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("lab", ["udp-blocked"], indirect=True)]


async def test_udp_blocked_falls_back_to_tcp(lab: Any) -> None:
    async def opener(host: str, port: int, kind: str) -> Transport:
        with lab.inside("lan"):
            return await open_transport(host, port, kind)

    config = load_config(
        {
            "servers": [f"turn:{lab.turn.host4}:{lab.turn.port}"],
            "username": lab.turn.user,
            "password": lab.turn.password,
            "timeout": 1.5,
            "self_test": False,
        }
    )
    method = RelayMethod(config, opener=opener)
    async with method.acquire(AttemptContext(TraversalRequest(port=0), "relay")) as acquisition:
        candidate = acquisition.candidate
        assert candidate.details["server"].endswith("?transport=tcp")
        assert candidate.details["transport"] == "tcp"
        channel = acquisition.channel
        assert isinstance(channel, RelayEndpoint)
        with lab.inside("internet"):
            peer = await anyio.create_udp_socket(local_host=lab.internet_peer_ip4)
        async with peer:
            host, port = peer.extra(anyio.abc.SocketAttribute.local_address)[:2]
            await channel.permit(host)
            await peer.sendto(b"over tcp", candidate.address.host, candidate.address.port)
            with anyio.fail_after(5):
                data, sender = await channel.receive()
            assert data == b"over tcp" and sender == TransportAddress(host, port)
            await channel.send_to(b"back", sender)
            with anyio.fail_after(5):
                assert (await peer.receive())[0] == b"back"


async def test_no_self_test_where_udp_to_the_relay_is_blocked(lab: Any) -> None:
    """The self-test sends a UDP datagram to the relayed address; with UDP blocked it could
    only wait out its window, so it is skipped and the candidate says why (claimed)."""

    async def opener(host: str, port: int, kind: str) -> Transport:
        with lab.inside("lan"):
            return await open_transport(host, port, kind)

    config = load_config(
        {
            "servers": [f"turn:{lab.turn.host4}:{lab.turn.port}"],
            "username": lab.turn.user,
            "password": lab.turn.password,
            "fallback_after": 0.5,
            "self_test_window": 5.0,
        }
    )
    method = RelayMethod(config, opener=opener)
    started = anyio.current_time()
    async with method.acquire(AttemptContext(TraversalRequest(port=0), "relay")) as acquisition:
        took = anyio.current_time() - started
        reachability = acquisition.candidate.reachability
    assert acquisition.candidate.details["transport"] == "tcp"
    assert not reachability.verified and "self-test skipped" in reachability.how
    assert took < 4.0  # UDP waited fallback_after, not the 5 s self-test window
