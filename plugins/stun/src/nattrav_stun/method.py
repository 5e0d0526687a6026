"""The ``stun`` traversal method: the server-reflexive address of the application's port.

Theory of operation
-------------------
``acquire`` sends Binding requests *from the application's own UDP port* (the shared
``DatagramMux`` in ``ctx.sockets``; when the caller brought none, the method opens its own
mux on ``request.port``), so the public endpoint it reports is the one the application's
datagrams will use. Up to ``compare`` servers are asked at once; the first answer gives the
candidate, answers that come within ``compare_wait`` say whether the mapping varies by
destination (``details["mapping_varies_by_destination"]``: true means hole punching with
this address will not work, the NAT maps per destination).

Reachability stays *unknown* (S21: a mapped address proves nothing about inbound) unless an
RFC 5780 server lets us prove it: a Binding with CHANGE-REQUEST "change IP and port" from the
application's port asks the server to answer from an address we never sent to. If that answer
arrives, unsolicited inbound traffic reaches the application (endpoint-independent filtering):
``Reachability.proven``. Silence keeps it unknown, with the reason in ``how``.

While the context is open: a Binding indication every ``keepalive`` seconds holds the NAT
binding open (indications get no answer and cost the server nothing), and a Binding request
every ``recheck`` seconds checks the mapping; a new mapped address is reported with a
``LeaseEvent`` (``changed``), a failed check with ``lost`` and the next good one with
``recovered``. Nothing is held on the server, so leaving releases nothing.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import attrs
from nattrav.errors import MethodError, MethodUnavailable
from nattrav.method import Acquisition, AttemptContext
from nattrav.models import (
    Candidate,
    CandidateKind,
    Goal,
    LeaseEvent,
    LeaseEventKind,
    Reachability,
    Transport,
    TransportAddress,
)

from nattrav_stun.codec import CHANGE_IP, CHANGE_PORT, CHANGE_REQUEST, Address
from nattrav_stun.config import StunConfig
from nattrav_stun.driver import (
    Endpoint,
    StunClient,
    StunError,
    local_address_toward,
    resolve,
)
from nattrav_stun.events import AuthenticationFailed, BindingResult, TimedOut
from nattrav_stun.tracing import traced_binding
from nattrav_stun.uri import ServerAddress

__all__ = [
    "METHOD",
    "StunMethod",
    "mapping_epoch",
    "port_forwarded",
    "port_talked_to",
    "query_servers",
]

METHOD = "stun"


@attrs.frozen
class ServerAnswer:
    """One server's view of our port (or why it gave none)."""

    server: ServerAddress
    result: BindingResult | None = None
    error: str | None = None
    retryable: bool = True

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"server": str(self.server)}
        if self.result is not None:
            data.update(
                mapped=str(self.result.mapped),
                address=str(self.result.server),
                rtt_ms=None if self.result.rtt is None else round(self.result.rtt * 1000, 2),
            )
        else:
            data["error"] = self.error
        return data


async def query_servers(
    client: StunClient,
    servers: list[ServerAddress],
    *,
    endpoint: Endpoint | None,
    families: frozenset[int],
    wait_after_first: float,
    ctx: AttemptContext | None = None,
    timeout: float | None = None,
) -> list[ServerAnswer]:
    """Ask every server at once; after the first answer wait at most ``wait_after_first``
    for the others. A server name with addresses of both families is asked over each (IPv6
    first), so the other family's mapping is reported too. Per-server circuit breakers
    (``stun:<server>``) skip dead servers. ``timeout`` bounds the wait for a first answer:
    when no server answered by then, the silent ones are reported as not worth asking again
    in this run (``retryable=False``)."""
    targets: list[tuple[ServerAddress, Address | ServerAddress]] = []
    resolution: dict[int, ServerAnswer] = {}
    for server in servers:
        if server.is_literal:
            targets.append((server, server))
            continue
        try:
            addresses = await resolve(server.host, server.port, families)
        except StunError as exc:
            resolution[len(targets)] = ServerAnswer(server, error=exc.event.describe())
            targets.append((server, server))
            continue
        for family in (6, 4):
            first_of_family = next((a for a in addresses if a.family == family), None)
            if first_of_family is not None:
                targets.append((server, first_of_family))
    answers: dict[int, ServerAnswer] = dict(resolution)
    first = anyio.Event()
    silent = False
    outwaited = False  # another server answered and these had ``wait_after_first`` more

    async with anyio.create_task_group() as tg:

        def done(index: int, answer: ServerAnswer) -> None:
            answers[index] = answer
            if answer.result is not None:
                first.set()
            if len(answers) == len(targets):
                tg.cancel_scope.cancel()

        async def ask(index: int, server: ServerAddress, target: Address | ServerAddress) -> None:
            key = f"stun:{server.hostport}"
            breaker = ctx.breakers.get(key) if ctx and ctx.breakers else None
            if breaker is not None and not breaker.allow():
                done(index, ServerAnswer(server, error="circuit breaker open"))
                return
            try:
                result = await traced_binding(
                    client,
                    ctx,
                    target,
                    purpose="mapped address",
                    endpoint=endpoint,
                    families=families,
                )
            except StunError as exc:
                if breaker is not None:
                    breaker.failure()
                retryable = not isinstance(exc.event, AuthenticationFailed)
                done(index, ServerAnswer(server, error=exc.event.describe(), retryable=retryable))
                return
            except anyio.get_cancelled_exc_class():
                if breaker is not None:
                    # Silent for the whole ``timeout``, or ``wait_after_first`` after another
                    # server answered: count it, so a dead server's breaker opens and later
                    # runs skip it (else it would cost that wait in every run). Cancelled for
                    # any other reason (the chain moved on): no verdict on the server.
                    if outwaited or silent:
                        breaker.failure()
                    else:
                        breaker.cancelled()
                raise
            if breaker is not None:
                breaker.success()
            done(index, ServerAnswer(server, result))

        async def stop_after_first() -> None:
            nonlocal silent, outwaited
            with anyio.move_on_after(math.inf if timeout is None else timeout) as waiting:
                await first.wait()
            if waiting.cancelled_caught:
                silent = True  # nobody answered in time: no point waiting for the RFC schedule
            else:
                await anyio.sleep(wait_after_first)
                outwaited = True
            tg.cancel_scope.cancel()

        if len(answers) == len(targets):
            tg.cancel_scope.cancel()
        for index, (server, target) in enumerate(targets):
            if index not in answers:
                tg.start_soon(ask, index, server, target)
        tg.start_soon(stop_after_first)
    if silent:
        for index, (server, _target) in enumerate(targets):
            if index not in answers:
                answers[index] = ServerAnswer(
                    server, error=f"no answer within {timeout:.1f} s", retryable=False
                )
    return [answers[i] for i in sorted(answers)]


def _varies(primary: BindingResult, answers: list[ServerAnswer]) -> bool | None:
    same_family = [
        a.result.mapped
        for a in answers
        if a.result is not None and a.result.mapped.family == primary.mapped.family
    ]
    if len(same_family) < 2:
        return None
    return len(set(same_family)) > 1


def _transport(address: Address) -> TransportAddress:
    return TransportAddress(address.host, address.port, Transport.UDP)


def port_talked_to(mux: Any, host: str) -> bool:
    """Has the application's port sent to ``host``? Then the NAT lets that host in anyway."""
    check = getattr(mux, "has_sent_to", None)
    return bool(check(host)) if check is not None else False


def mapping_epoch(mux: Any) -> int:
    """How many port mappings were requested for the shared port so far (0 without a mux)."""
    return int(getattr(mux, "mapping_epoch", 0))


def port_forwarded(mux: Any, since: int) -> bool:
    """May a gateway's port mapping (another method's) have let an answer in? True while one
    is held, or when one was requested after ``since`` (a ``mapping_epoch`` value)."""
    return bool(getattr(mux, "forwarded", False)) or mapping_epoch(mux) != since


async def filtering_probe(
    client: StunClient,
    primary: BindingResult,
    endpoint: Endpoint,
    window: float,
    mux: Any = None,
    ctx: AttemptContext | None = None,
) -> tuple[Reachability, str]:
    """CHANGE-REQUEST "change IP and port" from the application's port (see module doc).

    Returns the reachability and a short outcome for ``details["filtering_probe"]``. ``mux``
    is the shared port: an answer from an address it already sent to (another configured
    server, the other method using the port) proves nothing, so the probe is then skipped or
    its answer not counted (``inconclusive``).
    """
    other = primary.other_address
    server = primary.server
    if other is None or other.host == server.host or other.port == server.port:
        why = "no OTHER-ADDRESS" if other is None else f"OTHER-ADDRESS {other} is not distinct"
        return (
            Reachability.unknown(
                f"mapped address only; the server cannot test filtering (RFC 5780: {why})"
            ),
            "unsupported",
        )
    if port_talked_to(mux, other.host):
        return (
            Reachability.unknown(
                f"RFC 5780 filtering probe skipped: this port already sent to {other.host} "
                "(another configured server), so an answer from it would prove nothing"
            ),
            "inconclusive",
        )
    epoch = mapping_epoch(mux)
    if port_forwarded(mux, epoch):
        return (
            Reachability.unknown(
                "RFC 5780 filtering probe skipped: a gateway port mapping of this port is held "
                "(another method), so an answer would prove nothing about the NAT's filtering"
            ),
            "inconclusive",
        )
    try:
        answer = await traced_binding(
            client,
            ctx,
            server,
            purpose="filtering probe",
            endpoint=endpoint,
            attributes={CHANGE_REQUEST: CHANGE_IP | CHANGE_PORT},
            timeout=window,
            accept_from=None,
        )
    except StunError as exc:
        if isinstance(exc.event, TimedOut):
            return (
                Reachability.unknown(
                    f"RFC 5780 filtering probe: no answer from {other} within {window:.1f} s "
                    "(the NAT filters unsolicited inbound traffic, or the reply was lost)"
                ),
                "no-answer",
            )
        return Reachability.unknown(f"RFC 5780 filtering probe failed: {exc}"), "failed"
    if answer.source != other:
        return (
            Reachability.unknown(
                f"RFC 5780 filtering probe: the server answered from {answer.source}, not "
                f"{other}: it ignores CHANGE-REQUEST"
            ),
            "server-ignores-change-request",
        )
    if port_talked_to(mux, other.host) or port_forwarded(mux, epoch):
        return (
            Reachability.unknown(
                f"RFC 5780 filtering probe inconclusive: before its answer arrived, the port "
                f"sent to {other.host} or a gateway mapping of the port was requested"
            ),
            "inconclusive",
        )
    return (
        Reachability.proven(
            f"RFC 5780 filtering test: endpoint-independent; {other}, an address this port "
            "never sent to, reached it"
        ),
        "endpoint-independent",
    )


class StunMethod:
    """``stun``: see the module docstring."""

    def __init__(self, config: StunConfig) -> None:
        self.config = config

    def _servers(self) -> list[ServerAddress]:
        return [s for s in self.config.parsed_servers() if s.transport == "udp"]

    @asynccontextmanager
    async def acquire(self, ctx: AttemptContext) -> AsyncIterator[Acquisition]:
        cfg = self.config
        request = ctx.request
        if request.transport is not Transport.UDP:
            raise MethodUnavailable(METHOD, "STUN maps UDP ports only")
        servers = self._servers()
        if not servers:
            hint = (
                " (stuns:/TCP servers cannot map a UDP port)"
                if cfg.servers
                else "; set [plugins.stun] servers or pass --stun HOST:PORT"
            )
            raise MethodUnavailable(METHOD, f"no UDP STUN server configured{hint}")
        async with AsyncExitStack() as stack:
            mux = ctx.sockets
            if mux is None:
                from nattrav.datagram import DatagramMux

                mux = await stack.enter_async_context(
                    DatagramMux.open(request.port, families=request.families)
                )
            client = await stack.enter_async_context(
                StunClient.open(cfg.client_settings(), mux=mux)
            )
            endpoint = client.mux_endpoint
            assert endpoint is not None
            families = frozenset(request.families) & endpoint.families
            if not families:
                raise MethodUnavailable(METHOD, "the shared port has no socket of a wanted family")
            answers = await query_servers(
                client,
                servers[: cfg.compare],
                endpoint=endpoint,
                families=families,
                wait_after_first=cfg.compare_wait,
                ctx=ctx,
                timeout=cfg.answer_timeout,
            )
            good = [a for a in answers if a.result is not None]
            if not good:
                reasons = "; ".join(f"{a.server}: {a.error}" for a in answers)
                raise MethodError(
                    METHOD,
                    f"no STUN server answered ({reasons}); is outbound UDP blocked?",
                    retryable=any(a.retryable for a in answers),
                )
            primary_answer = good[0]
            primary = primary_answer.result
            assert primary is not None
            if cfg.filtering_probe:
                if request.goal is Goal.REACHABLE:
                    ctx.proving()  # the mapped address is in hand; the rest is proof
                reachability, probe = await filtering_probe(
                    client, primary, endpoint, cfg.probe_window, mux, ctx
                )
            else:
                reachability, probe = Reachability.unknown("mapped address only"), "skipped"
            local_ip = local_address_toward(primary.server)
            base_port = mux.local_address(primary.server.family).port
            base = TransportAddress(local_ip, base_port, Transport.UDP) if local_ip else None
            nat = (
                None
                if local_ip is None
                else not (primary.mapped.host == local_ip and primary.mapped.port == base_port)
            )
            details: dict[str, Any] = {
                "server": str(primary_answer.server),
                "server_address": str(primary.server),
                "servers": [a.to_json() for a in answers],
                "mapping_varies_by_destination": _varies(primary, answers),
                "other_address": None
                if primary.other_address is None
                else str(primary.other_address),
                "filtering_probe": probe,
                "nat": nat,
                "keepalive": cfg.keepalive,
            }
            candidate = Candidate(
                kind=CandidateKind.SERVER_REFLEXIVE,
                address=_transport(primary.mapped),
                method=METHOD,
                base=base,
                reachability=reachability,
                lifetime=None,
                details=details,
            )
            also = tuple(
                Candidate(
                    kind=CandidateKind.SERVER_REFLEXIVE,
                    address=_transport(a.result.mapped),
                    method=METHOD,
                    reachability=Reachability.unknown("mapped address only"),
                    details={"server": str(a.server)},
                )
                for a in good[1:]
                if a.result is not None and a.result.mapped != primary.mapped
            )
            if ctx.telemetry is not None:
                ctx.telemetry.counter(
                    "nattrav.stun.bindings", unit="{binding}", description="STUN Binding answers"
                ).add(len(good))
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._keep_alive, client, endpoint, primary, ctx)
                try:
                    yield Acquisition(candidate, also=also)
                finally:
                    tg.cancel_scope.cancel()

    async def _keep_alive(
        self,
        client: StunClient,
        endpoint: Endpoint,
        primary: BindingResult,
        ctx: AttemptContext,
    ) -> None:
        """Binding indications every ``keepalive`` s; a Binding request every ``recheck`` s
        to notice a changed or lost mapping (see the module docstring)."""
        cfg = self.config
        server = primary.server
        mapped = primary.mapped
        lost = False
        now = anyio.current_time()
        next_keepalive = now + cfg.keepalive
        next_check = now + cfg.recheck
        while True:
            await anyio.sleep(max(0.0, min(next_keepalive, next_check) - anyio.current_time()))
            now = anyio.current_time()
            if now >= next_check:
                next_check = now + cfg.recheck
                next_keepalive = now + cfg.keepalive  # the request refreshed the binding too
                try:
                    result = await traced_binding(
                        client, ctx, server, purpose="recheck", endpoint=endpoint
                    )
                except StunError as exc:
                    if not lost:
                        lost = True
                        ctx.emit(
                            LeaseEvent(
                                LeaseEventKind.LOST,
                                METHOD,
                                _transport(mapped),
                                f"mapping check failed: {exc.event.describe()}",
                            )
                        )
                    continue
                if lost:
                    lost = False
                    ctx.emit(
                        LeaseEvent(
                            LeaseEventKind.RECOVERED,
                            METHOD,
                            _transport(result.mapped),
                            "STUN answers again",
                        )
                    )
                if result.mapped != mapped:
                    ctx.emit(
                        LeaseEvent(
                            LeaseEventKind.CHANGED,
                            METHOD,
                            _transport(result.mapped),
                            f"the NAT mapping moved from {mapped} to {result.mapped}",
                            details={"previous": str(mapped)},
                        )
                    )
                    mapped = result.mapped
            elif now >= next_keepalive:
                next_keepalive = now + cfg.keepalive
                try:
                    await client.indication(server, endpoint=endpoint)
                except (StunError, OSError) as exc:
                    ctx.logger.info("stun keepalive to %s failed: %s", server, exc)
