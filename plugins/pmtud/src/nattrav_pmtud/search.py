"""RFC 8899 DPLPMTUD search: a sans-IO state machine over probe sizes and timers.

Theory of operation
-------------------
Nothing here knows STUN, sockets or the clock. The caller (``prober.StunPmtuProber``, or a test
with a fake clock) turns each ``ProbeOrder`` into a datagram of exactly that size and tells the
search what happened to it::

    search.start(now)
    loop:
        for order in search.probes_to_send(): send a probe of order.size bytes (IP packet size)
        wait until search.get_timer() or news:
            search.probe_acked(order.probe_id, now)        an unguessable reply arrived
            search.ptb_received(order.probe_id, mtu, now)  a *validated* ICMP PTB quoted it
            search.send_failed(order.probe_id, now, mtu)   the host refused to send it
            search.handle_timer(now)                       the timer fired
        search.next_event()                                PlpmtuChanged, SearchCompleted ...

Sizes are IP packet sizes (the PMTU: IP header + UDP header + payload), aligned to ``step``
bytes (STUN messages are multiples of 4 bytes, so padded STUN probes can only hit multiples of
4). ``udp_payload()`` turns a size into the largest UDP payload (IPv4 minus 28, IPv6 minus 48).

Phases (RFC 8899 §5.2; DISABLED is "not started"):

* BASE: probe BASE_PLPMTU (1200 for IPv4, 1280 for IPv6) until acknowledged (-> SEARCHING) or
  MAX_PROBES consecutive probes are lost (-> ERROR).
* SEARCHING: optimistic first (the configured or local-interface maximum, then 1500 if it is
  in range: most paths are either unconstrained or plain Ethernet), then bisection between the
  largest confirmed size and the smallest size known to fail. A size fails after MAX_PROBES
  lost probes (§5.1.2: robustness to isolated loss), or at once when a validated PTB quoted it.
  A validated PTB with PLPMTU < PL_PTB_SIZE < PROBED_SIZE makes the PTB size the next probe
  (§4.6.2); it never sets the PLPMTU: only an acknowledged probe does (§4.6.2 MUST NOT).
* SEARCH_COMPLETE: the PMTU_RAISE_TIMER (600 s by default, §5.1.1) re-enters SEARCHING; the
  CONFIRMATION_TIMER re-probes the PLPMTU, and MAX_PROBES losses of it are a black hole
  (-> BASE, PLPMTU = BASE_PLPMTU).
* ERROR: the base size is not confirmed; the PLPMTU reported is MIN_PLPMTU (conservative) and
  base probes are retried on the confirmation timer.

PTB sizes (§4.6.2; hostile-inputs M1/M2): below MIN_PLPMTU or not smaller than the probe it
quotes: discarded. Below BASE_PLPMTU: discarded too (a PTB alone never takes the PLPMTU below
BASE). BASE <= PTB < PLPMTU: a black hole, back to BASE with the PTB size as the first search
point. The caller validates the quote (addresses, ports, our unguessable transaction ID); this
module checks sizes.

Probe spacing (§8 MUST, hostile-inputs M4): one probe in flight, and consecutive probes at
least one smoothed RTT apart (never less than ``rtt_floor``). PROBE_TIMER is
``max(probe_timeout, SRTT + 4 RTTVAR)``; RFC 8899 §5.1.1 asks for at least 1 s (the default);
tests and lab runs use a window of a few RTTs.
"""

from __future__ import annotations

import collections
import enum
import math
from collections.abc import Iterator

import attrs
from nattrav.errors import LocalProtocolError

__all__ = [
    "BlackHoleDetected",
    "EnteredError",
    "Event",
    "Phase",
    "PlpmtuChanged",
    "PmtuResult",
    "PmtuSearch",
    "ProbeOrder",
    "PtbVerdict",
    "SearchCompleted",
    "SearchSettings",
    "header_overhead",
    "udp_payload",
]

IP_MAXIMUM = 65535
#: the Ethernet MTU, tried early because it is by far the most common path MTU
ETHERNET_MTU = 1500
#: how many past probes stay matchable (late acknowledgements, PTBs for earlier probes)
RECENT_PROBES = 64


def header_overhead(family: int) -> int:
    """IP + UDP header bytes: 28 for IPv4, 48 for IPv6 (no options or extension headers)."""
    return 28 if family == 4 else 48


def udp_payload(size: int, family: int) -> int:
    """The largest UDP payload that fits in an IP packet of ``size`` bytes."""
    return size - header_overhead(family)


class Phase(enum.Enum):
    """RFC 8899 §5.2 states (DISABLED is a search that was not started)."""

    DISABLED = "disabled"
    BASE = "base"
    SEARCHING = "searching"
    SEARCH_COMPLETE = "search-complete"
    ERROR = "error"


@attrs.frozen
class SearchSettings:
    """Constants and timers of one search (RFC 8899 §5.1). Sizes are IP packet sizes.

    ``base_plpmtu``/``min_plpmtu`` default per family (IPv4 1200/68, IPv6 1280/1280).
    ``max_plpmtu`` is the largest size probed (9000 covers jumbo frames; 65535 is the
    theoretical IP limit); the local interface MTU lowers it when the host refuses a send.
    ``raise_interval``/``confirm_interval``: ``None`` turns that timer off.
    """

    family: int = 4
    base_plpmtu: int | None = None
    min_plpmtu: int | None = None
    max_plpmtu: int = 9000
    max_probes: int = 3
    probe_timeout: float = 1.0
    rtt_floor: float = 0.01
    raise_interval: float | None = 600.0
    confirm_interval: float | None = 60.0
    step: int = 4
    optimistic: bool = True

    @property
    def base(self) -> int:
        if self.base_plpmtu is not None:
            return self.base_plpmtu
        return 1200 if self.family == 4 else 1280

    @property
    def minimum(self) -> int:
        if self.min_plpmtu is not None:
            return self.min_plpmtu
        return 68 if self.family == 4 else 1280

    def problems(self) -> list[str]:
        """Everything wrong with these settings, as sentences (empty when valid)."""
        out: list[str] = []
        if self.family not in (4, 6):
            out.append(f"family must be 4 or 6, got {self.family!r}")
        floor = 68 if self.family == 4 else 1280
        if self.step < 1:
            out.append(f"step must be >= 1, got {self.step}")
        if self.minimum < floor:
            out.append(f"min_plpmtu for IPv{self.family} must be >= {floor}, got {self.minimum}")
        if not self.minimum <= self.base <= self.max_plpmtu:
            out.append(
                f"sizes must satisfy min_plpmtu <= base_plpmtu <= max_plpmtu, got "
                f"{self.minimum} <= {self.base} <= {self.max_plpmtu}"
            )
        if self.max_plpmtu > IP_MAXIMUM:
            out.append(f"max_plpmtu must be <= {IP_MAXIMUM}, got {self.max_plpmtu}")
        if self.max_probes < 1:
            out.append(f"max_probes must be >= 1, got {self.max_probes}")
        if not self.probe_timeout > 0:
            out.append(f"probe_timeout must be > 0 s, got {self.probe_timeout}")
        if self.rtt_floor < 0:
            out.append(f"rtt_floor must be >= 0 s, got {self.rtt_floor}")
        for name in ("raise_interval", "confirm_interval"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                out.append(f"{name} must be > 0 s (or unset to disable), got {value}")
        return out


@attrs.frozen
class ProbeOrder:
    """Send one probe of ``size`` bytes (IP packet size) now; report on it by ``probe_id``."""

    probe_id: int
    size: int
    purpose: str  # "base", "search" or "confirm"
    attempt: int  # 1..max_probes for this size


# ------------------------------------------------------------------------------ events


@attrs.frozen
class PlpmtuChanged:
    """The PLPMTU moved (up by an acknowledged probe, down to BASE/MIN after a failure)."""

    old: int
    new: int
    reason: str


@attrs.frozen
class SearchCompleted:
    """No size between the PLPMTU and the smallest failed size is left to try."""

    plpmtu: int
    upper_bound: int | None


@attrs.frozen
class BlackHoleDetected:
    """Packets of the PLPMTU stopped arriving (lost confirmation probes or a PTB below it)."""

    plpmtu: int
    reason: str


@attrs.frozen
class EnteredError:
    """The base size was not confirmed: the path may be down or the server silent."""

    reason: str


Event = PlpmtuChanged | SearchCompleted | BlackHoleDetected | EnteredError


class PtbVerdict(enum.Enum):
    """What the search did with a PTB (validated by the caller) (§4.6.2)."""

    USED = "used"
    UNKNOWN_PROBE = "unknown-probe"  # quotes no probe of ours (M1)
    BELOW_MIN = "below-min-plpmtu"  # M2
    NOT_SMALLER = "not-smaller-than-probe"  # M2: inconsistent signal
    BELOW_BASE = "below-base-plpmtu"  # M2: never below BASE because of a PTB


@attrs.frozen
class PmtuResult:
    """What a search found: the path MTU as an IP packet size and as a UDP payload.

    ``plpmtu`` is the size to use (``min_plpmtu`` in ERROR, unconfirmed); ``confirmed`` says
    whether an acknowledged probe proved it. ``how`` lists how it was found:
    ``probe-confirmed``, ``ptb-hint`` (a validated ICMP PTB steered the search),
    ``silent-loss`` (larger probes vanished without any ICMP: an ICMP black hole, found by
    probe loss alone), ``black-hole-detected`` (the PLPMTU itself stopped working and the
    search fell back to BASE). ``limited_by``: ``path``, ``local-interface`` or
    ``configured-maximum`` (``unconfirmed`` in ERROR). ``upper_bound`` is the smallest size
    seen to fail (``None``: none did).
    """

    family: int
    plpmtu: int
    confirmed: bool
    phase: Phase
    how: tuple[str, ...]
    limited_by: str
    upper_bound: int | None
    local_mtu: int | None
    max_plpmtu: int
    probes_sent: int
    probes_acked: int
    probes_lost: int
    ptb_used: int
    ptb_discarded: int
    srtt: float | None
    target: str = ""
    details: dict[str, object] = attrs.field(factory=dict, eq=False)

    @property
    def path_mtu(self) -> int:
        """The path MTU as an IP packet size (same as ``plpmtu``)."""
        return self.plpmtu

    @property
    def max_udp_payload(self) -> int:
        """The largest UDP payload that crosses the path unfragmented."""
        return udp_payload(self.plpmtu, self.family)

    def to_dict(self) -> dict[str, object]:
        """JSON-able form (CLI ``--json``, ``nattrav probe``, ``PathProperty.details``)."""
        return {
            "target": self.target,
            "family": self.family,
            "path_mtu": self.plpmtu,
            "udp_payload": self.max_udp_payload,
            "confirmed": self.confirmed,
            "phase": self.phase.value,
            "how": list(self.how),
            "limited_by": self.limited_by,
            "upper_bound": self.upper_bound,
            "local_mtu": self.local_mtu,
            "max_plpmtu": self.max_plpmtu,
            "probes": {
                "sent": self.probes_sent,
                "acked": self.probes_acked,
                "lost": self.probes_lost,
                "ptb_used": self.ptb_used,
                "ptb_discarded": self.ptb_discarded,
            },
            "srtt_ms": None if self.srtt is None else round(self.srtt * 1000, 3),
            **self.details,
        }


# ------------------------------------------------------------------------------ the machine


@attrs.define
class _Probe:
    probe_id: int
    size: int
    purpose: str
    attempt: int
    sent_at: float
    deadline: float


class PmtuSearch:
    """One path's DPLPMTUD state (RFC 8899 §5). See the module docstring."""

    def __init__(self, settings: SearchSettings) -> None:
        problems = settings.problems()
        if problems:
            raise LocalProtocolError("invalid PMTU search settings: " + "; ".join(problems))
        self.settings = settings
        self.step = settings.step
        self.base = self._align(settings.base)
        self.minimum = settings.minimum
        self.max_plpmtu = self._align(settings.max_plpmtu)
        self.phase = Phase.DISABLED
        self.plpmtu = self.base
        self.confirmed = False
        self.local_mtu: int | None = None
        self._max_is_local = False  # MAX_PLPMTU was lowered because the host refused a send
        #: smallest size known to fail in this search epoch (None: none)
        self.upper_bound: int | None = None
        #: the size a validated PTB said fits; probed next, believed to be the ceiling
        self._ptb_ceiling: int | None = None
        self._tried_max = False
        self._tried_ethernet = False
        self._current: _Probe | None = None
        self._recent: collections.OrderedDict[int, _Probe] = collections.OrderedDict()
        self._pending: tuple[int, str] | None = None  # (size, purpose) waiting for spacing
        self._probe_count = 0  # consecutive losses at the current size (PROBE_COUNT)
        self._last_send = -math.inf
        self._next_id = 1
        self._orders: list[ProbeOrder] = []
        self._events: collections.deque[Event] = collections.deque()
        self._raise_at: float | None = None
        self._confirm_at: float | None = None
        self._retry_at: float | None = None
        self.srtt: float | None = None
        self.rttvar = 0.0
        # Counters and how the result was found.
        self.probes_sent = 0
        self.probes_acked = 0
        self.probes_lost = 0
        self.ptb_used = 0
        self.ptb_discarded: collections.Counter[str] = collections.Counter()
        self.silent_loss = False
        self.black_holes = 0

    # ------------------------------------------------------------------ helpers

    def _align(self, size: int) -> int:
        return size - size % self.step

    @property
    def _top(self) -> int:
        """Exclusive upper end of the sizes still worth probing."""
        top = self.max_plpmtu + self.step
        if self.upper_bound is not None:
            top = min(top, self.upper_bound)
        return top

    def probe_timer(self) -> float:
        """PROBE_TIMER: the configured floor, or more on a slow path (RFC 6298 style)."""
        if self.srtt is None:
            return self.settings.probe_timeout
        return max(self.settings.probe_timeout, self.srtt + 4 * self.rttvar)

    def spacing(self) -> float:
        """The minimum gap between two probes: one smoothed RTT, never below the floor."""
        return max(self.settings.rtt_floor, self.srtt or 0.0)

    @property
    def settled(self) -> bool:
        """True when a one-shot discovery can stop: complete or in error, nothing in flight."""
        return (
            self.phase in (Phase.SEARCH_COMPLETE, Phase.ERROR)
            and self._current is None
            and self._pending is None
        )

    @property
    def in_flight(self) -> ProbeOrder | None:
        p = self._current
        return None if p is None else ProbeOrder(p.probe_id, p.size, p.purpose, p.attempt)

    def probe_size(self, probe_id: int) -> int | None:
        """The size of a recent probe (``None``: not one of ours, or too old)."""
        p = self._recent.get(probe_id)
        return None if p is None else p.size

    # ------------------------------------------------------------------ inputs

    def start(self, now: float) -> None:
        """Leave DISABLED: probe the base size at once (§5.2)."""
        if self.phase is not Phase.DISABLED:
            raise LocalProtocolError("PMTU search already started")
        self._enter_base(now)

    def probe_acked(self, probe_id: int, now: float) -> bool:
        """An unguessable reply to probe ``probe_id`` arrived: its size crossed the path.

        Late replies (after the probe timer) count too: the datagram did arrive. Returns False
        for an unknown or already acknowledged probe (a duplicate changes nothing).
        """
        self._check_started()
        p = self._recent.pop(probe_id, None)
        if p is None:
            return False
        self.probes_acked += 1
        self._rtt_sample(now - p.sent_at)
        if self._current is p:
            self._current = None
            self._probe_count = 0
        size = p.size
        if self.phase in (Phase.BASE, Phase.ERROR) and size >= self.base:
            self._set_plpmtu(max(size, self.base), now, "base size confirmed by probe")
            self.confirmed = True
            self._enter_searching(now, keep_bounds=True)
            return True
        if size > self.plpmtu or (size == self.plpmtu and not self.confirmed):
            self._set_plpmtu(size, now, "probe acknowledged")
            self.confirmed = True
            if self.upper_bound is not None and self.upper_bound <= size:
                self.upper_bound = None  # the path grew, or earlier losses were random
            if self._ptb_ceiling is not None and self._ptb_ceiling < size:
                self._ptb_ceiling = None
        if p.purpose == "confirm" and self.phase is Phase.SEARCH_COMPLETE:
            self._confirm_at = self._after(now, self.settings.confirm_interval)
        self._plan(now)
        return True

    def ptb_received(self, probe_id: int, ptb_size: int, now: float) -> PtbVerdict:
        """A PTB (already validated by the caller: it quotes probe ``probe_id``) arrived.

        ``ptb_size`` is the MTU it reports, as an IP packet size (PL_PTB_SIZE in our units).
        """
        self._check_started()
        p = self._recent.get(probe_id)
        if p is None:
            return self._discard(PtbVerdict.UNKNOWN_PROBE)
        if ptb_size < self.minimum:
            return self._discard(PtbVerdict.BELOW_MIN)
        if ptb_size >= p.size:
            return self._discard(PtbVerdict.NOT_SMALLER)
        if ptb_size < self.base:
            return self._discard(PtbVerdict.BELOW_BASE)
        self.ptb_used += 1
        hint = self._align(ptb_size)
        # The quoted probe did not get through: that size (and all larger) fail.
        self.upper_bound = p.size if self.upper_bound is None else min(self.upper_bound, p.size)
        if self.confirmed and hint < self.plpmtu:
            # BASE <= PL_PTB_SIZE < PLPMTU: a black hole (§4.6.2); search again from BASE,
            # with the PTB size as the first search point.
            self._black_hole(now, f"validated PTB of {ptb_size} below the PLPMTU")
            self._ptb_ceiling = hint
            return PtbVerdict.USED
        self._ptb_ceiling = hint if self._ptb_ceiling is None else min(self._ptb_ceiling, hint)
        cur = self._current
        if cur is not None and cur.size > hint:
            self._current = None  # doomed: abandon it (a late reply is still accepted)
            self._probe_count = 0
        self._plan(now)
        return PtbVerdict.USED

    def send_failed(self, probe_id: int, now: float, local_mtu: int | None = None) -> None:
        """The host refused to send probe ``probe_id`` (EMSGSIZE): it exceeds the local MTU.

        ``local_mtu`` is the interface MTU when the platform says it (Linux error queue).
        """
        self._check_started()
        p = self._recent.pop(probe_id, None)
        if p is None:
            return
        if local_mtu is not None and local_mtu < p.size:
            self.local_limit(local_mtu, now, _abandon=p)
        else:  # the platform did not say the MTU: this size (and larger) cannot leave
            self._lower_max(p.size - 1, now, p, f"a probe of {p.size} bytes")

    def local_limit(self, mtu: int, now: float, *, _abandon: _Probe | None = None) -> None:
        """The local interface cannot send more than ``mtu`` bytes: lower MAX_PLPMTU."""
        self._check_started()
        self.local_mtu = mtu if self.local_mtu is None else min(self.local_mtu, mtu)
        self._lower_max(mtu, now, _abandon, f"the local interface MTU {mtu}")

    def _lower_max(self, limit: int, now: float, abandon: _Probe | None, what: str) -> None:
        if self._align(limit) < self.max_plpmtu:
            self.max_plpmtu = self._align(limit)
            self._max_is_local = True
        cur = self._current
        if cur is not None and (cur is abandon or cur.size > self.max_plpmtu):
            self._current = None
            self._probe_count = 0
        if self.max_plpmtu < self.base:
            self._enter_error(now, f"{what} cannot leave this host: below the base size")
            return
        if self.phase is Phase.SEARCH_COMPLETE and self.plpmtu > self.max_plpmtu:
            self._set_plpmtu(self.max_plpmtu, now, "local interface MTU lowered")
        self._plan(now)

    def report_black_hole(self, now: float, reason: str = "reported by the application") -> None:
        """The application saw PLPMTU-sized packets vanish: fall back to BASE (§5.2)."""
        self._check_started()
        self._black_hole(now, reason)

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must next be called (``None``: no timer)."""
        times = [
            t
            for t in (
                None if self._current is None else self._current.deadline,
                None if self._pending is None else self._last_send + self.spacing(),
                self._raise_at if self.phase is Phase.SEARCH_COMPLETE else None,
                self._confirm_at if self.phase is Phase.SEARCH_COMPLETE else None,
                self._retry_at if self.phase is Phase.ERROR else None,
            )
            if t is not None
        ]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        """Process every timer that is due at ``now``."""
        self._check_started()
        cur = self._current
        if cur is not None and now >= cur.deadline:
            self._current = None
            self.probes_lost += 1
            self._probe_count += 1
            if self._probe_count >= self.settings.max_probes:
                self._probe_count = 0
                self._size_failed(cur, now)
            else:
                self._queue(cur.size, cur.purpose, now)
        if self._pending is not None and self._current is None:
            size, purpose = self._pending
            if now >= self._last_send + self.spacing():
                self._pending = None
                self._emit(size, purpose, now)
        if self.phase is Phase.SEARCH_COMPLETE and self._current is None and self._pending is None:
            if self._raise_at is not None and now >= self._raise_at:
                self._raise_at = None
                self._enter_searching(now, keep_bounds=False)
            elif self._confirm_at is not None and now >= self._confirm_at:
                self._confirm_at = None
                self._queue(self.plpmtu, "confirm", now)
        if (
            self.phase is Phase.ERROR
            and self._retry_at is not None
            and now >= self._retry_at
            and self._current is None
            and self._pending is None
        ):
            self._retry_at = None
            self._queue(self.base, "base", now)

    # ------------------------------------------------------------------ outputs

    def probes_to_send(self) -> list[ProbeOrder]:
        """Probes to send now (each exactly ``size`` bytes at the IP layer)."""
        out, self._orders = self._orders, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def events(self) -> Iterator[Event]:
        while self._events:
            yield self._events.popleft()

    def result(self, target: str = "") -> PmtuResult:
        """A snapshot of what the search knows now."""
        how: list[str] = []
        if self.confirmed:
            how.append("probe-confirmed")
        if self.ptb_used:
            how.append("ptb-hint")
        if self.silent_loss:
            how.append("silent-loss")
        if self.black_holes:
            how.append("black-hole-detected")
        if not self.confirmed:
            limited = "unconfirmed"
        elif self.plpmtu + self.step > self.max_plpmtu and (
            self.upper_bound is None or self.upper_bound > self.max_plpmtu
        ):
            limited = "local-interface" if self._max_is_local else "configured-maximum"
        else:
            limited = "path"
        return PmtuResult(
            family=self.settings.family,
            plpmtu=self.plpmtu if self.phase is not Phase.ERROR else self.minimum,
            confirmed=self.confirmed and self.phase is not Phase.ERROR,
            phase=self.phase,
            how=tuple(how),
            limited_by=limited,
            upper_bound=self.upper_bound,
            local_mtu=self.local_mtu,
            max_plpmtu=self.max_plpmtu,
            probes_sent=self.probes_sent,
            probes_acked=self.probes_acked,
            probes_lost=self.probes_lost,
            ptb_used=self.ptb_used,
            ptb_discarded=sum(self.ptb_discarded.values()),
            srtt=self.srtt,
            target=target,
        )

    # ------------------------------------------------------------------ internals

    def _check_started(self) -> None:
        if self.phase is Phase.DISABLED:
            raise LocalProtocolError("PMTU search not started: call start(now) first")

    def _after(self, now: float, interval: float | None) -> float | None:
        return None if interval is None else now + interval

    def _discard(self, verdict: PtbVerdict) -> PtbVerdict:
        self.ptb_discarded[verdict.value] += 1
        return verdict

    def _rtt_sample(self, rtt: float) -> None:
        # RFC 6298 §2 smoothing; each probe has its own transaction ID, so every reply is an
        # unambiguous sample (Karn's problem does not arise).
        rtt = max(rtt, 0.0)
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt

    def _set_plpmtu(self, size: int, now: float, reason: str) -> None:
        if size != self.plpmtu:
            self._events.append(PlpmtuChanged(self.plpmtu, size, reason))
            self.plpmtu = size

    def _enter_base(self, now: float) -> None:
        self.phase = Phase.BASE
        self._probe_count = 0
        self._current = None
        self._pending = None
        self._queue(self.base, "base", now)

    def _enter_searching(self, now: float, *, keep_bounds: bool) -> None:
        self.phase = Phase.SEARCHING
        self._retry_at = None
        self._tried_max = False
        self._tried_ethernet = False
        if not keep_bounds:
            self.upper_bound = None
            self._ptb_ceiling = None
        self._plan(now)

    def _enter_error(self, now: float, reason: str) -> None:
        self.phase = Phase.ERROR
        self.confirmed = False
        self._current = None
        self._pending = None
        self._events.append(EnteredError(reason))
        self._retry_at = self._after(now, self.settings.confirm_interval)

    def _black_hole(self, now: float, reason: str) -> None:
        self.black_holes += 1
        self._events.append(BlackHoleDetected(self.plpmtu, reason))
        if self.upper_bound is None or self.upper_bound > self.plpmtu:
            self.upper_bound = self.plpmtu
        self._set_plpmtu(self.base, now, f"black hole: {reason}")
        self.confirmed = False
        self._ptb_ceiling = None
        self._enter_base(now)

    def _size_failed(self, probe: _Probe, now: float) -> None:
        """MAX_PROBES probes of ``probe.size`` were lost."""
        if probe.purpose == "base":
            self._enter_error(
                now, f"{self.settings.max_probes} probes of the base size {probe.size} were lost"
            )
            return
        if probe.purpose == "confirm":
            self._black_hole(now, f"{self.settings.max_probes} probes of the PLPMTU were lost")
            return
        self.silent_loss = True
        if self.upper_bound is None or probe.size < self.upper_bound:
            self.upper_bound = probe.size
        if self._ptb_ceiling is not None and self._ptb_ceiling >= probe.size:
            self._ptb_ceiling = None  # the hint did not hold
        self._plan(now)

    def _next_search_size(self) -> int | None:
        lo, top = self.plpmtu, self._top
        if self._ptb_ceiling is not None:
            if lo < self._ptb_ceiling < top:
                return self._ptb_ceiling
            if self._ptb_ceiling <= lo:
                return None  # the PTB said the path ends here, and this size is confirmed
            self._ptb_ceiling = None
        if lo + self.step >= top:
            return None
        if self.settings.optimistic and not self._tried_max:
            self._tried_max = True
            return self._align(top - 1)
        if not self._tried_ethernet and lo < ETHERNET_MTU < top:
            self._tried_ethernet = True
            return ETHERNET_MTU
        mid = self._align((lo + top) // 2)
        return mid if mid > lo else lo + self.step

    def _plan(self, now: float) -> None:
        """Decide the next probe when none is in flight."""
        if self._current is not None or self._pending is not None:
            return
        if self.phase is Phase.BASE:
            self._queue(self.base, "base", now)
        elif self.phase is Phase.SEARCHING:
            size = self._next_search_size()
            if size is None:
                self.phase = Phase.SEARCH_COMPLETE
                self._events.append(SearchCompleted(self.plpmtu, self.upper_bound))
                self._raise_at = self._after(now, self.settings.raise_interval)
                self._confirm_at = self._after(now, self.settings.confirm_interval)
            else:
                self._queue(size, "search", now)

    def _queue(self, size: int, purpose: str, now: float) -> None:
        if now >= self._last_send + self.spacing():
            self._emit(size, purpose, now)
        else:
            self._pending = (size, purpose)

    def _emit(self, size: int, purpose: str, now: float) -> None:
        probe_id = self._next_id
        self._next_id += 1
        attempt = self._probe_count + 1
        p = _Probe(probe_id, size, purpose, attempt, now, now + self.probe_timer())
        self._current = p
        self._recent[probe_id] = p
        while len(self._recent) > RECENT_PROBES:
            self._recent.popitem(last=False)
        self._last_send = now
        self.probes_sent += 1
        self._orders.append(ProbeOrder(probe_id, size, purpose, attempt))
