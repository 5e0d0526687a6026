"""Benchmark 6: relayed throughput through a local coturn (ChannelData, Send/Data indications).

Every contender runs the same self-clocking echo loop: ``WINDOW`` datagrams of ``PAYLOAD``
bytes in flight to an echo peer (a separate process on loopback, so it does not share the
client's interpreter), each echo answered by one more send; a sample is the echoes received
per second in a fixed window after a warm-up. Through the relay that is client -> coturn ->
peer -> coturn -> client; packets/s and MB/s (payload bytes, one direction) are reported.

* ``nattrav ChannelData``: ``nattrav_relay.driver.allocate(...)`` (channels on) on stock
  asyncio, ``send_to``/``receive`` of the ``RelayEndpoint``.
* ``blocking ChannelData``: the reference the target names, hand-written for this
  benchmark: a blocking UDP socket connected to coturn, an allocation and channel made once
  (nattrav_stun's codec for the setup), then a loop of pre-built ChannelData frames out and
  a 4-byte header check in.
* ``nattrav Send`` / ``blocking Send``: the same with Send indications out and Data
  indications in (no channel; a permission only).
* ``raw UDP``: the blocking loop straight to the echo peer, no relay (the path's floor).
* ``aioice ChannelData``: aioice's TURN client (``create_turn_endpoint``), for reference.

Target (issue 11): nattrav ChannelData >= 0.7x the blocking ChannelData loop, same run.

    python -m benchmarks.relay [--rounds N] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from benchmarks import harness
from benchmarks.coturn import local_coturn
from benchmarks.harness import Report, Unavailable

TARGET = 0.7
WINDOW = 16
PAYLOAD = 1000  # a multiple of 4: ChannelData needs no padding over UDP
ALLOCATE, REFRESH, SEND, DATA, CREATE_PERMISSION, CHANNEL_BIND = 0x3, 0x4, 0x6, 0x7, 0x8, 0x9
CHANNEL_NUMBER, LIFETIME, XOR_PEER_ADDRESS, DATA_ATTR = 0x000C, 0x000D, 0x0012, 0x0013
XOR_RELAYED_ADDRESS, REQUESTED_TRANSPORT = 0x0016, 0x0019
CHANNEL = 0x4000

Contender = Callable[["Setup", float, float], float]

_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
recv, send = s.recvfrom, s.sendto
while True:
    data, addr = recv(4096)
    send(data, addr)
"""


class Setup:
    """Where coturn and the echo peer listen, and the TURN credentials."""

    def __init__(self, server: Any, peer: tuple[str, int]) -> None:
        self.server: tuple[str, int] = server.address
        self.username: str = server.username
        self.password: str = server.password
        self.peer = peer


@contextmanager
def echo_peer() -> Iterator[tuple[str, int]]:
    """The echo peer: a separate Python process on 127.0.0.1, killed by PID afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _ECHO], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield ("127.0.0.1", port)
    finally:
        proc.kill()
        proc.wait(timeout=5)


# --------------------------------------------------------------------- the blocking loops


def _blocking_loop(
    sock: socket.socket,
    frame: bytes,
    accept: Callable[[bytes], bool],
    warmup: float,
    duration: float,
) -> float:
    """Keep WINDOW frames in flight; count accepted answers inside the window."""
    sock.settimeout(0.2)
    send, recv = sock.send, sock.recv
    for _ in range(WINDOW):
        send(frame)
    clock = time.perf_counter
    t_start = clock() + warmup
    t_end = t_start + duration
    count = 0
    while True:
        try:
            data = recv(4096)
        except TimeoutError:
            data = b""
            for _ in range(WINDOW):  # lost datagrams: refill the window
                send(frame)
        now = clock()
        if now >= t_end:
            break
        if not data:
            continue
        if now >= t_start and accept(data):
            count += 1
        send(frame)
    _drain(sock)
    return count / duration


def _drain(sock: socket.socket) -> None:
    sock.settimeout(0.05)
    try:
        while True:
            sock.recv(4096)
    except (TimeoutError, OSError):
        pass


def raw_udp(setup: Setup, warmup: float, duration: float) -> float:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(setup.peer)
        payload = bytes(PAYLOAD)
        return _blocking_loop(sock, payload, lambda d: len(d) == PAYLOAD, warmup, duration)


class _Turn:
    """A minimal hand-written TURN client over a blocking socket: setup only (Allocate with
    the 401 round, ChannelBind or CreatePermission), using nattrav_stun's codec and keys."""

    def __init__(self, setup: Setup) -> None:
        from nattrav_stun import codec

        self.codec = codec
        self.setup = setup
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(setup.server)
        self.sock.settimeout(2.0)
        self.key: Any = None
        self.realm = self.nonce = ""

    def transact(self, method: int, attributes: dict[int, Any], tid: bytes | None = None) -> Any:
        c = self.codec
        tid = tid or c.new_transaction_id()
        attrs = dict(attributes)
        if self.key is not None:
            attrs.update(
                {c.USERNAME: self.setup.username, c.REALM: self.realm, c.NONCE: self.nonce}
            )
        self.sock.send(c.encode(c.Message(method, c.REQUEST, tid, attrs), integrity=self.key))
        while True:
            reply = c.decode(self.sock.recv(4096))
            if reply.transaction_id == tid:
                return reply

    def allocate(self) -> None:
        from nattrav_stun.auth import long_term_key

        c = self.codec
        request = {REQUESTED_TRANSPORT: bytes((17, 0, 0, 0))}
        reply = self.transact(ALLOCATE, request)
        if reply.cls == c.ERROR and reply.error_code.code == 401:
            self.realm, self.nonce = reply.attributes[c.REALM], reply.attributes[c.NONCE]
            key = long_term_key(self.setup.username, self.realm, self.setup.password)
            self.key = c.IntegrityKey(key)
            reply = self.transact(ALLOCATE, request)
        if reply.cls != c.SUCCESS:
            raise RuntimeError(f"Allocate failed: {reply.describe()}")

    def peer_attribute(self, tid: bytes) -> bytes:
        data: bytes = self.codec.encode_xor_address(self.setup.peer, tid)
        return data

    def channel_bind(self) -> None:
        tid = self.codec.new_transaction_id()
        attrs = {
            CHANNEL_NUMBER: struct.pack("!HH", CHANNEL, 0),
            XOR_PEER_ADDRESS: self.peer_attribute(tid),
        }
        reply = self.transact(CHANNEL_BIND, attrs, tid)
        if reply.cls != self.codec.SUCCESS:
            raise RuntimeError(f"ChannelBind failed: {reply.describe()}")

    def create_permission(self) -> None:
        tid = self.codec.new_transaction_id()
        reply = self.transact(CREATE_PERMISSION, {XOR_PEER_ADDRESS: self.peer_attribute(tid)}, tid)
        if reply.cls != self.codec.SUCCESS:
            raise RuntimeError(f"CreatePermission failed: {reply.describe()}")

    def close(self) -> None:
        try:
            self.sock.settimeout(0.5)
            self.transact(REFRESH, {LIFETIME: bytes(4)})
        except (OSError, TimeoutError):
            pass
        self.sock.close()


def blocking_channel(setup: Setup, warmup: float, duration: float) -> float:
    turn = _Turn(setup)
    try:
        turn.allocate()
        turn.channel_bind()
        frame = struct.pack("!HH", CHANNEL, PAYLOAD) + bytes(PAYLOAD)
        head = frame[:4]
        return _blocking_loop(turn.sock, frame, lambda d: d[:4] == head, warmup, duration)
    finally:
        turn.close()


def blocking_send(setup: Setup, warmup: float, duration: float) -> float:
    turn = _Turn(setup)
    try:
        turn.allocate()
        turn.create_permission()
        c = turn.codec
        tid = c.new_transaction_id()
        frame = c.encode(
            c.Message(
                SEND,
                c.INDICATION,
                tid,
                {XOR_PEER_ADDRESS: turn.peer_attribute(tid), DATA_ATTR: bytes(PAYLOAD)},
            )
        )
        data_indication = struct.pack("!H", c.message_type(DATA, c.INDICATION))
        # A Data indication carrying our payload: its type, and at least the header,
        # XOR-PEER-ADDRESS (8 + 4) and DATA (PAYLOAD + 4); the peer is the only one permitted.
        length = 20 + 12 + 4 + PAYLOAD

        def accept(d: bytes) -> bool:
            return d[:2] == data_indication and len(d) >= length

        return _blocking_loop(turn.sock, frame, accept, warmup, duration)
    finally:
        turn.close()


# --------------------------------------------------------------------- the libraries


async def _nattrav(setup: Setup, warmup: float, duration: float, *, channels: bool) -> float:
    from nattrav.models import TransportAddress
    from nattrav_relay.driver import allocate

    host, port = setup.server
    peer = TransportAddress(*setup.peer)
    payload = bytes(PAYLOAD)
    async with allocate(
        f"turn:{host}:{port}?transport=udp",
        username=setup.username,
        password=setup.password,
        channels=channels,
        permit=[peer.host],
    ) as ep:
        if channels:
            await ep.bind(peer)
        loop = asyncio.get_running_loop()
        for _ in range(WINDOW):
            await ep.send_to(payload, peer)
        t_start = loop.time() + warmup
        t_end = t_start + duration
        count = 0
        while True:
            data, _source = await ep.receive()
            if len(data) == PAYLOAD:
                now = loop.time()
                if now >= t_end:
                    break
                if now >= t_start:
                    count += 1
            await ep.send_to(payload, peer)
        return count / duration


def nattrav_channel(setup: Setup, warmup: float, duration: float) -> float:
    with asyncio.Runner() as runner:
        return runner.run(_nattrav(setup, warmup, duration, channels=True))


def nattrav_send(setup: Setup, warmup: float, duration: float) -> float:
    with asyncio.Runner() as runner:
        return runner.run(_nattrav(setup, warmup, duration, channels=False))


async def _aioice(setup: Setup, warmup: float, duration: float) -> float:
    from aioice.turn import create_turn_endpoint

    loop = asyncio.get_running_loop()
    payload = bytes(PAYLOAD)
    state = {"count": 0, "t_start": math.inf, "t_end": math.inf}
    done: asyncio.Future[None] = loop.create_future()

    class Echo(asyncio.DatagramProtocol):
        transport: Any = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
            now = loop.time()
            if now >= state["t_end"]:
                if not done.done():
                    done.set_result(None)
                return
            if now >= state["t_start"]:
                state["count"] += 1
            self.transport.sendto(payload, setup.peer)

    transport, _protocol = await create_turn_endpoint(
        Echo, setup.server, setup.username, setup.password
    )
    try:
        transport.sendto(payload, setup.peer)  # binds the channel
        await asyncio.sleep(0.2)
        state["t_start"] = loop.time() + warmup
        state["t_end"] = state["t_start"] + duration
        for _ in range(WINDOW - 1):
            transport.sendto(payload, setup.peer)
        await asyncio.wait_for(done, warmup + duration + 5)
    finally:
        transport.close()
        await asyncio.sleep(0.05)
    return state["count"] / duration


def aioice_channel(setup: Setup, warmup: float, duration: float) -> float:
    with asyncio.Runner() as runner:
        return runner.run(_aioice(setup, warmup, duration))


CONTENDERS: dict[str, Contender] = {
    "nattrav ChannelData": nattrav_channel,
    "blocking ChannelData": blocking_channel,
    "nattrav Send": nattrav_send,
    "blocking Send": blocking_send,
    "raw UDP": raw_udp,
    "aioice ChannelData": aioice_channel,
}


# --------------------------------------------------------------------- the run


def check_available() -> None:
    try:
        import nattrav_relay.driver  # noqa: F401
    except ImportError as exc:
        raise Unavailable(f"the relay plugin is not installed ({exc})") from None
    try:
        import aioice.turn  # noqa: F401
    except ImportError:
        raise Unavailable(
            "aioice is not installed: pip install -r benchmarks/requirements.txt"
        ) from None


DEFAULT_ROUNDS = 5


def run(args: argparse.Namespace) -> Report:
    check_available()
    rounds = 3 if args.quick and args.rounds == DEFAULT_ROUNDS else args.rounds
    warmup, duration = (0.05, 0.25) if args.quick else (0.1, 0.5)
    report = Report(
        "relay",
        f"relayed echo throughput through local coturn ({WINDOW} x {PAYLOAD} B in flight)",
        rounds=rounds,
        quick=args.quick,
    )
    with local_coturn(extra=["--allow-loopback-peers"]) as server, echo_peer() as peer:
        setup = Setup(server, peer)
        contenders = {
            name: (lambda fn=fn: fn(setup, warmup, duration)) for name, fn in CONTENDERS.items()
        }
        samples = harness.interleave(contenders, rounds, progress=harness.progress)
    report.record_samples("echoes/s", samples)
    report.compare(
        "ChannelData",
        samples,
        "nattrav ChannelData",
        "blocking ChannelData",
        unit="/s",
        higher_is_better=True,
        min_ratio=TARGET,
    )
    report.compare(
        "Send/Data indications",
        samples,
        "nattrav Send",
        "blocking Send",
        unit="/s",
        higher_is_better=True,
    )
    report.compare(
        "ChannelData vs raw UDP",
        samples,
        "nattrav ChannelData",
        "raw UDP",
        unit="/s",
        higher_is_better=True,
    )
    report.compare(
        "ChannelData vs Send",
        samples,
        "nattrav ChannelData",
        "nattrav Send",
        unit="/s",
        higher_is_better=True,
    )
    report.compare(
        "ChannelData vs aioice",
        samples,
        "nattrav ChannelData",
        "aioice ChannelData",
        unit="/s",
        higher_is_better=True,
    )
    throughput = {
        name: {
            "packets_per_s": statistics.median(values),
            "MB_per_s": statistics.median(values) * PAYLOAD / 1e6,
        }
        for name, values in samples.items()
    }
    report.extra["throughput"] = throughput
    report.notes.append(
        "medians, payload MB/s one direction: "
        + "; ".join(
            f"{n} {t['packets_per_s']:,.0f}/s {t['MB_per_s']:.1f} MB/s"
            for n, t in throughput.items()
        )
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = harness.common_arguments(
        argparse.ArgumentParser(
            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        ),
        rounds=DEFAULT_ROUNDS,
    )
    return harness.run_main("relay", run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
