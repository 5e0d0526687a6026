"""A fake path and clock for the sans-IO search: sizes up to ``pmtu`` arrive, larger ones are
dropped, optionally with a PTB from a router ``ptb_delay`` seconds away. Not a network peer:
it is the clock-and-loss fixture the state-machine tests drive the search with."""

from __future__ import annotations

import attrs
from nattrav_pmtud.search import Phase, PmtuSearch, ProbeOrder, SearchSettings


@attrs.define
class FakePath:
    pmtu: int
    rtt: float = 0.05
    ptb: bool = False
    ptb_delay: float = 0.01
    lose: set[int] = attrs.field(factory=set)  # probe ids lost regardless of size
    local_mtu: int | None = None

    def outcome(self, order: ProbeOrder) -> tuple[str, float]:
        if self.local_mtu is not None and order.size > self.local_mtu:
            return "local", 0.0
        if order.probe_id in self.lose:
            return "lost", 0.0
        if order.size <= self.pmtu:
            return "ack", self.rtt
        if self.ptb:
            return "ptb", self.ptb_delay
        return "lost", 0.0


@attrs.define
class Run:
    search: PmtuSearch
    path: FakePath
    now: float = 0.0
    sent: list[tuple[float, ProbeOrder]] = attrs.field(factory=list)
    events: list[object] = attrs.field(factory=list)
    # (time, kind, order) of what the path will deliver
    _inbox: list[tuple[float, str, ProbeOrder]] = attrs.field(factory=list)

    def _take_orders(self) -> None:
        for order in self.search.probes_to_send():
            self.sent.append((self.now, order))
            kind, delay = self.path.outcome(order)
            if kind == "local":
                self.search.send_failed(order.probe_id, self.now, self.path.local_mtu)
                self._take_orders()
                return
            if kind != "lost":
                self._inbox.append((self.now + delay, kind, order))
        self.events += list(self.search.events())

    def step(self) -> bool:
        """Advance to the next thing that happens; False when nothing will."""
        self._take_orders()
        timer = self.search.get_timer()
        nxt = min((t for t, _k, _o in self._inbox), default=None)
        if nxt is not None and (timer is None or nxt <= timer):
            self._inbox.sort(key=lambda x: x[0])
            t, kind, order = self._inbox.pop(0)
            self.now = max(self.now, t)
            if kind == "ack":
                self.search.probe_acked(order.probe_id, self.now)
            else:
                self.search.ptb_received(order.probe_id, self.path.pmtu, self.now)
        elif timer is not None:
            self.now = max(self.now, timer)
            self.search.handle_timer(self.now)
        else:
            return False
        self._take_orders()
        return True

    def until_settled(self, limit: int = 10_000) -> None:
        for _ in range(limit):
            if self.search.settled and not self._inbox:
                return
            if not self.step():
                return
        raise AssertionError("search did not settle")

    def until(self, t: float, limit: int = 10_000) -> None:
        for _ in range(limit):
            timer = self.search.get_timer()
            nxt = min((x for x, _k, _o in self._inbox), default=None)
            soonest = min(x for x in (timer, nxt, float("inf")) if x is not None)
            if soonest > t:
                self.now = t
                return
            self.step()
        raise AssertionError("too many steps")


def run(pmtu: int, settings: SearchSettings | None = None, **path: object) -> Run:
    search = PmtuSearch(settings or SearchSettings(family=4, probe_timeout=1.0))
    r = Run(search, FakePath(pmtu, **path))  # type: ignore[arg-type]
    search.start(0.0)
    return r


__all__ = ["FakePath", "Phase", "Run", "run"]
