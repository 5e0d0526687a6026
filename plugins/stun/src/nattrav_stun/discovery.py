"""RFC 5780 NAT behaviour discovery: mapping, filtering, and the opt-in extras.

Theory of operation
-------------------
Each test is a sans-IO state machine written as a generator: it yields ``Probe``s (a Binding
request to send: destination, socket, CHANGE-REQUEST flags, whether it may stay unanswered)
and is sent back an ``Outcome`` (the answer or why there was none); when it returns, its
``Verdict`` is the generator's value. Tests drive them with canned outcomes; ``run_test``
drives them over a real ``StunClient``. Nothing in the machines knows sockets or time.

Mapping (RFC 5780 §4.3), on its own socket:

* I: Binding to the primary address P:p. No answer at all: ``udp-blocked``. The mapped
  address equal to our own address: ``no-nat``. No OTHER-ADDRESS, or one that shares the
  primary's IP or port (a server that cannot really answer from elsewhere, see
  always-online-stun#16): ``unknown`` with that reason.
* II: Binding to the alternate IP with the primary port, A:p. It must answer *from* A:p
  (proof the alternate address is real); the same mapped address as I:
  ``endpoint-independent``.
* III: Binding to A:a. The same mapped address as II: ``address-dependent``, else
  ``address-and-port-dependent``.

Filtering (RFC 5780 §4.4), on another socket, because the mapping test opens the NAT towards
the alternate address and would make filtering look more open than it is (jselbie/stunserver
#26):

* I: Binding to P:p (learns OTHER-ADDRESS; opens the filter towards P:p only).
* II: CHANGE-REQUEST "change IP and port". An answer from A:a: ``endpoint-independent``.
* III: CHANGE-REQUEST "change port". An answer from P:a: ``address-dependent``; none:
  ``address-and-port-dependent``.
* Trust: an answer from anywhere else means the server ignores CHANGE-REQUEST (``unknown``).
  A verdict that rests on *silence* is trusted only once the server proved its alternate
  address answers: after the filtering probes (never before: that would open the filter) the
  filtering socket sends a plain Binding to A:a, which must answer from A:a.

Opt-in tests: hairpinning (§4.5: a request from a second socket to the first socket's mapped
address must arrive) and binding lifetime (§4.6: for each candidate duration T a fresh socket
X binds, and after T a second socket asks the server, with RESPONSE-PORT, to answer to X's
mapped port; the answer arrives only while X's mapping lives). The lifetime durations run in
parallel, so the test costs the longest duration, not the sum.

Classifications are spelled as RFC 4787 does and JSON shows them verbatim:
``endpoint-independent``, ``address-dependent``, ``address-and-port-dependent``, plus
``no-nat``, ``udp-blocked`` and ``unknown`` (always with a reason).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs

from nattrav_stun.codec import CHANGE_IP, CHANGE_PORT, CHANGE_REQUEST, RESPONSE_PORT, Address
from nattrav_stun.events import BindingResult

if TYPE_CHECKING:
    from nattrav_stun.driver import ClientSettings, Endpoint, StunClient
    from nattrav_stun.uri import ServerAddress

__all__ = [
    "ADDRESS_AND_PORT_DEPENDENT",
    "ADDRESS_DEPENDENT",
    "ENDPOINT_INDEPENDENT",
    "NO_NAT",
    "UDP_BLOCKED",
    "UNKNOWN",
    "NatBehaviour",
    "Outcome",
    "Probe",
    "Verdict",
    "discover_nat_behaviour",
    "filtering_test",
    "hairpinning_verdict",
    "mapping_test",
    "run_test",
]

ENDPOINT_INDEPENDENT: Final = "endpoint-independent"
ADDRESS_DEPENDENT: Final = "address-dependent"
ADDRESS_AND_PORT_DEPENDENT: Final = "address-and-port-dependent"
NO_NAT: Final = "no-nat"
UDP_BLOCKED: Final = "udp-blocked"
UNKNOWN: Final = "unknown"

Behaviour = Literal[
    "endpoint-independent",
    "address-dependent",
    "address-and-port-dependent",
    "no-nat",
    "udp-blocked",
    "unknown",
]


@attrs.frozen
class Probe:
    """One Binding request a test wants sent.

    ``socket``: which of the test's sockets sends it. ``change``: CHANGE-REQUEST flags.
    ``may_fail``: silence is a possible result (use the short probe window, not the RFC
    schedule). ``any_source``: accept an answer from any address (CHANGE-REQUEST answers come
    from elsewhere by design; the test checks the source itself).
    """

    label: str
    destination: Address
    socket: str = "main"
    change: int = 0
    may_fail: bool = False
    any_source: bool = False


@attrs.frozen
class Outcome:
    """What became of a ``Probe``: the Binding result, or ``None`` and why."""

    result: BindingResult | None
    reason: str = ""
    local: Address | None = None  # the sending socket's own address (for no-nat)

    @property
    def answered(self) -> bool:
        return self.result is not None


@attrs.frozen
class Verdict:
    """A classification and why; ``trusted`` is false when the server could not prove it
    supports RFC 5780 well enough for the classification to mean anything."""

    behaviour: Behaviour
    reason: str
    trusted: bool = True
    mapped: Address | None = None
    other_address: Address | None = None
    steps: tuple[tuple[str, str], ...] = ()


TestMachine = Generator[Probe, Outcome, Verdict]


def _other_address_problem(first: BindingResult) -> str | None:
    other = first.other_address
    if other is None:
        return (
            "the server does not support RFC 5780 (no OTHER-ADDRESS in its answer; coturn "
            "needs two listening IPs per family)"
        )
    if other.family != first.server.family:
        return f"OTHER-ADDRESS {other} is of another address family"
    if other.host == first.server.host:
        return f"OTHER-ADDRESS {other} has the primary's IP: the server cannot change IP"
    if other.port == first.server.port:
        return f"OTHER-ADDRESS {other} has the primary's port: the server cannot change port"
    return None


def _step(label: str, outcome: Outcome) -> tuple[str, str]:
    if outcome.result is None:
        return (label, f"no answer ({outcome.reason})" if outcome.reason else "no answer")
    r = outcome.result
    return (label, f"mapped {r.mapped} (answered from {r.source})")


def _is_local(mapped: Address, local: Address | None) -> bool:
    return local is not None and mapped.host == local.host and mapped.port == local.port


def mapping_test(server: Address) -> TestMachine:
    """RFC 5780 §4.3 as a generator (see the module docstring)."""
    steps: list[tuple[str, str]] = []
    first = yield Probe("mapping I", server, socket="mapping")
    steps.append(_step("mapping I", first))
    if first.result is None:
        return Verdict(UDP_BLOCKED, f"no answer from {server}: {first.reason}", steps=tuple(steps))
    r1 = first.result
    if _is_local(r1.mapped, first.local):
        return Verdict(
            NO_NAT,
            f"the server sees our own address {r1.mapped}",
            mapped=r1.mapped,
            other_address=r1.other_address,
            steps=tuple(steps),
        )
    problem = _other_address_problem(r1)
    if problem is not None:
        return Verdict(UNKNOWN, problem, trusted=False, mapped=r1.mapped, steps=tuple(steps))
    other = r1.other_address
    assert other is not None
    second = yield Probe(
        "mapping II", Address(other.host, server.port), socket="mapping", may_fail=True
    )
    steps.append(_step("mapping II", second))
    if second.result is None:
        return Verdict(
            UNKNOWN,
            f"the server's alternate address {other.host}:{server.port} did not answer "
            f"({second.reason}); its RFC 5780 support is not real",
            trusted=False,
            mapped=r1.mapped,
            other_address=other,
            steps=tuple(steps),
        )
    r2 = second.result
    if r2.mapped == r1.mapped:
        return Verdict(
            ENDPOINT_INDEPENDENT,
            f"the same mapping {r1.mapped} towards {server.host} and {other.host}",
            mapped=r1.mapped,
            other_address=other,
            steps=tuple(steps),
        )
    third = yield Probe("mapping III", other, socket="mapping", may_fail=True)
    steps.append(_step("mapping III", third))
    if third.result is None:
        return Verdict(
            UNKNOWN,
            f"the server's alternate address {other} did not answer ({third.reason})",
            trusted=False,
            mapped=r1.mapped,
            other_address=other,
            steps=tuple(steps),
        )
    r3 = third.result
    if r3.mapped == r2.mapped:
        return Verdict(
            ADDRESS_DEPENDENT,
            f"a new mapping per destination IP ({r1.mapped}, then {r2.mapped}), the same "
            f"for another port of the same IP",
            mapped=r1.mapped,
            other_address=other,
            steps=tuple(steps),
        )
    return Verdict(
        ADDRESS_AND_PORT_DEPENDENT,
        f"a new mapping per destination address and port ({r1.mapped}, {r2.mapped}, {r3.mapped})",
        mapped=r1.mapped,
        other_address=other,
        steps=tuple(steps),
    )


def filtering_test(server: Address) -> TestMachine:
    """RFC 5780 §4.4 as a generator (see the module docstring)."""
    steps: list[tuple[str, str]] = []
    first = yield Probe("filtering I", server, socket="filtering")
    steps.append(_step("filtering I", first))
    if first.result is None:
        return Verdict(UDP_BLOCKED, f"no answer from {server}: {first.reason}", steps=tuple(steps))
    r1 = first.result
    problem = _other_address_problem(r1)
    if problem is not None:
        return Verdict(UNKNOWN, problem, trusted=False, mapped=r1.mapped, steps=tuple(steps))
    other = r1.other_address
    assert other is not None
    both = yield Probe(
        "filtering II",
        server,
        socket="filtering",
        change=CHANGE_IP | CHANGE_PORT,
        may_fail=True,
        any_source=True,
    )
    steps.append(_step("filtering II", both))
    if both.result is not None:
        if both.result.source != other:
            return Verdict(
                UNKNOWN,
                f"asked to answer from {other}, the server answered from "
                f"{both.result.source}: it ignores CHANGE-REQUEST",
                trusted=False,
                mapped=r1.mapped,
                other_address=other,
                steps=tuple(steps),
            )
        return Verdict(
            ENDPOINT_INDEPENDENT,
            f"an answer from {other}, an address we never sent to, got through",
            mapped=r1.mapped,
            other_address=other,
            steps=tuple(steps),
        )
    port_only = yield Probe(
        "filtering III",
        server,
        socket="filtering",
        change=CHANGE_PORT,
        may_fail=True,
        any_source=True,
    )
    steps.append(_step("filtering III", port_only))
    expected = Address(server.host, other.port)
    if port_only.result is not None and port_only.result.source != expected:
        return Verdict(
            UNKNOWN,
            f"asked to answer from {expected}, the server answered from "
            f"{port_only.result.source}: it ignores CHANGE-REQUEST",
            trusted=False,
            mapped=r1.mapped,
            other_address=other,
            steps=tuple(steps),
        )
    # Both remaining verdicts rest at least partly on silence: check that the alternate
    # address answers at all before believing the silence meant filtering.
    check = yield Probe("filtering check", other, socket="filtering", may_fail=True)
    steps.append(_step("filtering check", check))
    if check.result is None or check.result.source != other:
        return Verdict(
            UNKNOWN,
            f"no answer to CHANGE-REQUEST, but the server's alternate address {other} does "
            "not answer direct requests either: its RFC 5780 support cannot be trusted",
            trusted=False,
            mapped=r1.mapped,
            other_address=other,
            steps=tuple(steps),
        )
    if port_only.result is not None:
        return Verdict(
            ADDRESS_DEPENDENT,
            f"answers from another port of {server.host} got through, from {other.host} not",
            mapped=r1.mapped,
            other_address=other,
            steps=tuple(steps),
        )
    return Verdict(
        ADDRESS_AND_PORT_DEPENDENT,
        f"only answers from {server} itself got through",
        mapped=r1.mapped,
        other_address=other,
        steps=tuple(steps),
    )


def hairpinning_verdict(arrived: bool | None, mapped: Address | None) -> dict[str, Any]:
    """JSON for the hairpinning test (§4.5)."""
    if arrived is None or mapped is None:
        return {"supported": None, "reason": "not tested"}
    if arrived:
        return {
            "supported": True,
            "reason": f"a datagram sent to our mapping {mapped} from inside came back in",
        }
    return {
        "supported": False,
        "reason": f"a datagram sent to our mapping {mapped} from inside did not arrive",
    }


@attrs.frozen
class NatBehaviour:
    """The result of ``discover_nat_behaviour``; ``to_json()`` is what ``nattrav nat-type``
    and ``nattrav probe`` print (keys ``mapping`` and ``filtering`` hold the plain RFC 4787
    spellings)."""

    server: str
    mapping: Verdict
    filtering: Verdict
    local: Address | None = None
    hairpinning: dict[str, Any] | None = None
    binding_lifetime: dict[str, Any] | None = None

    @property
    def nat(self) -> bool | None:
        if self.mapping.behaviour == NO_NAT:
            return False
        if self.mapping.behaviour in (UDP_BLOCKED,) or self.mapping.mapped is None:
            return None
        return True

    def to_json(self) -> dict[str, Any]:
        def text(a: Address | None) -> str | None:
            return None if a is None else str(a)

        m, f = self.mapping, self.filtering
        return {
            "server": self.server,
            "mapping": m.behaviour,
            "filtering": f.behaviour,
            "mapping_reason": m.reason,
            "filtering_reason": f.reason,
            "trusted": m.trusted and f.trusted,
            "nat": self.nat,
            "mapped": text(m.mapped or f.mapped),
            "local": text(self.local),
            "other_address": text(m.other_address or f.other_address),
            "rfc5780": bool(m.other_address or f.other_address) and m.trusted and f.trusted,
            "hairpinning": self.hairpinning,
            "binding_lifetime": self.binding_lifetime,
            "tests": [{"test": label, "result": what} for label, what in m.steps + f.steps],
        }


# --------------------------------------------------------------------- running over a client


async def _send_probe(
    client: StunClient,
    probe: Probe,
    endpoint: Endpoint,
    *,
    window: float,
    answer_timeout: float,
) -> Outcome:
    from nattrav_stun.driver import StunError

    attributes = {CHANGE_REQUEST: probe.change} if probe.change else None
    local = endpoint.reported_local or endpoint.local
    try:
        result = await client.binding(
            probe.destination,
            endpoint=endpoint,
            attributes=attributes,
            timeout=window if probe.may_fail else answer_timeout,
            accept_from=None if probe.any_source else "destination",
        )
    except StunError as exc:
        return Outcome(None, exc.event.describe(), local)
    return Outcome(result, "", local)


async def run_test(
    client: StunClient,
    machine: TestMachine,
    endpoints: dict[str, Endpoint],
    *,
    window: float,
    answer_timeout: float,
) -> Verdict:
    """Drive a test generator over ``client``: each probe goes out of the named endpoint."""
    probe = next(machine)
    while True:
        outcome = await _send_probe(
            client, probe, endpoints[probe.socket], window=window, answer_timeout=answer_timeout
        )
        try:
            probe = machine.send(outcome)
        except StopIteration as stop:
            verdict: Verdict = stop.value
            return verdict


async def discover_nat_behaviour(
    server: str | ServerAddress | Address,
    *,
    settings: ClientSettings | None = None,
    window: float = 0.5,
    answer_timeout: float = 5.0,
    family: int | None = None,
    hairpinning: bool = False,
    lifetime: Sequence[float] = (),
    local_host: str | None = None,
) -> NatBehaviour:
    """Classify the NAT between this host and ``server`` (RFC 5780 mapping and filtering).

    ``window``: how long probes that may legitimately go unanswered wait (>= 0.3 s; the
    filtering tests). ``answer_timeout``: how long the first Binding may take before the verdict
    is ``udp-blocked``. ``hairpinning`` and ``lifetime`` (durations in seconds to check the
    mapping survives) are opt-in: hairpin probes upset some firewalls (tailscale 9351eec3e),
    lifetime checks take as long as the longest duration. ``local_host`` binds the test
    sockets to that address (and family). This is the function ``nattrav probe`` calls.
    """
    from nattrav_stun.driver import ClientSettings, StunClient, local_address_toward, resolve
    from nattrav_stun.uri import ServerAddress, parse_server

    if isinstance(server, Address):
        label = f"stun:{server}"
        target = server
    else:
        parsed = server if isinstance(server, ServerAddress) else parse_server(server)
        if parsed.transport != "udp":
            raise ValueError("NAT behaviour discovery runs over UDP: use a stun: server")
        label = str(parsed)
        if local_host is not None:
            families = frozenset({6 if ":" in local_host else 4})
        else:
            families = frozenset({family}) if family else frozenset({4, 6})
        candidates = await resolve(parsed.host, parsed.port, families)
        # prefer IPv4 for NAT typing unless asked otherwise: IPv6 is rarely translated
        candidates.sort(key=lambda a: 0 if family is None and a.family == 4 else 1)
        target = candidates[0]
    settings = settings or ClientSettings()
    async with StunClient.open(settings) as client:
        fam = target.family
        host = local_host
        mapping_ep = await client.add_socket(fam, host=host)
        filtering_ep = await client.add_socket(fam, host=host)
        local_ip = local_address_toward(target)
        for ep in (mapping_ep, filtering_ep):
            ep.reported_local = Address(local_ip, ep.local.port) if local_ip else None

        endpoints: dict[str, Endpoint] = {"mapping": mapping_ep, "filtering": filtering_ep}
        results: dict[str, Verdict] = {}

        async def run(name: str, machine: TestMachine) -> None:
            results[name] = await run_test(
                client, machine, endpoints, window=window, answer_timeout=answer_timeout
            )

        await client.gather(
            run("mapping", mapping_test(target)), run("filtering", filtering_test(target))
        )
        mapping, filtering = results["mapping"], results["filtering"]
        if mapping.behaviour == UDP_BLOCKED and filtering.behaviour != UDP_BLOCKED:
            mapping = attrs.evolve(mapping, behaviour=UNKNOWN, trusted=False)
        hair: dict[str, Any] | None = None
        if hairpinning:
            hair = await _hairpinning(client, mapping_ep, fam, mapping.mapped, window, host)
        life: dict[str, Any] | None = None
        if lifetime:
            life = await _binding_lifetime(client, target, fam, sorted(lifetime), window, host)
        local = mapping_ep.reported_local
    return NatBehaviour(label, mapping, filtering, local, hair, life)


async def _hairpinning(
    client: StunClient,
    target: Endpoint,
    family: int,
    mapped: Address | None,
    window: float,
    host: str | None,
) -> dict[str, Any]:
    from nattrav_stun.codec import BINDING, REQUEST, Message, encode

    if mapped is None:
        return hairpinning_verdict(None, None)
    sender = await client.add_socket(family, host=host)
    msg = Message(BINDING, REQUEST, client.new_transaction_id())
    async with client.watch(msg.transaction_id) as watch:
        await client.send_raw(encode(msg), mapped, sender)
        arrived = await client.wait_event(watch.event, window)
    return hairpinning_verdict(arrived and watch.endpoint is target, mapped)


async def _binding_lifetime(
    client: StunClient,
    server: Address,
    family: int,
    durations: Sequence[float],
    window: float,
    host: str | None,
) -> dict[str, Any]:
    from nattrav_stun.driver import StunError

    asker = await client.add_socket(family, host=host)
    alive: dict[float, bool | None] = {}

    async def check(duration: float) -> None:
        x = await client.add_socket(family, host=host)
        try:
            first = await client.binding(server, endpoint=x)
        except StunError:
            alive[duration] = None
            return
        await client.sleep(duration)
        try:
            # RESPONSE-PORT: the server answers to our public IP at X's mapped port, from
            # the primary address X talked to: it arrives only if X's mapping still exists.
            await client.binding(
                server,
                endpoint=asker,
                attributes={RESPONSE_PORT: first.mapped.port},
                timeout=window,
            )
            alive[duration] = True
        except StunError:
            alive[duration] = False

    await client.gather(*(check(d) for d in durations))
    live = [d for d in durations if alive.get(d) is True]
    dead = [d for d in durations if alive.get(d) is False]
    return {
        "alive_after": max(live) if live else None,
        "expired_by": min((d for d in dead if not live or d > max(live)), default=None),
        "tested": {str(d): alive.get(d) for d in durations},
    }
