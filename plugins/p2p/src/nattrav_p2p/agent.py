"""The connectivity-check agent: ICE in the style of RFC 8445, sans-IO (no sockets, no clock).

Theory of operation
-------------------
One data stream, one component, UDP. The driver feeds the agent our candidates, the peer's
description, datagrams and time; it takes datagrams (each with the *route* to send it on:
the application's port, or a TURN allocation's channel) and events out::

    agent = Agent(controlling=True, ufrag=..., pwd=..., tiebreaker=..., config=cfg)
    agent.add_local(candidate) ...; agent.start(now)        # answers checks from now on
    agent.set_remote(ufrag, pwd, candidates, now)           # pairs formed, checks begin
    loop: send agent.datagrams_to_send(); handle agent.next_event();
          agent.receive(data, source, route, now) / agent.handle_timer(now) at get_timer()

Pairs (§6.1.2): every local route is paired with every peer candidate of the same family.
All candidates whose base is the application's port share one socket, so a pair is
identified by (route, remote address): a server-reflexive or port-mapped local candidate is
replaced by its base (§6.1.2.4) and duplicates are pruned, keeping the highest priority.
Pairs are ordered by the §6.1.2.3 formula and start Frozen except the best of each
foundation (§6.1.2.6); a success unfreezes the pairs sharing its foundation.

Checks (§7.2): one new check every ``ta`` seconds (§14.2), triggered checks first (§6.1.4),
then the best Waiting pair, then the best Frozen one. A check is a STUN Binding request with
USERNAME ``peer:ours``, PRIORITY (as a peer-reflexive candidate), ICE-CONTROLLING or
ICE-CONTROLLED with our tie-breaker, MESSAGE-INTEGRITY keyed with the peer's password and
FINGERPRINT; it retransmits on the ``StunTransaction`` schedule (``check_rto`` doubling, at
most ``check_sends``, failing after ``check_timeout``). Only an authenticated answer from the
address the request went to counts (§7.2.5.2.1: symmetric transport addresses).

Answers (§7.3): a request with our ufrag and a valid MESSAGE-INTEGRITY is answered with its
source in XOR-MAPPED-ADDRESS. An unknown source becomes a peer-reflexive remote candidate
(§7.3.1.3) with the request's PRIORITY; the pair gets a triggered check (§7.3.1.4), sent
alongside any check already in flight: when the peer's packet got through our NAT, its own
NAT has just opened for our answer, and waiting for a backed-off retransmission would only
waste time. That is hole punching: both sides check at once and the first packets that cross
open the two NATs. Requests arriving before the peer's description are answered and replayed
once it is known.

Role conflicts (§7.3.1.1, §7.2.5.1): both sides claiming the same role are resolved by the
larger tie-breaker; the loser switches, a 487 answer makes the sender switch, and the pair is
checked again.

Nomination (§8.1, regular nomination): the controlling agent waits for the first valid pair
that is not relayed, then up to ``nomination_delay`` for a better one still being checked,
and repeats a check with USE-CANDIDATE on the best; its success selects the pair on both
sides. A relayed pair is the fallback: it is nominated only when no better pair worked
within ``relay_bound`` seconds of the checks starting (or every better pair failed), and a
better pair that becomes valid later replaces it (renomination; the controlled agent follows
the latest USE-CANDIDATE it got an answer for).

Consent and path change (RFC 7675): the selected pair gets a check every
``consent_interval`` (+-20 %), the other valid pairs every ``backup_interval`` (keepalives
that hold their NAT bindings open). When the selected pair has had no answer for
``consent_timeout`` (mapping expired, relay lost) the agent reports ``ConsentLost`` and moves
to the best other pair still answering (the controlling side nominates it), or checks every
pair again and nominates what works; ``Failed`` only when nothing works for
``connect_timeout``.

Re-checks (path change back): a pair that failed is not given up for good. While the
selected pair is relayed, every failed pair that is not relayed is a *re-check target*; while
a direct or punched pair is selected, the targets are the failed pairs of higher priority that
worked before (lost consent or keepalives). Each target has its own schedule: an ordinary
authenticated check ``recheck_interval`` after it became a target, then, after each re-check
that failed, a wait of twice the previous one, up to ``recheck_max_interval``; a check on it
for another reason (the peer's check triggered one) counts as its re-check, and a pair that
is no target any more starts afresh next time. A re-check that gets an answer makes the
pair valid again and the controlling agent renominates it as for any upgrade (a better pair
than the relay, or a better pair that came back), so both sides move back with a
``PathChanged``. The controlled agent re-checks on its own schedule too: on address-and-port
dependent NATs a path comes back when both ends send, and the peer's check arriving on a
failed pair gets a triggered check back (§7.3.1.4) and is followed by the nomination. A
nomination of a pair whose last answer is older than ``consent_timeout`` (a backup whose
keepalives are still failing) is followed only once a check on it is answered: selecting it
at once would lose consent on the spot. A failed re-check is quiet (no ``PairFailed``: the
pair was failed already), counted in ``stats``.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Iterable

import attrs
from nattrav.addresses import is_public
from nattrav.errors import LocalProtocolError, ParseError
from nattrav.models import CandidateKind, Transport, TransportAddress
from nattrav_stun.auth import IntegrityCheck
from nattrav_stun.codec import (
    BINDING,
    ERROR,
    ERROR_CODE,
    ICE_CONTROLLED,
    ICE_CONTROLLING,
    INDICATION,
    PRIORITY,
    REQUEST,
    SUCCESS,
    USE_CANDIDATE,
    USERNAME,
    XOR_MAPPED_ADDRESS,
    ErrorCode,
    IntegrityKey,
    Message,
    decode,
    encode,
    is_stun,
    verify_integrity,
)
from nattrav_stun.events import ErrorResponse, SuccessResponse
from nattrav_stun.transaction import StunTransaction

from nattrav_p2p.candidates import (
    MUX_ROUTE,
    IceCandidate,
    candidate_priority,
    foundation_of,
    pair_priority,
    path_kind,
)
from nattrav_p2p.config import AgentConfig
from nattrav_p2p.events import (
    AgentEvent,
    ConsentLost,
    Failed,
    PairFailed,
    PairSucceeded,
    Path,
    PathChanged,
    RoleChanged,
    Selected,
)

__all__ = ["Agent", "AgentStats", "Pair", "PairState", "Transmit"]


def _dominant_kind(kinds: list[CandidateKind]) -> CandidateKind:
    """The kind that explains an address found under several kinds: a gateway mapping and
    a server-reflexive address that coincide (port preserved) mean the mapping is what lets
    unsolicited traffic in, so it is reported as mapped."""
    if CandidateKind.PORT_MAPPED in kinds and CandidateKind.HOST not in kinds:
        return CandidateKind.PORT_MAPPED
    return max(kinds, key=lambda k: -k.preference)


def _merge_same_address(candidates: Iterable[IceCandidate]) -> list[IceCandidate]:
    """One candidate per address, highest priority first, with the dominant kind."""
    groups: dict[TransportAddress, list[IceCandidate]] = {}
    for cand in candidates:
        groups.setdefault(cand.address, []).append(cand)
    out = []
    for group in groups.values():
        best = max(group, key=lambda c: c.priority)
        kind = _dominant_kind([c.kind for c in group])
        out.append(best if kind is best.kind else attrs.evolve(best, kind=kind))
    return sorted(out, key=lambda c: -c.priority)


class PairState(enum.Enum):
    """§6.1.2.6 pair states."""

    FROZEN = "frozen"
    WAITING = "waiting"
    IN_PROGRESS = "in-progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


_PENDING_STATES = (PairState.FROZEN, PairState.WAITING, PairState.IN_PROGRESS)


@attrs.frozen
class Transmit:
    """A datagram to send to ``destination`` over ``route`` (``"mux"`` or a relay route)."""

    data: bytes
    destination: TransportAddress
    route: str


@attrs.define(eq=False)
class _Check:
    txn: StunTransaction
    purpose: str  # "check", "nominate", "consent", "keepalive"
    controlling: bool  # the role the request claimed (for 487 handling)


@attrs.define(eq=False)
class Pair:
    """A candidate pair and its check state."""

    local: IceCandidate
    remote: IceCandidate
    priority: int
    state: PairState = PairState.FROZEN
    nominated: bool = False
    nominate_on_success: bool = False
    want_nominate: bool = False
    seen_as: TransportAddress | None = None
    last_answer: float | None = None
    next_keepalive: float | None = None
    rtt: float | None = None
    checks_sent: int = 0
    checks: dict[bytes, _Check] = attrs.field(factory=dict)
    #: A failed pair being checked again after the selection (a re-check round, or the
    #: peer's check arrived on it); ``recovered``: such a check got an answer.
    rechecking: bool = False
    recovered: bool = False
    #: The re-check schedule of a failed pair (see the module docstring): when the next
    #: re-check starts, and the wait after the next one that fails (doubling).
    recheck_at: float | None = None
    recheck_delay: float = 0.0

    @property
    def route(self) -> str:
        return self.local.route

    @property
    def key(self) -> tuple[str, TransportAddress]:
        return (self.local.route, self.remote.address)

    @property
    def foundation(self) -> str:
        return f"{self.local.foundation}:{self.remote.foundation}"

    @property
    def relayed(self) -> bool:
        return self.local.kind is CandidateKind.RELAYED or self.remote.kind is CandidateKind.RELAYED

    def describe(self) -> str:
        return f"{self.local.describe()} -> {self.remote.describe()} [{self.state.value}]"


@attrs.define
class AgentStats:
    """Counters for reports and tests."""

    checks_sent: int = 0
    retransmissions: int = 0
    requests_received: int = 0
    responses_sent: int = 0
    role_conflicts: int = 0
    discarded: int = 0
    pairs: int = 0
    pairs_succeeded: int = 0
    pairs_failed: int = 0
    path_changes: int = 0
    rechecks_sent: int = 0
    rechecks_failed: int = 0
    rechecks_succeeded: int = 0


class Agent:
    """One side's connectivity checks (see the module docstring). Not thread-safe."""

    def __init__(
        self,
        *,
        controlling: bool,
        ufrag: str,
        pwd: str,
        tiebreaker: int,
        config: AgentConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.controlling = controlling
        self.ufrag = ufrag
        self.pwd = pwd
        self.tiebreaker = tiebreaker
        self.config = config or AgentConfig()
        self._rng = rng or random.Random()
        self._local_key = IntegrityKey(pwd.encode())
        self.remote_ufrag: str | None = None
        self._remote_key: IntegrityKey | None = None
        self.local_candidates: list[IceCandidate] = []
        self.remote_candidates: list[IceCandidate] = []
        self.pairs: dict[tuple[str, TransportAddress], Pair] = {}
        self._triggered: deque[Pair] = deque()
        self._pending: dict[bytes, Pair] = {}
        self._outbox: list[Transmit] = []
        self._events: deque[AgentEvent] = deque()
        self._early: list[tuple[TransportAddress, str, int, bool]] = []
        self.stats = AgentStats()
        self.started = False
        self.checks_started_at: float | None = None
        self._last_check_at = -float("inf")
        self._first_valid_at: float | None = None
        self._last_progress = 0.0
        self._nominating: Pair | None = None
        self.selected: Pair | None = None
        self.path: Path | None = None
        self._path_how = ""
        self._need_path = False
        self._search_since: float | None = None
        self._next_consent: float | None = None
        self.done = False
        self._now = 0.0

    # ------------------------------------------------------------------ setup

    def add_local(self, candidate: IceCandidate) -> None:
        """Add one of our candidates (before ``set_remote``; later ones are paired too)."""
        if any(
            c.address == candidate.address and c.route == candidate.route
            for c in self.local_candidates
        ):
            return
        self.local_candidates.append(candidate)
        if self.remote_ufrag is not None:
            for remote in self.remote_candidates:
                self._add_pair(candidate, remote)

    def start(self, now: float) -> None:
        """Begin answering checks (the peer may check before its description arrives)."""
        if self.started:
            raise LocalProtocolError("agent already started")
        self.started = True
        self._now = now
        self._last_progress = now

    def set_remote(
        self, ufrag: str, pwd: str, candidates: Iterable[IceCandidate], now: float
    ) -> None:
        """The peer's credentials and candidates: form pairs and start checking."""
        if not self.started:
            raise LocalProtocolError("start() the agent before set_remote()")
        if self.remote_ufrag is not None:
            raise LocalProtocolError("remote description already set (no ICE restart here)")
        self._now = now
        self.remote_ufrag = ufrag
        self._remote_key = IntegrityKey(pwd.encode())
        self.checks_started_at = now
        self._last_progress = now
        for cand in _merge_same_address(candidates):
            self._add_remote(cand)
        self._initial_states()
        early, self._early = self._early, []
        for source, route, priority, use in early:
            self._learn(source, route, priority, use, now)
        self._pace(now)

    # ------------------------------------------------------------------ pairs

    def _local_for(self, route: str, family: int) -> IceCandidate | None:
        best: IceCandidate | None = None
        for cand in self.local_candidates:
            if cand.route != route or cand.family != family:
                continue
            # A reflexive or mapped candidate is replaced by its base (§6.1.2.4): on the
            # shared port the host candidate of that family stands for all of them.
            if cand.kind in (CandidateKind.SERVER_REFLEXIVE, CandidateKind.PORT_MAPPED):
                continue
            if best is None or cand.priority > best.priority:
                best = cand
        if best is None:  # no host candidate of the family: use what there is
            for cand in self.local_candidates:
                if (
                    cand.route == route
                    and cand.family == family
                    and (best is None or cand.priority > best.priority)
                ):
                    best = cand
        return best

    def _routes(self) -> list[str]:
        seen: list[str] = []
        for cand in self.local_candidates:
            if cand.route not in seen:
                seen.append(cand.route)
        return seen

    def _add_remote(self, cand: IceCandidate) -> None:
        if any(r.address == cand.address for r in self.remote_candidates):
            return
        self.remote_candidates.append(cand)
        for route in self._routes():
            local = self._local_for(route, cand.family)
            if local is not None:
                self._add_pair(local, cand)

    def _pair_priority(self, local: IceCandidate, remote: IceCandidate) -> int:
        if self.controlling:
            return pair_priority(local.priority, remote.priority)
        return pair_priority(remote.priority, local.priority)

    def _add_pair(
        self, local: IceCandidate, remote: IceCandidate, *, force: bool = False
    ) -> Pair | None:
        key = (local.route, remote.address)
        existing = self.pairs.get(key)
        if existing is not None:
            return existing
        if local.route != MUX_ROUTE and not is_public(remote.address.host):
            # A relay sits on the internet: a private peer address means nothing there, and
            # a TURN server refuses permissions for it (coturn answers 403).
            return None
        if local.kind in (CandidateKind.SERVER_REFLEXIVE, CandidateKind.PORT_MAPPED):
            base = self._local_for(local.route, local.family)
            local = base or local
        pair = Pair(local, remote, self._pair_priority(local, remote))
        if len(self.pairs) >= self.config.max_pairs and not force:
            worst = min(self.pairs.values(), key=lambda p: p.priority)
            if worst.priority >= pair.priority or worst.state not in (
                PairState.FROZEN,
                PairState.WAITING,
            ):
                return pair  # over the limit (§6.1.2.5): not checked
            del self.pairs[worst.key]
        self.pairs[key] = pair
        self.stats.pairs = len(self.pairs)
        if (
            self.checks_started_at is not None
            and pair.state is PairState.FROZEN
            and not any(
                p.foundation == pair.foundation and p.state in _PENDING_STATES[1:]
                for p in self.pairs.values()
                if p is not pair
            )
        ):
            pair.state = PairState.WAITING
        return pair

    def _initial_states(self) -> None:
        seen: set[str] = set()
        for pair in self.ordered_pairs():
            if pair.state is PairState.FROZEN and pair.foundation not in seen:
                pair.state = PairState.WAITING
            seen.add(pair.foundation)

    def ordered_pairs(self) -> list[Pair]:
        """Pairs, highest priority first."""
        return sorted(self.pairs.values(), key=lambda p: -p.priority)

    def _recompute_priorities(self) -> None:
        for pair in self.pairs.values():
            pair.priority = self._pair_priority(pair.local, pair.remote)

    # ------------------------------------------------------------------ I/O

    def datagrams_to_send(self) -> list[Transmit]:
        """Everything due now (checks, retransmissions, answers). Drains the queue."""
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> AgentEvent | None:
        """The next event, or ``None``."""
        return self._events.popleft() if self._events else None

    def pair_for(self, source: TransportAddress, route: str) -> Pair | None:
        """The pair a datagram from ``source`` on ``route`` belongs to (``None``: unknown)."""
        return self.pairs.get((route, source))

    def accepts_data_from(self, source: TransportAddress, route: str) -> bool:
        """True when application data from ``source`` on ``route`` is from the peer: the
        selected pair, or another pair that answered a check (a path change in flight)."""
        pair = self.pairs.get((route, source))
        return pair is not None and (pair is self.selected or pair.state is PairState.SUCCEEDED)

    def claims(self, data: bytes) -> bool:
        """Cheap demultiplexing test for a shared port: a Binding request for our ufrag, or an
        answer to one of our checks. Says nothing about validity (``receive`` decides)."""
        if not is_stun(data):
            return False
        mtype = (data[0] << 8) | data[1]
        if mtype & 0x3EEF != BINDING:
            return False
        if mtype & 0x0110 == 0x0000:  # request
            try:
                msg = decode(data)
            except ParseError:
                return False
            username = msg.get(USERNAME)
            return isinstance(username, str) and username.startswith(self.ufrag + ":")
        if mtype & 0x0110 == 0x0010:  # indication: a keepalive from the peer, if anyone's
            return False
        return data[8:20] in self._pending

    def receive(self, data: bytes, source: TransportAddress, route: str, now: float) -> bool:
        """Process a datagram; ``True`` when it was a check or an answer for this agent."""
        if self.done or not is_stun(data):
            return False
        self._now = now
        try:
            msg = decode(data)
        except ParseError:
            self.stats.discarded += 1
            return False
        if msg.method != BINDING:
            return False
        if msg.cls == REQUEST:
            self._on_request(msg, source, route, now)
        elif msg.cls == INDICATION:
            pass  # a keepalive (§11): nothing to do
        else:
            pair = self._pending.get(msg.transaction_id)
            if pair is None:
                return False  # not ours (another protocol's, or a late duplicate)
            check = pair.checks.get(msg.transaction_id)
            if check is None:
                return True
            check.txn.receive_message(msg, (source.host, source.port), now)
            self._collect(pair, msg.transaction_id, check, now)
        self._evaluate(now)
        self._recheck(now)
        self._pace(now)
        return True

    # ------------------------------------------------------------------ answering checks

    def _on_request(self, msg: Message, source: TransportAddress, route: str, now: float) -> None:
        username = msg.get(USERNAME)
        if (
            not msg.fingerprint
            or not isinstance(username, str)
            or not username.startswith(self.ufrag + ":")
            or not msg.has_integrity
            or not verify_integrity(msg, self._local_key, sha256=False)
        ):
            # Unauthenticated checks get no answer: answering would tell a scanner that an
            # agent listens here, and a check we cannot verify proves nothing.
            self.stats.discarded += 1
            return
        if self.remote_ufrag is not None and username != f"{self.ufrag}:{self.remote_ufrag}":
            self.stats.discarded += 1
            return
        self.stats.requests_received += 1
        self._last_progress = now
        # §7.3.1.1 role conflicts.
        if self.controlling and ICE_CONTROLLING in msg:
            self.stats.role_conflicts += 1
            if self.tiebreaker >= int(msg.get(ICE_CONTROLLING)):
                self._answer_error(msg, source, route, 487, "Role Conflict")
                return
            self._switch_role(False, "peer won the tie-breaker (both controlling)")
        elif not self.controlling and ICE_CONTROLLED in msg:
            self.stats.role_conflicts += 1
            if self.tiebreaker >= int(msg.get(ICE_CONTROLLED)):
                self._switch_role(True, "we won the tie-breaker (both controlled)")
            else:
                self._answer_error(msg, source, route, 487, "Role Conflict")
                return
        answer = Message(
            BINDING, SUCCESS, msg.transaction_id, {XOR_MAPPED_ADDRESS: (source.host, source.port)}
        )
        self._outbox.append(
            Transmit(encode(answer, integrity=self._local_key, fingerprint=True), source, route)
        )
        self.stats.responses_sent += 1
        priority = msg.get(PRIORITY)
        prio = int(priority) if isinstance(priority, int) and priority > 0 else 0
        use = USE_CANDIDATE in msg and not self.controlling
        if self.remote_ufrag is None:
            if len(self._early) < 64:
                self._early.append((source, route, prio, use))
            return
        self._learn(source, route, prio, use, now)

    def _answer_error(
        self, msg: Message, source: TransportAddress, route: str, code: int, reason: str
    ) -> None:
        answer = Message(BINDING, ERROR, msg.transaction_id, {ERROR_CODE: ErrorCode(code, reason)})
        self._outbox.append(
            Transmit(encode(answer, integrity=self._local_key, fingerprint=True), source, route)
        )
        self.stats.responses_sent += 1

    def _learn(
        self, source: TransportAddress, route: str, priority: int, use: bool, now: float
    ) -> None:
        remote = next((r for r in self.remote_candidates if r.address == source), None)
        if remote is None:
            # §7.3.1.3: a peer-reflexive candidate, with the priority the peer sent.
            remote = IceCandidate(
                foundation=foundation_of(
                    CandidateKind.PEER_REFLEXIVE, source.host, "", Transport.UDP
                ),
                priority=priority or candidate_priority(CandidateKind.PEER_REFLEXIVE, 0),
                kind=CandidateKind.PEER_REFLEXIVE,
                address=source,
                route="",
            )
            self.remote_candidates.append(remote)
        pair = self.pairs.get((route, source))
        if pair is None:
            local = self._local_for(route, source.family)
            if local is None:
                return
            pair = self._add_pair(local, remote, force=True)
            if pair is None:
                return
        if use:
            # The latest USE-CANDIDATE wins: an older one still waiting for its check's
            # answer must not move us later.
            for other in self.pairs.values():
                other.nominate_on_success = False
            pair.nominate_on_success = True
        if pair.state is PairState.SUCCEEDED:
            if not use:
                return
            if self._fresh(pair, now):
                self._select(pair, now, "nominated by the peer")
                return
            # A backup whose answers stopped more than ``consent_timeout`` ago (its failing
            # keepalives have not ended yet): selecting it would lose consent at once. Check
            # it first and follow the nomination when it answers.
            self._trigger(pair, front=True)
            return
        if pair.state is PairState.FAILED and self.selected is not None and not self._need_path:
            # The peer re-checks a pair that failed here: check it again with it (that is
            # what opens an address-and-port dependent NAT again), quietly if it fails.
            pair.rechecking = True
        # §7.3.1.4: a triggered check, even when one is in flight (see the docstring).
        if pair.state is not PairState.IN_PROGRESS:
            pair.state = PairState.WAITING
        self._trigger(pair)

    def _switch_role(self, controlling: bool, reason: str) -> None:
        self.controlling = controlling
        if not controlling:
            self._nominating = None
            for pair in self.pairs.values():
                pair.want_nominate = False
        self._recompute_priorities()
        self._events.append(RoleChanged(controlling, reason))

    # ------------------------------------------------------------------ sending checks

    def _trigger(self, pair: Pair, *, front: bool = False) -> None:
        if pair in self._triggered:
            if front:
                self._triggered.remove(pair)
                self._triggered.appendleft(pair)
            return
        if front:
            self._triggered.appendleft(pair)
        else:
            self._triggered.append(pair)

    def _has_work(self) -> bool:
        if self.remote_ufrag is None or self.done:
            return False
        if self._triggered:
            return True
        return any(p.state in (PairState.WAITING, PairState.FROZEN) for p in self.pairs.values())

    def _pace(self, now: float) -> None:
        """Start at most one new check if ``ta`` has passed since the last one (§14.2)."""
        if not self._has_work() or now < self._last_check_at + self.config.ta:
            return
        pair = self._next_pair()
        if pair is None:
            return
        purpose = "nominate" if pair.want_nominate else "check"
        pair.want_nominate = False
        self._send_check(pair, purpose, now)

    def _next_pair(self) -> Pair | None:
        while self._triggered:
            pair = self._triggered.popleft()
            if pair.key in self.pairs:
                return pair
        ordered = self.ordered_pairs()
        for pair in ordered:
            if pair.state is PairState.WAITING:
                return pair
        busy = {p.foundation for p in ordered if p.state in _PENDING_STATES[1:]}
        frozen = [p for p in ordered if p.state is PairState.FROZEN]
        for pair in frozen:
            if pair.foundation not in busy:
                return pair
        return frozen[0] if frozen else None

    def _send_check(self, pair: Pair, purpose: str, now: float) -> None:
        assert self._remote_key is not None and self.remote_ufrag is not None
        cfg = self.config
        attributes: dict[int, object] = {
            USERNAME: f"{self.remote_ufrag}:{self.ufrag}",
            PRIORITY: candidate_priority(CandidateKind.PEER_REFLEXIVE, 0)
            | (pair.local.priority & 0xFFFFFF),
        }
        if self.controlling:
            attributes[ICE_CONTROLLING] = self.tiebreaker
        else:
            attributes[ICE_CONTROLLED] = self.tiebreaker
        if purpose == "nominate" and self.controlling:
            attributes[USE_CANDIDATE] = True
        request = Message(BINDING, REQUEST, None, attributes)
        data = encode(request, integrity=self._remote_key, fingerprint=True)
        timeout = cfg.check_timeout
        txn = StunTransaction(
            data,
            (pair.remote.address.host, pair.remote.address.port),
            rto=cfg.check_rto,
            rc=cfg.check_sends,
            rm=4,
            timeout=timeout,
            check=IntegrityCheck(self._remote_key, sha1=True, sha256=False),
        )
        txn.start(now)
        check = _Check(txn, purpose, self.controlling)
        pair.checks[txn.transaction_id] = check
        self._pending[txn.transaction_id] = pair
        if pair.state is not PairState.SUCCEEDED:
            pair.state = PairState.IN_PROGRESS
        pair.checks_sent += 1
        self.stats.checks_sent += 1
        if purpose in ("check", "nominate"):
            self._last_check_at = now
            self._last_progress = now
            if pair.rechecking:
                self.stats.rechecks_sent += 1
        self._flush(pair, txn)

    def _flush(self, pair: Pair, txn: StunTransaction) -> None:
        for data, _dest in txn.datagrams_to_send():
            if txn.sends > 1:
                self.stats.retransmissions += 1
            self._outbox.append(Transmit(data, pair.remote.address, pair.route))

    # ------------------------------------------------------------------ outcomes

    def _collect(self, pair: Pair, tid: bytes, check: _Check, now: float) -> None:
        event = check.txn.next_event()
        if event is None:
            return
        del pair.checks[tid]
        self._pending.pop(tid, None)
        if pair.key not in self.pairs:
            return
        if isinstance(event, SuccessResponse):
            self._on_success(pair, check, event, now)
        elif isinstance(event, ErrorResponse) and event.code == 487:
            # §7.2.5.1: switch to the role opposite to the one the request claimed.
            if check.controlling == self.controlling:
                self.stats.role_conflicts += 1
                self._switch_role(not check.controlling, "peer answered 487 Role Conflict")
            pair.want_nominate = check.purpose == "nominate" and self.controlling
            self._trigger(pair, front=True)
        else:
            self._on_check_failed(pair, check, event.describe(), now)

    def _on_success(self, pair: Pair, check: _Check, event: SuccessResponse, now: float) -> None:
        first = pair.state is not PairState.SUCCEEDED
        pair.state = PairState.SUCCEEDED
        pair.last_answer = now
        if event.rtt is not None:
            pair.rtt = event.rtt
        mapped = event.mapped
        if mapped is not None:
            pair.seen_as = TransportAddress(mapped.host, mapped.port)
        if pair.next_keepalive is None:
            pair.next_keepalive = now + self.config.backup_interval
        if pair.rechecking:
            # A failed pair answers again: valid (a backup, or an upgrade: ``_evaluate``).
            pair.rechecking = False
            pair.recovered = True
            pair.recheck_at = None
            pair.recheck_delay = 0.0
            pair.next_keepalive = now + self.config.backup_interval
            self.stats.rechecks_succeeded += 1
        elif first:
            self.stats.pairs_succeeded += 1
        if first:
            self._last_progress = now
            self._events.append(
                PairSucceeded(pair.local.address, pair.remote.address, pair.route, now)
            )
            for other in self.pairs.values():
                if other.foundation == pair.foundation and other.state is PairState.FROZEN:
                    other.state = PairState.WAITING
            if not pair.relayed and self._first_valid_at is None:
                self._first_valid_at = now
        if check.purpose == "nominate" and check.controlling and self.controlling:
            if self._nominating is pair:
                self._nominating = None
            self._select(pair, now, self._path_how or "nominated after checks")
        elif not self.controlling and pair.nominate_on_success:
            self._select(pair, now, "nominated by the peer")
        if pair is self.selected and self.path is not None and pair.rtt is not None:
            self.path = attrs.evolve(self.path, rtt=pair.rtt)

    def _on_check_failed(self, pair: Pair, check: _Check, reason: str, now: float) -> None:
        if self._nominating is pair:
            self._nominating = None
        if pair.checks:
            return  # another check on this pair is still in flight
        if pair.state is PairState.SUCCEEDED and check.purpose in ("consent", "keepalive"):
            # Consent is judged by time since the last answer (``consent_timeout``), but a
            # backup pair that stopped answering is no longer a place to move to.
            if (
                pair is not self.selected
                and pair.last_answer is not None
                and now >= pair.last_answer + self.config.consent_timeout
            ):
                pair.state = PairState.FAILED
            return
        if pair.state is PairState.SUCCEEDED:
            return
        pair.state = PairState.FAILED
        if pair.rechecking:
            # Still dead: quiet (it was failed already); ``_recheck`` schedules the next one.
            pair.rechecking = False
            self.stats.rechecks_failed += 1
            return
        self.stats.pairs_failed += 1
        self._events.append(PairFailed(pair.local.address, pair.remote.address, pair.route, reason))

    # ------------------------------------------------------------------ selection

    def _make_path(self, pair: Pair, how: str) -> Path:
        local_kind = pair.local.kind
        if pair.local.kind is not CandidateKind.RELAYED and pair.seen_as is not None:
            seen = [
                c.kind
                for c in self.local_candidates
                if c.address == pair.seen_as and c.route == pair.route
            ]
            local_kind = _dominant_kind(seen) if seen else CandidateKind.PEER_REFLEXIVE
        return Path(
            local=pair.local.address,
            remote=pair.remote.address,
            local_kind=local_kind,
            remote_kind=pair.remote.kind,
            kind=path_kind(local_kind, pair.remote.kind),
            route=pair.route,
            how=how,
            seen_as=pair.seen_as,
            rtt=pair.rtt,
        )

    def _select(self, pair: Pair, now: float, how: str) -> None:
        pair.nominated = True
        pair.nominate_on_success = False
        self._path_how = ""
        if pair is self.selected and not self._need_path:
            return
        path = self._make_path(pair, how)
        old = self.path
        if self.selected is not None and self.selected is not pair:
            self.selected.nominated = False  # ``nominated``: the pair in use, one at a time
        pair.recovered = False
        self.selected = pair
        self.path = path
        self._need_path = False
        self._search_since = None
        self._next_consent = now + self._consent_delay()
        if pair.last_answer is None or now - pair.last_answer > self.config.consent_interval:
            # A backup answered its last keepalive a while ago: renew its consent at once
            # rather than a consent interval from now, which may be too late.
            self._next_consent = now
        if old is None:
            self._events.append(Selected(path, now))
        else:
            self.stats.path_changes += 1
            self._events.append(PathChanged(old, path, how, now))

    def _consent_delay(self) -> float:
        # RFC 7675 §5.1: randomised intervals (+-20 %) so checks do not synchronise.
        return self.config.consent_interval * self._rng.uniform(0.8, 1.2)

    def _nominate(self, pair: Pair, how: str) -> None:
        self._nominating = pair
        self._path_how = how
        pair.want_nominate = True
        self._trigger(pair, front=True)

    def _fresh(self, pair: Pair, now: float) -> bool:
        """The pair answered a check within ``consent_timeout`` (RFC 7675 consent)."""
        return pair.last_answer is not None and now < pair.last_answer + self.config.consent_timeout

    def _valid(self, *, relayed: bool | None = None, fresh_at: float | None = None) -> list[Pair]:
        out = []
        for pair in self.ordered_pairs():
            if pair.state is not PairState.SUCCEEDED:
                continue
            if relayed is not None and pair.relayed != relayed:
                continue
            if fresh_at is not None and (
                pair.last_answer is None
                or fresh_at >= pair.last_answer + self.config.consent_timeout
            ):
                continue
            out.append(pair)
        return out

    def _evaluate(self, now: float) -> None:
        """Nominate, fall back, upgrade, or fail: the decisions that depend on time."""
        if self.done or self.checks_started_at is None:
            return
        cfg = self.config
        searching = self.selected is None or self._need_path
        since = self._search_since if self._search_since is not None else self.checks_started_at
        if self.controlling and self._nominating is None:
            direct = self._valid(relayed=False, fresh_at=now)
            if searching and direct:
                best = direct[0]
                better_pending = any(
                    p.priority > best.priority and p.state in _PENDING_STATES and not p.relayed
                    for p in self.pairs.values()
                )
                first = self._first_valid_at if self._first_valid_at is not None else now
                if not better_pending or now >= first + cfg.nomination_delay:
                    self._nominate(best, self._path_how or "best working pair after checks")
            elif searching:
                relayed = self._valid(relayed=True, fresh_at=now)
                direct_pending = any(
                    not p.relayed and p.state in _PENDING_STATES for p in self.pairs.values()
                )
                if relayed and (now >= since + cfg.relay_bound or not direct_pending):
                    why = (
                        f"relay fallback: no direct or punched pair worked within "
                        f"{cfg.relay_bound:g} s"
                        if direct_pending
                        else "relay fallback: every direct or punched pair failed"
                    )
                    self._nominate(relayed[0], why)
            elif self.selected is not None and self.selected.relayed and direct:
                best = direct[0]
                self._nominate(
                    best,
                    "a better pair than the relay answers again after a re-check"
                    if best.recovered
                    else "a better pair than the relay started working",
                )
            elif self.selected is not None:
                back = [p for p in direct if p.recovered and p.priority > self.selected.priority]
                if back:
                    self._nominate(back[0], "a better pair answers again after a re-check")
        if searching and now >= since + cfg.connect_timeout:
            self._fail(
                f"no candidate pair worked within {cfg.connect_timeout:g} s "
                f"({len(self.pairs)} pairs, {self.stats.pairs_failed} failed)",
                now,
            )
        elif (
            searching
            and self.pairs
            and not self._triggered
            and all(p.state is PairState.FAILED for p in self.pairs.values())
            and not self._pending
            and now >= self._last_progress + cfg.check_timeout
        ):
            self._fail(f"all {len(self.pairs)} candidate pairs failed", now)

    def _fail(self, reason: str, now: float) -> None:
        self.done = True
        for pair in self.pairs.values():
            for check in pair.checks.values():
                check.txn.cancel()
            pair.checks.clear()
        self._pending.clear()
        self._triggered.clear()
        self._events.append(Failed(reason, now))

    # ------------------------------------------------------------------ consent, path change

    def _consent(self, now: float) -> None:
        cfg = self.config
        selected = self.selected
        if selected is None:
            return
        if (
            not self._need_path
            and selected.last_answer is not None
            and now >= selected.last_answer + cfg.consent_timeout
        ):
            self._consent_lost(selected, now)
            return
        if self._next_consent is not None and now >= self._next_consent and not self._need_path:
            self._next_consent = now + self._consent_delay()
            if not selected.checks:
                self._send_check(selected, "consent", now)
        for pair in self.pairs.values():
            if (
                pair is not selected
                and pair.state is PairState.SUCCEEDED
                and pair.next_keepalive is not None
                and now >= pair.next_keepalive
            ):
                pair.next_keepalive = now + cfg.backup_interval
                if not pair.checks:
                    self._send_check(pair, "keepalive", now)

    def _consent_lost(self, pair: Pair, now: float) -> None:
        assert self.path is not None
        self._events.append(ConsentLost(self.path, now))
        pair.state = PairState.FAILED
        pair.nominated = False
        for tid, check in list(pair.checks.items()):
            check.txn.cancel()
            self._pending.pop(tid, None)
        pair.checks.clear()
        self._need_path = True
        self._search_since = now
        why = f"consent lost on {self.path.kind} path to {self.path.remote}"
        fresh = self._valid(fresh_at=now)
        if fresh:
            best = fresh[0]
            if self.controlling:
                self._nominate(best, why)
            else:
                # Keep sending over the best pair still answering; the controlling agent
                # nominates what it finds and we follow.
                self._select(best, now, why + "; moved to the best working pair")
                self._need_path = False
            return
        # Nothing answers: check every pair again (the mapping or allocation may be back).
        self._path_how = why + "; re-checked every pair"
        self._first_valid_at = None
        for other in self.pairs.values():
            other.rechecking = False  # an ordinary search now, with ordinary outcomes
            if other.state is not PairState.IN_PROGRESS:
                other.state = PairState.WAITING

    # ------------------------------------------------------------------ re-checks

    def _is_recheck_target(self, pair: Pair) -> bool:
        """A failed pair worth checking again: not relayed, better than the selected pair,
        and (unless the selected pair is relayed) one that worked before."""
        selected = self.selected
        return (
            selected is not None
            and (pair.state is PairState.FAILED or pair.rechecking)
            and not pair.relayed
            and pair.priority > selected.priority
            and (selected.relayed or pair.last_answer is not None)
        )

    def _recheck(self, now: float) -> None:
        """Keep each re-check target's schedule: first ``recheck_interval`` after it became
        one, then ``recheck_interval`` x 2, x 4... (up to ``recheck_max_interval``) after
        each re-check that failed; a pair that is no target any more starts afresh."""
        cfg = self.config
        active = (
            cfg.recheck_interval > 0
            and self.selected is not None
            and not self._need_path
            and not self.done
        )
        for pair in self.pairs.values():
            if not active or not self._is_recheck_target(pair):
                pair.recheck_at = None
                pair.recheck_delay = 0.0
                continue
            if pair.checks or pair.rechecking:
                # Being checked (ours, or one the peer's check triggered): that is the
                # re-check; the wait starts again when it ends.
                pair.recheck_at = None
                continue
            if pair.recheck_at is None:
                if pair.recheck_delay <= 0:
                    pair.recheck_delay = cfg.recheck_interval
                pair.recheck_at = now + pair.recheck_delay
            elif now >= pair.recheck_at:
                pair.recheck_at = None
                pair.recheck_delay = min(pair.recheck_delay * 2, cfg.recheck_max_interval)
                pair.rechecking = True
                self._trigger(pair)

    # ------------------------------------------------------------------ timers

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must run next (``None``: nothing scheduled)."""
        if self.done:
            return None
        times: list[float] = []
        decisions: list[float] = []  # deadlines of decisions: only those still ahead count
        if self._has_work():
            times.append(max(self._now, self._last_check_at + self.config.ta))
        for pair in self.pairs.values():
            for check in pair.checks.values():
                t = check.txn.get_timer()
                if t is not None:
                    times.append(t)
        cfg = self.config
        if self.checks_started_at is not None:
            since = self._search_since if self._search_since is not None else self.checks_started_at
            if self.selected is None or self._need_path:
                decisions.append(since + cfg.connect_timeout)
                if self._first_valid_at is not None:
                    decisions.append(self._first_valid_at + cfg.nomination_delay)
                decisions.append(since + cfg.relay_bound)
                if self.pairs and all(p.state is PairState.FAILED for p in self.pairs.values()):
                    decisions.append(self._last_progress + cfg.check_timeout)
            selected = self.selected
            if selected is not None:
                if self._next_consent is not None and not self._need_path:
                    times.append(self._next_consent)
                if selected.last_answer is not None and not self._need_path:
                    times.append(selected.last_answer + cfg.consent_timeout)
                for pair in self.pairs.values():
                    if (
                        pair is not selected
                        and pair.state is PairState.SUCCEEDED
                        and pair.next_keepalive is not None
                    ):
                        times.append(pair.next_keepalive)
                    if pair.recheck_at is not None:
                        times.append(pair.recheck_at)
        times.extend(t for t in decisions if t > self._now)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        """Retransmit, time out, pace, nominate, check consent: whatever is due at ``now``."""
        if self.done:
            return
        self._now = now
        for pair in list(self.pairs.values()):
            for tid, check in list(pair.checks.items()):
                t = check.txn.get_timer()
                if t is not None and now >= t:
                    check.txn.handle_timer(now)
                    self._flush(pair, check.txn)
                    self._collect(pair, tid, check, now)
        self._consent(now)
        self._evaluate(now)
        self._recheck(now)
        self._pace(now)
