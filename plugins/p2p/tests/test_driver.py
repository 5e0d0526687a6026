"""The connector's driver on loopback: two peers in one process, real UDP sockets, both
anyio backends. No NAT here (that is ``test_lab.py``): host candidates only."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
from nattrav.datagram import DatagramMux
from nattrav.models import TransportAddress
from nattrav_p2p.candidates import host_candidates
from nattrav_p2p.config import P2pConfig
from nattrav_p2p.driver import IceConnection, run_agent
from nattrav_p2p.errors import ConnectFailed, ConnectionLost
from nattrav_p2p.signals import MemorySignal, memory_signal_pair

pytestmark = pytest.mark.anyio


@pytest.fixture
def signals() -> Iterator[tuple[MemorySignal, MemorySignal]]:
    a, b = memory_signal_pair()
    yield a, b
    a.close()
    b.close()


FAST = P2pConfig(
    families=(4,),
    include_loopback=True,
    connect_timeout=3.0,
    check_timeout=1.0,
    consent_interval=0.3,
    consent_timeout=1.5,
    backup_interval=0.3,
)


async def _peer(role, signal, mux, settings, box, ready, done, extra_ips=()):  # type: ignore[no-untyped-def]
    cands = host_candidates(["127.0.0.1", *extra_ips], mux.port, include_loopback=True)
    async with run_agent(
        signal, role=role, mux=mux, candidates=cands, channels={}, settings=settings
    ) as conn:
        box[role] = conn
        ready.set()
        await done.wait()


async def test_two_peers_connect_and_exchange_data(
    signals: tuple[MemorySignal, MemorySignal],
) -> None:
    sa, sb = signals
    box: dict[str, IceConnection] = {}
    done = anyio.Event()
    ra, rb = anyio.Event(), anyio.Event()
    async with DatagramMux.open(0, families={4}) as ma, DatagramMux.open(0, families={4}) as mb:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_peer, "offer", sa, ma, FAST, box, ra, done)
            tg.start_soon(_peer, "answer", sb, mb, FAST, box, rb, done)
            with anyio.fail_after(5):
                await ra.wait()
                await rb.wait()
            a, b = box["offer"], box["answer"]
            assert a.path.kind == "direct" and b.path.kind == "direct"
            assert a.path.remote == TransportAddress("127.0.0.1", mb.port)
            assert b.path.remote == TransportAddress("127.0.0.1", ma.port)
            assert a.controlling and not b.controlling
            for i in range(20):
                await a.send(b"ping %d" % i)
            got = [await b.receive() for _ in range(20)]
            assert got == [b"ping %d" % i for i in range(20)]
            await b.send(b"pong")
            with anyio.fail_after(2):
                assert await a.receive() == b"pong"
            # Strangers and unframed datagrams never reach the application.
            async with await anyio.create_udp_socket(local_host="127.0.0.1") as stranger:
                await stranger.sendto(b"\xfdhello", "127.0.0.1", mb.port)
            await mb.send_to(b"unframed", TransportAddress("127.0.0.1", mb.port))
            await a.send(b"after")
            with anyio.fail_after(2):
                assert await b.receive() == b"after"
            await anyio.sleep(0.05)
            stats = b.stats()
            assert stats["dropped_stranger"] >= 1 and stats["dropped_unframed"] >= 1
            assert stats["datagrams_received"] == 21
            assert stats["path"]["kind"] == "direct"
            assert stats["connect_seconds"] is not None and stats["connect_seconds"] < 3
            done.set()


async def test_consent_keeps_a_quiet_connection_alive(
    signals: tuple[MemorySignal, MemorySignal],
) -> None:
    sa, sb = signals
    box: dict[str, IceConnection] = {}
    done = anyio.Event()
    ra, rb = anyio.Event(), anyio.Event()
    async with DatagramMux.open(0, families={4}) as ma, DatagramMux.open(0, families={4}) as mb:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_peer, "offer", sa, ma, FAST, box, ra, done)
            tg.start_soon(_peer, "answer", sb, mb, FAST, box, rb, done)
            with anyio.fail_after(5):
                await ra.wait()
                await rb.wait()
            await anyio.sleep(2.5)  # longer than consent_timeout with no application data
            a, b = box["offer"], box["answer"]
            assert not any(type(e).__name__ == "ConsentLost" for e in a.history)
            await a.send(b"still here")
            with anyio.fail_after(2):
                assert await b.receive() == b"still here"
            assert a.stats()["agent"]["checks_sent"] >= 4
            done.set()


async def test_connection_lost_when_the_peer_goes_away(
    signals: tuple[MemorySignal, MemorySignal],
) -> None:
    sa, sb = signals
    box: dict[str, IceConnection] = {}
    done_b = anyio.Event()
    ra, rb = anyio.Event(), anyio.Event()
    async with DatagramMux.open(0, families={4}) as ma, DatagramMux.open(0, families={4}) as mb:
        async with anyio.create_task_group() as tg:
            done_a = anyio.Event()
            tg.start_soon(_peer, "offer", sa, ma, FAST, box, ra, done_a)
            tg.start_soon(_peer, "answer", sb, mb, FAST, box, rb, done_b)
            with anyio.fail_after(5):
                await ra.wait()
                await rb.wait()
            done_b.set()  # b leaves: its checks stop being answered
            a = box["offer"]
            with anyio.fail_after(10), pytest.raises(ConnectionLost):
                while True:
                    await a.receive()
            with pytest.raises(ConnectionLost):
                await a.send(b"x")
            done_a.set()


async def test_no_answer_is_a_signal_error(signals: tuple[MemorySignal, MemorySignal]) -> None:
    from nattrav_p2p.errors import SignalError

    sa, _sb = signals
    async with DatagramMux.open(0, families={4}) as ma:
        cands = host_candidates(["127.0.0.1"], ma.port, include_loopback=True)
        settings = P2pConfig(families=(4,), include_loopback=True, signal_timeout=0.3)
        with pytest.raises(SignalError, match="no answer"):
            async with run_agent(
                sa, role="offer", mux=ma, candidates=cands, channels={}, settings=settings
            ):
                pass


async def test_unreachable_peer_fails_within_the_connect_timeout(
    signals: tuple[MemorySignal, MemorySignal],
) -> None:
    sa, sb = signals
    settings = P2pConfig(
        families=(4,), include_loopback=True, connect_timeout=1.0, check_timeout=0.5
    )
    async with DatagramMux.open(0, families={4}) as ma:
        cands = host_candidates(["127.0.0.1"], ma.port, include_loopback=True)
        # The "peer" answers the offer with a candidate where nobody listens.
        fake = {
            "p2p": 1,
            "type": "answer",
            "ufrag": "XXXX",
            "pwd": "y" * 22,
            "role": "controlled",
            "tiebreaker": "01",
            "candidates": [
                {
                    "foundation": "f",
                    "priority": 100,
                    "kind": "host",
                    "address": "127.0.0.1:9",
                    "transport": "udp",
                }
            ],
        }
        await sb.send(fake)
        start = anyio.current_time()
        with pytest.raises(ConnectFailed, match="no path"):
            async with run_agent(
                sa, role="offer", mux=ma, candidates=cands, channels={}, settings=settings
            ):
                pass
        assert anyio.current_time() - start < 2.5
