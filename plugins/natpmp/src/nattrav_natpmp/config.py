"""The ``[plugins.natpmp]`` table, validated with attrs + cattrs; every problem reported at once.

Defaults favour the chain and the RFCs in that order: a short probe window (a missing gateway
costs 0.5 s, not NAT-PMP's 128 s or PCP's unbounded retransmission), the RFC retransmission
schedules once a gateway has answered, and a finite lease (the request's lifetime unless
``lifetime`` is set; the CLI asks for RFC 6886's recommended 7200 s) so a crashed process
cannot leave a mapping behind for long.

Example::

    [plugins.natpmp]
    protocol = "auto"          # "pcp", "natpmp" or "auto" (PCP first, NAT-PMP fallback)
    gateway = "192.168.1.1"    # or a list; default: the OS's default gateways
    lifetime = 7200            # seconds; default: the request's lifetime
    probe_window = 0.5         # seconds to wait for the first answer
    families = [4, 6]          # IPv6 uses PCP only (NAT-PMP is IPv4-only)
    announcements = true       # listen on 224.0.0.1/ff02::1 port 5350
    pcp_irt = 3.0              # RFC 6887 §8.1.1 retransmission
    natpmp_max_sends = 9       # RFC 6886 §3.1 retransmission
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import attrs
from nattrav.errors import ConfigError

if TYPE_CHECKING:
    import cattrs

__all__ = ["NatPmpSettings", "load_settings"]

ProtocolName = Literal["pcp", "natpmp"]


def _between(lo: float, hi: float, *, open_low: bool = False) -> Any:
    def check(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
        ok_low = value > lo if open_low else value >= lo
        if not (ok_low and value <= hi):
            low = f"> {lo:g}" if open_low else f">= {lo:g}"
            raise ValueError(f"{attribute.name} must be {low} and <= {hi:g}, got {value!r}")

    return check


def _protocol(_inst: object, _a: attrs.Attribute[str], value: str) -> None:
    if value not in ("auto", "pcp", "natpmp"):
        raise ValueError(f"protocol must be 'auto', 'pcp' or 'natpmp', got {value!r}")


def _gateways(_inst: object, _a: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    if not value:
        return  # the default: nothing to parse, and no need to import the gateway module
    from nattrav.gateways import parse_gateway

    bad = []
    for text in value:
        try:
            parse_gateway(text)
        except ValueError:
            bad.append(text)
    if bad:
        raise ValueError(
            f"gateway must be IP literals (e.g. 192.168.1.1, fe80::1%eth0), got {bad!r}"
        )


def _families(_inst: object, _a: attrs.Attribute[Any], value: tuple[int, ...]) -> None:
    if not value or any(f not in (4, 6) for f in value):
        raise ValueError(f"families must be a non-empty list of 4 and/or 6, got {list(value)!r}")


def _lifetime(_inst: object, a: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and not 1 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{a.name} must be between 1 and 4294967295 seconds, got {value!r}")


@attrs.frozen
class NatPmpSettings:
    """Settings of the NAT-PMP/PCP plugin; times in seconds."""

    protocol: str = attrs.field(default="auto", validator=_protocol)
    gateway: tuple[str, ...] = attrs.field(default=(), validator=_gateways)
    lifetime: int | None = attrs.field(default=None, validator=_lifetime)
    families: tuple[int, ...] = attrs.field(default=(4, 6), validator=_families)
    probe_window: float = attrs.field(default=0.5, validator=_between(0, 30, open_low=True))
    announcements: bool = True
    prefer_failure: bool = False
    min_lifetime: int = attrs.field(default=10, validator=_between(1, 3600))
    release_timeout: float = attrs.field(default=2.0, validator=_between(0, 60, open_low=True))
    natpmp_initial: float = attrs.field(default=0.25, validator=_between(0, 10, open_low=True))
    natpmp_max_sends: int = attrs.field(default=9, validator=_between(1, 20))
    pcp_irt: float = attrs.field(default=3.0, validator=_between(0, 60, open_low=True))
    pcp_mrt: float = attrs.field(default=1024.0, validator=_between(0, 86400, open_low=True))
    pcp_mrc: int = attrs.field(default=0, validator=_between(0, 1000))
    pcp_mrd: float = attrs.field(default=0.0, validator=_between(0, 86400))
    pcp_jitter: float = attrs.field(default=0.1, validator=_between(0, 0.5))
    renewal_min_interval: float = attrs.field(
        default=4.0, validator=_between(0, 3600, open_low=True)
    )
    recovery_delay: float = attrs.field(default=5.0, validator=_between(0, 60))
    recovery_window: float = attrs.field(default=30.0, validator=_between(0, 3600, open_low=True))
    recovery_backoff_max: float = attrs.field(default=300.0, validator=_between(1, 86400))

    def protocols(self) -> tuple[ProtocolName, ...]:
        """The protocols to try, in order."""
        if self.protocol == "pcp":
            return ("pcp",)
        if self.protocol == "natpmp":
            return ("natpmp",)
        return ("pcp", "natpmp")


def _make_converter() -> cattrs.Converter:
    import cattrs
    from cattrs.gen import make_dict_structure_fn, override

    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)

    def _number(value: Any, _t: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"expected a number, got {value!r}")
        return float(value)

    def _whole(value: Any, _t: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected a whole number, got {value!r}")
        return value

    def _text(value: Any, _t: Any) -> str:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        return value

    def _flag(value: Any, _t: Any) -> bool:
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {value!r}")
        return value

    def _texts(value: Any, _t: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"expected a string or a list of strings, got {value!r}")
        return tuple(value)

    def _ints(value: Any, _t: Any) -> tuple[int, ...]:
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list | tuple) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise TypeError(f"expected a list of whole numbers, got {value!r}")
        return tuple(value)

    def _optional_whole(value: Any, _t: Any) -> int | None:
        return None if value is None else _whole(value, int)

    conv.register_structure_hook(float, _number)
    conv.register_structure_hook(int, _whole)
    conv.register_structure_hook(str, _text)
    conv.register_structure_hook(bool, _flag)
    conv.register_structure_hook_func(lambda t: t == tuple[str, ...], _texts)
    conv.register_structure_hook_func(lambda t: t == tuple[int, ...], _ints)
    conv.register_structure_hook_func(lambda t: t == (int | None), _optional_whole)
    attrs.resolve_types(NatPmpSettings)

    def validated(field: attrs.Attribute[Any]) -> Any:
        def hook(value: Any, _t: Any) -> Any:
            assert field.type is not None
            result = conv.structure(value, field.type)
            assert field.validator is not None
            field.validator(None, field, result)
            return result

        return hook

    overrides = {
        f.name: override(struct_hook=validated(f))
        for f in attrs.fields(NatPmpSettings)
        if f.validator is not None
    }
    make: Any = make_dict_structure_fn  # its **overrides are not typed per attribute
    conv.register_structure_hook(
        NatPmpSettings, make(NatPmpSettings, conv, _cattrs_forbid_extra_keys=True, **overrides)
    )
    return conv


@functools.cache
def _conv() -> cattrs.Converter:
    """Built on first use: importing cattrs and generating hooks costs milliseconds at every
    CLI start, and an empty table never needs them."""
    return _make_converter()


def load_settings(raw: Mapping[str, Any] | None) -> NatPmpSettings:
    """Validate the plugin's table; raise one ``ConfigError`` listing every problem."""
    if not raw:
        return NatPmpSettings()  # nothing to validate
    import cattrs

    try:
        return _conv().structure(dict(raw or {}), NatPmpSettings)
    except cattrs.ClassValidationError as exc:
        problems = cattrs.transform_error(exc, path="plugins.natpmp", format_exception=_format)
        raise ConfigError([_where(p) for p in problems]) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError([f"[plugins.natpmp] {exc}"]) from None


def _format(exc: BaseException, type_: Any) -> str:
    import cattrs

    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return f"unknown key(s): {', '.join(sorted(exc.extra_fields))}"
    return str(exc) or cattrs.v.format_exception(exc, type_)


def _where(problem: str) -> str:
    message, _, path = problem.partition(" @ ")
    return f"[{path}] {message}" if path else message
