"""Delay, jitter, reordering and duplication for packets sent to an NFQUEUE.

This kernel has no ``netem`` qdisc, so the lab queues the router's WAN traffic to userspace
(``iptables -j NFQUEUE --queue-bypass``) and this program, started by the lab inside the
router's namespace, gives each packet its verdict later: ``delay`` seconds plus a uniform
``jitter``, except ``reorder`` percent of packets that are released at once (so they overtake
the delayed ones, as netem's reorder does). ``duplicate`` percent of packets are also sent a
second time through a raw socket: copies of outbound packets (seen in the forward hook, before
source NAT) go through conntrack so they are NATed like the original; copies of inbound ones
(already translated) carry the mark ``DUP_MARK``, which the router's ruleset exempts from
conntrack, or conntrack would see a clashing new flow and remap or drop them. Inbound and
outbound packets arrive on separate queues so the program knows which is which.
``--queue-bypass`` means packets flow unimpaired whenever
this program is not running.

Usage (the lab runs it; by hand only for debugging)::

    python -m nattrav_lab.impair --queue-in 8 --queue-out 9 --delay 0.1 --jitter 0.02
"""

from __future__ import annotations

import argparse
import functools
import heapq
import random
import select
import signal
import socket
import sys
import time
from typing import Any

__all__ = ["DUP_MARK", "main"]

DUP_MARK = 0x4E54


def _raw_sender(mark: int) -> tuple[socket.socket, socket.socket]:
    v4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    v6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
    if mark:
        for sock in (v4, v6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    return v4, v6


def _send_copy(raw: tuple[socket.socket, socket.socket], payload: bytes) -> None:
    """Emit a copy of an IP packet as it is (header included)."""
    try:
        if payload[0] >> 4 == 4:
            dst = socket.inet_ntop(socket.AF_INET, payload[16:20])
            raw[0].sendto(payload, (dst, 0))
        elif payload[0] >> 4 == 6:
            dst = socket.inet_ntop(socket.AF_INET6, payload[24:40])
            raw[1].sendto(payload, (dst, 0))
    except OSError:
        pass  # a lost duplicate is still a faithful impairment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nattrav_lab.impair")
    parser.add_argument("--queue-in", type=int, help="queue of packets towards the LAN")
    parser.add_argument("--queue-out", type=int, help="queue of packets from the LAN")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--jitter", type=float, default=0.0)
    parser.add_argument("--reorder", type=float, default=0.0, help="percent")
    parser.add_argument("--duplicate", type=float, default=0.0, help="percent")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)

    from netfilterqueue import NetfilterQueue

    rng = random.Random(args.seed)
    raw = {"in": _raw_sender(DUP_MARK), "out": _raw_sender(0)}
    # (release time, sequence, packet, copy to send or None) ordered by release time
    pending: list[tuple[float, int, Any, str | None]] = []
    seq = 0

    def on_packet(pkt: Any, direction: str) -> None:
        nonlocal seq
        dup = args.duplicate > 0 and rng.uniform(0, 100) < args.duplicate
        if dup:
            pkt.retain()
        if args.reorder > 0 and rng.uniform(0, 100) < args.reorder:
            wait = 0.0
        else:
            wait = max(0.0, args.delay + rng.uniform(-args.jitter, args.jitter))
        seq += 1
        heapq.heappush(pending, (time.monotonic() + wait, seq, pkt, direction if dup else None))

    stop = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    queues: dict[int, Any] = {}
    for direction, num in (("in", args.queue_in), ("out", args.queue_out)):
        if num is None:
            continue
        nfq = NetfilterQueue()
        nfq.bind(num, functools.partial(on_packet, direction=direction), max_len=4096)
        queues[nfq.get_fd()] = nfq
    print(f"ready: queues in={args.queue_in} out={args.queue_out}", flush=True)
    try:
        while not stop:
            now = time.monotonic()
            while pending and pending[0][0] <= now:
                _, _, pkt, copy = heapq.heappop(pending)
                payload = pkt.get_payload() if copy else b""
                pkt.accept()
                if copy:
                    _send_copy(raw[copy], payload)
            timeout = max(0.0, pending[0][0] - now) if pending else 0.5
            try:
                ready, _, _ = select.select(list(queues), [], [], timeout)
            except InterruptedError:
                continue
            for fd in ready:
                queues[fd].run(block=False)
    finally:
        for _, _, pkt, _ in pending:
            pkt.accept()
        for nfq in queues.values():
            nfq.unbind()
    return 0


if __name__ == "__main__":
    sys.exit(main())
