"""``stun-inbound``: prove or refute that unsolicited inbound traffic reaches a candidate.

Theory of operation
-------------------
The chain asks verifiers after a method produced a candidate. This one uses an RFC 5780 STUN
server to make a packet arrive from an address the application never talked to:

* host and reflexive candidates: from the application's port (``ctx.sockets``), a plain
  Binding first (the server must see exactly the candidate's address, else this server cannot
  speak for it), then a Binding with CHANGE-REQUEST "change IP and port". The answer comes
  from OTHER-ADDRESS: if it arrives, inbound works (``proven``). If it does not, the verdict is
  ``refused`` only after the server showed, to a separate socket, that its alternate address
  answers at all; otherwise ``None`` (cannot tell). Alongside these steps, from the start, one
  more CHANGE-REQUEST goes out with its own retransmissions: its answer alone proves inbound
  (it says what the server saw, and comes from an address this port never sent to). On a lossy
  link the steps in order need two exchanges to get through within the chain's bound of the
  verification (a cold RTO of 0.5 s allows three sends in 2 s); this one needs one, so a lost
  plain Binding no longer costs a working public address its proof.
* port-mapped candidates (UPnP, NAT-PMP, PCP): from a separate socket behind the same NAT
  (its public IP must be the candidate's), first check that the server honours
  RESPONSE-PORT (aimed at that socket's own mapping), then ask for the answer to be sent to
  the candidate's external port, from the alternate address when the server has one. The
  mapping must forward it to the application's port, where the shared-port subscription
  picks it up (``proven``); silence after a working RESPONSE-PORT check is ``refused``: the
  gateway says it maps, but nothing arrives (tailscale#21208).

Each check waits ``probe_window``, or twice the round trip the first Binding measured when
that is longer (a 200 ms link must not pass for silence). Silence refutes only when it
happens twice: on a lossy link one lost answer (or request) is likely, and a refuted mapping
is deleted and, refuted again, abandoned. The chain bounds the whole verification. Returns
``None`` whenever the server or the setting cannot decide (no server, no RFC 5780, another
public IP, a TCP candidate, no shared port).
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import anyio
from nattrav.method import AttemptContext
from nattrav.models import Candidate, CandidateKind, Reachability, Transport

from nattrav_stun.codec import CHANGE_IP, CHANGE_PORT, CHANGE_REQUEST, RESPONSE_PORT, Address
from nattrav_stun.config import StunConfig
from nattrav_stun.driver import Endpoint, StunClient, StunError
from nattrav_stun.events import BindingResult
from nattrav_stun.method import mapping_epoch, port_forwarded, port_talked_to
from nattrav_stun.tracing import traced_binding
from nattrav_stun.uri import ServerAddress

__all__ = ["StunVerifier", "VERIFIER"]

VERIFIER = "stun-inbound"
#: how many silent probes in a row refute a candidate (a lossy link loses single answers)
SILENT_PROBES = 2


def _window(configured: float, first: BindingResult) -> float:
    """How long to wait for a probe's answer: ``probe_window``, or twice the round trip the
    first Binding measured when that is longer. Its RTT is measured only when it went out
    once (Karn's rule): a retransmission on a lossy link says nothing about the delay."""
    return configured if first.rtt is None else max(configured, 2 * first.rtt)


def _distinct_other(result: BindingResult) -> Address | None:
    other = result.other_address
    if other is None or other.host == result.server.host or other.port == result.server.port:
        return None
    return other


class StunVerifier:
    """See the module docstring."""

    def __init__(self, config: StunConfig) -> None:
        self.config = config

    async def verify(self, candidate: Candidate, ctx: AttemptContext) -> Reachability | None:
        if candidate.address.transport is not Transport.UDP or ctx.sockets is None:
            return None
        if candidate.details.get("filtering_probe") not in (None, "skipped", "inconclusive"):
            return None  # the stun method already ran this very probe from this port
        family = candidate.address.family
        if family not in ctx.sockets.families:
            return None
        # Servers that can speak for this family (an IP literal of the other family cannot).
        servers = [
            s
            for s in self.config.parsed_servers()
            if s.transport == "udp" and (not s.is_literal or (":" in s.host) == (family == 6))
        ]
        if not servers:
            return None
        async with AsyncExitStack() as stack:
            client = await stack.enter_async_context(
                StunClient.open(self.config.client_settings(), mux=ctx.sockets)
            )
            app = client.mux_endpoint
            assert app is not None
            for server in servers[:2]:
                try:
                    if candidate.kind is CandidateKind.PORT_MAPPED:
                        verdict = await self._port_mapped(
                            client, candidate, server, family, ctx.sockets, ctx
                        )
                    else:
                        verdict = await self._reflexive(
                            client, candidate, server, app, ctx.sockets, ctx
                        )
                except StunError:
                    continue
                if verdict is not None:
                    return verdict
        return None

    async def _reflexive(
        self,
        client: StunClient,
        candidate: Candidate,
        server: ServerAddress,
        app: Endpoint,
        mux: Any,
        ctx: AttemptContext | None = None,
    ) -> Reachability | None:
        """The steps in order (``_stepwise``) and, alongside, the one-exchange proof
        (``_change_request_proof``): a proof from either is the verdict; otherwise what the
        steps concluded (their end cancels the other)."""
        verdict: Reachability | None = None
        failed: StunError | None = None
        async with anyio.create_task_group() as tg:

            async def alongside() -> None:
                nonlocal verdict
                proof = await self._change_request_proof(client, candidate, server, app, mux, ctx)
                if proof is not None:
                    verdict = proof
                    tg.cancel_scope.cancel()

            tg.start_soon(alongside)
            try:
                verdict = await self._stepwise(client, candidate, server, app, mux, ctx)
            except StunError as exc:
                failed = exc
            tg.cancel_scope.cancel()
        if verdict is None and failed is not None:
            raise failed
        return verdict

    async def _change_request_proof(
        self,
        client: StunClient,
        candidate: Candidate,
        server: ServerAddress,
        app: Endpoint,
        mux: Any,
        ctx: AttemptContext | None = None,
    ) -> Reachability | None:
        """One CHANGE-REQUEST from the application's port, sent at once: ``proven`` when its
        answer saw the candidate and came from another IP and port, none of which this port
        ever sent to (checked when it arrives); otherwise ``None``, never a refusal (silence
        is judged by the steps, which know the alternate address answers)."""
        family = candidate.address.family
        target = Address(candidate.address.host, candidate.address.port)
        epoch = mapping_epoch(mux)
        try:
            answer = await traced_binding(
                client,
                ctx,
                server,
                purpose="verify: change-request to the candidate, at once",
                endpoint=app,
                attributes={CHANGE_REQUEST: CHANGE_IP | CHANGE_PORT},
                accept_from=None,
                families=frozenset({family}),
            )
        except StunError:
            return None
        source = answer.source
        if (
            answer.mapped != target
            or source.host == answer.server.host
            or source.port == answer.server.port
            or port_talked_to(mux, source.host)
            or port_forwarded(mux, epoch)
        ):
            return None  # another address, CHANGE-REQUEST ignored, or let in another way
        return Reachability.proven(
            f"STUN CHANGE-REQUEST: {source}, an address this port never sent to, reached {target}"
        )

    async def _stepwise(
        self,
        client: StunClient,
        candidate: Candidate,
        server: ServerAddress,
        app: Endpoint,
        mux: Any,
        ctx: AttemptContext | None = None,
    ) -> Reachability | None:
        family = candidate.address.family
        first = await traced_binding(
            client,
            ctx,
            server,
            purpose="verify: mapped address",
            endpoint=app,
            families=frozenset({family}),
        )
        window = _window(self.config.probe_window, first)
        target = Address(candidate.address.host, candidate.address.port)
        if first.mapped != target:
            return None  # this server sees another address: it cannot speak for the candidate
        other = _distinct_other(first)
        epoch = mapping_epoch(mux)
        if other is None or port_talked_to(mux, other.host) or port_forwarded(mux, epoch):
            # no alternate address, the port let it in already, or a gateway forwards the
            # port for another method: cannot tell
            return None
        answer = None
        for _ in range(SILENT_PROBES):
            try:
                answer = await traced_binding(
                    client,
                    ctx,
                    first.server,
                    purpose="verify: change-request to the candidate",
                    endpoint=app,
                    attributes={CHANGE_REQUEST: CHANGE_IP | CHANGE_PORT},
                    timeout=window,
                    accept_from=None,
                )
            except StunError:
                continue
            break
        if answer is not None:
            if (
                answer.source != other
                or port_talked_to(mux, other.host)
                or port_forwarded(mux, epoch)
            ):
                return None  # ignores CHANGE-REQUEST, or the port was opened meanwhile
            return Reachability.proven(
                f"STUN CHANGE-REQUEST: {other}, an address this port never sent to, reached "
                f"{target}"
            )
        # Silence means something only if the alternate address answers at all; ask it from
        # a separate socket so the application's filter state is untouched.
        probe = await client.add_socket(family)
        try:
            await traced_binding(
                client,
                ctx,
                other,
                purpose="verify: alternate answers",
                endpoint=probe,
                timeout=window,
            )
        except StunError:
            return None
        return Reachability.refused(
            f"STUN CHANGE-REQUEST: nothing from {other} reached {target} in {SILENT_PROBES} "
            f"tries of {window:.1f} s although that address answers: inbound traffic is "
            "filtered"
        )

    async def _port_mapped(
        self,
        client: StunClient,
        candidate: Candidate,
        server: ServerAddress,
        family: int,
        mux: Any,
        ctx: AttemptContext | None = None,
    ) -> Reachability | None:
        window = self.config.probe_window
        external = Address(candidate.address.host, candidate.address.port)
        probe = await client.add_socket(family)
        first = await traced_binding(
            client,
            ctx,
            server,
            purpose="verify: public address",
            endpoint=probe,
            families=frozenset({family}),
        )
        window = _window(window, first)
        if first.mapped.host != external.host:
            return None  # another public address: this path cannot reach the mapping
        # Does the server honour RESPONSE-PORT? Aim at our own, known-good mapping first.
        try:
            await traced_binding(
                client,
                ctx,
                first.server,
                purpose="verify: response-port control",
                endpoint=probe,
                attributes={RESPONSE_PORT: first.mapped.port},
                timeout=window,
            )
        except StunError:
            return None
        other = _distinct_other(first)
        attributes: dict[int, int] = {RESPONSE_PORT: external.port}
        if other is not None:
            attributes[CHANGE_REQUEST] = CHANGE_IP | CHANGE_PORT
        answer = None
        for _ in range(SILENT_PROBES):
            try:
                answer = await traced_binding(
                    client,
                    ctx,
                    first.server,
                    purpose="verify: response-port to the mapping",
                    endpoint=probe,
                    attributes=attributes,
                    timeout=window,
                    accept_from=None,
                )
            except StunError:
                continue
            break
        if answer is None:
            return Reachability.refused(
                f"a STUN answer sent to the mapped address {external} (RESPONSE-PORT) did not "
                f"reach the application's port in {SILENT_PROBES} tries of {window:.1f} s: "
                "the mapping does not forward"
            )
        if answer.received_on is None:
            return None  # it came back to the probe socket itself: proves nothing here
        if port_talked_to(mux, answer.source.host):
            # The application's port sent to that address: with a NAT mapping the same external
            # port, the answer may have come in through that flow, not the gateway's mapping.
            return None
        return Reachability.proven(
            f"a STUN answer sent from {answer.source} to the mapped address {external} "
            f"(RESPONSE-PORT) arrived at the application's port {answer.received_on.port}"
        )
