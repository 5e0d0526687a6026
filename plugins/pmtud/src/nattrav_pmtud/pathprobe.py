"""The ``pmtu`` path probe: the chain's ``probe_paths`` option reports the chosen path's PLPMTU.

Which path is measured, by candidate kind (what can be measured without the remote peer):

* server-reflexive (STUN): towards the STUN server that saw the mapping
  (``candidate.details["server"]``), from a fresh socket with Don't Fragment. The path to that
  server leaves through the same NAT and uplink as the application's traffic; only per-flow
  routing (ECMP) could make a different source port take another route.
* host and port-mapped: towards the first ``[plugins.pmtud] servers`` entry of the candidate's
  family (a STUN server or a nattrav echo peer). Without one there is nothing to probe and the
  probe returns ``None``.
* relayed (TURN): towards the relay server (``candidate.details["server"]``): that measures our
  leg to the relay, the part our datagrams cross unencapsulated. The relay-to-peer leg needs
  the relay's own cooperation (TURN DONT-FRAGMENT on Send indications over
  ``Acquisition.channel``), which ``TraversalResult`` does not expose to path probes; the
  result says ``leg: client-to-relay``.

The probe never raises past the chain for an unreachable server: it returns a ``PathProperty``
whose value is ``None`` and whose ``how`` says why.
"""

from __future__ import annotations

from typing import Any

from nattrav.method import AttemptContext
from nattrav.models import CandidateKind, PathProperty, TraversalResult

from nattrav_pmtud.config import PmtudConfig, parse_target

__all__ = ["PmtuPathProbe"]

_SERVER_KEYS = ("server", "stun_server", "relay_server", "turn_server")


def _details_server(details: Any) -> tuple[str, int] | None:
    for key in _SERVER_KEYS:
        value = details.get(key) if hasattr(details, "get") else None
        if isinstance(value, str):
            try:
                return parse_target(value)
            except ValueError:
                continue
        if isinstance(value, tuple | list) and len(value) == 2:
            return str(value[0]), int(value[1])
    return None


class PmtuPathProbe:
    """RFC 8899 PLPMTU of the chosen endpoint's path (see the module docstring)."""

    name = "pmtu"

    def __init__(self, config: PmtudConfig) -> None:
        self.config = config

    def target_for(self, result: TraversalResult) -> tuple[tuple[str, int] | None, str]:
        """Where to probe for ``result``'s candidate, and which leg that measures."""
        cand = result.candidate
        family = (cand.base or cand.address).family
        server = _details_server(cand.details)
        if cand.kind is CandidateKind.RELAYED:
            return server, "client-to-relay"
        if server is not None:
            return server, "to-server"
        for target in self.config.targets():
            if (6 if ":" in target[0] else 4) == family:
                return target, "to-configured-server"
        return None, ""

    async def probe(self, result: TraversalResult, ctx: AttemptContext) -> PathProperty | None:
        from nattrav.errors import NatTravError

        from nattrav_pmtud.driver import discover_pmtu, resolve

        target, leg = self.target_for(result)
        if target is None:
            if result.candidate.kind is CandidateKind.RELAYED:
                return PathProperty(self.name, None, "relay server unknown: nothing to probe")
            return None
        family = (result.candidate.base or result.candidate.address).family
        try:
            addresses = await resolve(target[0], target[1], family)
            if not addresses:
                return PathProperty(self.name, None, f"{target[0]} has no IPv{family} address")
            found = await discover_pmtu(
                addresses[0],
                self.config.search_settings(family),
                credentials=self.config.credentials(),
                software=self.config.software,
                deadline=self.config.deadline,
            )
        except NatTravError as exc:
            return PathProperty(self.name, None, f"not measured: {exc}")
        details = found.to_dict()
        details["leg"] = leg
        how = ", ".join(found.how) if found.confirmed else "unconfirmed: no answer to base probes"
        return PathProperty(
            self.name, found.plpmtu if found.confirmed else None, how, details=details
        )
