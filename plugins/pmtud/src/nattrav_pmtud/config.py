"""The ``[plugins.pmtud]`` table, validated with attrs + cattrs; every problem reported at once.

Example::

    [plugins.pmtud]
    servers = ["stun:stun.example.net:3478", "[2001:db8::1]:3478"]  # default: [plugins.stun]
    families = [4, 6]
    max = 9000                # largest size probed (IP packet bytes); 65535 at most
    probe_timeout = 1.0       # PROBE_TIMER floor, s (RFC 8899 §5.1.1: >= 1 s)
    max_probes = 3            # MAX_PROBES
    rtt_floor = 0.01          # probes are at least max(SRTT, this) apart, s
    raise_interval = 600      # PMTU_RAISE_TIMER, s
    confirm_interval = 60     # CONFIRMATION_TIMER, s
    deadline = 30             # bound on one discovery, s
    password = "shared"       # short-term credentials shared with a nattrav echo peer
    username = "alice"

Sizes are IP packet sizes: BASE_PLPMTU defaults to 1200 (IPv4) and 1280 (IPv6).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
from nattrav.addresses import parse_hostport
from nattrav.errors import ConfigError

if TYPE_CHECKING:
    import cattrs

    from nattrav_pmtud.prober import ProbeCredentials
    from nattrav_pmtud.search import SearchSettings

__all__ = ["DEFAULT_PORT", "PmtudConfig", "load_config", "parse_target"]

DEFAULT_PORT = 3478


def parse_target(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT``, ``HOST`` (port 3478) or ``stun:HOST[:PORT]``.

    Raises ``ValueError`` saying what is wrong. ``stuns:`` (TLS) is refused: probes are UDP.
    """
    text = text.strip()
    lower = text.lower()
    if lower.startswith("stuns:") or lower.startswith("turns:"):
        raise ValueError(f"{text!r}: PMTU probes are UDP datagrams; use a stun: or plain address")
    for scheme in ("stun:", "turn:"):
        if lower.startswith(scheme):
            text = text[len(scheme) :].split("?", 1)[0]
            break
    if text.startswith("//"):
        text = text[2:]
    return parse_hostport(text, default_port=DEFAULT_PORT)


@attrs.frozen(repr=False)
class PmtudConfig:
    """The plugin's settings (see the module docstring)."""

    servers: tuple[str, ...] = ()
    families: tuple[int, ...] = (4, 6)
    max: int = 9000
    base_ipv4: int = 1200
    base_ipv6: int = 1280
    min_ipv4: int = 68
    min_ipv6: int = 1280
    probe_timeout: float = 1.0
    max_probes: int = 3
    rtt_floor: float = 0.01
    raise_interval: float = 600.0
    confirm_interval: float = 60.0
    optimistic: bool = True
    deadline: float = 30.0
    username: str | None = None
    password: str | None = None
    software: str | None = None

    def __repr__(self) -> str:
        secret = "<secret>" if self.password else None
        return f"PmtudConfig(servers={self.servers!r}, max={self.max}, password={secret})"

    def search_settings(self, family: int, **overrides: Any) -> SearchSettings:
        """``SearchSettings`` for one family (``overrides`` replace fields, e.g. timeouts)."""
        # Imported here: the search (eight attrs classes) is not needed to validate the table,
        # which every CLI start does.
        from nattrav_pmtud.search import SearchSettings

        values: dict[str, Any] = {
            "family": family,
            "base_plpmtu": self.base_ipv4 if family == 4 else self.base_ipv6,
            "min_plpmtu": self.min_ipv4 if family == 4 else self.min_ipv6,
            "max_plpmtu": self.max,
            "max_probes": self.max_probes,
            "probe_timeout": self.probe_timeout,
            "rtt_floor": self.rtt_floor,
            "raise_interval": self.raise_interval,
            "confirm_interval": self.confirm_interval,
            "optimistic": self.optimistic,
        }
        values.update(overrides)
        return SearchSettings(**values)

    def credentials(self) -> ProbeCredentials | None:
        if self.password is None:
            return None
        from nattrav_pmtud.prober import ProbeCredentials

        return ProbeCredentials(self.password, self.username)

    def targets(self) -> list[tuple[str, int]]:
        return [parse_target(s) for s in self.servers]


def check(cfg: PmtudConfig) -> list[str]:
    """Every problem of a structured config, as sentences naming the key."""
    problems: list[str] = []
    for server in cfg.servers:
        try:
            parse_target(server)
        except ValueError as exc:
            problems.append(f"servers: {exc}")
    if not cfg.families or any(f not in (4, 6) for f in cfg.families):
        problems.append(f"families must be a non-empty list of 4 and/or 6, got {cfg.families!r}")
    if cfg.deadline <= 0:
        problems.append(f"deadline must be > 0 s, got {cfg.deadline}")
    if cfg.username is not None and cfg.password is None:
        problems.append("username is set but password is not")
    if cfg.password is not None:
        try:
            cfg.credentials().key()  # type: ignore[union-attr]
        except ValueError as exc:
            problems.append(f"password: {exc}")
    for family in (4, 6):
        seen = set(problems)
        for problem in cfg.search_settings(family).problems():
            if problem not in seen:
                problems.append(problem)
                seen.add(problem)
    return problems


def _converter() -> cattrs.Converter:
    import cattrs

    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)

    def _float(value: Any, _t: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"expected a number, got {value!r}")
        return float(value)

    def _int(value: Any, _t: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected a whole number, got {value!r}")
        return value

    def _str(value: Any, _t: Any) -> str:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        return value

    def _bool(value: Any, _t: Any) -> bool:
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {value!r}")
        return value

    def _strs(value: Any, _t: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"expected a list of strings, got {value!r}")
        return tuple(value)

    def _ints(value: Any, _t: Any) -> tuple[int, ...]:
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list | tuple) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise TypeError(f"expected a list of whole numbers, got {value!r}")
        return tuple(value)

    def _opt_str(value: Any, _t: Any) -> str | None:
        return None if value is None else _str(value, str)

    conv.register_structure_hook(float, _float)
    conv.register_structure_hook(int, _int)
    conv.register_structure_hook(str, _str)
    conv.register_structure_hook(bool, _bool)
    conv.register_structure_hook_func(lambda t: t == tuple[str, ...], _strs)
    conv.register_structure_hook_func(lambda t: t == tuple[int, ...], _ints)
    conv.register_structure_hook_func(lambda t: t == (str | None), _opt_str)
    return conv


@functools.cache
def _conv() -> cattrs.Converter:
    """Built on first use: importing cattrs and generating hooks costs milliseconds at every
    CLI start, and an empty table never needs them."""
    return _converter()


def _format(exc: BaseException, _type: Any) -> str:
    if isinstance(exc, KeyError):
        return "required key missing"
    return str(exc)


def load_config(raw: Mapping[str, Any] | None) -> PmtudConfig:
    """Validate ``[plugins.pmtud]``; raise one ``ConfigError`` listing every problem."""
    if not raw:
        return PmtudConfig()  # nothing to validate
    import cattrs

    try:
        cfg = _conv().structure(dict(raw or {}), PmtudConfig)
    except cattrs.ClassValidationError as exc:
        problems = cattrs.transform_error(exc, path="plugins.pmtud", format_exception=_format)
        raise ConfigError(problems) from None
    problems = check(cfg)
    if problems:
        raise ConfigError([f"[plugins.pmtud] {p}" for p in problems])
    return cfg
