"""The chain's strategies, timeouts, retries, breakers, goals and verification, on both backends.

Fake methods stand in for protocols here on purpose: the chain knows no protocol, and these tests
pin its scheduling rules. Real protocol methods are exercised in the plugins' and lab tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest
from nattrav.chain import Chain, assemble
from nattrav.config import structure_config
from nattrav.errors import ChainExhausted, ConfigError
from nattrav.models import (
    AttemptOutcome,
    CandidateKind,
    Goal,
    Inbound,
    Reachability,
    TraversalRequest,
)
from nattrav.plugins import PluginHost, module_plugin
from nattrav.registry import VerifierRegistry
from nattrav.resilience import BreakerState
from nattrav.runtime import Runtime
from nattrav.testing import FakeMethod

pytestmark = pytest.mark.anyio


def runtime_for(*methods: tuple[FakeMethod, int], **config: Any) -> Runtime:
    def register(registry: Any) -> None:
        for m, prio in methods:
            registry.add(
                m, name=m.name, priority=prio, kind=m.kind, timeout=config.pop("_timeout", 2.0)
            )

    raw: dict[str, Any] = {"retry": {"wait_initial": 0.0, "wait_jitter": 0.0}}
    for section, values in config.items():
        raw.setdefault(section, {}).update(values)
    host = PluginHost.load(
        structure_config(raw),
        entry_points=[],
        builtins=False,
        disabled=(),
        extra=[("fakes", module_plugin("fakes", nattrav_register_methods=register))],
    )
    return Runtime(host)


def outcomes(result_attempts: Any) -> dict[str, str]:
    return {a.method: a.outcome.value for a in result_attempts}


async def test_sequential_stops_at_first_success() -> None:
    a = FakeMethod("a", "fail")
    b = FakeMethod("b", delay=0.01)
    c = FakeMethod("c")
    rt = runtime_for((a, 10), (b, 20), (c, 30), chain={"strategy": "sequential"})
    async with rt.chain().run(TraversalRequest()) as held:
        assert held.result.method == "b"
        assert outcomes(held.result.attempts) == {"a": "failed", "b": "succeeded", "c": "skipped"}
        assert not b.released
    assert b.released
    assert c.events == []


async def test_race_starts_next_after_stagger_and_prefers_better_priority_in_grace() -> None:
    slow_best = FakeMethod("best", delay=0.15)
    fast_worse = FakeMethod("worse", delay=0.0)
    rt = runtime_for((slow_best, 10), (fast_worse, 20), chain={"stagger": 0.05, "grace": 0.5})
    t0 = anyio.current_time()
    async with rt.chain().run(TraversalRequest()) as held:
        elapsed = anyio.current_time() - t0
        assert held.result.method == "best"  # arrived within the grace window
        assert 0.12 < elapsed < 1.0
        assert fast_worse.released  # the loser released what it acquired
        attempts = {a.method: a for a in held.result.attempts}
        assert attempts["worse"].outcome is AttemptOutcome.CANCELLED
        assert "best was preferred" in attempts["worse"].reason


async def test_race_grace_expires_and_the_hanging_better_method_is_cancelled() -> None:
    hang = FakeMethod("hang", "hang")
    ok = FakeMethod("ok")
    rt = runtime_for((hang, 10), (ok, 20), chain={"stagger": 0.05, "grace": 0.1})
    t0 = anyio.current_time()
    async with rt.chain().run(TraversalRequest()) as held:
        assert held.result.method == "ok"
        assert anyio.current_time() - t0 < 1.0
        assert hang.events == ["acquire", "cancel"]
        rec = {a.method: a for a in held.result.attempts}["hang"]
        assert rec.outcome is AttemptOutcome.CANCELLED
        assert "after the grace window" in rec.reason


async def test_race_failure_starts_the_next_method_at_once() -> None:
    a = FakeMethod("a", "unavailable")
    b = FakeMethod("b")
    rt = runtime_for((a, 1), (b, 2), chain={"stagger": 5.0})
    t0 = anyio.current_time()
    async with rt.chain().run(TraversalRequest()) as held:
        assert held.result.method == "b"
        assert anyio.current_time() - t0 < 1.0  # did not wait for the 5 s stagger


async def test_sequential_is_slower_than_race_when_a_better_method_hangs() -> None:
    async def time_it(strategy: str) -> float:
        hang = FakeMethod("hang", "hang")
        ok = FakeMethod("ok")
        rt = runtime_for(
            (hang, 1),
            (ok, 2),
            chain={"strategy": strategy, "stagger": 0.05, "grace": 0.05},
            methods={"hang": {"timeout": 0.4}},
        )
        t0 = anyio.current_time()
        async with rt.chain().run(TraversalRequest()) as held:
            assert held.result.method == "ok"
            return anyio.current_time() - t0

    race = await time_it("race")
    sequential = await time_it("sequential")
    assert sequential >= 0.4
    assert race < sequential


async def test_timeout_is_recorded_and_counts_against_the_breaker() -> None:
    hang = FakeMethod("hang", "hang")
    rt = runtime_for(
        (hang, 1), methods={"hang": {"timeout": 0.05}}, breaker={"threshold": 2, "cooldown": 60}
    )
    with pytest.raises(ChainExhausted) as info:
        async with rt.chain().run(TraversalRequest()):
            pass
    rec = info.value.failures[0]
    assert rec.outcome is AttemptOutcome.TIMED_OUT
    assert "no result within 0.1 s" in rec.reason or "no result within 0.0 s" in rec.reason
    assert rt.breakers.get("hang").failures == 1


async def test_retryable_failures_are_retried_with_stamina() -> None:
    flaky = FakeMethod("flaky", "flaky", failures=2)
    rt = runtime_for((flaky, 1), retry={"attempts": 3})
    async with rt.chain().run(TraversalRequest()) as held:
        assert held.result.method == "flaky"
        assert held.result.attempts[0].tries == 3
    assert flaky.tries == 3


async def test_non_retryable_failures_are_not_retried() -> None:
    bad = FakeMethod("bad", "fail")
    rt = runtime_for((bad, 1), retry={"attempts": 5})
    with pytest.raises(ChainExhausted):
        async with rt.chain().run(TraversalRequest()):
            pass
    assert bad.tries == 1


async def test_plugin_bug_is_a_failed_attempt_not_a_crash() -> None:
    bug = FakeMethod("bug", "raise")
    ok = FakeMethod("ok")
    rt = runtime_for((bug, 1), (ok, 2))
    async with rt.chain().run(TraversalRequest()) as held:
        rec = held.result.attempts[0]
        assert rec.outcome is AttemptOutcome.FAILED
        assert rec.error_type == "RuntimeError"
        assert "fake plugin bug" in rec.reason


async def test_breaker_opens_skips_quickly_and_closes_after_cooldown() -> None:
    dead = FakeMethod("dead", "fail")
    ok = FakeMethod("ok")
    rt = runtime_for((dead, 1), (ok, 2), breaker={"threshold": 2, "cooldown": 0.2})
    for _ in range(2):
        async with rt.chain().run(TraversalRequest()) as held:
            assert held.result.method == "ok"
    assert rt.breakers.get("dead").state is BreakerState.OPEN
    tries_before = dead.tries
    async with rt.chain().run(TraversalRequest()) as held:
        rec = held.result.attempts[0]
        assert rec.outcome is AttemptOutcome.SKIPPED
        assert "circuit breaker open" in rec.reason
    assert dead.tries == tries_before  # not even started
    await anyio.sleep(0.25)
    dead.behaviour = "succeed"
    async with rt.chain().run(TraversalRequest()) as held:
        assert held.result.method == "dead"
    assert rt.breakers.get("dead").state is BreakerState.CLOSED


async def test_exhausted_carries_every_failure() -> None:
    rt = runtime_for(
        (FakeMethod("a", "unavailable"), 1),
        (FakeMethod("b", "fail"), 2),
        (FakeMethod("c", "raise"), 3),
    )
    with pytest.raises(ChainExhausted) as info:
        async with rt.chain().run(TraversalRequest()):
            pass
    assert [(f.method, f.outcome.value) for f in info.value.failures] == [
        ("a", "unavailable"),
        ("b", "failed"),
        ("c", "failed"),
    ]


async def test_goal_reachable_keeps_reflexive_candidates_and_goes_on() -> None:
    srflx = FakeMethod("stun", kind=CandidateKind.SERVER_REFLEXIVE, inbound=Inbound.UNKNOWN)
    mapped = FakeMethod("upnp", kind=CandidateKind.PORT_MAPPED, inbound=Inbound.YES, delay=0.02)
    rt = runtime_for((srflx, 20), (mapped, 40))
    async with rt.chain().run(TraversalRequest(goal=Goal.REACHABLE)) as held:
        assert held.result.method == "upnp"
        kinds = [c.kind for c in held.result.candidates]
        assert kinds == [CandidateKind.PORT_MAPPED, CandidateKind.SERVER_REFLEXIVE]
        assert {a.method: a.outcome for a in held.result.attempts}["stun"] is (
            AttemptOutcome.INSUFFICIENT
        )
    srflx2 = FakeMethod("stun", kind=CandidateKind.SERVER_REFLEXIVE, inbound=Inbound.UNKNOWN)
    rt = runtime_for((srflx2, 20), (FakeMethod("upnp"), 40))
    async with rt.chain().run(TraversalRequest(goal=Goal.ANY)) as held:
        assert held.result.method == "stun"


async def test_only_insufficient_candidates_is_exhaustion_with_the_candidates() -> None:
    srflx = FakeMethod("stun", inbound=Inbound.NO)
    rt = runtime_for((srflx, 20))
    with pytest.raises(ChainExhausted) as info:
        async with rt.chain().run(TraversalRequest()):
            pass
    rec = info.value.failures[0]
    assert rec.outcome is AttemptOutcome.INSUFFICIENT
    assert rec.candidate is not None and "hole-punching" in rec.reason


async def test_order_disabled_and_priority_overrides() -> None:
    a, b, c = FakeMethod("a"), FakeMethod("b"), FakeMethod("c")
    rt = runtime_for(
        (a, 10),
        (b, 20),
        (c, 30),
        chain={"order": ["c"], "disabled": ["a"], "strategy": "sequential"},
    )
    assert rt.chain().names == ["c", "b"]
    rt = runtime_for((a, 10), (b, 20), (c, 30), methods={"a": {"priority": 99}})
    assert rt.chain().names == ["b", "c", "a"]


def test_unknown_names_in_order_are_config_errors() -> None:
    rt = runtime_for((FakeMethod("a"), 1), chain={"order": ["a", "nope"]})
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        rt.chain()
    rt = runtime_for((FakeMethod("a"), 1), methods={"typo": {"timeout": 1}})
    with pytest.raises(ConfigError, match="unknown method 'typo'"):
        rt.chain()


def test_adjust_chain_hook() -> None:
    def adjust(chain: list[Any]) -> None:
        chain[:] = [m for m in chain if m.name != "relay"]

    def register(registry: Any) -> None:
        for name, prio in (("stun", 20), ("relay", 90)):
            registry.add(FakeMethod(name), name=name, priority=prio, kind=CandidateKind.RELAYED)

    host = PluginHost.load(
        entry_points=[],
        builtins=False,
        disabled=(),
        extra=[
            ("m", module_plugin("m", nattrav_register_methods=register)),
            ("policy", module_plugin("policy", nattrav_adjust_chain=adjust)),
        ],
    )
    assert Runtime(host).chain().names == ["stun"]
    assert [s.name for s in assemble(host.method_specs(), host.config)] == ["stun", "relay"]


async def test_cancelling_the_caller_releases_the_winner() -> None:
    ok = FakeMethod("ok")
    rt = runtime_for((ok, 1))
    with anyio.move_on_after(0.05):
        async with rt.chain().run(TraversalRequest()):
            await anyio.sleep_forever()
    assert ok.released


async def test_losers_that_hang_are_cancelled_when_the_chain_exits_early() -> None:
    hang = FakeMethod("hang", "hang")
    rt = runtime_for((hang, 1), methods={"hang": {"timeout": 30}})
    with anyio.move_on_after(0.1):
        async with rt.chain().run(TraversalRequest()):
            pass
    assert hang.events == ["acquire", "cancel"]


class _Verifier:
    def __init__(self, verdicts: list[Reachability | None]) -> None:
        self.verdicts = verdicts
        self.calls = 0

    async def verify(self, candidate: Any, ctx: Any) -> Reachability | None:
        self.calls += 1
        return self.verdicts.pop(0) if self.verdicts else None


def runtime_with_verifier(verifier: _Verifier, *methods: tuple[FakeMethod, int]) -> Runtime:
    def register(registry: Any) -> None:
        for m, prio in methods:
            registry.add(m, name=m.name, priority=prio, kind=m.kind)

    def verifiers(registry: VerifierRegistry) -> None:
        registry.add(lambda: verifier, name="v")

    host = PluginHost.load(
        structure_config({"retry": {"attempts": 3, "wait_initial": 0.0, "wait_jitter": 0.0}}),
        entry_points=[],
        builtins=False,
        disabled=(),
        extra=[
            ("fakes", module_plugin("fakes", nattrav_register_methods=register)),
            ("ver", module_plugin("ver", nattrav_register_verifiers=verifiers)),
        ],
    )
    return Runtime(host)


async def test_verifier_upgrades_an_unknown_candidate() -> None:
    direct = FakeMethod("direct", kind=CandidateKind.HOST, inbound=Inbound.UNKNOWN)
    verifier = _Verifier([Reachability.proven("packet from the other address arrived")])
    rt = runtime_with_verifier(verifier, (direct, 0))
    async with rt.chain().run(TraversalRequest()) as held:
        assert held.result.method == "direct"
        assert held.result.candidate.reachability.verified


async def test_mapping_that_does_not_forward_is_readded_once_then_abandoned() -> None:
    mapped = FakeMethod("upnp", kind=CandidateKind.PORT_MAPPED, inbound=Inbound.YES)
    relay = FakeMethod("relay", kind=CandidateKind.RELAYED, inbound=Inbound.YES)
    verifier = _Verifier(
        [Reachability.refused("nothing arrived"), Reachability.refused("nothing arrived"), None]
    )
    rt = runtime_with_verifier(verifier, (mapped, 40), (relay, 90))
    async with rt.chain().run(TraversalRequest()) as held:
        assert held.result.method == "relay"
        rec = held.result.attempts[0]
        assert rec.outcome is AttemptOutcome.FAILED
        assert "does not forward" in rec.reason
    assert mapped.events.count("acquire") == 2
    assert mapped.events.count("release") == 2


async def test_mapping_that_forwards_after_readd_wins() -> None:
    mapped = FakeMethod("upnp", kind=CandidateKind.PORT_MAPPED, inbound=Inbound.YES)
    verifier = _Verifier([Reachability.refused("lost"), Reachability.proven("arrived")])
    rt = runtime_with_verifier(verifier, (mapped, 40))
    async with rt.chain().run(TraversalRequest()) as held:
        assert held.result.candidate.reachability.verified
    assert mapped.events.count("acquire") == 2


async def test_events_are_emitted_for_acquire_and_release() -> None:
    seen: list[str] = []
    rt = runtime_for((FakeMethod("ok"), 1))
    async with rt.chain().run(TraversalRequest(), on_event=lambda e: seen.append(e.kind.value)):
        assert seen == ["acquired"]
    assert seen == ["acquired", "released"]


async def test_many_concurrent_runs_share_one_runtime() -> None:
    methods = [FakeMethod(f"m{i}", delay=0.001) for i in range(3)]
    rt = runtime_for(*[(m, i) for i, m in enumerate(methods)])
    winners: list[str] = []

    async def one() -> None:
        async with rt.chain().run(TraversalRequest()) as held:
            winners.append(held.result.method)

    async with anyio.create_task_group() as tg:
        for _ in range(200):
            tg.start_soon(one)
    assert winners == ["m0"] * 200


def test_chain_without_methods_is_exhausted(anyio_backend: str) -> None:
    async def main() -> None:
        with pytest.raises(ChainExhausted, match="no traversal method"):
            async with Chain([]).run(TraversalRequest()):
                pass

    anyio.run(main, backend=anyio_backend)


_ = Callable


async def test_the_callers_own_exception_is_not_wrapped_in_a_group() -> None:
    rt = runtime_for((FakeMethod("ok"), 1))
    with pytest.raises(KeyError, match="mine"):
        async with rt.chain().run(TraversalRequest()):
            raise KeyError("mine")


async def test_a_held_endpoint_lost_for_good_ends_the_run_with_one_error() -> None:
    from nattrav.errors import MethodError

    lossy = FakeMethod("lossy", lose_after=0.05)
    rt = runtime_for((lossy, 1))
    seen: list[str] = []
    with pytest.raises(MethodError, match="endpoint lost: fake: lease lost"):
        async with rt.chain().run(TraversalRequest(), on_event=lambda e: seen.append(e.kind.value)):
            await anyio.sleep(5)
    assert "lost" in seen
    assert lossy.released


async def test_gather_holds_every_candidate_and_cancels_the_slow() -> None:
    host_m = FakeMethod("direct", kind=CandidateKind.HOST, inbound=Inbound.UNKNOWN)
    srflx = FakeMethod("stun", kind=CandidateKind.SERVER_REFLEXIVE, inbound=Inbound.NO, delay=0.02)
    relay = FakeMethod("relay", kind=CandidateKind.RELAYED, inbound=Inbound.YES, delay=0.05)
    bad = FakeMethod("upnp", "unavailable")
    slow = FakeMethod("natpmp", "hang")
    rt = runtime_for((relay, 90), (host_m, 0), (srflx, 20), (bad, 40), (slow, 45))
    async with rt.chain().gather(TraversalRequest(), timeout=0.5) as gathered:
        kinds = [c.kind for c in gathered.candidates]
        assert kinds == [CandidateKind.HOST, CandidateKind.SERVER_REFLEXIVE, CandidateKind.RELAYED]
        outcomes = {r.method: r.outcome for r in gathered.attempts}
        assert outcomes["upnp"] is AttemptOutcome.UNAVAILABLE
        assert outcomes["natpmp"] is AttemptOutcome.CANCELLED
        assert not relay.released
    assert relay.released and srflx.released and host_m.released
    assert slow.events == ["acquire", "cancel"]


async def test_gather_survives_one_lost_candidate() -> None:
    lossy = FakeMethod("lossy", lose_after=0.02)
    steady = FakeMethod("steady")
    seen: list[str] = []
    rt = runtime_for((lossy, 1), (steady, 2))
    async with rt.chain().gather(TraversalRequest(), on_event=lambda e: seen.append(e.kind.value)):
        await anyio.sleep(0.1)
        assert "lost" in seen
        assert not steady.released
    assert steady.released


async def test_methods_of_one_group_never_run_together() -> None:
    upnp = FakeMethod("upnp", "unavailable", kind=CandidateKind.PORT_MAPPED, delay=0.3)
    natpmp = FakeMethod("natpmp", kind=CandidateKind.PORT_MAPPED, delay=0.05)
    relay = FakeMethod("relay", kind=CandidateKind.RELAYED, delay=0.5)

    def register(registry: Any) -> None:
        registry.add(upnp, name="upnp", priority=40, kind=upnp.kind, group="gateway")
        registry.add(natpmp, name="natpmp", priority=45, kind=natpmp.kind, group="gateway")
        registry.add(relay, name="relay", priority=90, kind=relay.kind)

    host = PluginHost.load(
        structure_config({"chain": {"stagger": 0.05}}),
        entry_points=[],
        builtins=False,
        disabled=(),
        extra=[("g", module_plugin("g", nattrav_register_methods=register))],
    )
    t0 = anyio.current_time()
    async with Runtime(host).chain().run(TraversalRequest()) as held:
        elapsed = anyio.current_time() - t0
        assert held.result.method == "natpmp"
        # natpmp waited for upnp (0.3 s) instead of starting after the 0.05 s stagger ...
        assert 0.3 <= elapsed < 0.5
        # ... while relay, in no group, started at the stagger and lost to the better natpmp.
        assert relay.events == ["acquire", "cancel"]
        assert [a.method for a in held.result.attempts] == ["upnp", "natpmp", "relay"]


async def test_a_relay_waits_fallback_grace_for_a_port_mapping_still_running() -> None:
    """A relay is the last resort: its success waits up to ``fallback_grace`` (not ``grace``)
    for a running method that would give a better kind of endpoint."""
    for fallback_grace, winner in ((1.0, "upnp"), (0.0, "relay")):
        mapped = FakeMethod("upnp", kind=CandidateKind.PORT_MAPPED, delay=0.3)
        relay = FakeMethod("relay", kind=CandidateKind.RELAYED)
        rt = runtime_for(
            (mapped, 40),
            (relay, 90),
            chain={"stagger": 0.02, "grace": 0.05, "fallback_grace": fallback_grace},
        )
        async with rt.chain().run(TraversalRequest()) as held:
            assert held.result.method == winner
            loser = held.result.attempts[0 if winner == "relay" else 1]
            assert loser.outcome is AttemptOutcome.CANCELLED


class _HangingVerifier:
    """A verifier whose proof never comes (every probe lost): the chain's bound ends it, and
    winding down takes a moment (a loaded machine: closing its sockets, logging)."""

    async def verify(self, candidate: Any, ctx: Any) -> Reachability | None:
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.1)
        raise AssertionError("unreachable")


async def test_a_mapping_whose_proof_runs_to_its_bound_still_beats_a_relay() -> None:
    """A mapping in hand whose verification runs out its whole bound (a lossy link ate every
    probe) is still waited for: the verifier's timeout and the chain's deadline expire
    together, and the relay must not win that tie while the attempt winds its verifier down.
    ``fallback_grace`` 0 leaves the verification bound as the only thing holding the relay
    back."""

    def register(registry: Any) -> None:
        registry.add(mapped, name="upnp", priority=40, kind=mapped.kind)
        registry.add(relay, name="relay", priority=90, kind=relay.kind)

    def verifiers(registry: VerifierRegistry) -> None:
        registry.add(_HangingVerifier, name="v", kinds={CandidateKind.PORT_MAPPED})

    mapped = FakeMethod("upnp", kind=CandidateKind.PORT_MAPPED, inbound=Inbound.YES)
    relay = FakeMethod("relay", kind=CandidateKind.RELAYED, inbound=Inbound.YES, delay=0.02)
    host = PluginHost.load(
        structure_config(
            {
                "chain": {
                    "stagger": 0.0,
                    "grace": 0.0,
                    "fallback_grace": 0.0,
                    "verify_window": 0.05,
                }
            }
        ),
        entry_points=[],
        builtins=False,
        disabled=(),
        extra=[
            ("fakes", module_plugin("fakes", nattrav_register_methods=register)),
            ("ver", module_plugin("ver", nattrav_register_verifiers=verifiers)),
        ],
    )
    t0 = anyio.current_time()
    async with Runtime(host).chain().run(TraversalRequest()) as held:
        took = anyio.current_time() - t0
        assert held.result.method == "upnp", [(a.method, a.reason) for a in held.result.attempts]
        assert not held.result.candidate.reachability.verified  # the claim, unproven
        assert 0.19 < took < 2.0  # waited out the 4 x 0.05 s bound, not more than the slack
    assert relay.released


class _Proving(FakeMethod):
    """Holds its candidate at once and spends ``delay`` proving it (STUN's filtering probe)."""

    def acquire(self, ctx: Any) -> Any:
        ctx.proving()
        return super().acquire(ctx)


@pytest.mark.parametrize("strategy", ["race", "sequential"])
async def test_an_attempt_that_is_only_proving_does_not_hold_the_next_one_back(
    strategy: str,
) -> None:
    """Racing, the stagger holds back the next method only while the running one is still
    connecting: a method that said ``ctx.proving()`` lets the next one start at once. In
    ``sequential`` order nothing changes: the next starts when the previous one ended."""
    proving = _Proving("stun", delay=0.5, inbound=Inbound.NO)  # insufficient after its proof
    mapped = FakeMethod("upnp", kind=CandidateKind.PORT_MAPPED)
    rt = runtime_for(
        (proving, 20),
        (mapped, 40),
        chain={"strategy": strategy, "stagger": 0.3, "grace": 0.05, "verify": False},
    )
    t0 = anyio.current_time()
    async with rt.chain().run(TraversalRequest()) as held:
        took = anyio.current_time() - t0
        assert held.result.method == "upnp"
        if strategy == "race":
            assert took < 0.25  # not after the 0.3 s stagger, not after the 0.5 s proof
            assert held.result.attempts[0].outcome is AttemptOutcome.CANCELLED
        else:
            assert took >= 0.5
            assert held.result.attempts[0].outcome is AttemptOutcome.INSUFFICIENT


@pytest.mark.parametrize(("goal", "winner"), [(Goal.ANY, "stun"), (Goal.REACHABLE, "upnp")])
async def test_a_mapping_waits_for_a_better_kind_only_when_any_candidate_will_do(
    goal: Goal, winner: str
) -> None:
    """Goal ``any``: a reflexive address still coming is better than a mapping in hand, so
    the mapping waits ``fallback_grace`` for it. Goal ``reachable``: it waits only ``grace``
    (the reflexive candidate's proof is what is slow, and a held mapping spoils it)."""
    srflx = FakeMethod("stun", delay=0.3, inbound=Inbound.YES)
    mapped = FakeMethod("upnp", kind=CandidateKind.PORT_MAPPED)
    rt = runtime_for(
        (srflx, 20),
        (mapped, 40),
        chain={"stagger": 0.02, "grace": 0.05, "fallback_grace": 1.0, "verify": False},
    )
    async with rt.chain().run(TraversalRequest(goal=goal)) as held:
        assert held.result.method == winner


async def test_same_kind_success_waits_only_grace() -> None:
    slow = FakeMethod("a", kind=CandidateKind.PORT_MAPPED, delay=0.6)
    fast = FakeMethod("b", kind=CandidateKind.PORT_MAPPED)
    rt = runtime_for(
        (slow, 40), (fast, 45), chain={"stagger": 0.02, "grace": 0.05, "fallback_grace": 5.0}
    )
    t0 = anyio.current_time()
    async with rt.chain().run(TraversalRequest()) as held:
        assert held.result.method == "b"
        assert anyio.current_time() - t0 < 0.5


@pytest.mark.parametrize(
    ("families", "ipv4_route", "winner"),
    [
        (frozenset({4, 6}), True, "relay"),  # IPv4 wanted and possible: a pinhole is not enough
        (frozenset({6}), True, "upnp"),  # IPv6 asked for alone
        (frozenset({4, 6}), False, "upnp"),  # no IPv4 route: IPv6 is all there is
    ],
)
async def test_an_ipv6_only_endpoint_does_not_meet_a_dual_stack_reachable_request(
    families: frozenset[int], ipv4_route: bool, winner: str
) -> None:
    from nattrav.models import TransportAddress

    pinhole = FakeMethod(
        "upnp",
        kind=CandidateKind.PORT_MAPPED,
        address=TransportAddress("2001:db8:1:1::10", 40000),
    )
    relay = FakeMethod("relay", kind=CandidateKind.RELAYED)
    rt = runtime_for((pinhole, 40), (relay, 90), chain={"strategy": "sequential"})
    chain = rt.chain()
    chain.ipv4_route = lambda: ipv4_route
    async with chain.run(TraversalRequest(families=families)) as held:
        assert held.result.method == winner
        if winner == "relay":
            rec = held.result.attempts[0]
            assert rec.outcome is AttemptOutcome.INSUFFICIENT
            assert "IPv6 only" in rec.reason
            assert pinhole.released


class _SlowRelease:
    """A port mapper whose deletion takes a while: the re-add must wait for it."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.kind = CandidateKind.PORT_MAPPED
        self.name = "upnp"

    def __call__(self) -> _SlowRelease:
        return self

    def acquire(self, ctx: Any) -> Any:
        from contextlib import asynccontextmanager

        from nattrav.method import Acquisition
        from nattrav.models import Candidate, TransportAddress

        @asynccontextmanager
        async def cm() -> Any:
            self.log.append("add")
            try:
                yield Acquisition(
                    Candidate(
                        CandidateKind.PORT_MAPPED,
                        TransportAddress("198.51.100.7", 40000),
                        "upnp",
                        reachability=Reachability.claimed("gateway says so"),
                    )
                )
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(0.2)
                self.log.append("deleted")

        return cm()


async def test_a_refuted_mapping_is_deleted_before_it_is_added_again() -> None:
    mapper = _SlowRelease()
    verifier = _Verifier([Reachability.refused("nothing arrived")] * 2)
    rt = runtime_with_verifier(verifier, (mapper, 40))  # type: ignore[arg-type]
    with pytest.raises(ChainExhausted) as info:
        async with rt.chain().run(TraversalRequest()):
            pass
    assert mapper.log == ["add", "deleted", "add", "deleted"]
    (record,) = info.value.failures
    assert record.tries == 2 and "abandoned" in record.reason


async def test_a_relay_success_still_starts_a_port_mapper_its_group_held_back() -> None:
    """UPnP and NAT-PMP share a group: when UPnP fails after the relay succeeded, NAT-PMP
    still gets its chance within ``fallback_grace`` instead of being skipped."""
    upnp = FakeMethod("upnp", "fail", kind=CandidateKind.PORT_MAPPED, delay=0.2)
    natpmp = FakeMethod("natpmp", kind=CandidateKind.PORT_MAPPED, delay=0.05)
    relay = FakeMethod("relay", kind=CandidateKind.RELAYED)

    def register(registry: Any) -> None:
        registry.add(upnp, name="upnp", priority=40, kind=upnp.kind, group="gateway")
        registry.add(natpmp, name="natpmp", priority=45, kind=natpmp.kind, group="gateway")
        registry.add(relay, name="relay", priority=90, kind=relay.kind)

    host = PluginHost.load(
        structure_config({"chain": {"stagger": 0.01, "grace": 0.01, "fallback_grace": 1.0}}),
        entry_points=[],
        builtins=False,
        disabled=(),
        extra=[("fakes", module_plugin("fakes", nattrav_register_methods=register))],
    )
    async with Runtime(host).chain().run(TraversalRequest()) as held:
        assert held.result.method == "natpmp"
        assert outcomes(held.result.attempts) == {
            "upnp": "failed",
            "natpmp": "succeeded",
            "relay": "cancelled",
        }
