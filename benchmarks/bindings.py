"""Benchmark 2: Binding transactions per second against a local coturn.

Contenders, each run on stock asyncio and (when installed) on uvloop, in three shapes:
``sequential`` (1 socket, 1 transaction at a time), ``1 socket x 50`` (one socket, 50 in
flight) and ``50 sockets x 1`` (50 sockets, one in flight each):

* ``nattrav``: ``StunClient.binding(server, endpoint=...)``, the public call an application
  makes, returning the mapped address (``ClientSettings(software=None,
  max_outstanding=50)``: aioice sends no SOFTWARE either, and the RFC's 10-per-server limit
  would otherwise cap the 50-in-flight shapes).
* ``aioice``: ``StunProtocol.request(Message(BINDING, REQUEST), server)`` on aioice's own
  datagram protocol (what its ICE gathering does), reading XOR-MAPPED-ADDRESS.
* ``floor``: the raw asyncio request/response floor, written for this benchmark: pre-built
  Binding requests (distinct transaction IDs) sent on asyncio's standard UDP API
  (``create_datagram_endpoint``: the loop's datagram transport, which is what differs between
  stock asyncio and uvloop), responses matched to futures by transaction ID in
  ``datagram_received``; no parsing, no timers. This is the floor the targets refer to.
* ``floor-reader``: the same loop on ``loop.add_reader`` + ``recvfrom(2048)`` instead of the
  transport (the I/O trick nattrav's fast path uses): the fastest raw asyncio program here,
  shown for information (no target), as "the machine's limit".

A sample is the rate over a fixed window after a warm-up (same for all); lost datagrams (none
expected on loopback) are retransmitted by the floors' watchdog and by the libraries' own
timers. Targets (issue 11), same-round ratios: stock asyncio 1 x 50 and 50 x 1: >= 2.5x
aioice and >= 0.8x the floor; uvloop: >= 0.65x the uvloop floor; sequential: >= 0.9x floor.

    python -m benchmarks.bindings [--rounds N] [--quick] [--no-uvloop] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import suppress
from typing import Any

import attrs

from benchmarks import harness
from benchmarks.coturn import local_coturn
from benchmarks.harness import Report, Row, Unavailable

Txn = Callable[[], Awaitable[object]]
Samples = dict[tuple[str, str], dict[str, list[float]]]


@attrs.frozen
class Shape:
    name: str
    sockets: int
    in_flight: int  # per socket

    @property
    def workers(self) -> int:
        return self.sockets * self.in_flight


SEQUENTIAL = Shape("sequential", 1, 1)
ONE_SOCKET = Shape("1 socket x 50", 1, 50)
MANY_SOCKETS = Shape("50 sockets x 1", 50, 1)
SHAPES = (SEQUENTIAL, ONE_SOCKET, MANY_SOCKETS)

# Targets per loop and shape: (min ratio vs aioice, min ratio vs floor).
TARGETS: dict[tuple[str, str], tuple[float | None, float | None]] = {
    ("asyncio", SEQUENTIAL.name): (None, 0.9),
    ("asyncio", ONE_SOCKET.name): (2.5, 0.8),
    ("asyncio", MANY_SOCKETS.name): (2.5, 0.8),
    ("uvloop", SEQUENTIAL.name): (None, 0.9),
    ("uvloop", ONE_SOCKET.name): (None, 0.65),
    ("uvloop", MANY_SOCKETS.name): (None, 0.65),
}


# --------------------------------------------------------------------- the common driver


@attrs.define
class Sample:
    """One contender's run: transactions/s in the window, and the client process's CPU time
    per transaction (less sensitive to other load on the machine than the rate)."""

    rate: float
    cpu_us: float


async def drive(txns: list[Txn], warmup: float, duration: float) -> Sample:
    """Run one worker per ``txns`` entry, each doing transactions back to back; return the
    transactions per second completed inside the measuring window (after ``warmup``)."""
    loop = asyncio.get_running_loop()
    clock = loop.time
    cpu = time.process_time
    t_start = clock() + warmup
    t_end = t_start + duration
    count = 0
    cpu_start: float | None = None
    cpu_end: float | None = None

    async def worker(txn: Txn) -> None:
        nonlocal count, cpu_start, cpu_end
        while True:
            await txn()
            now = clock()
            if now >= t_end:
                if cpu_end is None:
                    cpu_end = cpu()
                return
            if now >= t_start:
                if cpu_start is None:
                    cpu_start = cpu()
                count += 1

    await asyncio.gather(*(worker(t) for t in txns))
    used = (cpu_end or 0.0) - (cpu_start or 0.0)
    return Sample(count / duration, used / count * 1e6 if count else float("nan"))


def _udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


# --------------------------------------------------------------------- the raw floors


def prebuilt_requests(count: int) -> list[bytes]:
    """Binding requests (20-byte header, no attributes) with distinct random IDs."""
    cookie = (0x2112A442).to_bytes(4, "big")
    return [b"\x00\x01\x00\x00" + cookie + os.urandom(12) for _ in range(count)]


class _Floor:
    """Shared state of a floor run: futures by transaction ID, and a watchdog that resends
    what is still unanswered 0.2 s later (nothing, normally: it only keeps a lost datagram
    from hanging the benchmark, at no cost per request)."""

    def __init__(self) -> None:
        self.pending: dict[bytes, tuple[asyncio.Future[None], bytes, Callable[[bytes], None]]] = {}
        self.resent = 0

    def answer(self, data: bytes) -> None:
        entry = self.pending.pop(data[8:20], None)
        if entry is not None and not entry[0].done():
            entry[0].set_result(None)

    async def watchdog(self) -> None:
        seen: set[bytes] = set()
        while True:
            await asyncio.sleep(0.2)
            now = set(self.pending)
            for tid in now & seen:
                entry = self.pending.get(tid)
                if entry is not None:
                    self.resent += 1
                    with suppress(OSError):
                        entry[2](entry[1])
            seen = now


def _floor_txns(floor: _Floor, senders: list[Callable[[bytes], None]], in_flight: int) -> list[Txn]:
    loop = asyncio.get_running_loop()
    pending = floor.pending
    txns: list[Txn] = []
    for send in senders:
        for _ in range(in_flight):
            requests = itertools.cycle(prebuilt_requests(256))

            async def txn(
                requests: Iterator[bytes] = requests, send: Callable[[bytes], None] = send
            ) -> None:
                data = next(requests)
                fut = loop.create_future()
                pending[data[8:20]] = (fut, data, send)
                send(data)
                await fut

            txns.append(txn)
    return txns


async def floor_reader(
    server: tuple[str, int], shape: Shape, warmup: float, duration: float
) -> Sample:
    loop = asyncio.get_running_loop()
    floor = _Floor()
    socks = [_udp_socket() for _ in range(shape.sockets)]
    answer = floor.answer

    def reader(sock: socket.socket) -> Callable[[], None]:
        recv = sock.recvfrom

        def on_readable() -> None:
            while True:
                try:
                    data, _addr = recv(2048)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    continue
                answer(data)

        return on_readable

    senders: list[Callable[[bytes], None]] = []
    for sock in socks:
        loop.add_reader(sock.fileno(), reader(sock))
        senders.append(lambda data, s=sock: s.sendto(data, server))  # type: ignore[misc]
    dog = asyncio.ensure_future(floor.watchdog())
    try:
        return await drive(_floor_txns(floor, senders, shape.in_flight), warmup, duration)
    finally:
        dog.cancel()
        for sock in socks:
            loop.remove_reader(sock.fileno())
            sock.close()


async def lean_codec(
    server: tuple[str, int], shape: Shape, warmup: float, duration: float
) -> Sample:
    """``floor-reader`` plus nattrav_stun's codec: each request encoded with a fresh ID, each
    response decoded (full RFC validation) and checked (source, class, method, mapped address).
    Only with ``--profile``: it shows what a lean driver over the same codec could reach."""
    from nattrav.errors import ParseError
    from nattrav_stun import codec

    loop = asyncio.get_running_loop()
    socks = [_udp_socket() for _ in range(shape.sockets)]
    pending: dict[bytes, asyncio.Future[object]] = {}
    source = codec.Address(*server)
    decode, encode, Message = codec.decode, codec.encode, codec.Message
    BINDING, REQUEST, SUCCESS = codec.BINDING, codec.REQUEST, codec.SUCCESS
    pool = [b""]
    offset = [0]

    def new_tid() -> bytes:
        at = offset[0]
        if at >= len(pool[0]):
            pool[0], at = os.urandom(12 * 256), 0
        offset[0] = at + 12
        return pool[0][at : at + 12]

    def reader(sock: socket.socket) -> Callable[[], None]:
        recv = sock.recvfrom

        def on_readable() -> None:
            while True:
                try:
                    data, addr = recv(2048)
                except (BlockingIOError, InterruptedError):
                    return
                fut = pending.pop(data[8:20], None)
                if fut is None:
                    continue
                try:
                    msg = decode(data)
                except ParseError:
                    continue
                if msg.cls is SUCCESS and msg.method == BINDING and addr == source:
                    fut.set_result(msg.xor_mapped_address)

        return on_readable

    txns: list[Txn] = []
    for sock in socks:
        loop.add_reader(sock.fileno(), reader(sock))
        for _ in range(shape.in_flight):

            async def txn(sock: socket.socket = sock) -> object:
                tid = new_tid()
                fut = loop.create_future()
                pending[tid] = fut
                sock.sendto(encode(Message(BINDING, REQUEST, tid)), server)
                return await fut

            txns.append(txn)
    try:
        return await drive(txns, warmup, duration)
    finally:
        for sock in socks:
            loop.remove_reader(sock.fileno())
            sock.close()


class _FloorProtocol(asyncio.DatagramProtocol):
    def __init__(self, answer: Callable[[bytes], None]) -> None:
        self.answer = answer

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.answer(data)


async def floor_transport(
    server: tuple[str, int], shape: Shape, warmup: float, duration: float
) -> Sample:
    loop = asyncio.get_running_loop()
    floor = _Floor()
    transports: list[asyncio.DatagramTransport] = []
    senders: list[Callable[[bytes], None]] = []
    for _ in range(shape.sockets):
        transport, _protocol = await loop.create_datagram_endpoint(
            lambda: _FloorProtocol(floor.answer), local_addr=("127.0.0.1", 0)
        )
        transports.append(transport)
        senders.append(lambda data, t=transport: t.sendto(data, server))  # type: ignore[misc]
    dog = asyncio.ensure_future(floor.watchdog())
    try:
        return await drive(_floor_txns(floor, senders, shape.in_flight), warmup, duration)
    finally:
        dog.cancel()
        for transport in transports:
            transport.close()


# --------------------------------------------------------------------- the libraries


async def nattrav_run(
    server: tuple[str, int], shape: Shape, warmup: float, duration: float
) -> Sample:
    from nattrav_stun.codec import Address
    from nattrav_stun.driver import ClientSettings, StunClient

    settings = ClientSettings(software=None, max_outstanding=max(10, shape.workers))
    target = Address(*server)
    async with StunClient.open(settings) as client:
        txns: list[Txn] = []
        for _ in range(shape.sockets):
            endpoint = await client.add_socket(4, host="127.0.0.1")
            for _ in range(shape.in_flight):

                async def txn(endpoint: Any = endpoint) -> object:
                    result = await client.binding(target, endpoint=endpoint)
                    return result.mapped

                txns.append(txn)
        return await drive(txns, warmup, duration)


class _AioiceReceiver:
    """The three callbacks aioice's ``StunProtocol`` makes on its ICE connection."""

    def data_received(self, data: bytes, component: int) -> None:
        pass

    def request_received(self, message: object, addr: object, protocol: object) -> None:
        pass

    def protocol_lost(self, protocol: object) -> None:
        pass


async def aioice_run(
    server: tuple[str, int], shape: Shape, warmup: float, duration: float
) -> Sample:
    from aioice import stun
    from aioice.ice import StunProtocol

    loop = asyncio.get_running_loop()
    receiver: Any = _AioiceReceiver()  # duck-typed stand-in for aioice's Connection
    protocols: list[Any] = []
    txns: list[Txn] = []
    Message, BINDING, REQUEST = stun.Message, stun.Method.BINDING, stun.Class.REQUEST
    for _ in range(shape.sockets):
        _transport, protocol = await loop.create_datagram_endpoint(
            lambda: StunProtocol(receiver), local_addr=("127.0.0.1", 0)
        )
        protocols.append(protocol)
        for _ in range(shape.in_flight):

            async def txn(protocol: Any = protocol) -> object:
                response, _addr = await protocol.request(Message(BINDING, REQUEST), server)
                return response.attributes["XOR-MAPPED-ADDRESS"]

            txns.append(txn)
    try:
        return await drive(txns, warmup, duration)
    finally:
        for protocol in protocols:
            await protocol.close()


CONTENDERS: dict[
    str, Callable[[tuple[str, int], Shape, float, float], Coroutine[Any, Any, Sample]]
] = {
    "nattrav": nattrav_run,
    "aioice": aioice_run,
    "floor": floor_transport,
    "floor-reader": floor_reader,
}
#: Extra contenders measured with ``--profile`` only.
ANALYSIS: dict[
    str, Callable[[tuple[str, int], Shape, float, float], Coroutine[Any, Any, Sample]]
] = {
    "lean-codec": lean_codec,
}


# --------------------------------------------------------------------- the run


def loop_factories(use_uvloop: bool) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    out: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            out["uvloop"] = uvloop.new_event_loop
    return out


def sample(
    contender: str,
    factory: Callable[[], asyncio.AbstractEventLoop],
    server: tuple[str, int],
    shape: Shape,
    warmup: float,
    duration: float,
) -> Sample:
    fn = CONTENDERS.get(contender) or ANALYSIS[contender]
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(fn(server, shape, warmup, duration))


def check_available() -> None:
    try:
        import aioice  # noqa: F401
    except ImportError:
        raise Unavailable(
            "aioice is not installed: pip install -r benchmarks/requirements.txt"
        ) from None
    try:
        import nattrav_stun.driver  # noqa: F401
    except ImportError as exc:
        raise Unavailable(f"nattrav-stun is not installed ({exc})") from None


def measure(
    server: tuple[str, int],
    *,
    loops: dict[str, Callable[[], asyncio.AbstractEventLoop]],
    shapes: tuple[Shape, ...],
    contenders: tuple[str, ...],
    rounds: int,
    warmup: float,
    duration: float,
    progress: Callable[[str], None] | None = None,
) -> tuple[Samples, Samples]:
    """Transactions/s and client CPU µs per transaction, per (loop, shape) and contender;
    rounds outermost, so every combination is spread over the whole run, and the order of
    contenders rotates."""
    samples: Samples = {
        (loop, shape.name): {c: [] for c in contenders} for loop in loops for shape in shapes
    }
    cpu: Samples = {
        (loop, shape.name): {c: [] for c in contenders} for loop in loops for shape in shapes
    }
    for r in range(rounds):
        for loop_name, factory in loops.items():
            for shape in shapes:
                k = r % len(contenders)
                order = list(contenders[k:] + contenders[:k])
                if r % 2:
                    order.reverse()
                for contender in order:
                    result = sample(contender, factory, server, shape, warmup, duration)
                    samples[loop_name, shape.name][contender].append(result.rate)
                    cpu[loop_name, shape.name][contender].append(result.cpu_us)
        if progress is not None:
            progress(f"bindings round {r + 1}/{rounds}")
    return samples, cpu


def report_rows(
    report: Report,
    samples: Samples,
    cpu: Samples | None = None,
    *,
    scale: float = 1.0,
) -> None:
    """Rows with targets (``scale`` multiplies them: 0.5 for the short test's "half"), and
    client CPU per transaction vs aioice for information."""
    for (loop_name, shape_name), data in samples.items():
        report.record_samples(f"{loop_name} {shape_name}", data)
        vs_aioice, vs_floor = TARGETS.get((loop_name, shape_name), (None, None))
        label = f"{loop_name:7s} {shape_name}"
        if "aioice" in data:
            report.compare(
                label,
                data,
                "nattrav",
                "aioice",
                unit="/s",
                higher_is_better=True,
                min_ratio=None if vs_aioice is None else vs_aioice * scale,
            )
        report.compare(
            label,
            data,
            "nattrav",
            "floor",
            unit="/s",
            higher_is_better=True,
            min_ratio=None if vs_floor is None else vs_floor * scale,
        )
        if "floor-reader" in data:
            report.compare(label, data, "nattrav", "floor-reader", unit="/s", higher_is_better=True)
        if "lean-codec" in data:
            report.compare(label, data, "nattrav", "lean-codec", unit="/s", higher_is_better=True)
        if cpu is not None and "aioice" in data:
            used = cpu[loop_name, shape_name]
            report.record_samples(f"{loop_name} {shape_name} cpu µs/txn", used)
            report.compare(
                f"{label} (client CPU/txn)",
                used,
                "nattrav",
                "aioice",
                unit="µs",
                higher_is_better=False,
            )


DEFAULT_ROUNDS = 5


def run(args: argparse.Namespace) -> Report:
    check_available()
    rounds = 3 if args.quick and args.rounds == DEFAULT_ROUNDS else args.rounds
    warmup, duration = (0.05, 0.2) if args.quick else (0.1, 0.4)
    loops = loop_factories(not args.no_uvloop)
    report = Report(
        "bindings",
        "Binding transactions/s against local coturn (nattrav vs aioice vs raw floor)",
        rounds=rounds,
        quick=args.quick,
    )
    if "uvloop" not in loops and not args.no_uvloop:
        report.notes.append("uvloop is not installed: the uvloop rows are missing")
    with local_coturn() as server:
        samples, cpu = measure(
            server.address,
            loops=loops,
            shapes=SHAPES,
            contenders=tuple(CONTENDERS) + (tuple(ANALYSIS) if args.profile else ()),
            rounds=rounds,
            warmup=warmup,
            duration=duration,
            progress=harness.progress,
        )
    report_rows(report, samples, cpu)
    if args.profile:
        report.extra["profile"] = profile_nattrav(args)
    return report


# --------------------------------------------------------------------- where the time goes


def profile_nattrav(args: argparse.Namespace) -> dict[str, str]:
    """cProfile of nattrav in each stock-asyncio shape (text, top functions by own time)."""
    import cProfile
    import io
    import pstats

    out: dict[str, str] = {}
    with local_coturn() as server:
        for shape in SHAPES:
            profiler = cProfile.Profile()
            profiler.enable()
            sample("nattrav", asyncio.new_event_loop, server.address, shape, 0.05, 1.0)
            profiler.disable()
            buffer = io.StringIO()
            stats = pstats.Stats(profiler, stream=buffer)
            stats.sort_stats("tottime").print_stats(25)
            out[shape.name] = buffer.getvalue()
            print(
                f"\n--- cProfile, nattrav, asyncio, {shape.name} (by own time)\n{buffer.getvalue()}"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = harness.common_arguments(
        argparse.ArgumentParser(
            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        ),
        rounds=DEFAULT_ROUNDS,
    )
    parser.add_argument("--no-uvloop", action="store_true", help="stock asyncio only")
    parser.add_argument("--profile", action="store_true", help="also cProfile nattrav per shape")
    return harness.run_main("bindings", run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["CONTENDERS", "SHAPES", "Row", "drive", "main", "measure"]
