"""Registries that hook implementations fill in.

Hooks do no I/O: they only describe what a plugin offers by adding entries here. Each entry
remembers the plugin that added it so the listing can show it and a broken plugin's entries can
be dropped as a whole. Names are unique per registry; a duplicate is a ``PluginError`` that
marks the second plugin broken.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import attrs

from nattrav.enums import CandidateKind, Transport
from nattrav.errors import PluginError

if TYPE_CHECKING:
    from nattrav.method import AttemptContext, TraversalMethod
    from nattrav.models import Candidate, PathProperty, Reachability, TraversalResult

__all__ = [
    "CommandRegistry",
    "CommandSpec",
    "ConnectorRegistry",
    "ConnectorSpec",
    "MethodRegistry",
    "MethodSpec",
    "OptionRegistry",
    "OptionSpec",
    "PathProbe",
    "PathProbeRegistry",
    "PathProbeSpec",
    "ReportRegistry",
    "ReportSectionSpec",
    "SignalerRegistry",
    "SignalerSpec",
    "Verifier",
    "VerifierRegistry",
    "VerifierSpec",
]

MethodFactory = Callable[[], "TraversalMethod"]


@attrs.frozen
class MethodSpec:
    """A registered traversal method: how to make it and where it sits in the chain.

    ``priority``: lower is tried first. Ours: direct 0, stun 20, upnp 40, natpmp 45, relay 90.
    ``transports``: the request transports it can serve. ``group``: methods of one group never
    run at the same time in a chain run, because they compete for one resource (UPnP and
    NAT-PMP/PCP share the gateway's mapping table, which may refuse to delete one protocol's
    mapping while the other holds the same port); the later one starts when the earlier ended.
    """

    name: str
    priority: int
    factory: MethodFactory = attrs.field(eq=False)
    kind: CandidateKind
    plugin: str
    description: str = ""
    transports: frozenset[Transport] = frozenset({Transport.UDP, Transport.TCP})
    timeout: float = 5.0
    group: str | None = None


_E = TypeVar("_E")


class _Registry(Generic[_E]):
    """Name-keyed entries, each tagged with the plugin that is registering right now."""

    kind = "entry"

    def __init__(self) -> None:
        self._entries: dict[str, _E] = {}
        self._owner: dict[str, str] = {}
        self.current_plugin = "<unknown>"

    def _put(self, name: str, entry: _E) -> None:
        if not name or not isinstance(name, str):
            raise PluginError(self.current_plugin, f"{self.kind} name must be a non-empty string")
        if name in self._entries:
            raise PluginError(
                self.current_plugin,
                f"{self.kind} {name!r} is already registered by plugin {self._owner[name]!r}",
            )
        self._entries[name] = entry
        self._owner[name] = self.current_plugin

    def drop_plugin(self, plugin: str) -> None:
        """Forget every entry of ``plugin`` (used when it turns out to be broken)."""
        for name in [n for n, p in self._owner.items() if p == plugin]:
            del self._entries[name]
            del self._owner[name]

    def owner(self, name: str) -> str:
        return self._owner[name]

    def names_of(self, plugin: str) -> list[str]:
        return [n for n, p in self._owner.items() if p == plugin]

    def get(self, name: str, default: _E | None = None) -> _E | None:
        return self._entries.get(name, default)

    def __getitem__(self, name: str) -> _E:
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[_E]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)


class MethodRegistry(_Registry[MethodSpec]):
    """Where ``nattrav_register_methods`` implementations add their methods."""

    kind = "method"

    def add(
        self,
        factory: MethodFactory,
        *,
        name: str,
        priority: int,
        kind: CandidateKind,
        description: str = "",
        transports: frozenset[Transport] | set[Transport] | None = None,
        timeout: float = 5.0,
        group: str | None = None,
    ) -> MethodSpec:
        """Register one method. ``factory()`` must be cheap and do no I/O.

        ``group`` names a resource the method competes for (``"gateway"`` for port mapping
        protocols): methods of one group are never run at the same time.
        """
        if not callable(factory):
            raise PluginError(self.current_plugin, f"method {name!r}: factory is not callable")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise PluginError(self.current_plugin, f"method {name!r}: priority must be an int")
        if not isinstance(kind, CandidateKind):
            raise PluginError(self.current_plugin, f"method {name!r}: kind must be CandidateKind")
        spec = MethodSpec(
            name=name,
            priority=priority,
            factory=factory,
            kind=kind,
            plugin=self.current_plugin,
            description=description,
            transports=frozenset(transports) if transports else frozenset(Transport),
            timeout=float(timeout),
            group=group,
        )
        self._put(name, spec)
        return spec

    def ordered(self) -> list[MethodSpec]:
        """By priority, then name (never by plugin load order: pluggy calls hooks LIFO)."""
        return sorted(self, key=lambda s: (s.priority, s.name))


class Verifier(Protocol):
    """Proves that inbound traffic reaches a candidate (a packet sent to it arrives)."""

    async def verify(self, candidate: Candidate, ctx: AttemptContext) -> Reachability | None:
        """Return the proven/refuted reachability, or ``None`` if this verifier cannot tell."""
        ...


@attrs.frozen
class VerifierSpec:
    name: str
    factory: Callable[[], Verifier] = attrs.field(eq=False)
    plugin: str
    kinds: frozenset[CandidateKind] = frozenset(CandidateKind)


class VerifierRegistry(_Registry[VerifierSpec]):
    """Where ``nattrav_register_verifiers`` implementations add inbound verifiers."""

    kind = "verifier"

    def add(
        self,
        factory: Callable[[], Verifier],
        *,
        name: str,
        kinds: frozenset[CandidateKind] | set[CandidateKind] | None = None,
    ) -> VerifierSpec:
        spec = VerifierSpec(
            name,
            factory,
            self.current_plugin,
            frozenset(kinds) if kinds else frozenset(CandidateKind),
        )
        self._put(name, spec)
        return spec


class PathProbe(Protocol):
    """Measures a property of the path to a chosen endpoint (for example its PLPMTU)."""

    async def probe(self, result: TraversalResult, ctx: AttemptContext) -> PathProperty | None:
        """Return the property, or ``None`` when it cannot be measured on this path."""
        ...


@attrs.frozen
class PathProbeSpec:
    name: str
    factory: Callable[[], PathProbe] = attrs.field(eq=False)
    plugin: str
    description: str = ""


class PathProbeRegistry(_Registry[PathProbeSpec]):
    """Where ``nattrav_register_path_probes`` implementations add path probes."""

    kind = "path probe"

    def add(
        self, factory: Callable[[], PathProbe], *, name: str, description: str = ""
    ) -> PathProbeSpec:
        spec = PathProbeSpec(name, factory, self.current_plugin, description)
        self._put(name, spec)
        return spec


ReportRunner = Callable[[Any], Awaitable[Mapping[str, Any]]]
ReportRenderer = Callable[[Mapping[str, Any]], "list[str]"]


@attrs.frozen
class ReportSectionSpec:
    """One section of ``nattrav probe``: an async function of a ``ProbeContext`` returning JSON.

    ``render(data) -> lines`` turns the section's JSON into a few readable lines for the human
    output (no colour, no trailing newlines); without one, core shows the section's scalar keys.
    """

    name: str
    run: ReportRunner = attrs.field(eq=False)
    plugin: str
    title: str = ""
    order: int = 50
    render: ReportRenderer | None = attrs.field(default=None, eq=False)


class ReportRegistry(_Registry[ReportSectionSpec]):
    """Where ``nattrav_register_report_sections`` implementations add probe report sections."""

    kind = "report section"

    def add(
        self,
        run: ReportRunner,
        *,
        name: str,
        title: str = "",
        order: int = 50,
        render: ReportRenderer | None = None,
    ) -> ReportSectionSpec:
        """Add a section; ``render`` (optional) formats its JSON for people."""
        if render is not None and not callable(render):
            raise PluginError(self.current_plugin, f"section {name!r}: render is not callable")
        spec = ReportSectionSpec(name, run, self.current_plugin, title or name, order, render)
        self._put(name, spec)
        return spec


@attrs.frozen
class SignalerSpec:
    """A signaling channel for peer-to-peer connect (how offers and answers travel)."""

    name: str
    factory: Callable[..., Any] = attrs.field(eq=False)
    plugin: str
    description: str = ""


class SignalerRegistry(_Registry[SignalerSpec]):
    """Where ``nattrav_register_signalers`` implementations add signaling channels."""

    kind = "signaler"

    def add(self, factory: Callable[..., Any], *, name: str, description: str = "") -> SignalerSpec:
        spec = SignalerSpec(name, factory, self.current_plugin, description)
        self._put(name, spec)
        return spec


@attrs.frozen
class ConnectorSpec:
    """A peer-to-peer connector (see ``nattrav.connect``): ``factory()`` makes one."""

    name: str
    factory: Callable[[], Any] = attrs.field(eq=False)
    plugin: str
    priority: int = 50
    description: str = ""


class ConnectorRegistry(_Registry[ConnectorSpec]):
    """Where ``nattrav_register_connectors`` implementations add connectors."""

    kind = "connector"

    def add(
        self, factory: Callable[[], Any], *, name: str, priority: int = 50, description: str = ""
    ) -> ConnectorSpec:
        spec = ConnectorSpec(name, factory, self.current_plugin, priority, description)
        self._put(name, spec)
        return spec

    def best(self) -> ConnectorSpec | None:
        ordered = sorted(self, key=lambda s: (s.priority, s.name))
        return ordered[0] if ordered else None


CommandRunner = Callable[[argparse.Namespace, Any], "int | Awaitable[int]"]


@attrs.frozen
class CommandSpec:
    """A ``nattrav`` subcommand contributed by a plugin.

    ``configure(parser)`` adds the arguments (keep it cheap: it runs on every CLI start);
    ``run(args, cli)`` does the work and returns an exit code; it may be async.
    """

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None] = attrs.field(eq=False)
    run: CommandRunner = attrs.field(eq=False)
    plugin: str


class CommandRegistry(_Registry[CommandSpec]):
    """Where ``nattrav_register_commands`` implementations add CLI subcommands."""

    kind = "command"
    reserved = frozenset({"plugins", "probe", "map", "cleanup"})

    def add(
        self,
        name: str,
        *,
        help: str,
        configure: Callable[[argparse.ArgumentParser], None],
        run: CommandRunner,
    ) -> CommandSpec:
        if name in self.reserved:
            raise PluginError(self.current_plugin, f"command name {name!r} is reserved by core")
        spec = CommandSpec(name, help, configure, run, self.current_plugin)
        self._put(name, spec)
        return spec


OptionApply = Callable[[Any, dict[str, Any]], None]


@attrs.frozen
class OptionSpec:
    """An option a plugin adds to core commands (``--stun`` on ``probe`` and ``map``).

    ``apply(value, raw_config)`` folds the parsed value into the raw config mapping before it
    is validated, so flags and the config file go through the same checks.
    """

    flags: tuple[str, ...]
    commands: frozenset[str]
    kwargs: Mapping[str, Any] = attrs.field(eq=False)
    apply: OptionApply = attrs.field(eq=False)
    plugin: str


class OptionRegistry(_Registry[OptionSpec]):
    """Where ``nattrav_register_options`` implementations add options to core commands."""

    kind = "option"

    def add(
        self,
        *flags: str,
        commands: tuple[str, ...] | frozenset[str] = ("probe", "map", "connect"),
        apply: OptionApply,
        **kwargs: Any,
    ) -> OptionSpec:
        spec = OptionSpec(tuple(flags), frozenset(commands), kwargs, apply, self.current_plugin)
        self._put(flags[0] if flags else "", spec)
        return spec
