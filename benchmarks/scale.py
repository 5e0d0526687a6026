"""Benchmark 7: 10,000 concurrent Binding transactions in one process.

Two measurements, nattrav next to aioice (the named peer) in interleaved rounds:

* **completion**: 10,000 Binding transactions started at once from one client and one UDP
  socket against a local coturn; every one must end with a success. Datagrams the kernel
  drops (the burst overflows socket buffers) are counted per socket from ``/proc/net/udp`` —
  the server's listening socket and the client's — and recovered by retransmission; the target
  is that no transaction fails beyond what the server dropped. nattrav runs with
  ``max_outstanding=10000`` (the RFC's default of 10 per server would queue the rest) and the
  RFC 8489 timers (RTO 500 ms, 7 sends).
* **memory per outstanding transaction** (tracemalloc): 10,000 transactions started toward a
  UDP socket that never answers (a long RTO keeps them all outstanding), the traced memory
  growth divided by 10,000. It includes what an application pays per transaction through the
  public call: its task and coroutine frames, the library's state, the request bytes. A bare
  asyncio task awaiting a future is measured too, as the floor.

    python -m benchmarks.scale [--rounds N] [--quick] [--count 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import socket
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, cast

import attrs

from benchmarks import harness
from benchmarks.bindings import _AioiceReceiver
from benchmarks.coturn import local_coturn
from benchmarks.harness import Report, Row, Unavailable

COUNT = 10_000


# --------------------------------------------------------------------- kernel drop counters


def udp_drops(port: int, host: str = "127.0.0.1") -> int:
    """The kernel's drop counter of the IPv4 UDP socket bound to ``host:port`` (0 if none)."""
    local = f"{socket.htonl(int.from_bytes(socket.inet_aton(host), 'big')):08X}:{port:04X}"
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[1] == local:
                return int(fields[-1])
    return 0


@attrs.frozen
class Completion:
    succeeded: int
    failed: int
    retransmitted: int  # transactions that needed more than one send
    elapsed: float
    server_drops: int
    client_drops: int

    def as_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


# --------------------------------------------------------------------- completion runs


async def nattrav_completion(server: tuple[str, int], count: int) -> Completion:
    from nattrav_stun.codec import Address
    from nattrav_stun.driver import ClientSettings, StunClient
    from nattrav_stun.events import SuccessResponse

    settings = ClientSettings(software=None, max_outstanding=count)
    target = Address(*server)
    succeeded = failed = retransmitted = 0
    async with StunClient.open(settings) as client:
        endpoint = await client.add_socket(4, host="127.0.0.1")
        port = endpoint.local.port
        server_before, client_before = udp_drops(server[1]), udp_drops(port)

        async def one() -> None:
            nonlocal succeeded, failed, retransmitted
            exchange = await client.request(target, endpoint=endpoint)
            event = exchange.event
            if isinstance(event, SuccessResponse) and event.mapped is not None:
                succeeded += 1
                retransmitted += event.sends > 1
            else:
                failed += 1

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        elapsed = time.perf_counter() - start
        drops = udp_drops(server[1]) - server_before, udp_drops(port) - client_before
    return Completion(succeeded, failed, retransmitted, elapsed, *drops)


async def aioice_completion(server: tuple[str, int], count: int) -> Completion:
    from aioice import stun
    from aioice.ice import StunProtocol

    loop = asyncio.get_running_loop()
    _transport, protocol = await loop.create_datagram_endpoint(
        lambda: StunProtocol(cast(Any, _AioiceReceiver())), local_addr=("127.0.0.1", 0)
    )
    port = protocol.transport.get_extra_info("sockname")[1]
    server_before, client_before = udp_drops(server[1]), udp_drops(port)
    succeeded = failed = 0
    sends: dict[bytes, int] = {}
    original = protocol.send_stun

    def counting_send(message: Any, addr: tuple[str, int]) -> None:
        sends[message.transaction_id] = sends.get(message.transaction_id, 0) + 1
        original(message, addr)

    protocol.send_stun = counting_send  # type: ignore[method-assign]

    async def one() -> None:
        nonlocal succeeded, failed
        try:
            response, _addr = await protocol.request(
                stun.Message(stun.Method.BINDING, stun.Class.REQUEST), server
            )
        except stun.TransactionError:
            failed += 1
        else:
            succeeded += "XOR-MAPPED-ADDRESS" in response.attributes

    start = time.perf_counter()
    try:
        await asyncio.gather(*(one() for _ in range(count)))
    finally:
        elapsed = time.perf_counter() - start
        drops = udp_drops(server[1]) - server_before, udp_drops(port) - client_before
        await protocol.close()
    return Completion(succeeded, failed, sum(1 for n in sends.values() if n > 1), elapsed, *drops)


# --------------------------------------------------------------------- memory per transaction


async def _outstanding_memory(
    start: Callable[[], Awaitable[Callable[[], Awaitable[None]]]],
    issue: Callable[[], Awaitable[object]],
    count: int,
) -> float:
    """Traced bytes per outstanding transaction: ``start`` opens the client (not counted),
    then ``count`` tasks each run ``issue()`` and stay waiting; measured once all wait."""
    close = await start()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tasks = [asyncio.ensure_future(issue()) for _ in range(count)]
        for _ in range(5):  # every task runs to its first real wait
            await asyncio.sleep(0.05)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    for task in tasks:
        task.cancel()
    with suppress(asyncio.CancelledError):
        await asyncio.gather(*tasks, return_exceptions=True)
    await close()
    return (after - before) / count


def _black_hole() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


async def nattrav_memory(count: int) -> float:
    from contextlib import AsyncExitStack

    from nattrav_stun.codec import Address
    from nattrav_stun.driver import ClientSettings, StunClient
    from nattrav_stun.transaction import Timers

    hole = _black_hole()
    target = Address(*hole.getsockname())
    stack = AsyncExitStack()
    state: dict[str, Any] = {}

    async def start() -> Callable[[], Awaitable[None]]:
        settings = ClientSettings(software=None, max_outstanding=count, timers=Timers(rto=60.0))
        client = await stack.enter_async_context(StunClient.open(settings))
        state["client"] = client
        state["endpoint"] = await client.add_socket(4, host="127.0.0.1")
        return stack.aclose

    async def issue() -> object:
        return await state["client"].binding(target, endpoint=state["endpoint"])

    try:
        return await _outstanding_memory(start, issue, count)
    finally:
        hole.close()


async def aioice_memory(count: int) -> float:
    from aioice import stun
    from aioice.ice import StunProtocol

    hole = _black_hole()
    target = hole.getsockname()
    state: dict[str, Any] = {}

    async def start() -> Callable[[], Awaitable[None]]:
        loop = asyncio.get_running_loop()
        _t, protocol = await loop.create_datagram_endpoint(
            lambda: StunProtocol(cast(Any, _AioiceReceiver())), local_addr=("127.0.0.1", 0)
        )
        state["protocol"] = protocol
        return protocol.close

    async def issue() -> object:
        return await state["protocol"].request(
            stun.Message(stun.Method.BINDING, stun.Class.REQUEST), target
        )

    try:
        return await _outstanding_memory(start, issue, count)
    finally:
        hole.close()


async def task_floor_memory(count: int) -> float:
    """A bare task awaiting a future in a dict keyed by a 12-byte ID: the least an asyncio
    program can hold per outstanding request."""
    loop = asyncio.get_running_loop()
    pending: dict[bytes, asyncio.Future[None]] = {}
    counter = iter(range(1 << 62))

    async def nothing() -> None:
        return None

    async def start() -> Callable[[], Awaitable[None]]:
        return nothing

    async def issue() -> object:
        fut = loop.create_future()
        pending[next(counter).to_bytes(12, "big")] = fut
        return await fut

    return await _outstanding_memory(start, issue, count)


async def nattrav_allocation_sites(count: int, top: int = 15) -> str:
    """Where nattrav's per-transaction memory goes: traced growth by source line."""
    import linecache

    from nattrav_stun.codec import Address
    from nattrav_stun.driver import ClientSettings, StunClient
    from nattrav_stun.transaction import Timers

    hole = _black_hole()
    target = Address(*hole.getsockname())
    settings = ClientSettings(software=None, max_outstanding=count, timers=Timers(rto=60.0))
    try:
        async with StunClient.open(settings) as client:
            endpoint = await client.add_socket(4, host="127.0.0.1")
            gc.collect()
            tracemalloc.start(1)
            try:
                before = tracemalloc.take_snapshot()
                tasks = [
                    asyncio.ensure_future(client.binding(target, endpoint=endpoint))
                    for _ in range(count)
                ]
                for _ in range(5):
                    await asyncio.sleep(0.05)
                gc.collect()
                after = tracemalloc.take_snapshot()
            finally:
                tracemalloc.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        hole.close()
    lines = []
    for stat in after.compare_to(before, "lineno")[:top]:
        frame = stat.traceback[0]
        source = linecache.getline(frame.filename, frame.lineno).strip()[:70]
        where = "/".join(frame.filename.split("/")[-2:])
        lines.append(f"  {stat.size_diff / count:7.0f} B  {where}:{frame.lineno}  {source}")
    return "\n".join(lines)


# --------------------------------------------------------------------- the run


def check_available() -> None:
    if not sys.platform.startswith("linux"):
        raise Unavailable("reads per-socket drop counters from /proc/net/udp (Linux)")
    try:
        import aioice  # noqa: F401
        import nattrav_stun.driver  # noqa: F401
    except ImportError as exc:
        raise Unavailable(
            f"{exc.name} is not installed: pip install -r benchmarks/requirements.txt"
        ) from None


def _run(coro: Any) -> Any:
    with asyncio.Runner() as runner:
        return runner.run(coro)


DEFAULT_ROUNDS = 3


def run(args: argparse.Namespace) -> Report:
    check_available()
    rounds = 2 if args.quick and args.rounds == DEFAULT_ROUNDS else args.rounds
    count = args.count
    report = Report(
        "scale",
        f"{count:,} concurrent Binding transactions in one process",
        rounds=rounds,
        quick=args.quick,
    )
    completions: dict[str, list[Completion]] = {"nattrav": [], "aioice": []}
    memory: dict[str, list[float]] = {"nattrav": [], "aioice": [], "task floor": []}
    with local_coturn() as server:
        for r in range(rounds):
            # aioice's failed transactions take its full 63.5 s retransmission schedule, so
            # its completion runs once (round 1, skipped with --quick); memory every round.
            who_completes = ["nattrav"] + (["aioice"] if r == 0 and not args.quick else [])
            if r % 2:
                who_completes.reverse()
            for who in who_completes:
                fn = nattrav_completion if who == "nattrav" else aioice_completion
                completions[who].append(_run(fn(server.address, count)))
                time.sleep(0.2)  # let coturn drain before the next burst
            order = ["nattrav", "aioice", "task floor"]
            for who in order[r % 3 :] + order[: r % 3]:
                fn2 = {
                    "nattrav": nattrav_memory,
                    "aioice": aioice_memory,
                    "task floor": task_floor_memory,
                }[who]
                memory[who].append(_run(fn2(count)))
            harness.progress(f"scale round {r + 1}/{rounds}")
    if args.trace:
        report.extra["allocation_sites"] = _run(nattrav_allocation_sites(count))
        report.notes.append(
            "nattrav allocation sites per outstanding transaction:\n"
            + report.extra["allocation_sites"]
        )
    report.extra["completions"] = {k: [c.as_json() for c in v] for k, v in completions.items()}
    report.record_samples("bytes per outstanding transaction", memory)
    for who, runs in completions.items():
        if not runs:
            continue
        failed = max(c.failed for c in runs)
        server_drops = min(c.server_drops for c in runs)
        report.add(
            Row(
                case=f"{who}: failed of {count:,} (worst round)",
                subject=who,
                reference="server drops",
                unit="",
                subject_median=float(failed),
                reference_median=float(server_drops),
                ratio=None,
                max_value=float(server_drops) if who == "nattrav" else None,
                note=(
                    f"{who}: median {statistics.median(c.elapsed for c in runs):.2f} s for "
                    f"{count:,}; retransmitted {[c.retransmitted for c in runs]}, "
                    f"drops server {[c.server_drops for c in runs]} "
                    f"client {[c.client_drops for c in runs]}"
                ),
            )
        )
    elapsed = {who: [c.elapsed for c in runs] for who, runs in completions.items() if runs}
    report.record_samples("completion seconds", elapsed)
    if "aioice" in elapsed:
        paired = {who: values[:1] for who, values in elapsed.items()}  # the same round
        report.compare(
            f"time to complete {count:,} (round 1)",
            paired,
            "nattrav",
            "aioice",
            unit="s",
            higher_is_better=False,
        )
    report.compare(
        "bytes per outstanding transaction",
        memory,
        "nattrav",
        "aioice",
        unit="B",
        higher_is_better=False,
    )
    report.compare(
        "bytes per outstanding transaction (vs bare task)",
        memory,
        "nattrav",
        "task floor",
        unit="B",
        higher_is_better=False,
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = harness.common_arguments(
        argparse.ArgumentParser(
            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        ),
        rounds=DEFAULT_ROUNDS,
    )
    parser.add_argument("--trace", action="store_true", help="show nattrav's allocation sites")
    parser.add_argument("--count", type=int, default=COUNT, help=f"transactions (default {COUNT})")
    return harness.run_main("scale", run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
