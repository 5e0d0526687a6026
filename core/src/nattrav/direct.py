"""The built-in ``direct`` method: a public address on a local interface.

It is the chain's first choice because it needs no server and no gateway. It succeeds only for
an address that ``nattrav.addresses.is_public`` accepts (so a home network's 192.168.x.y never
counts, and the lab's documentation-range "internet" does). Whether a host firewall lets
unsolicited traffic in is unknown until a verifier proves it, so the candidate says
``Inbound.UNKNOWN``; under the ``reachable`` goal the chain asks the installed verifiers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from nattrav.enums import CandidateKind
from nattrav.errors import MethodUnavailable
from nattrav.hookspecs import hookimpl

# This module is also the built-in plugin, registered at every start: what only an attempt
# needs (the values, the method API, interface enumeration) is imported when one runs.
if TYPE_CHECKING:
    from nattrav.interfaces import InterfaceAddress
    from nattrav.method import Acquisition, AttemptContext
    from nattrav.registry import MethodRegistry

__all__ = ["DirectMethod", "nattrav_register_methods"]

NAME = "direct"
PRIORITY = 0


class DirectMethod:
    """Host candidates from interface enumeration; succeeds only for a public address."""

    def __init__(self, addresses: Callable[[], list[InterfaceAddress]] | None = None) -> None:
        self._addresses = addresses

    def _list(self, families: frozenset[int]) -> list[InterfaceAddress]:
        if self._addresses is not None:
            return [a for a in self._addresses() if a.family in families]
        from nattrav.interfaces import list_addresses

        return list_addresses(families=sorted(families))

    @asynccontextmanager
    async def acquire(self, ctx: AttemptContext) -> AsyncIterator[Acquisition]:
        from nattrav.addresses import AddressScope
        from nattrav.method import Acquisition
        from nattrav.models import Candidate, Reachability, TransportAddress

        request = ctx.request
        addresses = self._list(request.families)
        public = [a for a in addresses if a.scope is AddressScope.PUBLIC]
        if not public:
            seen = ", ".join(f"{a.ip} ({a.scope.value})" for a in addresses) or "none"
            raise MethodUnavailable(NAME, f"no interface has a public address (found: {seen})")
        port = request.port
        if ctx.sockets is not None:
            port = ctx.sockets.port
        # Prefer IPv6 only when asked; otherwise IPv4 first: it is what most peers can reach.
        public.sort(key=lambda a: (a.family != 4, a.interface, a.ip))
        candidates = [
            Candidate(
                kind=CandidateKind.HOST,
                address=TransportAddress(a.ip, port, request.transport),
                base=TransportAddress(a.ip, port, request.transport),
                method=NAME,
                reachability=Reachability.unknown("public interface address; firewall untested"),
                details={"interface": a.interface, "prefix": a.prefix},
            )
            for a in public
        ]
        yield Acquisition(candidates[0], also=tuple(candidates[1:]))


@hookimpl
def nattrav_register_methods(registry: MethodRegistry, config: dict[str, Any]) -> None:
    """Register ``direct`` at priority 0."""
    registry.add(
        DirectMethod,
        name=NAME,
        priority=PRIORITY,
        kind=CandidateKind.HOST,
        description="public address on a local interface",
        timeout=2.0,
    )
