"""A fake clock and a tiny simulated internet for driving two sans-IO agents.

Only for the sans-IO tests: the real thing is tested in the lab (``test_lab.py``). Each
``Site`` is one host behind a NAT (or none) with an optional TURN relay (two sites can share
a LAN: their hosts then reach each other without NAT); the NAT keeps
mappings (endpoint-independent or per destination) and filters inbound packets by what the
host sent (address-and-port dependent, or endpoint independent). ``World`` moves datagrams
with a fixed latency, runs both agents' timers in time order, and can drop chosen paths.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from typing import Literal

import attrs
from nattrav.models import CandidateKind, Transport, TransportAddress
from nattrav_p2p.agent import Agent, Transmit
from nattrav_p2p.candidates import (
    IceCandidate,
    candidate_priority,
    foundation_of,
    host_candidates,
    relay_route,
)
from nattrav_p2p.config import AgentConfig
from nattrav_p2p.events import AgentEvent

STUN_SERVER = TransportAddress("203.0.113.1", 3478)
TA = TransportAddress


@attrs.define(eq=False)
class Site:
    name: str
    host: TA
    nat: Literal["none", "eim", "symmetric"] = "eim"
    filtering: Literal["apdf", "eif"] = "apdf"
    public_ip: str = ""
    relay: TA | None = None
    #: Sites with the same non-empty ``lan`` reach each other's host address directly.
    lan: str = ""
    mappings: dict[TA, TA] = attrs.field(factory=dict)  # destination -> public source
    sent_to: set[tuple[TA, TA]] = attrs.field(factory=set)  # (public source, destination)
    permissions: set[str] = attrs.field(factory=set)
    _ports: itertools.count[int] = attrs.field(factory=lambda: itertools.count(40001))

    def outbound(self, dest: TA) -> TA:
        """The source address ``dest`` sees for a packet from our host port."""
        if self.nat == "none":
            src = self.host
        elif self.nat == "eim":
            src = TA(self.public_ip, self.host.port)
        else:
            src = self.mappings.get(dest) or TA(self.public_ip, next(self._ports))
        self.mappings[dest] = src
        self.sent_to.add((src, dest))
        return src

    def inbound_ok(self, src: TA, dst: TA) -> bool:
        if self.nat == "none":
            return dst == self.host
        if dst not in self.mappings.values():
            return False
        if self.filtering == "eif":
            return True
        return (dst, src) in self.sent_to

    def srflx(self) -> TA:
        return self.outbound(STUN_SERVER)

    def candidates(self) -> list[IceCandidate]:
        out = host_candidates([self.host.host], self.host.port)
        if self.nat != "none":
            mapped = self.srflx()
            out.append(
                IceCandidate(
                    foundation=foundation_of(
                        CandidateKind.SERVER_REFLEXIVE, self.host.host, "stun", Transport.UDP
                    ),
                    priority=candidate_priority(CandidateKind.SERVER_REFLEXIVE, 32767),
                    kind=CandidateKind.SERVER_REFLEXIVE,
                    address=mapped,
                    base=self.host,
                    related=self.host,
                )
            )
        if self.relay is not None:
            out.append(
                IceCandidate(
                    foundation=foundation_of(
                        CandidateKind.RELAYED, self.relay.host, "turn", Transport.UDP
                    ),
                    priority=candidate_priority(CandidateKind.RELAYED, 32767),
                    kind=CandidateKind.RELAYED,
                    address=self.relay,
                    base=self.relay,
                    related=self.host,
                    route=relay_route(self.relay),
                )
            )
        return out


@attrs.define(eq=False)
class Peer:
    site: Site
    agent: Agent
    events: list[tuple[float, AgentEvent]] = attrs.field(factory=list)
    sent: list[tuple[float, Transmit]] = attrs.field(factory=list)


class World:
    """Two peers, a latency, drop rules, a fake clock."""

    def __init__(
        self,
        a: Site,
        b: Site,
        *,
        config: AgentConfig | None = None,
        latency: float = 0.01,
        a_controlling: bool = True,
        b_controlling: bool = False,
        tiebreakers: tuple[int, int] = (2, 1),
        seed: int = 7,
    ) -> None:
        cfg = config or AgentConfig()
        self.now = 0.0
        self.latency = latency
        self._queue: list[tuple[float, int, str, bytes, TA, TA]] = []
        self._seq = itertools.count()
        #: drop(sender_name, source, destination) -> True to lose the packet
        self.drop: Callable[[str, TA, TA], bool] = lambda _n, _s, _d: False
        self.delivered = 0
        self.peers: dict[str, Peer] = {}
        for site, controlling, tb, name, pwd in (
            (a, a_controlling, tiebreakers[0], "AAAA", "a" * 22),
            (b, b_controlling, tiebreakers[1], "BBBB", "b" * 22),
        ):
            agent = Agent(
                controlling=controlling,
                ufrag=name,
                pwd=pwd,
                tiebreaker=tb,
                config=cfg,
                rng=random.Random(seed),
            )
            for cand in site.candidates():
                agent.add_local(cand)
            agent.start(0.0)
            self.peers[site.name] = Peer(site, agent)
        self.a = self.peers[a.name]
        self.b = self.peers[b.name]

    def exchange(self, *, a_first: float = 0.0, b_first: float = 0.0) -> None:
        """Give each agent the other's description (at the given times)."""
        order = sorted(
            [(a_first, 0, self.a, self.b), (b_first, 1, self.b, self.a)], key=lambda x: x[:2]
        )
        for at, _, me, other in order:
            if at > self.now:
                self.run_until(at)
            me.agent.set_remote(
                other.agent.ufrag, other.agent.pwd, other.agent.local_candidates, self.now
            )
            self._flush(me)

    def _flush(self, peer: Peer) -> None:
        for tx in peer.agent.datagrams_to_send():
            peer.sent.append((self.now, tx))
            self._send(peer, tx)
        while (event := peer.agent.next_event()) is not None:
            peer.events.append((self.now, event))

    def _send(self, peer: Peer, tx: Transmit) -> None:
        site = peer.site
        if tx.route == "mux" and self._lan_neighbour(site, tx.destination):
            src = site.host  # inside the LAN: no NAT on the way
        elif tx.route == "mux":
            src = site.outbound(tx.destination)
        else:
            assert site.relay is not None and tx.route == relay_route(site.relay)
            site.permissions.add(tx.destination.host)
            src = site.relay
        if self.drop(site.name, src, tx.destination):
            return
        heapq.heappush(
            self._queue,
            (self.now + self.latency, next(self._seq), site.name, tx.data, src, tx.destination),
        )

    def _lan_neighbour(self, site: Site, dest: TA) -> bool:
        return bool(site.lan) and any(
            p.site is not site and p.site.lan == site.lan and p.site.host == dest
            for p in self.peers.values()
        )

    def _deliver(self, sender: str, data: bytes, src: TA, dst: TA) -> None:
        for peer in self.peers.values():
            site = peer.site
            if site.name == sender:
                continue
            if self._lan_neighbour(self.peers[sender].site, dst) and dst == site.host:
                self.delivered += 1
                peer.agent.receive(data, src, "mux", self.now)
                self._flush(peer)
                return
            if site.relay is not None and dst == site.relay:
                if src.host in site.permissions:
                    self.delivered += 1
                    peer.agent.receive(data, src, relay_route(site.relay), self.now)
                    self._flush(peer)
                return
            if site.inbound_ok(src, dst):
                self.delivered += 1
                peer.agent.receive(data, src, "mux", self.now)
                self._flush(peer)
                return

    def step(self) -> bool:
        before = self.now
        self._stalled = getattr(self, "_stalled", 0)
        progressed = self._step()
        self._stalled = self._stalled + 1 if self.now == before else 0
        if self._stalled > 10_000:
            raise AssertionError(f"an agent timer does not move on at t={self.now}")
        return progressed

    def _step(self) -> bool:
        times = [t for p in self.peers.values() if (t := p.agent.get_timer()) is not None]
        if self._queue:
            times.append(self._queue[0][0])
        if not times:
            return False
        self.now = max(self.now, min(times))
        while self._queue and self._queue[0][0] <= self.now:
            _t, _s, sender, data, src, dst = heapq.heappop(self._queue)
            self._deliver(sender, data, src, dst)
        for peer in self.peers.values():
            timer = peer.agent.get_timer()
            if timer is not None and timer <= self.now:
                peer.agent.handle_timer(self.now)
                self._flush(peer)
        return True

    def run_until(self, t: float) -> None:
        while self.now < t:
            nxt = [x for p in self.peers.values() if (x := p.agent.get_timer()) is not None]
            if self._queue:
                nxt.append(self._queue[0][0])
            if not nxt or min(nxt) > t:
                self.now = t
                return
            self.step()

    def run_while(self, condition: Callable[[], bool], limit: float = 60.0) -> None:
        while condition() and self.now < limit:
            if not self.step():
                break

    def events(self, peer: Peer, kind: type) -> list[tuple[float, AgentEvent]]:
        return [(t, e) for t, e in peer.events if isinstance(e, kind)]
