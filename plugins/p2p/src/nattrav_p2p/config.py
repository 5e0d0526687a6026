"""The ``[plugins.p2p]`` table, validated with attrs + cattrs (every problem in one error).

Example::

    [plugins.p2p]
    ta = 0.05                # pacing of new checks (s), RFC 8445 §14.2
    check_rto = 0.2          # first retransmission of a check (s), doubling
    check_sends = 7          # sends per check at most
    check_timeout = 3.0      # a check without answer fails after this long (s)
    nomination_delay = 0.2   # wait for a better pair after the first works (s)
    relay_bound = 2.0        # a relayed pair is nominated only after this long (s)
    connect_timeout = 10.0   # no working pair after this long: fail (s)
    consent_interval = 5.0   # consent check on the selected pair (s), RFC 7675
    consent_timeout = 30.0   # no consent for this long: the pair is lost (s)
    backup_interval = 15.0   # keepalive checks on the other working pairs (s)
    recheck_interval = 5.0   # first re-check of a failed better pair while on a worse one (s)
    recheck_max_interval = 60.0  # re-checks back off (doubling) up to this (s)
    signal_timeout = 60.0    # how long to wait for the peer's offer or answer (s)
    families = [4, 6]        # IP families to connect over
    include_loopback = false # offer loopback host candidates (two peers on one machine)
    host_candidates = true   # offer LAN (private) interface addresses
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
from nattrav.errors import ConfigError

if TYPE_CHECKING:
    import cattrs

__all__ = ["AgentConfig", "P2pConfig", "load_config"]

PLUGIN = "p2p"


@attrs.frozen
class AgentConfig:
    """Timing of the connectivity-check agent (see the module docstring)."""

    ta: float = 0.05
    check_rto: float = 0.2
    check_sends: int = 7
    check_timeout: float = 3.0
    nomination_delay: float = 0.2
    relay_bound: float = 2.0
    connect_timeout: float = 10.0
    consent_interval: float = 5.0
    consent_timeout: float = 30.0
    backup_interval: float = 15.0
    #: While the selected pair is relayed (or a better pair that worked before has failed),
    #: failed non-relayed pairs are checked again this long after the move, then after
    #: twice that, ... up to ``recheck_max_interval``: a path that comes back is used again,
    #: a path that stays dead costs one check per pair per ``recheck_max_interval``.
    #: 0 turns re-checks off (a path change is then one way).
    recheck_interval: float = 5.0
    recheck_max_interval: float = 60.0
    max_pairs: int = 100

    def problems(self, prefix: str = "[plugins.p2p]") -> list[str]:
        out: list[str] = []
        for key in (
            "ta",
            "check_rto",
            "check_timeout",
            "connect_timeout",
            "consent_interval",
            "consent_timeout",
            "backup_interval",
            "recheck_max_interval",
        ):
            if getattr(self, key) <= 0:
                out.append(f"{prefix} {key} must be > 0, got {getattr(self, key)}")
        for key in ("nomination_delay", "relay_bound", "recheck_interval"):
            if getattr(self, key) < 0:
                out.append(f"{prefix} {key} must be >= 0, got {getattr(self, key)}")
        if self.check_sends < 1:
            out.append(f"{prefix} check_sends must be >= 1, got {self.check_sends}")
        if self.max_pairs < 1:
            out.append(f"{prefix} max_pairs must be >= 1, got {self.max_pairs}")
        if self.recheck_interval > 0 and self.recheck_max_interval < self.recheck_interval:
            out.append(
                f"{prefix} recheck_max_interval ({self.recheck_max_interval}) must be >= "
                f"recheck_interval ({self.recheck_interval})"
            )
        if self.consent_timeout <= self.consent_interval:
            out.append(
                f"{prefix} consent_timeout ({self.consent_timeout}) must exceed "
                f"consent_interval ({self.consent_interval})"
            )
        return out


@attrs.frozen
class P2pConfig(AgentConfig):
    """The whole ``[plugins.p2p]`` table: agent timing plus connector settings."""

    signal_timeout: float = 60.0
    families: tuple[int, ...] = (4, 6)
    include_loopback: bool = False
    host_candidates: bool = True

    def agent(self) -> AgentConfig:
        fields = {f.name for f in attrs.fields(AgentConfig)}
        return AgentConfig(**{k: v for k, v in attrs.asdict(self).items() if k in fields})

    def problems(self, prefix: str = "[plugins.p2p]") -> list[str]:
        out = super().problems(prefix)
        if self.signal_timeout <= 0:
            out.append(f"{prefix} signal_timeout must be > 0, got {self.signal_timeout}")
        if not self.families or any(f not in (4, 6) for f in self.families):
            out.append(f"{prefix} families must list 4 and/or 6, got {list(self.families)}")
        return out


def _converter() -> cattrs.Converter:
    import cattrs

    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)

    def _float(value: Any, _t: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"expected a number, got {value!r}")
        return float(value)

    def _int(value: Any, _t: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected an integer, got {value!r}")
        return value

    def _bool(value: Any, _t: Any) -> bool:
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {value!r}")
        return value

    def _families(value: Any, _t: Any) -> tuple[int, ...]:
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list | tuple) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise TypeError(f"expected a list of 4 and/or 6, got {value!r}")
        return tuple(value)

    conv.register_structure_hook(float, _float)
    conv.register_structure_hook(int, _int)
    conv.register_structure_hook(bool, _bool)
    conv.register_structure_hook_func(lambda t: t == tuple[int, ...], _families)
    return conv


@functools.cache
def _conv() -> cattrs.Converter:
    """Built on first use: importing cattrs and generating hooks costs milliseconds at every
    CLI start, and an empty table never needs them."""
    return _converter()


def load_config(raw: Mapping[str, Any] | None) -> P2pConfig:
    """Validate the plugin table; ``ConfigError`` lists every problem."""
    if not raw:
        return P2pConfig()  # nothing to validate
    import cattrs

    try:
        cfg = _conv().structure(dict(raw or {}), P2pConfig)
    except (cattrs.ClassValidationError, cattrs.IterableValidationError) as exc:
        problems = cattrs.transform_error(exc, path="plugins.p2p")
        raise ConfigError([_humanise(p) for p in problems]) from None
    problems = cfg.problems()
    if problems:
        raise ConfigError(problems)
    return cfg


def _humanise(problem: str) -> str:
    message, _, path = problem.partition(" @ ")
    key = path.replace("['", ".").replace("']", "")
    table, _, leaf = key.rpartition(".")
    return f"[{table}] {leaf}: {message}" if table else f"[{key}] {message}"
