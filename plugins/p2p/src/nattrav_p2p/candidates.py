"""ICE candidates: priorities, foundations and the pair arithmetic of RFC 8445 (pure functions).

Theory of operation
-------------------
The chain gathers nattrav ``Candidate`` values (host, server-reflexive, port-mapped, relayed);
``IceCandidate`` adds what connectivity checks need: a *foundation* (candidates of the same
type, from the same base IP, through the same server share one, §5.1.1.3: the frozen
algorithm unfreezes pairs by foundation) and a *priority* (§5.1.2.1)::

    priority = 2^24 * type preference + 2^8 * local preference + (256 - component)

Type preferences follow §5.1.2.2 (host 126, peer-reflexive 110, server-reflexive 100, relayed
0). RFC 8445 has no port-mapped type; nattrav's chain ranks a gateway mapping between a
server-reflexive address and a relay, so it gets 90. The local preference ranks the addresses
of one type: IPv6 above IPv4 (RFC 8421 spirit) and earlier-listed addresses above later ones.

Pair priority (§6.1.2.3), with G the controlling agent's candidate priority and D the
controlled one's: ``2^32 * min(G, D) + 2 * max(G, D) + (1 if G > D else 0)``. Both agents
compute the same number for the same pair, which is what keeps their check orders aligned.

``route`` names the local path a candidate's traffic takes: ``"mux"`` for every candidate
whose base is the application's UDP port (host, server-reflexive, port-mapped: their packets
all leave from the same socket), ``"relay:<address>"`` for a TURN allocation's channel.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import attrs
from nattrav.addresses import AddressScope, scope_of
from nattrav.models import Candidate, CandidateKind, Transport, TransportAddress

__all__ = [
    "MUX_ROUTE",
    "TYPE_PREFERENCE",
    "IceCandidate",
    "candidate_priority",
    "foundation_of",
    "from_gathered",
    "host_candidates",
    "pair_priority",
    "path_kind",
    "relay_route",
]

MUX_ROUTE = "mux"

#: §5.1.2.2 recommended type preferences; port-mapped sits between srflx and relay.
TYPE_PREFERENCE: dict[CandidateKind, int] = {
    CandidateKind.HOST: 126,
    CandidateKind.PEER_REFLEXIVE: 110,
    CandidateKind.SERVER_REFLEXIVE: 100,
    CandidateKind.PORT_MAPPED: 90,
    CandidateKind.RELAYED: 0,
}


def relay_route(relayed: TransportAddress) -> str:
    """The route name of a relayed candidate (one per TURN allocation)."""
    return f"relay:{relayed}"


def candidate_priority(kind: CandidateKind, local_preference: int, component: int = 1) -> int:
    """§5.1.2.1: ``2^24 * type + 2^8 * local + (256 - component)``."""
    if not 0 <= local_preference <= 65535:
        raise ValueError("local preference must be 0-65535")
    if not 1 <= component <= 256:
        raise ValueError("component must be 1-256")
    return (TYPE_PREFERENCE[kind] << 24) + (local_preference << 8) + (256 - component)


def pair_priority(controlling: int, controlled: int) -> int:
    """§6.1.2.3 pair priority from the controlling (G) and controlled (D) priorities."""
    g, d = controlling, controlled
    return (min(g, d) << 32) + 2 * max(g, d) + (1 if g > d else 0)


def foundation_of(kind: CandidateKind, base_ip: str, server: str, transport: Transport) -> str:
    """§5.1.1.3: equal for the same type, base IP, server and transport (8 hex digits)."""
    text = f"{kind.value}|{base_ip}|{server}|{transport.value}".encode()
    return hashlib.blake2s(text, digest_size=4).hexdigest()


@attrs.frozen
class IceCandidate:
    """One candidate as the checks see it (ours or the peer's).

    ``base`` is where its traffic leaves from (§5.1.1.1: a host or relayed candidate is its
    own base; a reflexive or mapped one has its host's). ``route`` is set on our own
    candidates only (``"mux"`` or ``"relay:<addr>"``). ``related`` is the base of a reflexive,
    mapped or relayed candidate, for reports (the peer's is as it told us).
    """

    foundation: str
    priority: int
    kind: CandidateKind
    address: TransportAddress
    base: TransportAddress | None = None
    component: int = 1
    related: TransportAddress | None = None
    route: str = MUX_ROUTE
    method: str = ""

    @property
    def family(self) -> int:
        return self.address.family

    def describe(self) -> str:
        return f"{self.kind.value} {self.address}"

    def to_json(self) -> dict[str, object]:
        """The form exchanged in offers and answers (no local-only fields)."""
        out: dict[str, object] = {
            "foundation": self.foundation,
            "priority": self.priority,
            "kind": self.kind.value,
            "address": str(self.address),
            "transport": self.address.transport.value,
            "component": self.component,
        }
        if self.related is not None:
            out["related"] = str(self.related)
        return out


def _local_preference(family: int, index: int) -> int:
    # IPv6 above IPv4, earlier addresses above later ones; stays within 16 bits.
    top = 65535 if family == 6 else 32767
    return max(0, top - index)


def host_candidates(
    ips: Iterable[str], port: int, *, include_loopback: bool = False
) -> list[IceCandidate]:
    """Host candidates on the application's port for the given interface addresses.

    Loopback and link-local addresses are left out (a peer on another host cannot use them;
    link-local would need a zone) unless ``include_loopback`` (two peers on one machine).
    """
    out: list[IceCandidate] = []
    counters = {4: 0, 6: 0}
    seen: set[str] = set()
    for ip in ips:
        scope = scope_of(ip)
        if scope is AddressScope.LINK_LOCAL:
            continue
        if scope is AddressScope.LOOPBACK and not include_loopback:
            continue
        if ip in seen:
            continue
        seen.add(ip)
        address = TransportAddress(ip, port)
        fam = address.family
        out.append(
            IceCandidate(
                foundation=foundation_of(CandidateKind.HOST, ip, "", Transport.UDP),
                priority=candidate_priority(
                    CandidateKind.HOST, _local_preference(fam, counters[fam])
                ),
                kind=CandidateKind.HOST,
                address=address,
                base=address,
                method="host",
            )
        )
        counters[fam] += 1
    return out


def from_gathered(
    candidates: Sequence[Candidate], mux_port: int, relay_routes: dict[TransportAddress, str]
) -> list[IceCandidate]:
    """ICE candidates for what the chain gathered (UDP only; host ones come separately).

    Host candidates from ``direct`` are included (they are public interface addresses).
    ``relay_routes`` maps a relayed address to its route (the connector owns the channels).
    Candidates of other transports, and relayed ones without a channel, are skipped.
    """
    out: list[IceCandidate] = []
    counters: dict[tuple[CandidateKind, int], int] = {}
    for cand in candidates:
        if cand.address.transport is not Transport.UDP:
            continue
        kind = cand.kind
        if kind is CandidateKind.RELAYED:
            route = relay_routes.get(cand.address)
            if route is None:
                continue
            base: TransportAddress | None = cand.address
            related = cand.base
        else:
            route = MUX_ROUTE
            base = cand.base or cand.address
            related = cand.base if kind is not CandidateKind.HOST else None
        server = str(cand.details.get("server", "")) if cand.details else ""
        base_ip = (cand.base or cand.address).host
        fam = cand.address.family
        index = counters.get((kind, fam), 0)
        counters[(kind, fam)] = index + 1
        out.append(
            IceCandidate(
                foundation=foundation_of(kind, base_ip, server or cand.method, Transport.UDP),
                priority=candidate_priority(kind, _local_preference(fam, index)),
                kind=kind,
                address=cand.address,
                base=base,
                related=related,
                route=route,
                method=cand.method,
            )
        )
    _ = mux_port
    return out


def path_kind(local: CandidateKind, remote: CandidateKind) -> str:
    """How a working pair crosses the networks, in the chain's words.

    ``relay`` when either end is relayed; ``direct`` when either end is a host candidate
    (one side accepts traffic on its own address: no NAT to open on that side); ``mapped``
    when either end is a gateway mapping; otherwise both ends are reflexive and the NATs
    were opened by simultaneous checks: ``punched``.
    """
    kinds = {local, remote}
    if CandidateKind.RELAYED in kinds:
        return "relay"
    if CandidateKind.HOST in kinds:
        return "direct"
    if CandidateKind.PORT_MAPPED in kinds:
        return "mapped"
    return "punched"
