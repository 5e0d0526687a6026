"""The fallback chain: run the installed methods in preference order and keep the best endpoint.

Theory of operation
-------------------
The chain is a list of ``MethodSpec`` ordered by priority, then by the user's ``order`` and
``disabled`` settings, then adjusted by ``nattrav_adjust_chain`` hooks. ``Chain.run(request)``
is an async context manager: entering runs the methods until one yields a candidate that meets
the goal; the body uses the endpoint; leaving releases it.

Each attempt runs in its own task. The method's context manager is entered and held by a child
task (``_hold``) so that its cancel scopes nest properly whatever happens to the attempt: the
attempt waits for the child to report the acquisition under a per-try deadline, stamina retries
tries that fail with a retryable ``MethodError``, and the method's circuit breaker is consulted
before the first try and told the outcome after the last.

Strategies:

* ``sequential``: start the next method only when the previous one ended without meeting the
  goal.
* ``race`` (default, RFC 8305 in spirit): start the next method when the previous ones failed or
  after ``stagger`` seconds, whichever is first. When a success arrives, it wins at once if no
  better-priority attempt is still running; otherwise it waits at most ``grace`` seconds for one
  of them to succeed, or ``fallback_grace`` seconds when a running attempt would give a better
  kind and the success is a relay (the last resort: a mapping that is about to succeed is worth
  a second) or the goal is ``any``. A
  better attempt that already holds its candidate and is only verifying it gets until its
  verification ends (bounded: 4 verify windows per verifier, plus 0.5 s to report), so a slow
  proof over a lossy link does not hand the win to a relay. Losers still acquiring are
  cancelled; losers that already acquired are told to release. Attempts never started are
  recorded as skipped, so the result explains why each better method did not win.

With the ``reachable`` goal, a candidate that does not accept unsolicited inbound traffic
(a server-reflexive address behind a filtering NAT) is recorded as ``insufficient`` and kept in
``TraversalResult.candidates`` for hole punching, and the chain goes on. Before judging,
installed verifiers may upgrade an ``unknown`` candidate (or refute a gateway's claim): a
mapping that does not forward is released, acquired once more, and abandoned if it fails again.
When the request allows IPv4 and the host has an IPv4 default route, the ``reachable`` goal
needs an IPv4 endpoint: an IPv6-only candidate (a pinhole on a router whose IPv4 mapping was
refused) is kept as ``insufficient``, because peers without IPv6 could not reach it.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import attrs
import stamina
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from opentelemetry import trace

from nattrav.config import Config
from nattrav.errors import (
    ChainExhausted,
    CircuitOpen,
    ConfigError,
    MethodError,
    MethodUnavailable,
)
from nattrav.journal import Journal
from nattrav.method import Acquisition, AttemptContext, DatagramChannel, TraversalMethod
from nattrav.models import (
    AttemptOutcome,
    AttemptRecord,
    Candidate,
    CandidateKind,
    Goal,
    Inbound,
    LeaseEvent,
    LeaseEventKind,
    PathProperty,
    TraversalRequest,
    TraversalResult,
)
from nattrav.plugins import Hooks
from nattrav.registry import MethodSpec, PathProbeSpec, VerifierSpec
from nattrav.resilience import BreakerBoard, RetryPolicy
from nattrav.taskgroups import single_errors, sole_exception
from nattrav.telemetry import Telemetry

__all__ = ["Chain", "Gathered", "Held", "assemble"]

#: How long the chain waits for a losing or released method to let go of what it held.
RELEASE_BOUND = 10.0
# How long past its verification bound a verifying attempt is still waited for: the verifier's
# own timeout and the coordinator's deadline expire at the same instant, and on a loaded machine
# the attempt needs a moment to report the acquisition it holds.
VERIFY_SLACK = 0.5
#: Lease events kept per attempt until it is announced (more would be a method's bug).
_HELD_BACK_MAX = 64


def assemble(
    specs: Sequence[MethodSpec], config: Config, hooks: Hooks | None = None
) -> list[MethodSpec]:
    """Order ``specs`` by priority (config may override a priority), then ``order``, minus
    ``disabled``, then let plugins adjust. Unknown names in ``order`` are a ``ConfigError``."""
    known = {s.name for s in specs}
    unknown = [n for n in config.chain.order if n not in known]
    unknown_prio = [n for n in config.methods if n not in known]
    if unknown or unknown_prio:
        problems = [
            f"[chain] order names unknown method {n!r} (installed: {', '.join(sorted(known))})"
            for n in unknown
        ] + [
            f"[methods.{n}] configures unknown method {n!r} (installed: {', '.join(sorted(known))})"
            for n in unknown_prio
        ]
        raise ConfigError(problems)

    def priority(spec: MethodSpec) -> int:
        override = config.methods.get(spec.name)
        return override.priority if override and override.priority is not None else spec.priority

    ordered = sorted(
        (s for s in specs if s.name not in config.chain.disabled),
        key=lambda s: (priority(s), s.name),
    )
    first = [s for name in config.chain.order for s in ordered if s.name == name]
    chain = first + [s for s in ordered if s.name not in config.chain.order]
    if hooks is not None:
        hooks.adjust_chain(chain)
    return chain


@attrs.frozen
class Held:
    """What ``Chain.run`` yields: the result and, for relayed endpoints, the relay channel."""

    result: TraversalResult
    channel: DatagramChannel | None = None


@attrs.frozen
class Gathered:
    """What ``Chain.gather`` yields: every acquisition held, and every attempt's record."""

    acquisitions: tuple[Acquisition, ...]
    attempts: tuple[AttemptRecord, ...]

    @property
    def candidates(self) -> tuple[Candidate, ...]:
        """All candidates, best kind first (host, reflexive, mapped, relayed)."""
        found = [c for a in self.acquisitions for c in (a.candidate, *a.also)]
        return tuple(sorted(found, key=lambda c: c.kind.preference))


@attrs.define(eq=False)
class _Attempt:
    index: int
    spec: MethodSpec
    scope: anyio.CancelScope = attrs.field(factory=anyio.CancelScope)
    release: anyio.Event = attrs.field(factory=anyio.Event)
    done: anyio.Event = attrs.field(factory=anyio.Event)
    started_at: float = 0.0
    acquisition: Acquisition | None = None
    record: AttemptRecord | None = None
    running: bool = True
    failure: MethodError | None = None  # the held endpoint was lost for good
    #: while the attempt's candidate is being verified: when that verification must end
    verifying_until: float = -math.inf
    #: the method said it holds its candidate and is only proving it (``ctx.proving()``)
    proving: bool = False


class Chain:
    """An assembled chain bound to a runtime's hooks, breakers and telemetry."""

    def __init__(
        self,
        specs: Sequence[MethodSpec],
        *,
        config: Config | None = None,
        hooks: Hooks | None = None,
        breakers: BreakerBoard | None = None,
        telemetry: Telemetry | None = None,
        verifiers: Sequence[VerifierSpec] = (),
        path_probes: Sequence[PathProbeSpec] = (),
        settings: Callable[[str], Mapping[str, Any]] | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.config = config or Config()
        self.journal = journal
        self.specs = list(specs)
        self.hooks = hooks
        self.telemetry = telemetry or Telemetry()
        self.breakers = breakers or BreakerBoard(policy_for=lambda _n: self.config.breaker.policy())
        self.verifiers = list(verifiers)
        self.path_probes = list(path_probes)
        self._settings = settings or (lambda name: self.config.plugin_table(name))
        #: Whether this host can reach IPv4 peers (an IPv4 default route); replaceable in tests.
        self.ipv4_route: Callable[[], bool] = _has_ipv4_route

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    # ------------------------------------------------------------------ policies

    def _retry_policy(self, method: str) -> RetryPolicy:
        policy = self.hooks.retry_policy(method) if self.hooks else None
        return policy or self.config.retry.policy()

    def _timeout(self, spec: MethodSpec) -> float:
        override = self.config.methods.get(spec.name)
        if override is not None and override.timeout is not None:
            return override.timeout
        return spec.timeout

    # ------------------------------------------------------------------ running

    @asynccontextmanager
    async def run(
        self,
        request: TraversalRequest | None = None,
        *,
        sockets: Any = None,
        on_event: Callable[[LeaseEvent], None] | None = None,
    ) -> AsyncIterator[Held]:
        """Run the chain for ``request``; hold the winning endpoint until the context exits.

        Raises ``ChainExhausted`` (with every attempt) when no method meets the goal.
        """
        request = request or TraversalRequest(goal=self.config.chain.goal)
        specs = [s for s in self.specs if request.transport in s.transports]
        strategy = self.config.chain.strategy

        def emit(event: LeaseEvent) -> None:
            self.telemetry.record_lease(event)
            if self.hooks is not None:
                self.hooks.lease_event(event)
            if on_event is not None:
                on_event(event)

        # An attempt's own events (a renewal while the chain still waits for a better method,
        # a loser's keep-alive) are held back until it is announced ACQUIRED, then replayed:
        # whoever listens sees "acquired" first, and nothing from attempts that lost.
        held_back: dict[int, list[LeaseEvent]] = {}
        announced: set[int] = set()

        def attempt_emit(index: int) -> Callable[[LeaseEvent], None]:
            def emit_attempt(event: LeaseEvent) -> None:
                if index in announced:
                    emit(event)
                    return
                queue = held_back.setdefault(index, [])
                if len(queue) < _HELD_BACK_MAX:
                    queue.append(event)

            return emit_attempt

        events_send, events_recv = anyio.create_memory_object_stream[_Attempt](2 * len(specs) + 2)
        attempts: list[_Attempt] = []
        winner: _Attempt | None = None
        chain_span = self.telemetry.tracer.start_span(
            "nattrav.chain",
            attributes={
                "nattrav.strategy": strategy,
                "nattrav.goal": request.goal.value,
                "nattrav.port": request.port,
            },
        )
        exhausted: ChainExhausted | None = None
        try:
            with single_errors():
                async with anyio.create_task_group() as tg:
                    with trace.use_span(chain_span, end_on_exit=False):
                        winner = await self._decide(
                            tg,
                            specs,
                            attempts,
                            request,
                            sockets,
                            attempt_emit,
                            events_send,
                            events_recv,
                        )
                        records = tuple(_final_record(a, winner) for a in attempts)
                        if winner is None or winner.acquisition is None:
                            chain_span.set_attribute("nattrav.outcome", "exhausted")
                            if self.hooks:
                                self.hooks.chain_finished(request, None, records)
                            self.telemetry.record_chain(None)
                            exhausted = ChainExhausted(list(records), goal=request.goal.value)
                        else:
                            result = await self._result(
                                winner, attempts, records, request, strategy, sockets, emit
                            )
                            chain_span.set_attribute("nattrav.outcome", "succeeded")
                            chain_span.set_attribute("nattrav.method", result.method)
                            chain_span.set_attribute("nattrav.endpoint", str(result.endpoint))
                            chain_span.end()
                            if self.hooks:
                                self.hooks.chain_finished(request, result, records)
                            self.telemetry.record_chain(result.method)
                    if exhausted is None and winner is not None:
                        assert winner.acquisition is not None
                        emit(
                            LeaseEvent(
                                LeaseEventKind.ACQUIRED,
                                result.method,
                                result.endpoint,
                                f"{result.candidate.kind.value} endpoint via {result.method}",
                                _acquired_details(result.candidate),
                            )
                        )
                        announced.add(winner.index)
                        for event in held_back.pop(winner.index, []):
                            emit(event)
                        held_back.clear()
                        try:
                            yield Held(result, winner.acquisition.channel)
                        finally:
                            winner.release.set()
                            with anyio.CancelScope(shield=True):
                                await winner.done.wait()
                            emit(
                                LeaseEvent(LeaseEventKind.RELEASED, result.method, result.endpoint)
                            )
        finally:
            events_send.close()
            events_recv.close()
            if chain_span.is_recording():
                chain_span.end()
        if exhausted is not None:
            raise exhausted
        if winner is not None and winner.failure is not None:
            raise winner.failure

    @asynccontextmanager
    async def gather(
        self,
        request: TraversalRequest | None = None,
        *,
        sockets: Any = None,
        on_event: Callable[[LeaseEvent], None] | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[Gathered]:
        """Run every method at once and hold every candidate they obtain.

        Peer-to-peer connect needs all candidates (host, reflexive, mapped, relayed) at the same
        time, because connectivity checks with the other peer decide which path works; nothing
        is cancelled for being worse. Methods still acquiring after ``timeout`` seconds are
        cancelled. A held candidate that is lost later is reported (``LeaseEvent`` LOST) without
        ending the others. Everything is released when the context exits.
        """
        request = attrs.evolve(request or TraversalRequest(), goal=Goal.ANY)
        specs = [s for s in self.specs if request.transport in s.transports]

        def emit(event: LeaseEvent) -> None:
            self.telemetry.record_lease(event)
            if self.hooks is not None:
                self.hooks.lease_event(event)
            if on_event is not None:
                on_event(event)

        send, recv = anyio.create_memory_object_stream[_Attempt](2 * len(specs) + 2)
        attempts: list[_Attempt] = []
        detached = anyio.CancelScope()  # a lost candidate must not end the others
        try:
            with single_errors():
                async with anyio.create_task_group() as tg:
                    for spec in specs:
                        attempt = _Attempt(len(attempts), spec)
                        attempt.started_at = anyio.current_time()
                        attempts.append(attempt)
                        ctx = self._context(request, spec, sockets, emit)
                        tg.start_soon(self._attempt, attempt, ctx, send.clone(), detached)
                    deadline = anyio.current_time() + (math.inf if timeout is None else timeout)
                    while any(a.running and a.acquisition is None for a in attempts):
                        left = deadline - anyio.current_time()
                        if left <= 0:
                            break
                        with anyio.move_on_after(left):
                            await recv.receive()
                    for a in attempts:
                        if a.running and a.acquisition is None:
                            a.scope.cancel()
                    with anyio.move_on_after(RELEASE_BOUND, shield=True):
                        for a in attempts:
                            if a.acquisition is None and a.running:
                                await a.done.wait()
                    held = [a for a in attempts if a.acquisition is not None]
                    records = tuple(
                        a.record
                        or AttemptRecord(a.spec.name, AttemptOutcome.SKIPPED, "not started")
                        for a in attempts
                    )
                    try:
                        yield Gathered(
                            tuple(a.acquisition for a in held if a.acquisition is not None),
                            records,
                        )
                    finally:
                        for a in held:
                            a.release.set()
                        with anyio.move_on_after(RELEASE_BOUND, shield=True):
                            for a in held:
                                await a.done.wait()
        finally:
            send.close()
            recv.close()

    def _context(
        self,
        request: TraversalRequest,
        spec: MethodSpec | PathProbeSpec,
        sockets: Any,
        emit: Callable[[LeaseEvent], None],
        proving: Callable[[], None] | None = None,
    ) -> AttemptContext:
        return AttemptContext(
            request=request,
            method=spec.name,
            settings=self._settings(spec.plugin),
            sockets=sockets,
            breakers=self.breakers,
            telemetry=self.telemetry,
            emit=emit,
            proving=proving or (lambda: None),
            journal=self.journal,
            pluginmanager=self.hooks.pluginmanager if self.hooks is not None else None,
        )

    async def _result(
        self,
        winner: _Attempt,
        attempts: Sequence[_Attempt],
        records: tuple[AttemptRecord, ...],
        request: TraversalRequest,
        strategy: str,
        sockets: Any,
        emit: Callable[[LeaseEvent], None],
    ) -> TraversalResult:
        assert winner.acquisition is not None
        acquisition = winner.acquisition
        kept = tuple(
            a.record.candidate
            for a in attempts
            if a is not winner
            and a.record is not None
            and a.record.candidate
            and a.record.outcome is not AttemptOutcome.FAILED  # a refuted, deleted mapping
        )
        result = TraversalResult(
            goal=request.goal,
            candidate=acquisition.candidate,
            attempts=records,
            candidates=(acquisition.candidate, *acquisition.also, *kept),
            strategy=strategy,
        )
        if self.config.chain.probe_paths and self.path_probes:
            path = await self._probe_paths(result, request, sockets, emit, acquisition.channel)
            result = attrs.evolve(result, path=path)
        return result

    async def _decide(
        self,
        tg: anyio.abc.TaskGroup,
        specs: Sequence[MethodSpec],
        attempts: list[_Attempt],
        request: TraversalRequest,
        sockets: Any,
        emit_for: Callable[[int], Callable[[LeaseEvent], None]],
        events_send: MemoryObjectSendStream[_Attempt],
        events_recv: MemoryObjectReceiveStream[_Attempt],
    ) -> _Attempt | None:
        """Launch attempts per the strategy until a winner is known or all are done; stop
        the losers and wait until they released what they held."""
        strategy = self.config.chain.strategy
        stagger = self.config.chain.stagger if strategy == "race" else math.inf
        pending = list(range(len(specs)))  # spec indices not started yet, in chain order
        overdue: set[int] = set()  # passed over because their group was busy

        def busy(group: str | None) -> bool:
            return group is not None and any(a.running and a.spec.group == group for a in attempts)

        def launchable() -> int | None:
            for i in pending:
                if not busy(specs[i].group):
                    return i
                overdue.add(i)
            return None

        def launch(index: int) -> None:
            pending.remove(index)
            overdue.discard(index)
            attempt = _Attempt(index, specs[index])
            attempt.started_at = anyio.current_time()
            attempts.append(attempt)

            def proving() -> None:
                if not attempt.proving:
                    attempt.proving = True
                    _poke(events_send, attempt)

            ctx = self._context(request, attempt.spec, sockets, emit_for(index), proving)
            tg.start_soon(self._attempt, attempt, ctx, events_send.clone(), tg.cancel_scope)

        winner: _Attempt | None = None
        last_launch = -math.inf
        grace_deadline = math.inf
        while True:
            now = anyio.current_time()
            best = _best_success(attempts)
            hopeful: list[int] = []  # not started, and would give a better kind than ``best``
            deadline = grace_deadline
            if best is not None:
                assert best.acquisition is not None
                kind = best.acquisition.candidate.kind.preference
                better = [a for a in attempts if a.running and a.index < best.index]
                hopeful = [i for i in pending if i < best.index and specs[i].kind.preference < kind]
                # A better method holding a candidate that is only being verified (a mapping
                # in hand, its proof slowed by a lossy link) may finish: verification is
                # bounded, and a mapping beats a relay.
                verifying = max((a.verifying_until for a in better), default=-math.inf)
                verifying += VERIFY_SLACK
                deadline = max(grace_deadline, verifying)
                if (not better and not hopeful) or now >= deadline:
                    winner = best
                    break
                # A relay (the last resort, with a per-byte cost) waits the longer
                # ``fallback_grace`` for a better kind, and so does any success when every
                # candidate meets the goal (``any``: the better kind is simply better). With
                # ``reachable`` a mapping does not wait for a reflexive candidate's filtering
                # proof: once a mapping of the port is held that proof cannot tell the NAT's
                # filtering apart from the mapping, and a mapping is reachable anyway.
                patient = (
                    best.acquisition.candidate.kind is CandidateKind.RELAYED
                    or request.goal is Goal.ANY
                )
                worse = patient and (
                    bool(hopeful) or any(a.spec.kind.preference < kind for a in better)
                )
                wait = self.config.chain.fallback_grace if worse else self.config.chain.grace
                grace_deadline = min(grace_deadline, now + wait)
                deadline = max(grace_deadline, verifying)
            running = any(a.running for a in attempts)
            if best is None:
                nxt = launchable()
            else:  # a worse-kind success is in hand: still start what could beat it
                nxt = next((i for i in hopeful if not busy(specs[i].group)), None)
            if nxt is None and not running:
                break
            # Racing, only attempts still connecting hold the next one back (RFC 8305's
            # stagger); one that holds its candidate and is only proving it does not.
            connecting = running
            if strategy == "race":
                connecting = any(a.running and not a.proving for a in attempts)
            if nxt is not None and (
                best is not None or not connecting or now >= last_launch + stagger or nxt in overdue
            ):
                launch(nxt)
                last_launch = now
                continue
            wake = deadline
            if nxt is not None:
                wake = min(wake, last_launch + stagger)
            with anyio.move_on_after(max(0.0, wake - now)):
                await events_recv.receive()
            while True:  # drain whatever else is ready
                try:
                    events_recv.receive_nowait()
                except anyio.WouldBlock:
                    break
        events_send.close()

        for a in attempts:
            if a is winner:
                continue
            if a.acquisition is not None or not a.running:
                a.release.set()
            elif a.running:
                a.scope.cancel()
        for i in pending:
            reason = f"not needed: {winner.spec.name} already won" if winner else "not started"
            attempts.append(_skipped(i, specs[i], reason))
        attempts.sort(key=lambda a: a.index)
        with anyio.move_on_after(RELEASE_BOUND, shield=True):
            for a in attempts:
                if a is not winner and a.running:
                    await a.done.wait()
        return winner

    async def _probe_paths(
        self,
        result: TraversalResult,
        request: TraversalRequest,
        sockets: Any,
        emit: Callable[[LeaseEvent], None],
        channel: DatagramChannel | None = None,
    ) -> tuple[PathProperty, ...]:
        found: list[PathProperty] = []
        for spec in self.path_probes:
            ctx = self._context(request, spec, sockets, emit)
            ctx.channel = channel
            try:
                prop = await spec.factory().probe(result, ctx)
            except Exception as exc:  # a path probe never costs the user the endpoint
                prop = PathProperty(spec.name, None, f"failed: {type(exc).__name__}: {exc}")
            if prop is not None:
                found.append(prop)
        return tuple(found)

    async def _attempt(
        self,
        attempt: _Attempt,
        ctx: AttemptContext,
        notify: MemoryObjectSendStream[_Attempt],
        chain_scope: anyio.CancelScope,
    ) -> None:
        """One method's attempt: breaker check, acquisition with retries, then hold or stop."""
        spec = attempt.spec
        breaker = self.breakers.get(spec.name)
        start = anyio.current_time()
        span = self.telemetry.tracer.start_span(
            "nattrav.attempt",
            attributes={"nattrav.method": spec.name, "nattrav.priority": spec.priority},
        )
        tries = 0

        def finish(record: AttemptRecord) -> None:
            attempt.record = record
            self.telemetry.record_attempt(span, record)
            span.end()
            if self.hooks:
                self.hooks.attempt_finished(record)

        try:
            # Current while the attempt runs: protocol spans (and the method's keep-alive
            # work, in tasks started from here) nest under it.
            with trace.use_span(span, end_on_exit=False), attempt.scope:
                if not breaker.allow():
                    err = CircuitOpen(spec.name, breaker.retry_after())
                    finish(_record(spec, AttemptOutcome.SKIPPED, err, start, 0))
                    return
                try:
                    async with anyio.create_task_group() as holder:
                        try:
                            tries, acquisition = await self._acquire(attempt, ctx, holder)
                        except TimeoutError:
                            breaker.failure()
                            holder.cancel_scope.cancel()
                            finish(
                                AttemptRecord(
                                    spec.name,
                                    AttemptOutcome.TIMED_OUT,
                                    f"no result within {self._timeout(spec):.1f} s",
                                    anyio.current_time() - start,
                                    max(tries, 1),
                                    "TimeoutError",
                                    priority=spec.priority,
                                )
                            )
                            return
                        except MethodError as exc:
                            breaker.failure()
                            holder.cancel_scope.cancel()
                            outcome = (
                                AttemptOutcome.UNAVAILABLE
                                if isinstance(exc, MethodUnavailable)
                                else AttemptOutcome.FAILED
                            )
                            finish(_record(spec, outcome, exc, start, getattr(exc, "_tries", 1)))
                            return
                        except Exception as exc:  # a plugin bug must not break the chain
                            breaker.failure()
                            holder.cancel_scope.cancel()
                            finish(_record(spec, AttemptOutcome.FAILED, exc, start, max(tries, 1)))
                            return
                        breaker.success()
                        shortfall = self._shortfall(ctx, acquisition)
                        met = shortfall is None
                        finish(
                            AttemptRecord(
                                spec.name,
                                AttemptOutcome.SUCCEEDED if met else AttemptOutcome.INSUFFICIENT,
                                _describe_candidate(acquisition.candidate, met, shortfall),
                                anyio.current_time() - start,
                                tries,
                                candidate=acquisition.candidate,
                                priority=spec.priority,
                            )
                        )
                        if met:
                            attempt.acquisition = acquisition
                            _poke(notify, attempt)
                        else:
                            attempt.release.set()
                        # The holder task group now waits until _hold is told to release.
                except Exception as exc:  # the held endpoint failed for good
                    if attempt.acquisition is None:
                        raise
                    self._lost(attempt, ctx, exc, chain_scope)
            if attempt.scope.cancelled_caught and attempt.record is None:
                breaker.cancelled()
                finish(
                    AttemptRecord(
                        spec.name,
                        AttemptOutcome.CANCELLED,
                        "cancelled: a preferred method won first",
                        anyio.current_time() - start,
                        max(tries, 1),
                        priority=spec.priority,
                    )
                )
        finally:
            if attempt.record is None:  # cancelled from outside (the whole run was cancelled)
                span.end()
            attempt.running = False
            attempt.done.set()
            _poke(notify, attempt)
            notify.close()

    def _shortfall(self, ctx: AttemptContext, acquisition: Acquisition) -> str | None:
        """Why ``acquisition`` does not meet the request's goal, or ``None`` when it does."""
        request = ctx.request
        candidate = acquisition.candidate
        if not request.goal.accepts(candidate):
            return "goal"
        if (
            request.goal is Goal.REACHABLE
            and candidate.address.family == 6
            and 4 in request.families
            and (ctx.sockets is None or 4 in ctx.sockets.families)
            and self.ipv4_route()
        ):
            return (
                "IPv6 only: peers without IPv6 could not reach it, and IPv4 was requested "
                "(ask for IPv6 alone to use it)"
            )
        return None

    def _lost(
        self,
        attempt: _Attempt,
        ctx: AttemptContext,
        exc: BaseException,
        chain_scope: anyio.CancelScope,
    ) -> None:
        """The winner's endpoint failed beyond its own recovery: end the run with one error."""
        cause = sole_exception(exc) if isinstance(exc, BaseExceptionGroup) else exc
        cause = cause or exc
        reason = (
            cause.reason if isinstance(cause, MethodError) else f"{type(cause).__name__}: {cause}"
        )
        failure = MethodError(attempt.spec.name, f"endpoint lost: {reason}")
        failure.__cause__ = cause
        attempt.failure = failure
        assert attempt.acquisition is not None
        ctx.emit(
            LeaseEvent(
                LeaseEventKind.LOST,
                attempt.spec.name,
                attempt.acquisition.candidate.address,
                reason,
            )
        )
        chain_scope.cancel()

    async def _acquire(
        self,
        attempt: _Attempt,
        ctx: AttemptContext,
        holder: anyio.abc.TaskGroup,
    ) -> tuple[int, Acquisition]:
        """Acquire with retries and a per-try deadline; verify; return (tries, acquisition)."""
        spec = attempt.spec
        policy = self._retry_policy(spec.name)
        timeout = self._timeout(spec)
        tries = 0
        reacquired = False
        try:
            async for retry in stamina.retry_context(
                on=_is_retryable,
                attempts=max(1, policy.attempts),
                timeout=policy.timeout,
                wait_initial=policy.wait_initial,
                wait_max=policy.wait_max,
                wait_jitter=policy.wait_jitter,
            ):
                with retry:
                    tries += 1
                    attempt.proving = False  # a new try is connecting again
                    if self.hooks:
                        self.hooks.attempt_started(spec.name, ctx.request, tries)
                    method = spec.factory()
                    release = anyio.Event()
                    released = anyio.Event()
                    with anyio.fail_after(timeout):
                        acquisition: Acquisition = await holder.start(
                            _hold, method, ctx, release, attempt.release, released
                        )
                    attempt.verifying_until = anyio.current_time() + self._verify_bound()
                    try:
                        verdict = await self._verify(acquisition.candidate, ctx)
                    finally:
                        attempt.verifying_until = -math.inf
                    if verdict is not None:
                        candidate = acquisition.candidate.with_reachability(verdict)
                        acquisition = attrs.evolve(acquisition, candidate=candidate)
                        if verdict.inbound is Inbound.NO and _claimed(acquisition):
                            # The gateway said it maps but nothing arrives: delete it (and wait
                            # until it is gone, so the new request does not meet the old
                            # mapping), then add it once more.
                            release.set()
                            with anyio.move_on_after(RELEASE_BOUND):
                                await released.wait()
                            if reacquired:
                                raise MethodError(
                                    spec.name,
                                    f"{candidate.address} was created but does not forward "
                                    f"inbound traffic ({verdict.how}); deleted, added once "
                                    "more, still not forwarding: abandoned",
                                    candidate=candidate,
                                )
                            reacquired = True
                            raise MethodError(
                                spec.name,
                                "mapping does not forward",
                                retryable=True,
                                candidate=candidate,
                            )
                    return tries, acquisition
        except MethodError as exc:
            exc._tries = tries  # type: ignore[attr-defined]
            raise
        raise MethodError(
            spec.name, "no attempt made"
        )  # pragma: no cover - stamina always runs once

    def _verify_bound(self) -> float:
        """The longest ``_verify`` can take: each verifier is bounded by 4 verify windows."""
        return self.config.chain.verify_window * 4 * max(1, len(self.verifiers))

    async def _verify(self, candidate: Candidate, ctx: AttemptContext) -> Any:
        """Ask verifiers to prove or refute inbound reachability; ``None`` when none can tell."""
        if not self.config.chain.verify or candidate.reachability.verified:
            return None
        if ctx.request.goal is Goal.ANY and candidate.reachability.inbound is not Inbound.UNKNOWN:
            return None
        for spec in self.verifiers:
            if candidate.kind not in spec.kinds:
                continue
            try:
                with anyio.move_on_after(self.config.chain.verify_window * 4):
                    verdict = await spec.factory().verify(candidate, ctx)
                    if verdict is not None:
                        return verdict
            except Exception as exc:
                ctx.logger.info("verifier %s failed: %s", spec.name, exc)
        return None


async def _hold(
    method: TraversalMethod,
    ctx: AttemptContext,
    release: anyio.Event,
    chain_release: anyio.Event,
    released: anyio.Event | None = None,
    *,
    task_status: anyio.abc.TaskStatus[Acquisition] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Enter the method's context in this task, report it, and hold it until released.

    ``released`` is set once the method's context has exited (the resource is gone)."""
    try:
        async with method.acquire(ctx) as acquisition:
            if not isinstance(acquisition, Acquisition):
                raise TypeError(
                    f"method {ctx.method!r} yielded {type(acquisition).__name__}, not Acquisition"
                )
            task_status.started(acquisition)
            async with anyio.create_task_group() as tg:

                async def wait_for(event: anyio.Event) -> None:
                    await event.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(wait_for, release)
                tg.start_soon(wait_for, chain_release)
    finally:
        if released is not None:
            released.set()


def _poke(notify: MemoryObjectSendStream[_Attempt], attempt: _Attempt) -> None:
    """Wake the coordinator; never block (it may have stopped listening)."""
    try:
        notify.send_nowait(attempt)
    except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass


def _is_retryable(exc: Exception) -> bool:
    return isinstance(exc, MethodError) and exc.retryable


def _claimed(acquisition: Acquisition) -> bool:
    """A gateway created it on request, so a refuted claim means "delete and re-add"."""
    return acquisition.candidate.kind is CandidateKind.PORT_MAPPED


def _best_success(attempts: Sequence[_Attempt]) -> _Attempt | None:
    """The successful attempt earliest in chain order (attempts may start out of order).

    Only attempts whose candidate met the goal keep an ``acquisition``."""
    done = [a for a in attempts if a.acquisition is not None]
    return min(done, key=lambda a: a.index) if done else None


def _acquired_details(candidate: Candidate) -> dict[str, Any]:
    """What an ACQUIRED event says about the endpoint: its kind, how sure inbound works, and
    who may send to it (a relay forwards only from permitted peers)."""
    r = candidate.reachability
    details: dict[str, Any] = {
        "kind": candidate.kind.value,
        "inbound": r.inbound.value,
        "verified": r.verified,
        "how": r.how,
        "lifetime": candidate.lifetime,
    }
    if "permitted" in candidate.details:
        details["permitted"] = list(candidate.details["permitted"] or [])
    if "inbound" in candidate.details:
        details["inbound_from"] = str(candidate.details["inbound"])
    return details


def _has_ipv4_route() -> bool:
    from nattrav.gateways import default_gateways

    try:
        return bool(default_gateways(4))
    except OSError:
        return False


def _record(
    spec: MethodSpec, outcome: AttemptOutcome, exc: BaseException, start: float, tries: int
) -> AttemptRecord:
    reason = exc.reason if isinstance(exc, MethodError) else f"{type(exc).__name__}: {exc}"
    candidate = exc.candidate if isinstance(exc, MethodError) else None
    return AttemptRecord(
        spec.name,
        outcome,
        reason,
        anyio.current_time() - start,
        tries,
        type(exc).__name__,
        candidate=candidate if isinstance(candidate, Candidate) else None,
        priority=spec.priority,
    )


def _skipped(index: int, spec: MethodSpec, reason: str) -> _Attempt:
    attempt = _Attempt(index, spec, running=False)
    attempt.record = AttemptRecord(
        spec.name, AttemptOutcome.SKIPPED, reason, priority=spec.priority
    )
    return attempt


def _final_record(attempt: _Attempt, winner: _Attempt | None) -> AttemptRecord:
    record = attempt.record or AttemptRecord(
        attempt.spec.name, AttemptOutcome.SKIPPED, "not started", priority=attempt.spec.priority
    )
    if winner is not None and record.outcome is AttemptOutcome.CANCELLED:
        if attempt.index < winner.index:
            why = f"still running when {winner.spec.name} won after the grace window; cancelled"
        else:
            why = f"cancelled: {winner.spec.name} won first"
        record = attrs.evolve(record, reason=why)
    if winner is not None and attempt is not winner and record.outcome is AttemptOutcome.SUCCEEDED:
        # It succeeded too, but a better method won (or it lost the grace window).
        record = attrs.evolve(
            record,
            outcome=AttemptOutcome.CANCELLED,
            reason=f"also succeeded, but {winner.spec.name} was preferred; released",
        )
    return record


def _describe_candidate(candidate: Candidate, met: bool, shortfall: str | None = None) -> str:
    r = candidate.reachability
    verdict = (
        "accepts unsolicited inbound"
        if r.inbound is Inbound.YES
        else (
            "does not accept unsolicited inbound"
            if r.inbound is Inbound.NO
            else "unsolicited inbound unknown"
        )
    )
    text = f"{candidate.kind.value} {candidate.address}: {verdict} ({r.how})"
    if met:
        return text
    if shortfall and shortfall != "goal":
        text = f"{text}; but {shortfall}"
    return f"{text}; kept as a hole-punching candidate"
