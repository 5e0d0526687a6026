"""The hooks a nattrav plugin can implement, in three groups: method, resilience, telemetry.

Rules for every hook (enforced by the loader and the tests):

* Hooks are synchronous and do no I/O. They describe what a plugin offers (methods, probes,
  commands, policies) or observe what happened; the async work lives in the objects they
  register.
* A plugin implements hooks with ``nattrav.hookimpl`` in a module named by an entry point in
  the group ``nattrav``; the entry point's name is the plugin's name.
* Order never comes from plugin load order (pluggy calls implementations last-registered
  first): methods carry an explicit numeric priority.

Every hook is listed in ``docs/hooks.md``; a test fails when one is missing there or lacks a
docstring.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from nattrav.config import Config
    from nattrav.models import AttemptRecord, LeaseEvent, TraversalRequest, TraversalResult
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
    )
    from nattrav.resilience import BreakerPolicy, BreakerState, RetryPolicy

PROJECT = "nattrav"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: Hook names by group, for the listing and the documentation test.
GROUPS: dict[str, tuple[str, ...]] = {
    "method": (
        "nattrav_add_hookspecs",
        "nattrav_register_methods",
        "nattrav_adjust_chain",
        "nattrav_register_verifiers",
        "nattrav_register_path_probes",
        "nattrav_register_report_sections",
        "nattrav_register_signalers",
        "nattrav_register_connectors",
        "nattrav_register_commands",
        "nattrav_register_options",
    ),
    "resilience": (
        "nattrav_retry_policy",
        "nattrav_breaker_policy",
        "nattrav_breaker_state_changed",
    ),
    "telemetry": (
        "nattrav_attempt_started",
        "nattrav_attempt_finished",
        "nattrav_chain_finished",
        "nattrav_lease_event",
    ),
}

# --------------------------------------------------------------------------- method group


@hookspec
def nattrav_add_hookspecs(pluginmanager: pluggy.PluginManager) -> None:
    """Add a plugin's own hookspecs, so other plugins can extend it (pytest's ``addhooks``).

    Called once for the implementing plugin, right after it is registered and before its
    registration hooks run. Methods reach those hooks through ``ctx.pluginmanager.hook``.
    Example::

        @hookimpl
        def nattrav_add_hookspecs(pluginmanager):
            from nattrav_relay import hookspecs
            pluginmanager.add_hookspecs(hookspecs)
    """


@hookspec
def nattrav_register_methods(registry: MethodRegistry, config: Mapping[str, Any]) -> None:
    """Register the traversal methods this plugin provides. Do no I/O here.

    Called once when a runtime is built. Call ``registry.add(factory, name=..., priority=...,
    kind=...)`` once per method; lower priority is tried first (direct 0, stun 20, upnp 40,
    natpmp 45, relay 90). ``config`` is this plugin's own table (``[plugins.<name>]``),
    unvalidated: structure it yourself and raise ``ConfigError`` on bad values.

    Example::

        @hookimpl
        def nattrav_register_methods(registry, config):
            registry.add(lambda: EchoMethod(config), name="echo", priority=30,
                         kind=CandidateKind.SERVER_REFLEXIVE)
    """


@hookspec
def nattrav_adjust_chain(chain: list[MethodSpec], config: Config) -> None:
    """Adjust the assembled chain in place (drop, reorder or insert methods).

    Called after the chain was ordered by priority and by the user's ``order``/``disabled``
    settings, before each run is planned. Use it for policies such as "never relay on metered
    links". Example::

        @hookimpl
        def nattrav_adjust_chain(chain, config):
            chain[:] = [m for m in chain if m.name != "relay"]
    """


@hookspec
def nattrav_register_verifiers(registry: VerifierRegistry, config: Mapping[str, Any]) -> None:
    """Register inbound verifiers: objects that prove a packet really arrives at a candidate.

    The chain asks them after a method succeeds, so that a mapping the router reports but does
    not forward is caught. Example::

        registry.add(lambda: OtherAddressVerifier(config), name="stun-other-address")
    """


@hookspec
def nattrav_register_path_probes(registry: PathProbeRegistry, config: Mapping[str, Any]) -> None:
    """Register path-property probes run on the chosen endpoint (e.g. path MTU discovery).

    Their results appear in ``TraversalResult.path`` and in ``nattrav probe``. Example::

        registry.add(lambda: PmtuProbe(config), name="pmtu", description="RFC 8899 PLPMTU")
    """


@hookspec
def nattrav_register_report_sections(registry: ReportRegistry, config: Mapping[str, Any]) -> None:
    """Register sections of the ``nattrav probe`` report.

    Each section is an async function of a probe context returning a JSON-able mapping; all
    sections run concurrently. ``render`` (optional) turns that mapping into a few lines for the
    human table. Keys core reads: ``gateway_external_ips``, ``mapped_ips``, ``path_hops``,
    ``error`` (see docs/json.md). Example::

        registry.add(run_upnp_section, name="upnp", title="UPnP IGD", order=40,
                     render=render_upnp)
    """


@hookspec
def nattrav_register_signalers(registry: SignalerRegistry, config: Mapping[str, Any]) -> None:
    """Register signaling channels for peer-to-peer connect (offer/answer transport).

    Example::

        registry.add(RendezvousSignal, name="rendezvous", description="websocket rooms")
    """


@hookspec
def nattrav_register_connectors(registry: ConnectorRegistry, config: Mapping[str, Any]) -> None:
    """Register peer-to-peer connectors: what turns two peers' candidates into one path.

    ``nattrav.connect()`` gathers candidates from every method, then hands them to the connector
    with the best (lowest) priority; the connector exchanges them through the signal, runs
    connectivity checks and yields a connection. Example::

        registry.add(IceConnector, name="ice", priority=10, description="RFC 8445-style checks")
    """


@hookspec
def nattrav_register_commands(registry: CommandRegistry) -> None:
    """Register ``nattrav`` subcommands (e.g. ``nattrav stun``, ``nattrav lab``).

    ``configure`` must only add arguments (it runs at every CLI start); import heavy modules
    inside ``run``. Example::

        registry.add("echo", help="send one echo", configure=add_args, run=run_echo)
    """


@hookspec
def nattrav_register_options(registry: OptionRegistry) -> None:
    """Add options to core commands (``probe``, ``map``, ``connect``), e.g. ``--stun``.

    ``apply(value, raw_config)`` folds the value into the raw config before validation.
    Example::

        registry.add("--stun", action="append", apply=add_servers, help="STUN server")
    """


# ----------------------------------------------------------------------- resilience group


@hookspec(firstresult=True)
def nattrav_retry_policy(method: str, config: Config) -> RetryPolicy | None:
    """Return the retry policy for ``method``, or ``None`` to leave it to others.

    First non-``None`` result wins; without one the config's ``[retry]`` table applies.
    Example::

        if method == "relay":
            return RetryPolicy(attempts=3, wait_initial=0.5)
    """


@hookspec(firstresult=True)
def nattrav_breaker_policy(name: str, config: Config) -> BreakerPolicy | None:
    """Return the circuit-breaker policy for the breaker ``name`` (a method or a server).

    First non-``None`` result wins; without one the config's ``[breaker]`` table applies.
    """


@hookspec
def nattrav_breaker_state_changed(name: str, old: BreakerState, new: BreakerState) -> None:
    """Be told that the breaker ``name`` moved from ``old`` to ``new`` (open, half-open, closed).

    Called synchronously from the chain: do not block.
    """


# ------------------------------------------------------------------------ telemetry group


@hookspec
def nattrav_attempt_started(method: str, request: TraversalRequest, attempt: int) -> None:
    """Observe that an attempt of ``method`` started (``attempt`` counts retries from 1)."""


@hookspec
def nattrav_attempt_finished(record: AttemptRecord) -> None:
    """Observe that an attempt finished: method, outcome, duration, error type and reason."""


@hookspec
def nattrav_chain_finished(
    request: TraversalRequest,
    result: TraversalResult | None,
    attempts: tuple[AttemptRecord, ...],
) -> None:
    """Observe the end of a chain run: the result (``None`` when the chain was exhausted)."""


@hookspec
def nattrav_lease_event(event: LeaseEvent) -> None:
    """Observe a lifecycle event of a held endpoint (acquired, renewed, lost, recovered...)."""
