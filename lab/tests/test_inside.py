"""Running code inside lab namespaces: ``inside`` (setns on the calling thread) and ``exec``.

Checked with anyio sockets on both backends: a UDP socket created inside the LAN host sends
through the router's NAT, so the internet-side peer sees the router's public address, while
sockets created after the block live in the test's own namespace again.
"""

from __future__ import annotations

import os
import sys

import anyio
import pytest
from nattrav_lab import Lab


def _netns_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


@pytest.mark.anyio
async def test_udp_socket_made_inside_lan_is_natted(lab: Lab) -> None:
    home = _netns_inode()
    with lab.inside("internet"):
        peer = await anyio.create_udp_socket(local_host=lab.internet_peer_ip4, local_port=4000)
    with lab.inside("lan"):
        assert _netns_inode() != home
        client = await anyio.create_udp_socket(local_host="0.0.0.0", local_port=41000)
    assert _netns_inode() == home
    async with peer, client:
        with anyio.fail_after(5):
            await client.sendto(b"ping", lab.internet_peer_ip4, 4000)
            data, (src_ip, src_port) = await peer.receive()
            assert data == b"ping"
            assert src_ip == lab.public_ip4 == lab.router_wan_ip4
            await peer.sendto(b"pong", src_ip, src_port)
            reply, (from_ip, _) = await client.receive()
    assert reply == b"pong"
    assert from_ip == lab.internet_peer_ip4


@pytest.mark.anyio
async def test_tcp_over_ipv6_from_lan_is_routed_not_natted(lab: Lab) -> None:
    with lab.inside("internet"):
        listener = await anyio.create_tcp_listener(
            local_host=lab.internet_peer_ip6, local_port=4001
        )
    seen: list[str] = []

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            seen.append(stream.extra(anyio.abc.SocketAttribute.remote_address)[0])
            await stream.send(await stream.receive())

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        with lab.inside("lan"):
            # the socket is created while the block runs, so it lives in the LAN host
            stream = await anyio.connect_tcp(lab.internet_peer_ip6, 4001)
        async with stream:
            await stream.send(b"hello")
            with anyio.fail_after(5):
                assert await stream.receive() == b"hello"
        tg.cancel_scope.cancel()
    assert seen == [lab.lan_host_ip6]


def test_exec_runs_in_the_role_namespace(lab: Lab) -> None:
    out = lab.exec("lan", ["ip", "-o", "-4", "addr", "show", "dev", "eth0"], check=True).stdout
    assert lab.lan_host_ip4 in out
    code = (
        "import socket; s=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); "
        f"s.connect(('{lab.internet_peer_ip6}', 9)); print(s.getsockname()[0])"
    )
    proc = lab.popen("lan", [sys.executable, "-c", code], stdout=-1, text=True)
    out, _ = proc.communicate(timeout=20)
    assert out.strip() == lab.lan_host_ip6


def test_unknown_role_is_a_clear_error(lab: Lab) -> None:
    from nattrav_lab import LabError

    with pytest.raises(LabError, match=r"no role 'site2\.lan'"):
        lab.exec("site2.lan", ["true"])


def test_trio_workers_made_inside_are_sent_home(lab: Lab) -> None:
    """A trio worker thread created inside the LAN host (trio caches its workers process-wide)
    must not serve a later ``to_thread`` call from inside the lab."""
    import threading
    import time

    import trio

    home = _netns_inode()
    many = threading.active_count() + 8  # more at once than trio can have idle: some are new

    def hold() -> int:
        time.sleep(0.05)  # keep the worker busy so the others cannot reuse it
        return _netns_inode()

    async def namespaces() -> set[int]:
        seen: set[int] = set()
        limiter = trio.CapacityLimiter(many)  # the default 40 could be served by idle ones

        async def one() -> None:
            seen.add(await trio.to_thread.run_sync(hold, limiter=limiter))

        async with trio.open_nursery() as nursery:
            for _ in range(many):
                nursery.start_soon(one)
        return seen

    async def inside() -> set[int]:
        with lab.inside("lan"):
            return await namespaces()

    assert trio.run(inside) - {home}  # some workers were made inside the LAN host
    # The cache hands the idle workers out again: every one of them is home now.
    assert trio.run(namespaces) == {home}
