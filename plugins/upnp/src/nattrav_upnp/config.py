"""The ``[plugins.upnp]`` table, validated with attrs + cattrs.

Every problem is collected and reported at once in one ``ConfigError`` naming the key, like
core's own config. Defaults favour the chain: a short discovery window (the default gateway
usually answers within a few milliseconds, and ``settle`` ends the search soon after), a
finite one-hour lease so a crash cannot leave a mapping forever, and a re-verification every
five minutes (miniupnpd purges "unused" rules after ~20 minutes: miniupnp#823).

Example::

    [plugins.upnp]
    lease = 3600
    description = "nattrav"
    discovery_window = 1.0
    interfaces = ["eth0"]
    verify_interval = 300
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
from nattrav.errors import ConfigError

if TYPE_CHECKING:
    import cattrs

__all__ = ["UpnpConfig", "load_config"]


def _range(lo: float, hi: float, *, lo_open: bool = False) -> Any:
    def check(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
        low_ok = value > lo if lo_open else value >= lo
        if not (low_ok and value <= hi):
            low = f"> {lo:g}" if lo_open else f">= {lo:g}"
            raise ValueError(f"{attribute.name} must be {low} and <= {hi:g}, got {value!r}")

    return check


def _description(_inst: object, _attribute: attrs.Attribute[str], value: str) -> None:
    if not 1 <= len(value) <= 48 or not value.isprintable():
        raise ValueError(
            f"description must be 1-48 printable characters (routers truncate longer ones), "
            f"got {value!r}"
        )


def _gateway(_inst: object, _attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is None:
        return
    # Imported here: the URL module (three attrs classes) is not needed for the default.
    from nattrav_upnp.urls import canonical_ip

    if canonical_ip(value) is None:
        raise ValueError(f"gateway must be an IP literal, got {value!r}")


def _interfaces(_inst: object, _attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    bad = [v for v in value if not v or not v.isprintable() or len(v) > 64]
    if bad:
        raise ValueError(f"interfaces must be interface names, got {bad!r}")


@attrs.frozen
class UpnpConfig:
    """Settings of the UPnP plugin (``[plugins.upnp]``); times in seconds."""

    lease: int = attrs.field(default=3600, validator=_range(0, 604800))
    description: str = attrs.field(default="nattrav", validator=_description)
    discovery_window: float = attrs.field(default=1.0, validator=_range(0, 30, lo_open=True))
    settle: float = attrs.field(default=0.02, validator=_range(0, 10))
    settle_other: float = attrs.field(default=0.25, validator=_range(0, 10))
    interfaces: tuple[str, ...] = attrs.field(default=(), validator=_interfaces)
    ipv6: bool = True
    gateway: str | None = attrs.field(default=None, validator=_gateway)
    verify_interval: float = attrs.field(default=300.0, validator=_range(0, 86400, lo_open=True))
    release_timeout: float = attrs.field(default=3.0, validator=_range(0, 60, lo_open=True))
    http_timeout: float = attrs.field(default=2.0, validator=_range(0, 60, lo_open=True))
    max_body: int = attrs.field(default=256 * 1024, validator=_range(1024, 4 * 1024 * 1024))
    max_responders: int = attrs.field(default=16, validator=_range(1, 256))
    pinholes: bool = True
    pinhole_lease: int = attrs.field(default=3600, validator=_range(1, 86400))


def _make_converter() -> cattrs.Converter:
    import cattrs
    from cattrs.gen import make_dict_structure_fn, override

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

    def _names(value: Any, _t: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"expected a list of interface names, got {value!r}")
        return tuple(value)

    def _optional_str(value: Any, _t: Any) -> str | None:
        return None if value is None else _str(value, str)

    conv.register_structure_hook(float, _float)
    conv.register_structure_hook(int, _int)
    conv.register_structure_hook(str, _str)
    conv.register_structure_hook(bool, _bool)
    conv.register_structure_hook_func(lambda t: t == tuple[str, ...], _names)
    conv.register_structure_hook_func(lambda t: t == (str | None), _optional_str)
    attrs.resolve_types(UpnpConfig)
    overrides: dict[str, Any] = {
        f.name: override(struct_hook=_validated(conv, f))
        for f in attrs.fields(UpnpConfig)
        if f.validator is not None
    }
    conv.register_structure_hook(
        UpnpConfig,
        make_dict_structure_fn(UpnpConfig, conv, _cattrs_forbid_extra_keys=True, **overrides),
    )
    return conv


def _validated(conv: cattrs.Converter, field: attrs.Attribute[Any]) -> Any:

    def hook(value: Any, _t: Any) -> Any:
        assert field.type is not None and field.validator is not None
        result = conv.structure(value, field.type)
        field.validator(None, field, result)
        return result

    return hook


@functools.cache
def _conv() -> cattrs.Converter:
    """Built on first use: importing cattrs and generating hooks costs milliseconds at every
    CLI start, and an empty table never needs them."""
    return _make_converter()


def load_config(raw: Mapping[str, Any] | None) -> UpnpConfig:
    """Validate the plugin's table; raise one ``ConfigError`` listing every problem."""
    if not raw:
        return UpnpConfig()  # nothing to validate
    import cattrs

    try:
        return _conv().structure(dict(raw or {}), UpnpConfig)
    except cattrs.ClassValidationError as exc:
        problems = cattrs.transform_error(exc, path="plugins.upnp", format_exception=_format)
        raise ConfigError([_humanise(p) for p in problems]) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError([f"[plugins.upnp] {exc}"]) from None


def _format(exc: BaseException, type_: Any) -> str:
    import cattrs

    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return f"unknown key(s): {', '.join(sorted(exc.extra_fields))}"
    return str(exc) or cattrs.v.format_exception(exc, type_)


def _humanise(problem: str) -> str:
    message, _, path = problem.partition(" @ ")
    return f"[{path}] {message}"
