"""Through the network lab: the LAN host behind the *symmetric* NAT allocates on the lab's
coturn, a peer on the internet side reaches it through the relayed address, and the reply
reaches the peer; over UDP, TCP and TLS (certificate verified against the lab CA); coturn
restarted mid-session and the client recovering with a new allocation; the chain method
proving inbound with its self-test from behind the NAT; and ``nattrav relay allocate
--echo`` run on the LAN host.

Sockets of the LAN host are created inside ``lab.inside("lan")`` (through the driver's
``opener`` hook), the peer's inside ``lab.inside("internet")``.
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
import sys
from typing import Any

import anyio
import anyio.abc
import pytest
from nattrav.method import AttemptContext
from nattrav.models import LeaseEvent, LeaseEventKind, TransportAddress, TraversalRequest
from nattrav_relay.config import load_config
from nattrav_relay.driver import RelayEndpoint, allocate
from nattrav_relay.method import RelayMethod
from nattrav_relay.transport import Transport, open_transport

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("lab", ["symmetric"], indirect=True)]


def lan_opener(lab: Any, ssl_context: ssl.SSLContext | None = None) -> Any:
    async def opener(host: str, port: int, kind: str) -> Transport:
        with lab.inside("lan"):
            return await open_transport(
                host, port, kind, ssl_context=ssl_context, server_name=lab.turn.server_name
            )

    return opener


def turn_uri(lab: Any, transport: str) -> str:
    if transport == "tls":
        return f"turns:{lab.turn.host4}:{lab.turn.tls_port}"
    return f"turn:{lab.turn.host4}:{lab.turn.port}?transport={transport}"


def lab_allocate(lab: Any, transport: str = "udp", **kw: Any) -> Any:
    context = None
    if transport == "tls":
        context = ssl.create_default_context(cafile=str(lab.turn.ca_path))
    return allocate(
        turn_uri(lab, transport),
        username=lab.turn.user,
        password=lab.turn.password,
        opener=lan_opener(lab, context),
        ssl_context=context,
        **kw,
    )


async def internet_peer(lab: Any, index: int = 0) -> anyio.abc.UDPSocket:
    with lab.inside("internet"):
        return await anyio.create_udp_socket(local_host=lab.internet_peer_ips4[index])


async def peer_reaches_lan_host(ep: RelayEndpoint, peer: anyio.abc.UDPSocket) -> None:
    """The internet peer sends to the relayed address, the LAN host receives it and answers;
    the answer comes back to the peer from the relayed address."""
    relayed = ep.relayed
    host, port = peer.extra(anyio.abc.SocketAttribute.local_address)[:2]
    await ep.permit(str(host))
    await peer.sendto(b"hello from the internet", relayed.host, relayed.port)
    with anyio.fail_after(5):
        data, sender = await ep.receive()
    assert data == b"hello from the internet" and sender == TransportAddress(host, port)
    await ep.send_to(b"hello from behind the NAT", sender)
    with anyio.fail_after(5):
        answer, source = await peer.receive()
    assert answer == b"hello from behind the NAT"
    assert (source[0], source[1]) == (relayed.host, relayed.port)


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
async def test_internet_peer_reaches_the_lan_host_behind_a_symmetric_nat(
    lab: Any, transport: str
) -> None:
    async with lab_allocate(lab, transport) as ep:
        assert ep.relayed.host == lab.turn.host4
        assert ep.mapped is not None and ep.mapped.host == lab.public_ip4  # the NAT's address
        assert ep.local is not None and ep.local.host == lab.lan_host_ip4
        async with await internet_peer(lab) as peer:
            await peer_reaches_lan_host(ep, peer)
            await peer_reaches_lan_host(ep, peer)  # and again, now over the bound channel
        assert ep.stats.packets_received == 2 and ep.stats.packets_sent == 2


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_coturn_restart_is_recovered_with_a_new_allocation(lab: Any, transport: str) -> None:
    events: list[LeaseEvent] = []
    async with lab_allocate(lab, transport, on_event=events.append) as ep:
        first = ep.relayed
        async with await internet_peer(lab, 1) as peer:
            await peer_reaches_lan_host(ep, peer)
            await anyio.to_thread.run_sync(lab.restart_coturn)
            if transport == "udp":
                await ep.check()  # UDP has no connection to lose: ask the server now
            with anyio.fail_after(20):
                while ep.generation < 2:
                    await anyio.sleep(0.05)
            assert ep.relayed != first
            await peer_reaches_lan_host(ep, peer)  # the permission came back with it
    kinds = [e.kind for e in events]
    assert kinds.index(LeaseEventKind.LOST) < kinds.index(LeaseEventKind.CHANGED)


async def test_the_method_proves_inbound_from_behind_the_nat(lab: Any) -> None:
    def probe_socket(family: int) -> socket.socket:
        with lab.inside("lan"):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(("0.0.0.0", 0))
        return sock

    config = load_config(
        {
            "servers": [turn_uri(lab, "udp")],
            "username": lab.turn.user,
            "password": lab.turn.password,
        }
    )
    method = RelayMethod(config, opener=lan_opener(lab), probe_socket=probe_socket)
    ctx = AttemptContext(TraversalRequest(port=0), "relay")
    async with method.acquire(ctx) as acquisition:
        candidate = acquisition.candidate
        assert candidate.reachability.verified, candidate.reachability.how
        assert f"from {lab.public_ip4}:" in candidate.reachability.how
        channel = acquisition.channel
        assert isinstance(channel, RelayEndpoint)
        async with await internet_peer(lab, 2) as peer:
            await peer_reaches_lan_host(channel, peer)


async def test_cli_on_the_lan_host_echoes_what_an_internet_peer_sends(lab: Any) -> None:
    argv = [
        sys.executable,
        "-m",
        "nattrav.cli",
        "relay",
        "allocate",
        turn_uri(lab, "udp"),
        "--user",
        lab.turn.user,
        "--password",
        lab.turn.password,
        "--echo",
        "--permit",
        lab.internet_peer_ips4[3],
        "--json",
    ]
    proc = lab.popen(
        "lan",
        argv,
        stdout=__import__("subprocess").PIPE,
        text=True,
        env={"NATTRAV_STATE_DIR": "/tmp/nattrav-relay-lab-cli", "PATH": "/usr/bin"},
    )
    try:
        line = await anyio.to_thread.run_sync(proc.stdout.readline)
        record = json.loads(line)
        assert record["event"] == "allocated"
        host, port = record["relayed"][0].rsplit(":", 1)
        async with await internet_peer(lab, 3) as peer:
            await peer.sendto(b"echo me", host, int(port))
            with anyio.fail_after(5):
                data, source = await peer.receive()
            assert data == b"echo me" and (source[0], source[1]) == (host, int(port))
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=10))
        proc.stdout.close()
    released = [json.loads(x) for x in out.splitlines()][-1]
    assert released["event"] == "released" and released["stats"]["packets_received"] == 1
