"""Configuration: attrs classes, loaded from TOML and ``NATTRAV_*`` variables through cattrs.

Why this shape: one validation path for every source. The file, environment variables and CLI
flags are merged into one raw mapping first, then structured once; every problem (unknown key,
wrong type, bad value) is collected and raised together in a single ``ConfigError``, so a user
fixes the whole file in one pass instead of one error per run.

Environment variables: ``NATTRAV_<SECTION>__<KEY>=value`` sets ``[section] key``; the value is
read as a TOML value when it parses as one (``3``, ``true``, ``["a", "b"]``) and as a string
otherwise. ``NATTRAV_DISABLE_PLUGINS``, ``NATTRAV_CONFIG`` and ``NATTRAV_BACKEND`` are not
config keys (they control loading and the CLI).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import attrs

from nattrav.enums import Goal
from nattrav.errors import ConfigError

if TYPE_CHECKING:
    import cattrs

    from nattrav.resilience import BreakerPolicy, RetryPolicy

__all__ = [
    "ChainConfig",
    "Config",
    "MethodConfig",
    "ENV_PREFIX",
    "RESERVED_ENV",
    "env_overrides",
    "load_config",
    "structure_config",
]

ENV_PREFIX = "NATTRAV_"
RESERVED_ENV = frozenset(
    {"DISABLE_PLUGINS", "CONFIG", "BACKEND", "LAB_PREFIX", "NO_PUBLIC_SERVERS"}
)

Strategy = Literal["race", "sequential"]


def _positive(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attr.name} must be > 0, got {value}")


def _non_negative(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attr.name} must be >= 0, got {value}")


@attrs.frozen
class MethodConfig:
    """Per-method settings (``[methods.<name>]``)."""

    timeout: float | None = attrs.field(default=None)
    priority: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {self.timeout}")


@attrs.frozen
class ChainConfig:
    """How the chain runs (``[chain]``).

    ``order`` lists methods to try first, in that order (the rest follow by priority);
    ``disabled`` removes methods. ``stagger`` is the race strategy's delay before starting the
    next method; ``grace`` is how long a success waits for a better-priority method still
    running, and ``fallback_grace`` how long it waits when that method would give a better
    kind of endpoint and the success is a relay, or the goal is ``any``. ``verify`` asks
    installed verifiers to prove inbound reachability.
    """

    strategy: Strategy = "race"
    goal: Goal = Goal.REACHABLE
    stagger: float = attrs.field(default=0.25, validator=_non_negative)
    grace: float = attrs.field(default=0.1, validator=_non_negative)
    fallback_grace: float = attrs.field(default=1.0, validator=_non_negative)
    order: tuple[str, ...] = ()
    disabled: tuple[str, ...] = ()
    verify: bool = True
    verify_window: float = attrs.field(default=0.5, validator=_positive)
    probe_paths: bool = False


@attrs.frozen
class RetryConfig:
    """Default retry policy (``[retry]``) for methods whose plugin sets none."""

    attempts: int = attrs.field(default=2, validator=attrs.validators.ge(1))
    wait_initial: float = attrs.field(default=0.1, validator=_non_negative)
    wait_max: float = attrs.field(default=1.0, validator=_non_negative)
    wait_jitter: float = attrs.field(default=0.1, validator=_non_negative)

    def policy(self) -> RetryPolicy:
        from nattrav.resilience import RetryPolicy

        return RetryPolicy(self.attempts, self.wait_initial, self.wait_max, self.wait_jitter)


@attrs.frozen
class BreakerConfig:
    """Default circuit-breaker policy (``[breaker]``)."""

    threshold: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    cooldown: float = attrs.field(default=5.0, validator=_positive)
    max_cooldown: float = attrs.field(default=300.0, validator=_positive)
    enabled: bool = True

    def policy(self) -> BreakerPolicy:
        from nattrav.resilience import BreakerPolicy

        return BreakerPolicy(self.threshold, self.cooldown, self.max_cooldown, self.enabled)


@attrs.frozen
class Config:
    """The whole configuration. ``plugins`` holds each plugin's own table, unvalidated here
    (each plugin validates its table when it registers)."""

    chain: ChainConfig = attrs.field(factory=ChainConfig)
    retry: RetryConfig = attrs.field(factory=RetryConfig)
    breaker: BreakerConfig = attrs.field(factory=BreakerConfig)
    methods: dict[str, MethodConfig] = attrs.field(factory=dict)
    plugins: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    state_dir: str | None = None
    cleanup_on_start: bool = True
    log_level: str = "warning"

    def plugin_table(self, name: str) -> dict[str, Any]:
        return self.plugins.get(name, {})


def _make_converter() -> cattrs.Converter:
    import cattrs
    from cattrs.gen import make_dict_structure_fn, override

    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)

    def _float(value: Any, _t: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"expected a number, got {value!r}")
        return float(value)

    def _int(value: Any, _t: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected an integer, got {value!r}")
        return value

    def _str(value: Any, _t: Any) -> str:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        return value

    def _bool(value: Any, _t: Any) -> bool:
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {value!r}")
        return value

    conv.register_structure_hook(float, _float)
    conv.register_structure_hook(int, _int)
    conv.register_structure_hook(str, _str)
    conv.register_structure_hook(bool, _bool)

    def _strategy(value: Any, _t: Any) -> str:
        if value not in ("race", "sequential"):
            raise ValueError(f"strategy must be 'race' or 'sequential', got {value!r}")
        return str(value)

    conv.register_structure_hook_func(lambda t: t == Strategy, _strategy)

    def _goal(value: Any, _t: Any) -> Goal:
        try:
            return Goal(value)
        except ValueError:
            raise ValueError(f"goal must be 'reachable' or 'any', got {value!r}") from None

    conv.register_structure_hook(Goal, _goal)

    def _names(value: Any, _t: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [v for v in (p.strip() for p in value.split(",")) if v]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"expected a list of method names, got {value!r}")
        return tuple(value)

    conv.register_structure_hook_func(lambda t: t == tuple[str, ...], _names)

    def _table(value: Any, _t: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise TypeError(f"expected a table, got {value!r}")
        return dict(value)

    conv.register_structure_hook_func(lambda t: t == dict[str, Any], _table)
    # Leaves first: a class's generated hook captures its fields' hooks when it is made.
    for cls in (MethodConfig, ChainConfig, RetryConfig, BreakerConfig, Config):
        attrs.resolve_types(cls)
        overrides = {
            f.name: override(struct_hook=_validated(conv, f))
            for f in attrs.fields(cls)
            if f.validator is not None
        }
        hook = make_dict_structure_fn(
            cls,
            conv,
            _cattrs_forbid_extra_keys=True,
            **overrides,  # type: ignore[arg-type]
        )
        conv.register_structure_hook(cls, hook)
    conv.register_unstructure_hook(Goal, lambda g: g.value)
    return conv


def _validated(conv: cattrs.Converter, field: attrs.Attribute[Any]) -> Any:
    """Run a field's attrs validator while structuring, so its error is collected with the
    others instead of stopping ``__init__`` after the first."""

    def hook(value: Any, _t: Any) -> Any:
        assert field.type is not None
        result = conv.structure(value, field.type)
        assert field.validator is not None
        field.validator(None, field, result)
        return result

    return hook


@functools.cache
def _converter() -> cattrs.Converter:
    """Built on first use: cattrs and the generated hooks cost tens of milliseconds at start-up,
    and a run without a config file or ``NATTRAV_*`` settings never needs them."""
    return _make_converter()


def structure_config(raw: Mapping[str, Any], *, source: str | None = None) -> Config:
    """Validate ``raw`` into a ``Config``; raise one ``ConfigError`` listing every problem."""
    if not raw:
        return Config()  # nothing to validate: skip importing cattrs
    import cattrs

    try:
        return _converter().structure(dict(raw), Config)
    except (cattrs.ClassValidationError, cattrs.IterableValidationError) as exc:
        problems = cattrs.transform_error(exc, path="config", format_exception=_format)
        raise ConfigError([_humanise(p) for p in problems], source=source) from None
    except (ValueError, TypeError) as exc:
        raise ConfigError([str(exc)], source=source) from None


def _format(exc: BaseException, type_: Any) -> str:
    import cattrs

    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return f"unknown key(s): {', '.join(sorted(exc.extra_fields))}"
    if isinstance(exc, KeyError):
        return "required key missing"
    text = str(exc)
    if text:
        return text
    return cattrs.v.format_exception(exc, type_)


def _humanise(problem: str) -> str:
    # cattrs says "extra fields found (x) @ config.chain"; turn the path into a TOML key.
    message, _, path = problem.partition(" @ ")
    key = path.removeprefix("config").lstrip(".").replace("['", ".").replace("']", "")
    return f"[{key or 'top level'}] {message}" if key else message


def config_to_raw(config: Config) -> dict[str, Any]:
    """Unstructure a config to plain data (for ``--json`` output and round trips)."""
    data: dict[str, Any] = _converter().unstructure(config)
    return data


def _env_value(text: str) -> Any:
    import tomllib  # here, not at the top: most runs have no NATTRAV_* settings or file

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Turn ``NATTRAV_A__B=v`` variables into ``{"a": {"b": v}}``.

    Only variables whose first part names a top-level config key (``chain``, ``retry``,
    ``plugins``, ``state_dir``...) are configuration; other ``NATTRAV_*`` variables belong to
    tools around nattrav (the lab, the CLI) and are left alone. Below the top level, unknown
    keys are errors like in the file.
    """
    top = {f.name for f in attrs.fields(Config)}
    raw: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :]
        if key in RESERVED_ENV or not key:
            continue
        parts = [p.lower() for p in key.split("__")]
        if parts[0] not in top:
            continue
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            node[parts[-1]] = _env_value(value)
    return raw


def merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base`` (tables merge, other values replace)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML file, turning I/O and syntax errors into ``ConfigError``."""
    import tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError([f"config file not found: {os.fspath(path)}"]) from None
    except OSError as exc:
        raise ConfigError([f"cannot read {os.fspath(path)}: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"TOML syntax error: {exc}"], source=os.fspath(path)) from None


def load_raw(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], str | None]:
    """Merge the config file, environment and overrides into one raw mapping.

    The file is ``path``, else ``$NATTRAV_CONFIG``, else ``./nattrav.toml`` when present.
    """
    env = os.environ if environ is None else environ
    source: str | None = None
    raw: dict[str, Any] = {}
    if path is None and env.get("NATTRAV_CONFIG"):
        path = env["NATTRAV_CONFIG"]
    if path is None and os.path.isfile("nattrav.toml"):
        path = "nattrav.toml"
    if path is not None:
        source = os.fspath(path)
        raw = read_toml(path)
    raw = merge(raw, env_overrides(env))
    if overrides:
        raw = merge(raw, overrides)
    return raw, source


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Load and validate the configuration (file, then env vars, then overrides)."""
    raw, source = load_raw(path, environ=environ, overrides=overrides)
    return structure_config(raw, source=source)
