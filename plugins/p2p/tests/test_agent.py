"""The sans-IO agent on a fake clock: two agents over a simulated internet (p2p_testkit).

The simulated NATs stand in for behaviours the lab also has (EIM/APDF, symmetric, open) plus
a few it cannot produce on demand (a path that dies at a chosen instant, endpoint-independent
filtering); the same scenarios run for real in ``test_lab.py``.
"""

from __future__ import annotations

import itertools

import attrs
import pytest
from nattrav.errors import LocalProtocolError
from nattrav.models import CandidateKind
from nattrav_p2p.agent import Agent, PairState
from nattrav_p2p.config import AgentConfig
from nattrav_p2p.events import (
    ConsentLost,
    Failed,
    PairFailed,
    PathChanged,
    RoleChanged,
    Selected,
)
from nattrav_stun import codec as c
from p2p_testkit import TA, Peer, Site, World

RELAY_A = TA("203.0.113.1", 50001)
RELAY_B = TA("203.0.113.1", 50002)


def sites(na: str, nb: str, *, relays: bool = True, filtering_a: str = "apdf") -> tuple[Site, Site]:
    a = Site(
        "a",
        TA("192.0.2.10" if na == "none" else "192.168.1.10", 5000),
        nat=na,  # type: ignore[arg-type]
        filtering=filtering_a,  # type: ignore[arg-type]
        public_ip="198.51.100.2",
        relay=RELAY_A if relays else None,
    )
    b = Site(
        "b",
        TA("192.0.2.74" if nb == "none" else "192.168.2.10", 6000),
        nat=nb,  # type: ignore[arg-type]
        public_ip="198.51.100.66",
        relay=RELAY_B if relays else None,
    )
    return a, b


def connected(w: World) -> bool:
    return w.a.agent.path is not None and w.b.agent.path is not None


def run_to_selection(w: World, limit: float = 20.0) -> None:
    w.run_while(lambda: not connected(w), limit)
    assert connected(w), (w.a.events, w.b.events)


def mirrored(w: World) -> None:
    """Both sides use the same pair, seen from each end."""
    pa, pb = w.a.agent.path, w.b.agent.path
    assert pa is not None and pb is not None
    assert pa.kind == pb.kind
    # What each side sends to is what the other side's packets come from (or its relay).
    assert pa.remote in (pb.seen_as, pb.local), (pa, pb)
    assert pb.remote in (pa.seen_as, pa.local), (pa, pb)


@pytest.mark.parametrize(
    ("na", "nb", "kind"),
    [
        ("none", "none", "direct"),
        ("none", "eim", "direct"),
        ("eim", "eim", "punched"),
        ("eim", "symmetric", "relay"),
        ("symmetric", "symmetric", "relay"),
    ],
)
def test_path_kind_per_nat_pair(na: str, nb: str, kind: str) -> None:
    w = World(*sites(na, nb))
    w.exchange()
    run_to_selection(w)
    assert w.a.agent.path is not None
    assert w.a.agent.path.kind == kind
    mirrored(w)
    # The controlled side selects only what the controlling side nominated.
    assert w.b.agent.path is not None and w.b.agent.path.how == "nominated by the peer"


def test_punch_through_symmetric_when_the_other_nat_filters_endpoint_independently() -> None:
    """eim (endpoint-independent filtering) + symmetric: the symmetric side's checks arrive
    from a new port, become a peer-reflexive candidate and the triggered check punches."""
    w = World(*sites("eim", "symmetric", filtering_a="eif"))
    w.exchange()
    run_to_selection(w)
    pa = w.a.agent.path
    assert pa is not None and pa.kind == "punched"
    assert pa.remote_kind is CandidateKind.PEER_REFLEXIVE
    assert w.now < 1.0  # well before the relay bound
    mirrored(w)


def test_relay_is_nominated_only_after_the_bound() -> None:
    cfg = AgentConfig(relay_bound=1.5)
    w = World(*sites("symmetric", "symmetric"), config=cfg)
    w.exchange()
    run_to_selection(w)
    (t, sel), *_ = w.events(w.a, Selected)
    assert isinstance(sel, Selected) and sel.path.kind == "relay"
    assert 1.5 <= t < 1.5 + 0.3
    assert "within 1.5 s" in sel.path.how


def test_relay_used_at_once_when_every_better_pair_failed() -> None:
    cfg = AgentConfig(relay_bound=30.0, check_timeout=1.0, connect_timeout=60.0)
    w = World(*sites("symmetric", "symmetric"), config=cfg)
    w.exchange()
    run_to_selection(w, limit=40)
    (t, sel), *_ = w.events(w.a, Selected)
    assert isinstance(sel, Selected) and sel.path.kind == "relay"
    assert "every direct or punched pair failed" in sel.path.how
    assert t < 5.0


def test_direct_pair_beats_relay_even_when_relay_answers_first() -> None:
    # The relay pair answers at once; the punched one needs retransmissions (the first
    # second of b's outbound traffic to a's public address is lost).
    w = World(*sites("eim", "eim"))
    w.drop = lambda name, src, dst: w.now < 0.6 and name == "b" and dst.host == "198.51.100.2"
    w.exchange()
    run_to_selection(w)
    assert w.a.agent.path is not None and w.a.agent.path.kind == "punched"


def test_upgrade_from_relay_to_a_pair_that_starts_working_later() -> None:
    cfg = AgentConfig(relay_bound=0.5, check_timeout=8.0)
    w = World(*sites("eim", "eim"), config=cfg)
    # Direct traffic between the sites is lost for the first 1.5 s.
    w.drop = lambda name, src, dst: (
        w.now < 1.5 and src.host != "203.0.113.1" and (dst.host.startswith("198.51.100"))
    )
    w.exchange()
    run_to_selection(w)
    assert w.a.agent.path is not None and w.a.agent.path.kind == "relay"
    w.run_while(lambda: not (w.events(w.a, PathChanged) and w.events(w.b, PathChanged)), 10)
    (_, change), *_ = w.events(w.b, PathChanged)
    assert isinstance(change, PathChanged)
    assert change.old.kind == "relay" and change.new.kind == "punched"
    assert w.a.agent.path is not None and w.a.agent.path.kind == "punched"


def test_checks_are_paced_by_ta() -> None:
    cfg = AgentConfig(ta=0.05)
    w = World(*sites("symmetric", "symmetric"), config=cfg)
    w.exchange()
    w.run_until(1.0)
    # New transactions (not retransmissions, not answers) start at least ta apart.
    firsts: dict[bytes, float] = {}
    for t, tx in w.a.sent:
        msg = c.decode(tx.data)
        if msg.cls == c.REQUEST:
            firsts.setdefault(msg.transaction_id, t)
    starts = sorted(firsts.values())
    assert len(starts) >= 5
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.05 - 1e-9


def test_retransmits_on_schedule_then_fails_the_pair() -> None:
    cfg = AgentConfig(check_rto=0.1, check_sends=4, check_timeout=2.0, connect_timeout=5.0)
    w = World(*sites("eim", "eim", relays=False), config=cfg)
    w.drop = lambda *_: True  # the network eats everything
    w.exchange()
    w.run_while(lambda: not w.events(w.a, Failed), 10)
    by_tid: dict[bytes, list[float]] = {}
    for t, tx in w.a.sent:
        msg = c.decode(tx.data)
        by_tid.setdefault(msg.transaction_id, []).append(t)
    first = min(by_tid.values(), key=lambda ts: ts[0])
    t0 = first[0]
    assert [round(t - t0, 6) for t in first] == [0.0, 0.1, 0.3, 0.7]
    fails = w.events(w.a, PairFailed)
    assert fails and all("no response after 4 sends" in e.reason for _, e in fails)
    (t_fail, failed), *_ = w.events(w.a, Failed)
    assert isinstance(failed, Failed)
    assert t_fail <= 5.0 + 1e-9
    assert w.a.agent.get_timer() is None


@pytest.mark.parametrize("both", ["controlling", "controlled"])
def test_role_conflict_is_resolved_by_tiebreaker(both: str) -> None:
    ctl = both == "controlling"
    w = World(*sites("eim", "eim"), a_controlling=ctl, b_controlling=ctl, tiebreakers=(10, 99))
    w.exchange()
    run_to_selection(w)
    # b has the larger tie-breaker: it ends controlling, a controlled.
    assert w.b.agent.controlling and not w.a.agent.controlling
    changes = w.events(w.a, RoleChanged) + w.events(w.b, RoleChanged)
    assert changes
    assert w.a.agent.stats.role_conflicts + w.b.agent.stats.role_conflicts >= 1
    mirrored(w)
    assert w.a.agent.path is not None and w.a.agent.path.how == "nominated by the peer"


def test_487_makes_the_sender_switch() -> None:
    # Both controlling; a's tie-breaker is larger, so b's checks get 487 answers from a.
    w = World(*sites("none", "none"), a_controlling=True, b_controlling=True, tiebreakers=(99, 1))
    w.exchange(b_first=0.0, a_first=0.2)  # b checks first; a answers with 487
    run_to_selection(w)
    errors = [c.decode(tx.data) for _, tx in w.a.sent if c.decode(tx.data).cls == c.ERROR]
    assert errors and errors[0].error_code is not None and errors[0].error_code.code == 487
    assert w.a.agent.controlling and not w.b.agent.controlling
    assert any("487" in e.reason for _, e in w.events(w.b, RoleChanged))


def test_early_checks_are_answered_and_replayed() -> None:
    """The offerer gets the answerer's checks before the answer itself arrives."""
    w = World(*sites("none", "eim"))
    # b has a's offer at t=0 and checks at once; a gets b's answer only at t=0.5.
    w.exchange(b_first=0.0, a_first=0.5)
    run_to_selection(w)
    answered = [tx for t, tx in w.a.sent if t < 0.5 and c.decode(tx.data).cls == c.SUCCESS]
    assert answered  # answered before a knew b's credentials
    assert w.a.agent.path is not None and w.a.agent.path.kind == "direct"
    # The replayed early check made b's public address a known pair at once.
    assert w.now < 0.5 + 0.5


def test_unauthenticated_checks_get_no_answer() -> None:
    agent = Agent(controlling=False, ufrag="UUUU", pwd="p" * 22, tiebreaker=1)
    agent.start(0.0)
    for key in (b"wrong-password-xxxxxxx", b"p" * 22):
        msg = c.Message(c.BINDING, c.REQUEST, None, {c.USERNAME: "XXXX:peer", c.PRIORITY: 1})
        data = c.encode(msg, integrity=c.IntegrityKey(key), fingerprint=True)
        assert agent.receive(data, TA("198.51.100.9", 1), "mux", 0.1)
    assert agent.datagrams_to_send() == []
    assert agent.stats.discarded == 2
    # The right username and password get an answer naming the source.
    msg = c.Message(c.BINDING, c.REQUEST, None, {c.USERNAME: "UUUU:peer", c.PRIORITY: 1})
    data = c.encode(msg, integrity=c.IntegrityKey(b"p" * 22), fingerprint=True)
    agent.receive(data, TA("198.51.100.9", 1), "mux", 0.2)
    (tx,) = agent.datagrams_to_send()
    answer = c.decode(tx.data)
    assert answer.cls == c.SUCCESS
    assert answer.xor_mapped_address == c.Address("198.51.100.9", 1)
    assert c.verify_integrity(answer, c.IntegrityKey(b"p" * 22), sha256=False)


def test_non_stun_and_foreign_responses_are_not_claimed() -> None:
    agent = Agent(controlling=True, ufrag="UUUU", pwd="p" * 22, tiebreaker=1)
    agent.start(0.0)
    assert not agent.receive(b"\xfa hello", TA("198.51.100.9", 1), "mux", 0.1)
    other = c.Message(c.BINDING, c.SUCCESS)
    assert not agent.receive(c.encode(other), TA("198.51.100.9", 1), "mux", 0.1)


def test_pair_failing_midway_moves_to_the_backup_pair() -> None:
    cfg = AgentConfig(
        consent_interval=0.5, consent_timeout=2.0, backup_interval=0.5, connect_timeout=5.0
    )
    w = World(*sites("eim", "eim"), config=cfg)
    w.exchange()
    run_to_selection(w)
    assert w.a.agent.path is not None and w.a.agent.path.kind == "punched"
    w.run_until(3.0)  # keepalives flow on every valid pair
    cut = w.now
    # The NAT mapping behind the punched path is gone: direct traffic between sites dies.
    w.drop = lambda name, src, dst: src.host != "203.0.113.1" and dst.host.startswith("198.51.100")
    w.run_while(lambda: not (w.events(w.a, PathChanged) and w.events(w.b, PathChanged)), 20)
    lost = w.events(w.a, ConsentLost)
    assert lost and lost[0][0] - cut <= cfg.consent_timeout + cfg.consent_interval * 1.2 + 0.1
    for peer in (w.a, w.b):
        (_, change), *_ = w.events(peer, PathChanged)
        assert isinstance(change, PathChanged)
        assert change.old.kind == "punched" and change.new.kind == "relay"
        assert "consent lost" in change.reason
    assert not w.events(w.a, Failed) and not w.events(w.b, Failed)
    mirrored(w)


def test_path_change_rechecks_when_no_backup_answers() -> None:
    cfg = AgentConfig(
        consent_interval=0.5, consent_timeout=2.0, backup_interval=0.5, connect_timeout=8.0
    )
    w = World(*sites("eim", "eim", relays=False), config=cfg)
    w.exchange()
    run_to_selection(w)
    cut = w.now
    w.drop = lambda *_: w.now < cut + 3.0  # a 3 s outage, then the path comes back
    w.run_while(lambda: not w.events(w.a, PathChanged) and not w.events(w.a, Failed), 20)
    assert w.events(w.a, ConsentLost)
    assert not w.events(w.a, Failed)
    (_, change), *_ = w.events(w.a, PathChanged)
    assert isinstance(change, PathChanged)
    assert "re-checked every pair" in change.reason
    assert change.new.kind == "punched"


def test_fails_when_nothing_works_and_no_relay() -> None:
    cfg = AgentConfig(connect_timeout=4.0, check_timeout=1.5)
    w = World(*sites("symmetric", "symmetric", relays=False), config=cfg)
    w.exchange()
    w.run_while(lambda: not w.events(w.a, Failed), 20)
    (t, failed), *_ = w.events(w.a, Failed)
    assert isinstance(failed, Failed)
    assert "failed" in failed.reason
    assert t <= 4.0 + 1e-9
    assert all(p.state is PairState.FAILED for p in w.a.agent.pairs.values())


def test_consent_checks_keep_flowing_on_the_selected_pair() -> None:
    cfg = AgentConfig(consent_interval=1.0, consent_timeout=5.0)
    w = World(*sites("eim", "eim"), config=cfg)
    w.exchange()
    run_to_selection(w)
    selected = w.a.agent.selected
    assert selected is not None
    before = selected.checks_sent
    w.run_until(w.now + 10.0)
    # About one check per second (+-20 %), and the path is still the same.
    assert 7 <= selected.checks_sent - before <= 13
    assert w.a.agent.selected is selected
    assert not w.events(w.a, ConsentLost)


def test_set_remote_twice_is_a_local_error() -> None:
    agent = Agent(controlling=True, ufrag="UUUU", pwd="p" * 22, tiebreaker=1)
    with pytest.raises(LocalProtocolError):
        agent.set_remote("VVVV", "q" * 22, [], 0.0)
    agent.start(0.0)
    agent.set_remote("VVVV", "q" * 22, [], 0.0)
    with pytest.raises(LocalProtocolError):
        agent.set_remote("VVVV", "q" * 22, [], 0.0)


# ---------------------------------------------------------------- re-checks (path change back)

#: Where b's server-reflexive address sits: the punched pair's remote end on a's side.
B_SRFLX = TA("198.51.100.66", 6000)
RECHECK_CFG = AgentConfig(
    consent_interval=0.5,
    consent_timeout=2.0,
    backup_interval=0.5,
    connect_timeout=5.0,
    recheck_interval=1.0,
    recheck_max_interval=4.0,
)


def _punched_then_blocked(cfg: AgentConfig) -> tuple[World, list[bool]]:
    """eim + eim on the punched path, then direct traffic between the sites dies (the relay
    still works) until ``blocked[0]`` is set to False; returns once both sides moved."""
    w = World(*sites("eim", "eim"), config=cfg)
    w.exchange()
    run_to_selection(w)
    assert w.a.agent.path is not None and w.a.agent.path.kind == "punched"
    w.run_until(3.0)
    blocked = [True]
    w.drop = lambda name, src, dst: (
        blocked[0] and src.host != RELAY_A.host and dst.host.startswith("198.51.100")
    )
    w.run_while(lambda: not (w.events(w.a, PathChanged) and w.events(w.b, PathChanged)), 20)
    # The controlled side may move on its own first, then follow the nomination (Limits).
    w.run_until(w.now + 0.5)
    for peer in (w.a, w.b):
        changes = w.events(peer, PathChanged)
        assert 1 <= len(changes) <= 2
        assert all(isinstance(e, PathChanged) and e.new.kind == "relay" for _, e in changes)
    return w, blocked


def _changes_after(w: World, peer: Peer, t: float) -> list[PathChanged]:
    return [e for at, e in w.events(peer, PathChanged) if at > t]  # type: ignore[misc]


def _checks_to(w: World, dest: TA, after: float) -> list[tuple[float, float]]:
    """(first send, last send) of each check transaction a started to ``dest`` after ``after``."""
    sends: dict[bytes, list[float]] = {}
    for t, tx in w.a.sent:
        if t <= after or tx.destination != dest or tx.route != "mux":
            continue
        msg = c.decode(tx.data)
        if msg.cls == c.REQUEST:
            sends.setdefault(msg.transaction_id, []).append(t)
    return sorted((ts[0], ts[-1]) for ts in sends.values())


def test_a_failed_punched_pair_that_comes_back_is_used_again_after_a_recheck() -> None:
    cfg = RECHECK_CFG
    w, blocked = _punched_then_blocked(cfg)
    moved = w.now
    w.run_until(moved + 6.0)  # re-checks during the outage fail, quietly
    assert w.a.agent.stats.rechecks_failed >= 1 and w.b.agent.stats.rechecks_failed >= 1
    assert not [e for t, e in w.events(w.a, PairFailed) if t > moved]
    assert w.a.agent.path is not None and w.a.agent.path.kind == "relay"
    blocked[0] = False
    healed = w.now
    w.run_while(
        lambda: not (_changes_after(w, w.a, healed) and _changes_after(w, w.b, healed)),
        healed + 20,
    )
    for peer in (w.a, w.b):
        ((at, back),) = [(t, e) for t, e in w.events(peer, PathChanged) if t > healed]
        assert isinstance(back, PathChanged)
        assert back.old.kind == "relay" and back.new.kind == "punched"
        # The next re-check after the path works again finds it: at most one backed-off
        # wait (or a retransmission of a re-check in flight) plus a check and a nomination.
        assert at - healed <= cfg.recheck_max_interval + 0.2, (at, healed)
        assert peer.agent.stats.rechecks_sent >= 2
    (back_a,) = _changes_after(w, w.a, healed)
    assert back_a.reason == "a better pair than the relay answers again after a re-check"
    mirrored(w)
    assert w.a.agent.stats.rechecks_succeeded + w.b.agent.stats.rechecks_succeeded >= 1
    # Back on the best pair: nothing is re-checked any more, and it stays put.
    w.run_until(w.now + 30.0)
    for peer in (w.a, w.b):
        assert len(_changes_after(w, peer, healed)) == 1
        assert all(p.recheck_at is None for p in peer.agent.pairs.values())
        assert [p.nominated for p in peer.agent.pairs.values()].count(True) == 1
    assert not w.events(w.a, Failed) and not w.events(w.b, Failed)


def test_a_dead_pair_is_rechecked_with_backoff_and_the_relay_stays() -> None:
    cfg = attrs.evolve(RECHECK_CFG, recheck_max_interval=8.0)
    w, _blocked = _punched_then_blocked(cfg)
    ((moved, _),) = w.events(w.a, PathChanged)  # a (controlling) moves once
    events_at_move = len(w.a.events), len(w.b.events)
    w.run_until(moved + 120.0)
    checks = _checks_to(w, B_SRFLX, moved)
    # The first re-check ``recheck_interval`` after the move (+ pacing), then each one
    # ``recheck_interval`` x 2, x 4 ... after the previous one failed, up to the maximum.
    assert checks[0][0] - moved == pytest.approx(cfg.recheck_interval, abs=0.11)
    waits = [nxt[0] - (prev[0] + cfg.check_timeout) for prev, nxt in itertools.pairwise(checks)]
    expected = [min(cfg.recheck_interval * 2**n, cfg.recheck_max_interval) for n in range(1, 20)]
    assert waits == pytest.approx(expected[: len(waits)], abs=0.11)
    assert len(waits) >= 8 and waits[-4:] == pytest.approx([cfg.recheck_max_interval] * 4, abs=0.11)
    # A dead path costs one check (check_sends datagrams at most) per max wait + check.
    late = [c for c in checks if c[0] > moved + 60.0]
    assert len(late) <= 60.0 / (cfg.recheck_max_interval + cfg.check_timeout) + 1
    # No churn: still on the relay, no event at all since the move, nothing failed.
    for peer, before in zip((w.a, w.b), events_at_move, strict=True):
        assert peer.agent.path is not None and peer.agent.path.kind == "relay"
        assert len(peer.events) == before, peer.events[before:]
        assert peer.agent.stats.rechecks_failed >= 8
        assert peer.agent.stats.rechecks_succeeded == 0
    # The application keeps its relay path with consent.
    selected = w.a.agent.selected
    assert selected is not None and selected.last_answer is not None
    assert w.now - selected.last_answer < cfg.consent_timeout


def test_no_recheck_traffic_while_on_the_best_pair() -> None:
    w = World(*sites("eim", "eim"), config=RECHECK_CFG)
    w.exchange()
    run_to_selection(w)
    w.run_until(10.0)  # the initial checks are over
    start = w.now
    w.run_until(start + 60.0)
    for peer in (w.a, w.b):
        agent = peer.agent
        assert agent.path is not None and agent.path.kind == "punched"
        assert agent.stats.rechecks_sent == 0
        # A host pair between the two LANs never worked and ranks above the punched pair:
        # it is not a target (only a relayed path, or a better pair that worked, is).
        selected = agent.selected
        assert selected is not None
        assert any(
            p.state is PairState.FAILED and p.priority > selected.priority
            for p in agent.pairs.values()
        )
        assert all(p.recheck_at is None for p in agent.pairs.values())
        valid = {p.remote.address for p in agent.pairs.values() if p.state is PairState.SUCCEEDED}
        asked = {
            tx.destination
            for t, tx in peer.sent
            if t > start and c.decode(tx.data).cls == c.REQUEST
        }
        assert asked and asked <= valid, (asked, valid)


def test_rechecks_off_keep_the_path_change_one_way() -> None:
    cfg = attrs.evolve(RECHECK_CFG, recheck_interval=0.0)
    w, blocked = _punched_then_blocked(cfg)
    moved = w.now
    blocked[0] = False
    w.run_until(moved + 30.0)
    assert w.a.agent.path is not None and w.a.agent.path.kind == "relay"
    assert not _changes_after(w, w.a, moved) and not _changes_after(w, w.b, moved)
    assert not _checks_to(w, B_SRFLX, moved + 0.5)
    assert w.a.agent.stats.rechecks_sent == 0


@pytest.mark.parametrize("unblock_after", [0.45, 0.6, 0.9])
def test_controlled_side_checks_a_stale_backup_before_following_a_renomination(
    unblock_after: float,
) -> None:
    """Seen in the lab: the controlled side was nominated away from the punched pair before
    its own consent ran out, so that pair stayed a backup with a last answer from before the
    outage. The path came back and the peer renominated it before a keepalive got through:
    selecting it at once lost consent on the spot and the two sides ended on different pairs
    (the peer's data on the punched pair then dropped). It must check the pair first."""
    w = World(*sites("eim", "eim"), config=RECHECK_CFG, seed=4)
    w.exchange()
    run_to_selection(w)
    w.run_until(3.0)
    blocked = [True]
    w.drop = lambda name, src, dst: (
        blocked[0] and src.host != RELAY_A.host and dst.host.startswith("198.51.100")
    )
    w.run_while(lambda: not (w.events(w.a, PathChanged) and w.events(w.b, PathChanged)), 20)
    assert not w.events(w.b, ConsentLost)  # the case: b was moved by the nomination
    ((moved, _),) = w.events(w.a, PathChanged)
    w.run_until(moved + unblock_after)
    blocked[0] = False
    healed = w.now
    w.run_until(healed + 15.0)
    assert not [t for t, _ in w.events(w.b, ConsentLost) if t > healed]
    for peer in (w.a, w.b):
        assert peer.agent.path is not None and peer.agent.path.kind == "punched"
        (back,) = _changes_after(w, peer, healed)
        assert back.new.kind == "punched"
    mirrored(w)


def test_a_better_direct_pair_that_comes_back_replaces_a_working_punched_one() -> None:
    """Not only the relay: two hosts on one LAN talk over their host pair (``direct``); when
    the LAN path dies they move to the punched pair through their NATs (no relay involved),
    and when the LAN path is back the re-check of the host pair moves them back to it."""
    a, b = sites("eim", "eim", relays=False)
    a.lan = b.lan = "home"
    w = World(a, b, config=RECHECK_CFG)
    w.exchange()
    run_to_selection(w)
    assert w.a.agent.path is not None and w.a.agent.path.kind == "direct"
    w.run_until(5.0)  # the punched pair is checked too and kept alive as a backup
    blocked = [True]
    w.drop = lambda name, src, dst: blocked[0] and dst.host.startswith("192.168.")
    w.run_while(lambda: not (w.events(w.a, PathChanged) and w.events(w.b, PathChanged)), 20)
    w.run_until(w.now + 5.0)
    for peer in (w.a, w.b):
        assert peer.agent.path is not None and peer.agent.path.kind == "punched"
    assert w.a.agent.stats.rechecks_failed >= 1  # the host pair worked before: re-checked
    blocked[0] = False
    healed = w.now
    w.run_while(
        lambda: not (_changes_after(w, w.a, healed) and _changes_after(w, w.b, healed)),
        healed + 20,
    )
    (back,) = _changes_after(w, w.a, healed)
    assert back.old.kind == "punched" and back.new.kind == "direct"
    assert back.reason == "a better pair answers again after a re-check"
    assert w.now - healed <= RECHECK_CFG.recheck_max_interval + 0.2
    w.run_until(w.now + 20.0)
    for peer in (w.a, w.b):
        assert peer.agent.path is not None and peer.agent.path.kind == "direct"
        assert len(_changes_after(w, peer, healed)) == 1
        assert all(p.recheck_at is None for p in peer.agent.pairs.values())
    mirrored(w)
