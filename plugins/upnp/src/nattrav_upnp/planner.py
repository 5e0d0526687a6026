"""The port-mapping recovery ladder and lease schedule, as pure decisions.

Theory of operation
-------------------
Routers disagree about what a valid AddPortMapping is (peers.md pain points 1, 2, 7, 12):
some answer 725 OnlyPermanentLeasesSupported to any finite lease (tailscale#9343), some 402
Invalid Args (tailscale#15223), others refuse a *permanent* lease, and a busy port gives 718.
Fixing one class of router by hard-coding a lease breaks another, so ``MappingPlanner``
climbs a ladder per request and ``GatewayQuirks`` remembers what each gateway taught it, so the
next request (a renewal, a re-add after a reboot, another port) starts on the right rung:

=====================================  ===========================================================
UPnP error                             next step
=====================================  ===========================================================
718 ConflictInMappingEntry, 729        IGD:2: AddAnyPortMapping; else another random port (3 tries)
725 OnlyPermanentLeasesSupported       lease 0, remembered (the lease then needs a guaranteed
                                       delete on release: ``MappedPort.permanent``)
402 Invalid Args with a finite lease   lease 0 once; remembered when that works
726 RemoteHostOnlySupportsWildcard     empty RemoteHost, remembered
727 ExternalPortOnlySupportsWildcard   AddAnyPortMapping (IGD:2), remembered
401 Invalid Action on AddAny...        plain AddPortMapping, remembered
401 on AddPortMapping, 606             ``MethodUnavailable`` (the router will not map for us)
728 NoPortMapsAvailable                ``MethodError`` (table full; retrying does not help)
501 Action Failed                      ``MethodError(retryable=True)``
=====================================  ===========================================================

``LeaseSchedule`` says when to renew (half of the lease actually in force, minus jitter:
hostile-inputs.md H7, a router may shorten the lease or turn 0 into a week) and when to
re-verify existence (routers purge mappings early: pain point 5).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Literal

import attrs
from nattrav.errors import MethodError, MethodUnavailable

from nattrav_upnp import errors as e

__all__ = ["GatewayQuirks", "LeaseSchedule", "MapStep", "MappingPlanner", "QuirkBook"]

Action = Literal["AddPortMapping", "AddAnyPortMapping"]
METHOD = "upnp"


@attrs.define
class GatewayQuirks:
    """What one gateway taught us. Lives as long as the plugin's registration."""

    permanent_only: bool = False  # 725, or 402 on a finite lease that lease 0 fixed
    use_add_any: bool = False  # 727, or a 718 that AddAnyPortMapping fixed
    no_add_any: bool = False  # 401 on AddAnyPortMapping
    wildcard_remote_only: bool = False  # 726
    early_losses: int = 0  # mappings that vanished well before half their lease

    def as_dict(self) -> dict[str, object]:
        return attrs.asdict(self)


class QuirkBook:
    """Quirks per gateway key (the device UDN, else its control URL)."""

    def __init__(self) -> None:
        self._quirks: dict[str, GatewayQuirks] = {}

    def get(self, key: str) -> GatewayQuirks:
        return self._quirks.setdefault(key, GatewayQuirks())

    def __len__(self) -> int:
        return len(self._quirks)


@attrs.frozen
class MapStep:
    """One AddPortMapping or AddAnyPortMapping request to try."""

    action: Action
    external_port: int
    lease: int
    remote_host: str = ""


@attrs.define
class MappingPlanner:
    """Chooses the next request after each UPnP error (see the module docstring)."""

    quirks: GatewayQuirks
    igd2: bool
    wanted_port: int
    lease: int
    random_port: Callable[[], int] = attrs.field(
        factory=lambda: lambda: random.SystemRandom().randrange(1024, 65536)
    )
    max_steps: int = 8
    conflict_tries: int = 3
    steps: int = attrs.field(default=0, init=False)
    _conflicts: int = attrs.field(default=0, init=False)
    _lease_by_402: bool = attrs.field(default=False, init=False)
    _any_by_conflict: bool = attrs.field(default=False, init=False)

    def first(self) -> MapStep:
        """The first request, already adapted to what this gateway taught us."""
        self.steps = 1
        use_any = self.igd2 and self.quirks.use_add_any and not self.quirks.no_add_any
        return MapStep(
            "AddAnyPortMapping" if use_any else "AddPortMapping",
            self.wanted_port,
            0 if self.quirks.permanent_only else self.lease,
        )

    def succeeded(self, step: MapStep) -> None:
        """Learn from a success that needed a fallback (402 -> lease 0, 718 -> AddAny)."""
        if self._lease_by_402 and step.lease == 0:
            self.quirks.permanent_only = True
        if self._any_by_conflict and step.action == "AddAnyPortMapping":
            self.quirks.use_add_any = True

    def next_after(self, step: MapStep, error: e.UpnpActionError) -> MapStep:
        """The request to try after ``step`` failed with ``error``; raises when none is left."""
        self.steps += 1
        if self.steps > self.max_steps:
            raise MethodError(METHOD, f"gave up after {self.max_steps} requests; last: {error}")
        can_any = self.igd2 and not self.quirks.no_add_any
        if isinstance(error, e.OnlyPermanentLeasesSupportedError) and step.lease != 0:
            self.quirks.permanent_only = True
            return attrs.evolve(step, lease=0)
        if isinstance(error, e.InvalidArgsError) and step.lease != 0:
            self._lease_by_402 = True
            return attrs.evolve(step, lease=0)
        if isinstance(error, e.RemoteHostOnlySupportsWildcardError) and step.remote_host:
            self.quirks.wildcard_remote_only = True
            return attrs.evolve(step, remote_host="")
        if isinstance(error, e.ExternalPortOnlySupportsWildcardError):
            if can_any and step.action != "AddAnyPortMapping":
                self.quirks.use_add_any = True
                return attrs.evolve(step, action="AddAnyPortMapping")
            raise MethodError(
                METHOD,
                f"{error}; the router only assigns external ports itself and has no "
                "AddAnyPortMapping",
            )
        if isinstance(error, e.InvalidActionError):
            if step.action == "AddAnyPortMapping":
                self.quirks.no_add_any = True
                self.quirks.use_add_any = False
                return attrs.evolve(step, action="AddPortMapping")
            raise MethodUnavailable(METHOD, f"{error}: the router does not implement port mapping")
        if isinstance(error, e.ActionNotAuthorizedError):
            raise MethodUnavailable(
                METHOD, f"{error}: the router refuses port mappings for this host"
            )
        if isinstance(error, e.ConflictInMappingEntryError | e.ConflictWithOtherMechanismsError):
            if can_any and step.action != "AddAnyPortMapping":
                self._any_by_conflict = True
                return attrs.evolve(step, action="AddAnyPortMapping")
            self._conflicts += 1
            if self._conflicts > self.conflict_tries:
                raise MethodError(
                    METHOD,
                    f"{error}: external ports kept conflicting after {self._conflicts} tries",
                )
            return attrs.evolve(step, action="AddPortMapping", external_port=self.random_port())
        if isinstance(error, e.NoPortMapsAvailableError):
            raise MethodError(METHOD, f"{error}: the router's mapping table is full")
        if isinstance(error, e.ActionFailedError):
            raise MethodError(METHOD, str(error), retryable=True)
        raise MethodError(METHOD, str(error))


@attrs.frozen
class LeaseSchedule:
    """When to renew and re-verify a mapping.

    ``requested`` is the lease we asked for, ``granted`` what the router reports in force
    (``None`` when it did not say); 0 means permanent. Renewal happens at half of the shorter
    positive one, minus up to ``jitter`` of it; a permanent lease is never renewed, only
    verified.
    """

    requested: float
    granted: float | None = None
    verify_interval: float = 300.0
    jitter: float = 0.1

    @property
    def effective(self) -> float:
        positive = [x for x in (self.requested, self.granted) if x is not None and x > 0]
        return min(positive) if positive else 0.0

    def renew_delay(self, rng: random.Random) -> float | None:
        if self.effective <= 0:
            return None
        return max(1.0, self.effective / 2 * (1 - self.jitter * rng.random()))

    def verify_delay(self, rng: random.Random) -> float:
        return max(0.05, self.verify_interval * (1 - self.jitter * rng.random()))
