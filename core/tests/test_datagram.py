from __future__ import annotations

import socket

import anyio
import pytest
from nattrav.datagram import DatagramMux
from nattrav.errors import MethodUnavailable
from nattrav.models import TransportAddress

pytestmark = pytest.mark.anyio


def _is_tagged(data: bytes, _src: TransportAddress) -> bool:
    return data[:1] == b"\x00"


async def test_demultiplexes_protocol_and_application_datagrams() -> None:
    async with DatagramMux.open(0, families={4}) as mux:
        sub = mux.subscribe("proto", _is_tagged)
        peer = await anyio.create_udp_socket(local_host="127.0.0.1")
        target = ("127.0.0.1", mux.port)
        await peer.sendto(b"\x00proto", *target)
        await peer.sendto(b"app data", *target)
        with anyio.fail_after(2):
            data, src = await sub.receive()
            assert data == b"\x00proto"
            assert src.port == peer.extra(anyio.abc.SocketAttribute.local_port)
            app, src2 = await mux.app.receive()
            assert app == b"app data"
        # Replies leave from the same port the peer sent to.
        await mux.send_to(b"reply", src2)
        with anyio.fail_after(2):
            reply, (_host, port) = await peer.receive()
        assert reply == b"reply" and port == mux.port
        await peer.aclose()


async def test_ipv4_and_ipv6_share_the_port_number() -> None:
    if not socket.has_ipv6:
        pytest.fail("this test needs IPv6 on loopback")
    async with DatagramMux.open(0) as mux:
        assert mux.families == {4, 6}
        assert mux.local_address(4).port == mux.local_address(6).port == mux.port
        peer6 = await anyio.create_udp_socket(local_host="::1")
        await peer6.sendto(b"v6", "::1", mux.port)
        with anyio.fail_after(2):
            data, src = await mux.app.receive()
        assert data == b"v6" and src.family == 6
        await peer6.aclose()


async def test_full_queue_drops_and_counts() -> None:
    async with DatagramMux.open(0, families={4}, queue=2) as mux:
        peer = await anyio.create_udp_socket(local_host="127.0.0.1")
        for i in range(10):
            await peer.sendto(b"x%d" % i, "127.0.0.1", mux.port)
        with anyio.fail_after(2):
            while mux.received < 10:
                await anyio.sleep(0.01)
        assert mux.app_dropped == 8
        await peer.aclose()


async def test_port_in_use_is_unavailable() -> None:
    async with DatagramMux.open(0, families={4}) as mux:
        with pytest.raises(MethodUnavailable, match="cannot bind UDP"):
            async with DatagramMux.open(mux.port, families={4}):
                pass


async def test_app_exception_is_not_wrapped() -> None:
    with pytest.raises(LookupError):
        async with DatagramMux.open(0, families={4}):
            raise LookupError("mine")


async def test_raw_socket_is_the_bound_os_socket() -> None:
    async with DatagramMux.open(0, families={4}) as mux:
        raw = mux.raw_socket(4)
        assert raw.getsockname()[1] == mux.port
        assert raw.type == socket.SOCK_DGRAM


async def test_concurrent_senders_need_no_lock() -> None:
    async with DatagramMux.open(0, families={4}) as mux, DatagramMux.open(0, families={4}) as peer:
        target = ("127.0.0.1", peer.port)
        got: set[bytes] = set()
        sent = 0

        async def burst(tag: int) -> None:
            nonlocal sent
            for i in range(50):
                await mux.send_to(b"%d-%d" % (tag, i), target)
                sent += 1
                await anyio.sleep(0.002)  # paced: the kernel's loopback buffer is small

        async def receive() -> None:
            while len(got) < 1000:
                data, _ = await peer.app.receive()
                got.add(data)

        with anyio.move_on_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(receive)
                async with anyio.create_task_group() as senders:
                    for tag in range(20):
                        senders.start_soon(burst, tag)
                await anyio.sleep(1)
                tg.cancel_scope.cancel()
        assert sent == 1000  # twenty tasks sent at once and none raised (no lock needed)
        assert len(got) >= 950
        assert mux.send_errors == 0


async def test_the_mux_remembers_where_the_port_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Verifiers ask it: an answer from an address the port talked to proves no inbound."""
    import nattrav.datagram as datagram

    async with DatagramMux.open(0, families={4}) as mux:
        assert not mux.has_sent_to("127.0.0.1")
        await mux.send_to(b"x", TransportAddress("127.0.0.1", 9))
        await mux.app.send_to(b"y", TransportAddress("127.0.0.2", 9))
        assert mux.has_sent_to("127.0.0.1") and mux.has_sent_to("127.0.0.2")
        assert not mux.has_sent_to("127.0.0.3")
        monkeypatch.setattr(datagram, "SENT_TO_LIMIT", 3)
        await mux.send_to(b"z", ("127.0.0.4", 9))
        await mux.send_to(b"z", ("127.0.0.5", 9))  # past the limit: it stops counting
        assert mux.has_sent_to("127.0.0.99")  # and says yes to anything (the safe answer)


async def test_late_datagrams_of_a_protocol_that_let_go_never_reach_the_app() -> None:
    async with DatagramMux.open(0, families={4}) as mux:
        sub = mux.subscribe("proto", _is_tagged)
        mux.unsubscribe(sub, linger=0.3)
        peer = await anyio.create_udp_socket(local_host="127.0.0.1")
        await peer.sendto(b"\x00late answer", "127.0.0.1", mux.port)
        await peer.sendto(b"app data", "127.0.0.1", mux.port)
        with anyio.fail_after(2):
            data, _src = await mux.app.receive()
        assert data == b"app data"  # the late protocol datagram was dropped, not delivered
        assert mux.late_dropped == 1
        await anyio.sleep(0.35)  # after the linger, the port is the application's again
        await peer.sendto(b"\x00app's own", "127.0.0.1", mux.port)
        with anyio.fail_after(2):
            data, _src = await mux.app.receive()
        assert data == b"\x00app's own"
        await peer.aclose()


async def test_port_mappings_are_noted_so_filtering_tests_can_discount_them() -> None:
    async with DatagramMux.open(0, families={4}) as mux:
        assert not mux.forwarded and mux.mapping_epoch == 0
        mux.note_mapping("upnp")
        mux.note_mapping("upnp")  # a mapping and a pinhole
        mux.note_mapping("natpmp")
        assert mux.forwarded and mux.mapping_epoch == 3
        mux.forget_mapping("upnp")
        mux.forget_mapping("natpmp")
        assert mux.forwarded  # one UPnP lease left
        mux.forget_mapping("upnp")
        mux.forget_mapping("upnp")  # forgetting more than was noted is harmless
        assert not mux.forwarded and mux.mapping_epoch == 3
