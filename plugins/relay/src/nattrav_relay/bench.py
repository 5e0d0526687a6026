"""Benchmark hooks: push N datagrams through a TURN relay, and the baselines to compare with.

For the benchmark harness (``benchmarks/``), which owns the server (``testing.run_coturn``)
and the reporting. Every function sends ``count`` datagrams of ``size`` bytes to a sink (a
plain blocking UDP socket on its own thread, on ``peer_host``) and returns a ``Throughput``
measured in the same way, so ratios taken in one run are fair:

* ``relay_throughput(..., mode="channel")``: the library path, ``RelayEndpoint.send_to``
  with ChannelData (4-byte header);
* ``relay_throughput(..., mode="indication")``: the same with Send indications (36+ bytes of
  STUN per datagram, a random transaction ID each);
* ``blocking_channel_data_throughput``: the reference the library is held to (it should
  reach at least 0.7x): a minimal hand-written loop, allocation and channel set up with the
  sans-IO client on a blocking socket, then ``sock.send(header + payload)`` in a tight loop;
* ``raw_udp_throughput``: no relay at all, a blocking socket straight to the sink.

``sent_pps`` is how fast the sender handed datagrams to the kernel; ``delivered_pps`` how
fast they arrived at the sink (loopback and coturn drop when overrun; ``loss`` says how many).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Any

import attrs

__all__ = [
    "Sink",
    "Throughput",
    "blocking_channel_data_throughput",
    "raw_udp_throughput",
    "relay_throughput",
]


@attrs.frozen
class Throughput:
    """One measurement. Times in seconds; rates per second."""

    mode: str
    count: int
    size: int
    received: int
    send_seconds: float
    total_seconds: float

    @property
    def sent_pps(self) -> float:
        return self.count / self.send_seconds if self.send_seconds > 0 else 0.0

    @property
    def delivered_pps(self) -> float:
        return self.received / self.total_seconds if self.total_seconds > 0 else 0.0

    @property
    def delivered_mbps(self) -> float:
        return self.delivered_pps * self.size * 8 / 1e6

    @property
    def loss(self) -> float:
        return 1.0 - self.received / self.count if self.count else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "count": self.count,
            "size": self.size,
            "received": self.received,
            "sent_pps": round(self.sent_pps),
            "delivered_pps": round(self.delivered_pps),
            "delivered_mbps": round(self.delivered_mbps, 1),
            "loss": round(self.loss, 4),
        }


class Sink:
    """A blocking UDP receiver on its own thread that counts datagrams."""

    def __init__(self, host: str = "127.0.0.1", idle: float = 0.5) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        self.sock.bind((host, 0))
        self.sock.settimeout(idle)
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        self.received = 0
        self.last = 0.0
        self.expected = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self, expected: int) -> None:
        self.expected = expected
        self.received = 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        recv = self.sock.recv
        while not self._stop.is_set():
            try:
                recv(65535)
            except TimeoutError:
                if self.received:  # idle after traffic: the rest was lost
                    return
                continue
            except OSError:
                return
            self.received += 1
            self.last = time.perf_counter()
            if self.received >= self.expected:
                return

    def wait(self, timeout: float = 30.0) -> int:
        """Block until everything arrived or the sink went idle; the count."""
        if self._thread is not None:
            self._thread.join(timeout)
            self._stop.set()
        return self.received

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


async def relay_throughput(
    server: str,
    *,
    username: str,
    password: str,
    count: int = 20000,
    size: int = 1000,
    mode: str = "channel",
    direction: str = "send",
    rate: float | None = None,
    peer_host: str = "127.0.0.1",
    **allocate_args: Any,
) -> Throughput:
    """Push ``count`` datagrams through an allocation on ``server`` (anyio, any backend).

    ``direction="send"``: from the endpoint to a peer (``RelayEndpoint.send_to``);
    ``"receive"``: from a peer (a blocking sender thread) to the endpoint (``receive``);
    ``rate`` paces that sender (datagrams per second; ``None``: as fast as it can, which
    overruns coturn's socket buffers and measures loss more than the receiver).
    """
    import anyio

    from nattrav_relay.driver import allocate

    if mode not in ("channel", "indication"):
        raise ValueError("mode must be channel or indication")
    if direction == "receive":
        return await _relay_receive(
            server, username, password, count, size, mode, peer_host, rate, allocate_args
        )
    if direction != "send":
        raise ValueError("direction must be send or receive")
    sink = Sink(peer_host)
    try:
        async with allocate(
            server,
            username=username,
            password=password,
            channels=mode == "channel",
            **allocate_args,
        ) as ep:
            peer = sink.address
            if mode == "channel":
                await ep.bind(peer)
            else:
                await ep.permit(peer[0])
            payload = b"\xa5" * size
            sink.start(count)
            send = ep.send_to
            started = time.perf_counter()
            for _ in range(count):
                await send(payload, peer)
            sent = time.perf_counter()
            received = await anyio.to_thread.run_sync(sink.wait)
    finally:
        sink.close()
    last = sink.last if received else sent
    return Throughput(f"relay-{mode}", count, size, received, sent - started, last - started)


_SENDER = """
import socket, sys, time
host, port, lhost, lport, count, size, rate = sys.argv[1:8]
count, size, rate = int(count), int(size), float(rate)
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.bind((lhost, int(lport)))
target, payload, send = (host, int(port)), b"\\xa5" * size, s.sendto
sys.stdin.readline()
begin = time.perf_counter()
for n in range(0, count, 64):
    for _ in range(min(64, count - n)):
        send(payload, target)
    if rate > 0:
        ahead = begin + (n + 64) / rate - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
print(time.perf_counter() - begin, flush=True)
"""


async def _relay_receive(
    server: str,
    username: str,
    password: str,
    count: int,
    size: int,
    mode: str,
    peer_host: str,
    rate: float | None,
    allocate_args: dict[str, Any],
) -> Throughput:
    """Peer -> relay -> endpoint. The peer is another process (a thread would take the GIL
    from the receiving event loop and measure that instead)."""
    import subprocess
    import sys

    import anyio

    from nattrav_relay.driver import allocate

    family = socket.AF_INET6 if ":" in peer_host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind((peer_host, 0))
        peer = probe.getsockname()[:2]
    received = 0
    send_seconds = 0.0
    async with allocate(
        server,
        username=username,
        password=password,
        channels=mode == "channel",
        receive_queue=max(4096, count),
        **allocate_args,
    ) as ep:
        if mode == "channel":
            await ep.bind(peer)
        else:
            await ep.permit(peer[0])
        argv = [
            sys.executable,
            "-c",
            _SENDER,
            ep.relayed.host,
            str(ep.relayed.port),
            str(peer[0]),
            str(peer[1]),
            str(count),
            str(size),
            str(rate or 0),
        ]
        last = started = 0.0
        async with await anyio.open_process(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        ) as proc:

            async def consume() -> None:
                nonlocal received, last
                receive, receive_nowait = ep.receive, ep.receive_nowait
                clock = time.perf_counter
                while received < count:
                    if receive_nowait() is None:
                        await receive()
                    received += 1
                    last = clock()

            async def watchdog(scope: anyio.CancelScope) -> None:
                seen = -1
                while True:  # stop when nothing arrived for 0.5 s after the sender finished
                    await anyio.sleep(0.5)
                    if received == seen and proc.returncode is not None:
                        scope.cancel()
                    seen = received

            async def reap() -> None:
                await proc.wait()

            assert proc.stdin is not None and proc.stdout is not None
            started = time.perf_counter()
            await proc.stdin.send(b"go\n")
            with anyio.move_on_after(60):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(watchdog, tg.cancel_scope)
                    tg.start_soon(reap)
                    await consume()
                    tg.cancel_scope.cancel()
            with anyio.move_on_after(5):
                out = await proc.stdout.receive()
                send_seconds = float(out.decode().strip() or 0.0)
    return Throughput(
        f"relay-{mode}-receive", count, size, received, send_seconds, (last or started) - started
    )


def raw_udp_throughput(
    count: int = 20000, size: int = 1000, peer_host: str = "127.0.0.1"
) -> Throughput:
    """The same datagrams straight to the sink over a blocking UDP socket (no relay)."""
    sink = Sink(peer_host)
    family = socket.AF_INET6 if ":" in peer_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.connect(sink.address)
        payload = b"\xa5" * size
        sink.start(count)
        send = sock.send
        started = time.perf_counter()
        for _ in range(count):
            send(payload)
        sent = time.perf_counter()
        received = sink.wait()
    finally:
        sock.close()
        sink.close()
    last = sink.last if received else sent
    return Throughput("raw-udp", count, size, received, sent - started, last - started)


def blocking_channel_data_throughput(
    host: str,
    port: int,
    *,
    username: str,
    password: str,
    count: int = 20000,
    size: int = 1000,
    peer_host: str = "127.0.0.1",
) -> Throughput:
    """The reference loop: allocate and bind a channel with the sans-IO client on a blocking
    UDP socket, then send ChannelData as fast as a plain ``socket.send`` loop can."""
    from nattrav_stun.auth import LongTermCredentials

    from nattrav_relay.client import ClientSettings, TurnClient
    from nattrav_relay.events import AllocationFailed, ChannelBound, ChannelFailed

    sink = Sink(peer_host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.connect((host, port))
    sock.settimeout(0.2)
    client = TurnClient(
        (host, port),
        LongTermCredentials(username, password),
        settings=ClientSettings(keepalive=None),
    )

    def until(done: Any) -> Any:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for wire in client.datagrams_to_send():
                sock.send(wire)
            while (event := client.next_event()) is not None:
                if done(event):
                    return event
            try:
                client.receive(sock.recv(65535), time.monotonic())
            except TimeoutError:
                client.handle_timer(time.monotonic())
        raise TimeoutError("TURN setup did not finish")

    try:
        client.allocate(time.monotonic())
        event = until(lambda e: type(e).__name__ in ("Allocated", "AllocationFailed"))
        if isinstance(event, AllocationFailed):
            raise RuntimeError(event.describe())
        channel = client.bind(sink.address, time.monotonic())
        assert channel is not None
        event = until(lambda e: isinstance(e, ChannelBound | ChannelFailed))
        if isinstance(event, ChannelFailed):
            raise RuntimeError(event.reason)
        header = struct.pack("!HH", channel.number, size)
        wire = header + b"\xa5" * size
        sink.start(count)
        send = sock.send
        started = time.perf_counter()
        for _ in range(count):
            send(wire)
        sent = time.perf_counter()
        received = sink.wait()
        client.delete(time.monotonic())
        until(lambda e: type(e).__name__ == "Deleted")
    finally:
        sock.close()
        sink.close()
    last = sink.last if received else sent
    return Throughput("blocking-channel", count, size, received, sent - started, last - started)
