"""A small UDP ping between lab namespaces, to check what the impairment knobs do.

An echo socket in one role, a client socket in another (both made with ``Lab.inside``), a
numbered burst of datagrams, and a count of what came back: round-trip times, losses,
duplicates and packets that arrived out of order. Plain blocking sockets in a helper thread:
it measures the lab, not nattrav, so it stays independent of anyio.
"""

from __future__ import annotations

import socket
import statistics
import struct
import threading
import time
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from nattrav_lab.lab import Lab

__all__ = ["PingResult", "datagram_arrives", "udp_ping"]


@attrs.frozen
class PingResult:
    """What came back from a burst of ``sent`` numbered datagrams."""

    sent: int
    rtts: tuple[float, ...]  # one per distinct sequence number answered, in arrival order
    duplicates: int  # answers beyond the first for a sequence number
    reordered: int  # answers that arrived after a higher-numbered one
    order: tuple[int, ...]  # sequence numbers in arrival order, duplicates included

    @property
    def received(self) -> int:
        return len(self.rtts)

    @property
    def loss(self) -> float:
        """Fraction of datagrams whose answer never came (round-trip loss)."""
        return 1.0 - self.received / self.sent if self.sent else 0.0

    @property
    def median_rtt(self) -> float | None:
        return statistics.median(self.rtts) if self.rtts else None


def udp_ping(
    lab: Lab,
    *,
    src: str = "lan",
    dst: str = "internet",
    dst_ip: str | None = None,
    port: int = 7777,
    count: int = 50,
    interval: float = 0.002,
    size: int = 64,
    wait: float = 1.0,
) -> PingResult:
    """Send ``count`` datagrams from role ``src`` to an echo socket at ``dst_ip``:``port`` in
    role ``dst`` (default: the first internet peer address) and collect the echoes for up to
    ``wait`` seconds after the last send."""
    target = dst_ip or lab.internet_peer_ip4
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    with lab.inside(dst):
        server = socket.socket(family, socket.SOCK_DGRAM)
    with lab.inside(src):
        client = socket.socket(family, socket.SOCK_DGRAM)
    stop = threading.Event()

    def echo() -> None:
        server.settimeout(0.05)
        while not stop.is_set():
            try:
                data, addr = server.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server.sendto(data, addr)
            except OSError:
                pass

    with server, client:
        server.bind((target, port))
        thread = threading.Thread(target=echo, name="nattrav-lab-echo", daemon=True)
        thread.start()
        sent_at: dict[int, float] = {}
        order: list[int] = []
        rtts: list[float] = []
        seen: set[int] = set()
        client.setblocking(False)
        pad = b"\0" * max(0, size - 12)

        def drain() -> None:
            while True:
                try:
                    data = client.recv(65535)
                except (BlockingIOError, InterruptedError):
                    return
                now = time.monotonic()
                seq = struct.unpack("!I", data[:4])[0]
                order.append(seq)
                if seq in seen:
                    continue
                seen.add(seq)
                rtts.append(now - sent_at[seq])

        try:
            for seq in range(count):
                sent_at[seq] = time.monotonic()
                client.sendto(struct.pack("!Id", seq, sent_at[seq]) + pad, (target, port))
                drain()
                time.sleep(interval)
            # Collect until ``wait`` is over, or until everything is back and a short linger
            # for late duplicates has passed.
            deadline = time.monotonic() + wait
            linger_until: float | None = None
            while time.monotonic() < deadline:
                drain()
                if len(seen) == count:
                    if linger_until is None:
                        linger_until = time.monotonic() + min(wait, 0.2)
                    elif time.monotonic() >= linger_until:
                        break
                time.sleep(0.002)
        finally:
            stop.set()
            thread.join(timeout=1.0)
    # A datagram is reordered when a higher-numbered one arrived before it.
    reordered = 0
    highest = -1
    firsts: set[int] = set()
    for seq in order:
        if seq in firsts:
            continue
        firsts.add(seq)
        if seq < highest:
            reordered += 1
        highest = max(highest, seq)
    return PingResult(
        sent=count,
        rtts=tuple(rtts),
        duplicates=len(order) - len(firsts),
        reordered=reordered,
        order=tuple(order),
    )


def datagram_arrives(
    lab: Lab,
    to: tuple[str, int],
    *,
    listen_role: str = "lan",
    listen_port: int | None = None,
    from_role: str = "internet",
    from_ip: str | None = None,
    timeout: float = 0.25,
    attempts: int = 2,
) -> bool:
    """Does a datagram sent from ``from_role`` to ``to`` reach a socket in ``listen_role``?

    The listening socket binds the wildcard address on ``listen_port`` (default: ``to``'s
    port) in ``listen_role``; the sender binds ``from_ip`` (default: the first internet peer
    address of ``to``'s family). Use it to check that a port mapping or pinhole really lets
    traffic in, and that it stops doing so once released. A "no" costs ``timeout`` times
    ``attempts`` (in the lab a datagram that gets through arrives within milliseconds).
    """
    host, port = to
    v6 = ":" in host
    family = socket.AF_INET6 if v6 else socket.AF_INET
    source = from_ip or (lab.internet_peer_ip6 if v6 else lab.internet_peer_ip4)
    token = f"nattrav-lab-{time.monotonic_ns()}".encode()
    with lab.inside(listen_role):
        listener = socket.socket(family, socket.SOCK_DGRAM)
    with lab.inside(from_role):
        sender = socket.socket(family, socket.SOCK_DGRAM)
    with listener, sender:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("::" if v6 else "0.0.0.0", listen_port or port))
        sender.bind((source, 0))
        listener.settimeout(timeout)
        for _ in range(attempts):
            sender.sendto(token, (host, port))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    data = listener.recv(2048)
                except TimeoutError:
                    break
                if data == token:
                    return True
    return False
