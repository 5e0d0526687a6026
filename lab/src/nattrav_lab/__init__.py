"""nattrav-lab: a network lab of Linux namespaces with real NATs, coturn and miniupnpd.

``with Lab.up("eim") as lab:`` brings a lab up and tears it down at the end; see README.md for
the topologies, the facts a lab exposes, the knobs and the pytest fixtures. Importing this
package is cheap (the CLI plugin imports it at every ``nattrav`` start): the names below load
on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nattrav_lab.errors import LabError
    from nattrav_lab.lab import GatewayState, Lab, TurnInfo, reap
    from nattrav_lab.plan import TOPOLOGIES, SitePlan, Topology

__all__ = [
    "TOPOLOGIES",
    "GatewayState",
    "Lab",
    "LabError",
    "SitePlan",
    "Topology",
    "TurnInfo",
    "reap",
]

_LAZY = {
    "GatewayState": "nattrav_lab.lab",
    "Lab": "nattrav_lab.lab",
    "LabError": "nattrav_lab.errors",
    "TurnInfo": "nattrav_lab.lab",
    "reap": "nattrav_lab.lab",
    "TOPOLOGIES": "nattrav_lab.plan",
    "SitePlan": "nattrav_lab.plan",
    "Topology": "nattrav_lab.plan",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nattrav_lab' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
