"""Plugin discovery, loading with failure isolation, and the typed hook facade.

Theory of operation
-------------------
``PluginHost.load()`` builds a fresh pluggy ``PluginManager`` (never at import time) and walks
the entry points of the group ``nattrav`` one by one. Each is imported and registered inside its
own try/except: a plugin that fails to import, fails registration, or raises in a registration
hook is recorded as *broken* with its distribution and the error, its registrations are
dropped, it is unregistered, and loading carries on. ``NATTRAV_DISABLE_PLUGINS=a,b`` marks
plugins *blocked* without importing them.

Registration hooks are called per plugin (not through ``pm.hook``) so a failure can be pinned
to the plugin that caused it. Everything else goes through ``Hooks``, a typed facade: no other
module calls ``pm.hook`` directly.

Discovery reads the ``entry_points.txt`` of every ``*.dist-info`` and ``*.egg-info`` directory
on ``sys.path`` itself, the way importlib.metadata's path finder does (same places, same
order, the first distribution of a name wins): importing importlib.metadata (and the email
package it parses metadata with) cost more than everything else ``nattrav-plugins list`` did.
Where ``sys.path`` or ``sys.meta_path`` hold anything else (a zip or egg on the path, a finder
that provides distributions of its own), discovery is importlib.metadata's own.
"""

from __future__ import annotations

import enum
import functools
import importlib
import inspect
import logging
import os
import re
import sys
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import pluggy

from nattrav import hookspecs
from nattrav.config import Config
from nattrav.errors import ConfigError, PluginError
from nattrav.registry import (
    CommandRegistry,
    ConnectorRegistry,
    MethodRegistry,
    MethodSpec,
    OptionRegistry,
    PathProbeRegistry,
    ReportRegistry,
    SignalerRegistry,
    VerifierRegistry,
    _Registry,
)

if TYPE_CHECKING:
    import importlib.metadata as md

    from nattrav.models import AttemptRecord, LeaseEvent, TraversalRequest, TraversalResult
    from nattrav.resilience import BreakerPolicy, BreakerState, RetryPolicy

__all__ = ["ENTRY_POINT_GROUP", "Hooks", "PluginHost", "PluginRecord", "PluginStatus"]

ENTRY_POINT_GROUP = "nattrav"
log = logging.getLogger("nattrav.plugins")


class PluginStatus(enum.Enum):
    OK = "ok"
    BLOCKED = "blocked"
    BROKEN = "broken"


@attrs.define
class PluginRecord:
    """What ``nattrav-plugins list`` shows for one plugin."""

    name: str
    distribution: str | None
    version: str | None
    status: PluginStatus
    error: str | None = None
    hooks: list[str] = attrs.field(factory=list)
    methods: list[tuple[str, int]] = attrs.field(factory=list)
    builtin: bool = False
    module: str | None = None
    #: what broke it (a ``ConfigError`` for a bad ``[plugins.<name>]`` table)
    exception: BaseException | None = attrs.field(default=None, eq=False, repr=False)


def disabled_from_env(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    env = os.environ if environ is None else environ
    raw = env.get("NATTRAV_DISABLE_PLUGINS", "")
    return frozenset(p.strip() for p in raw.split(",") if p.strip())


# The registration hooks and the arguments they take (besides the registry).
_REGISTRATION_HOOKS: dict[str, tuple[str, type[_Registry[Any]], bool]] = {
    # hook name -> (registry attribute, registry class, receives plugin config)
    "nattrav_register_methods": ("methods", MethodRegistry, True),
    "nattrav_register_verifiers": ("verifiers", VerifierRegistry, True),
    "nattrav_register_path_probes": ("path_probes", PathProbeRegistry, True),
    "nattrav_register_report_sections": ("report_sections", ReportRegistry, True),
    "nattrav_register_signalers": ("signalers", SignalerRegistry, True),
    "nattrav_register_connectors": ("connectors", ConnectorRegistry, True),
    "nattrav_register_commands": ("commands", CommandRegistry, False),
    "nattrav_register_options": ("options", OptionRegistry, False),
}


@attrs.define
class PluginHost:
    """Loaded plugins, their records and everything they registered."""

    pm: pluggy.PluginManager
    config: Config
    records: dict[str, PluginRecord] = attrs.field(factory=dict)
    methods: MethodRegistry = attrs.field(factory=MethodRegistry)
    verifiers: VerifierRegistry = attrs.field(factory=VerifierRegistry)
    path_probes: PathProbeRegistry = attrs.field(factory=PathProbeRegistry)
    report_sections: ReportRegistry = attrs.field(factory=ReportRegistry)
    signalers: SignalerRegistry = attrs.field(factory=SignalerRegistry)
    connectors: ConnectorRegistry = attrs.field(factory=ConnectorRegistry)
    commands: CommandRegistry = attrs.field(factory=CommandRegistry)
    options: OptionRegistry = attrs.field(factory=OptionRegistry)
    hooks: Hooks = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.hooks = Hooks(self.pm, self.config)

    @classmethod
    def load(
        cls,
        config: Config | None = None,
        *,
        entry_points: Iterable[EntryPointLike] | None = None,
        disabled: Iterable[str] | None = None,
        builtins: bool = True,
        extra: Sequence[tuple[str, object]] = (),
    ) -> PluginHost:
        """Discover, import and register plugins; never raises for a single bad plugin.

        ``entry_points`` defaults to the installed ones of the group ``nattrav``; ``extra``
        registers in-process plugins (name, module-or-object), as the pytest fixtures do.
        """
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        host = cls(pm=pm, config=config or Config())
        blocked = disabled_from_env() if disabled is None else frozenset(disabled)
        if builtins:
            from nattrav import direct

            host._add(
                "direct",
                direct,
                PluginRecord(
                    "direct", "nattrav", _version("nattrav"), PluginStatus.OK, builtin=True
                ),
                blocked,
            )
        eps = _installed_entry_points() if entry_points is None else list(entry_points)
        for ep in sorted(eps, key=lambda e: e.name):
            dist, version = _name_and_version(ep.dist)
            record = PluginRecord(ep.name, dist, version, PluginStatus.OK, module=ep.value)
            if ep.name in host.records:
                record.status = PluginStatus.BROKEN
                record.error = f"duplicate plugin name {ep.name!r} (already loaded)"
                host.records[f"{ep.name} ({dist})"] = record
                continue
            if ep.name in blocked:
                record.status = PluginStatus.BLOCKED
                record.error = "disabled by NATTRAV_DISABLE_PLUGINS"
                host.records[ep.name] = record
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # isolate any import-time failure
                record.status = PluginStatus.BROKEN
                record.error = f"import failed: {type(exc).__name__}: {exc}"
                host.records[ep.name] = record
                log.warning("plugin %s (%s) failed to import: %s", ep.name, dist, exc)
                continue
            host._add(ep.name, plugin, record, blocked)
        for name, plugin in extra:
            host._add(name, plugin, PluginRecord(name, None, None, PluginStatus.OK), blocked)
        return host

    def _add(
        self, name: str, plugin: object, record: PluginRecord, blocked: frozenset[str]
    ) -> None:
        self.records[name] = record
        if name in blocked:
            record.status = PluginStatus.BLOCKED
            record.error = "disabled by NATTRAV_DISABLE_PLUGINS"
            return
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # pluggy validation errors, name clashes
            record.status = PluginStatus.BROKEN
            record.error = f"registration failed: {type(exc).__name__}: {exc}"
            return
        record.hooks = sorted(
            hc.name
            for hc in (self.pm.get_hookcallers(plugin) or [])
            if hc.name.startswith("nattrav_")
        )
        try:
            self._run_registration_hooks(name, plugin)
        except Exception as exc:
            record.status = PluginStatus.BROKEN
            record.error = _describe(exc)
            record.exception = exc
            for attr, _cls, _cfg in _REGISTRATION_HOOKS.values():
                getattr(self, attr).drop_plugin(name)
            self.pm.unregister(plugin)
            log.warning("plugin %s is broken: %s", name, record.error)
            return
        record.methods = [(m, self.methods[m].priority) for m in self.methods.names_of(name)]

    def _run_registration_hooks(self, name: str, plugin: object) -> None:
        add_specs = getattr(plugin, "nattrav_add_hookspecs", None)
        if add_specs is not None and _is_hookimpl(add_specs):
            self._add_hookspecs(name, add_specs)
        table = self.config.plugin_table(name)
        for hook_name, (attr, _cls, with_config) in _REGISTRATION_HOOKS.items():
            impl = getattr(plugin, hook_name, None)
            if impl is None or not _is_hookimpl(impl):
                continue
            registry = getattr(self, attr)
            registry.current_plugin = name
            kwargs: dict[str, Any] = {"registry": registry}
            if with_config:
                kwargs["config"] = table
            _call_with_accepted(impl, kwargs)

    def _add_hookspecs(self, name: str, add_specs: Callable[..., Any]) -> None:
        """Let ``name`` add its hookspecs. A plugin registered earlier whose implementation
        does not match a new spec is the broken one, not ``name``: drop it and go on."""
        for _ in range(len(self.records) + 1):
            try:
                _call_with_accepted(add_specs, {"pluginmanager": self.pm})
                return
            except pluggy.PluginValidationError as exc:
                culprit = self.pm.get_name(exc.plugin) if exc.plugin is not None else None
                if culprit is None or culprit == name or culprit not in self.records:
                    raise
                record = self.records[culprit]
                record.status = PluginStatus.BROKEN
                record.error = f"does not match {name}'s hook: {exc}"
                for attr, _cls, _cfg in _REGISTRATION_HOOKS.values():
                    getattr(self, attr).drop_plugin(culprit)
                self.pm.unregister(name=culprit)
                log.warning("plugin %s is broken: %s", culprit, record.error)

    # ---------------------------------------------------------------- queries

    def ok_plugins(self) -> list[PluginRecord]:
        return [r for r in self.records.values() if r.status is PluginStatus.OK]

    def method_specs(self) -> list[MethodSpec]:
        return self.methods.ordered()


def _is_hookimpl(obj: object) -> bool:
    return hasattr(obj, f"{hookspecs.PROJECT}_impl")


def _call_with_accepted(func: Callable[..., Any], kwargs: Mapping[str, Any]) -> Any:
    """Call a hook implementation with the subset of arguments it declares (pluggy's rule)."""
    params = inspect.signature(func).parameters
    return func(**{k: v for k, v in kwargs.items() if k in params})


def _describe(exc: BaseException) -> str:
    if isinstance(exc, PluginError | ConfigError):
        return str(exc)
    return f"hook raised {type(exc).__name__}: {exc}"


def _version(dist: str) -> str | None:
    found = _find_distribution(dist)
    return None if found is None else _name_and_version(found)[1]


_WANTED = ("name", "version")
# How the email package reads a header block: lines split at \r\n, \r or \n; a header line
# is a name of printable ASCII other than ":" followed by ":"; a line starting with a space
# or tab continues the previous header; anything else ends the block.
_LINES = re.compile(r"\r\n|\r|\n")
_HEADER = re.compile(r"([\041-\071\073-\176]*):")


def _name_and_version(dist: DistributionLike | None) -> tuple[str | None, str | None]:
    """``(dist.name, dist.version)``, read from the head of the core metadata.

    ``Distribution.name`` and ``.version`` each parse the whole METADATA file with the email
    package (and import its parser): two full parses per plugin at every CLI start, for two
    single-line headers near the top. This reads the header block the way the email parser
    does and stops there; metadata where either header is missing, folded or preceded by a
    mailbox ``From`` line goes to importlib.metadata's own parser.
    """
    if dist is None:
        return None, None
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    found: dict[str, str] = {}
    last = ""
    for line in _LINES.split(text):
        if line[:1] in (" ", "\t"):
            if last in _WANTED:
                found.clear()  # a folded Name or Version: leave it to the email parser
                break
            continue
        match = _HEADER.match(line)
        if match is None or line.startswith("From "):
            break  # the end of the header block (or a form this reader leaves alone)
        last = match[1].lower()
        if last in _WANTED and last not in found:
            found[last] = line[match.end() :].lstrip(" \t")
    if len(found) < len(_WANTED):
        return dist.name, dist.version
    return found["name"], found["version"]


# --------------------------------------------------------------------------- discovery


class DistributionLike(Protocol):
    """What loading needs of a distribution (``importlib.metadata.Distribution`` has it)."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    def read_text(self, filename: str) -> str | None: ...


class EntryPointLike(Protocol):
    """What loading needs of an entry point (``importlib.metadata.EntryPoint`` has it)."""

    @property
    def name(self) -> str: ...

    @property
    def value(self) -> str: ...

    @property
    def dist(self) -> DistributionLike | None: ...

    def load(self) -> Any: ...


class MetadataDirectory:
    """A ``*.dist-info`` or ``*.egg-info`` directory found on ``sys.path``.

    Reads files like ``importlib.metadata.PathDistribution`` (UTF-8; a missing file is
    ``None``); ``name`` and ``version`` are only asked for when the metadata's head is unusual,
    and then come from importlib.metadata's parser.
    """

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"MetadataDirectory({self.path!r})"

    def read_text(self, filename: str) -> str | None:
        try:
            with open(os.path.join(self.path, filename), encoding="utf-8") as f:
                return f.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
            return None

    def _parsed(self) -> md.Distribution:
        import importlib.metadata
        import pathlib

        return importlib.metadata.PathDistribution(pathlib.Path(self.path))

    @property
    def name(self) -> str:
        return self._parsed().name

    @property
    def version(self) -> str:
        return self._parsed().version


# importlib.metadata.EntryPoint.pattern: ``module``, ``module:attr.attr``, optional extras.
_ENTRY_POINT_VALUE = re.compile(
    r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?((?P<extras>\[.*\])\s*)?$"
)


class InstalledEntryPoint:
    """One ``name = value`` line of a distribution's ``entry_points.txt``."""

    __slots__ = ("dist", "group", "name", "value")

    def __init__(
        self, name: str, value: str, group: str, dist: MetadataDirectory | None = None
    ) -> None:
        self.name = name
        self.value = value
        self.group = group
        self.dist = dist

    def __repr__(self) -> str:
        return f"InstalledEntryPoint({self.name!r}, {self.value!r}, {self.group!r})"

    def load(self) -> Any:
        """Import the module and walk to the attribute (``importlib.metadata``'s rule)."""
        match = _ENTRY_POINT_VALUE.match(self.value)
        if match is None:
            raise ValueError(f"entry point {self.name!r}: malformed value {self.value!r}")
        module = importlib.import_module(match["module"])
        attrs_path = filter(None, (match["attr"] or "").split("."))
        return functools.reduce(getattr, attrs_path, module)


def _normalize(name: str) -> str:
    # importlib.metadata's Prepared.normalize (PEP 503, with underscores).
    return re.sub(r"[-_.]+", "-", name).lower().replace("-", "_")


def _plain_layout() -> bool:
    """True when importlib.metadata would find distributions only as metadata directories in
    directories on ``sys.path``: no other finder provides any, no zip or egg is on the path."""
    import importlib.machinery

    for finder in sys.meta_path:
        if finder is not importlib.machinery.PathFinder and hasattr(finder, "find_distributions"):
            return False
    for entry in sys.path:
        root = entry or "."
        if root.lower().endswith(".egg") or (os.path.exists(root) and not os.path.isdir(root)):
            return False
    return True


class _Unreadable(Exception):
    """A layout the scan leaves to importlib.metadata."""


def _metadata_directories() -> Iterator[tuple[str, MetadataDirectory]]:
    """``(normalized name, directory)`` of each distribution on ``sys.path``, first of a name
    only, in importlib.metadata's order (path entries in order, each as ``os.listdir`` lists)."""
    seen: set[str] = set()
    for entry in list(sys.path):
        root = entry or "."
        try:
            children = os.listdir(root)
        except OSError:
            continue  # not there (python3xx.zip usually is not): importlib.metadata skips it
        for child in children:
            stem, dot, ext = child.rpartition(".")
            if not dot or ext.lower() not in ("dist-info", "egg-info"):
                continue
            if ext not in ("dist-info", "egg-info"):
                raise _Unreadable(child)  # importlib.metadata would read its Name header
            name = _normalize(stem.partition("-")[0])
            if name in seen:
                continue
            seen.add(name)
            yield name, MetadataDirectory(os.path.join(root, child))


def _entry_points_in(text: str, group: str, dist: MetadataDirectory) -> list[InstalledEntryPoint]:
    """The entries of ``[group]`` in an ``entry_points.txt`` (importlib.metadata's reading:
    stripped lines, ``#`` comments, ``[section]`` headers, ``name = value``)."""
    found: list[InstalledEntryPoint] = []
    section: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line.strip("[]")
            continue
        if section != group:
            continue
        name, sep, value = line.partition("=")
        if sep:  # importlib.metadata raises on a line without "=": skip it instead
            found.append(InstalledEntryPoint(name.strip(), value.strip(), group, dist))
    return found


def installed_entry_points(group: str = ENTRY_POINT_GROUP) -> list[EntryPointLike]:
    """The entry points of ``group`` of every installed distribution (see the module doc)."""
    if _plain_layout():
        try:
            found: list[EntryPointLike] = []
            for _name, dist in _metadata_directories():
                text = dist.read_text("entry_points.txt")
                if text:
                    found += _entry_points_in(text, group, dist)
            return found
        except _Unreadable:
            pass
    import importlib.metadata

    return list(importlib.metadata.entry_points(group=group))


def _find_distribution(name: str) -> DistributionLike | None:
    wanted = _normalize(name)
    if _plain_layout():
        try:
            for found, dist in _metadata_directories():
                if found == wanted:
                    return dist
            return None
        except _Unreadable:
            pass
    import importlib.metadata

    try:
        return importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _installed_entry_points() -> list[EntryPointLike]:
    return installed_entry_points(ENTRY_POINT_GROUP)


class Hooks:
    """Typed facade over ``pm.hook``: the only place that calls hooks after registration.

    Observer hooks (telemetry, breaker changes) must never break the chain: an exception from
    an observer is logged and swallowed.
    """

    def __init__(self, pm: pluggy.PluginManager, config: Config) -> None:
        self._pm = pm
        self._config = config

    @property
    def pluginmanager(self) -> pluggy.PluginManager:
        """For plugin-specific hooks (``nattrav_add_hookspecs``); core's own go through here."""
        return self._pm

    def adjust_chain(self, chain: list[MethodSpec]) -> None:
        self._pm.hook.nattrav_adjust_chain(chain=chain, config=self._config)

    def retry_policy(self, method: str) -> RetryPolicy | None:
        result: RetryPolicy | None = self._pm.hook.nattrav_retry_policy(
            method=method, config=self._config
        )
        return result

    def breaker_policy(self, name: str) -> BreakerPolicy | None:
        result: BreakerPolicy | None = self._pm.hook.nattrav_breaker_policy(
            name=name, config=self._config
        )
        return result

    def _observe(self, hook: str, **kwargs: Any) -> None:
        try:
            getattr(self._pm.hook, hook)(**kwargs)
        except Exception:
            log.exception("observer hook %s raised; ignored", hook)

    def breaker_state_changed(self, name: str, old: BreakerState, new: BreakerState) -> None:
        self._observe("nattrav_breaker_state_changed", name=name, old=old, new=new)

    def attempt_started(self, method: str, request: TraversalRequest, attempt: int) -> None:
        self._observe("nattrav_attempt_started", method=method, request=request, attempt=attempt)

    def attempt_finished(self, record: AttemptRecord) -> None:
        self._observe("nattrav_attempt_finished", record=record)

    def chain_finished(
        self,
        request: TraversalRequest,
        result: TraversalResult | None,
        attempts: tuple[AttemptRecord, ...],
    ) -> None:
        self._observe("nattrav_chain_finished", request=request, result=result, attempts=attempts)

    def lease_event(self, event: LeaseEvent) -> None:
        self._observe("nattrav_lease_event", event=event)


def module_plugin(name: str, **hooks: Callable[..., Any]) -> types.ModuleType:
    """Build an in-memory plugin module from hook functions (used by tests and fixtures)."""
    module = types.ModuleType(f"nattrav_inline_{name}")
    for hook_name, func in hooks.items():
        setattr(module, hook_name, hookspecs.hookimpl(func))
    return module
