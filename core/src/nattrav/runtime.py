"""A runtime: the loaded plugins, the config, the breakers and telemetry, bound together.

Applications build one ``Runtime`` (or let ``open_endpoint`` build one) and ask it for chains.
Everything that would otherwise be global state lives here, so two runtimes in one process
(say, two tenants with different configs) do not share breaker state or plugin managers.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import attrs
from opentelemetry import metrics, trace

from nattrav.chain import Chain, Held, assemble
from nattrav.config import Config, load_config
from nattrav.errors import NatTravError
from nattrav.journal import Journal, JournalEntry
from nattrav.method import AttemptContext, CleansUp
from nattrav.models import LeaseEvent, Transport, TraversalRequest
from nattrav.plugins import PluginHost
from nattrav.resilience import BreakerBoard, BreakerState
from nattrav.telemetry import Telemetry

__all__ = ["CleanupOutcome", "Runtime"]


@attrs.frozen
class CleanupOutcome:
    """What happened to one leftover journal entry."""

    entry: JournalEntry
    released: bool
    detail: str


class Runtime:
    """Plugins + config + breakers + telemetry. Cheap to build; holds no sockets."""

    def __init__(
        self,
        host: PluginHost,
        *,
        telemetry: Telemetry | None = None,
        breakers: BreakerBoard | None = None,
    ) -> None:
        self.host = host
        self.config = host.config
        self.telemetry = telemetry or Telemetry()
        self.breakers = breakers or BreakerBoard(
            policy_for=self._breaker_policy, on_change=self._breaker_changed
        )
        self._journal: Journal | None = None
        self.cleanup_timeout = 5.0

    @classmethod
    def load(
        cls,
        config: Config | str | os.PathLike[str] | None = None,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        disabled: Iterable[str] | None = None,
        extra_plugins: Sequence[tuple[str, object]] = (),
        entry_points: Iterable[Any] | None = None,
    ) -> Runtime:
        """Load the config (a ``Config``, a path, or the default lookup) and the plugins."""
        cfg = config if isinstance(config, Config) else load_config(config)
        host = PluginHost.load(
            cfg, disabled=disabled, extra=extra_plugins, entry_points=entry_points
        )
        return cls(host, telemetry=Telemetry(tracer_provider, meter_provider))

    def _breaker_policy(self, name: str) -> Any:
        return self.host.hooks.breaker_policy(name) or self.config.breaker.policy()

    def _breaker_changed(self, name: str, old: BreakerState, new: BreakerState) -> None:
        self.telemetry.record_breaker(name, new)
        self.host.hooks.breaker_state_changed(name, old, new)

    def method_settings(self, plugin: str) -> Mapping[str, Any]:
        return self.config.plugin_table(plugin)

    @property
    def journal(self) -> Journal:
        """The mapping journal in the configured state directory (created on first write)."""
        if self._journal is None:
            self._journal = Journal(self.config.state_dir)
        return self._journal

    def context(self, method: str, request: TraversalRequest | None = None) -> AttemptContext:
        """An ``AttemptContext`` for work outside a chain run (cleanup, probes, CLI commands)."""
        spec = self.host.methods.get(method)
        plugin = spec.plugin if spec is not None else method
        return AttemptContext(
            request=request or TraversalRequest(),
            method=method,
            settings=self.method_settings(plugin),
            breakers=self.breakers,
            telemetry=self.telemetry,
            emit=self._emit,
            journal=self.journal,
            pluginmanager=self.host.pm,
        )

    def _emit(self, event: LeaseEvent) -> None:
        self.telemetry.record_lease(event)
        self.host.hooks.lease_event(event)

    async def cleanup(self, *, include_expired: bool = True) -> list[CleanupOutcome]:
        """Release what crashed runs left behind (journal entries whose process is gone).

        Each entry is handed to the method that made it (``CleansUp.cleanup``); an entry whose
        method is not installed, or whose release failed, is kept and reported.
        """
        outcomes: list[CleanupOutcome] = []
        for entry in self.journal.leftovers():
            spec = self.host.methods.get(entry.method)
            if spec is None:
                outcomes.append(CleanupOutcome(entry, False, "method not installed; kept"))
                continue
            method = spec.factory()
            if not isinstance(method, CleansUp):
                self.journal.remove(entry)
                outcomes.append(CleanupOutcome(entry, True, "method keeps nothing to release"))
                continue
            if entry.expired() and not include_expired:
                self.journal.remove(entry)
                outcomes.append(CleanupOutcome(entry, True, "expired"))
                continue
            try:
                with anyio.fail_after(self.cleanup_timeout):
                    await method.cleanup(entry, self.context(entry.method))
            except (NatTravError, OSError, TimeoutError) as exc:
                outcomes.append(CleanupOutcome(entry, False, f"{type(exc).__name__}: {exc}"))
                continue
            self.journal.remove(entry)
            outcomes.append(CleanupOutcome(entry, True, "released"))
        return outcomes

    def chain(self, methods: Sequence[str] | None = None) -> Chain:
        """Assemble the chain from the installed methods (raises ``ConfigError`` on bad order).

        ``methods`` keeps only those (in chain order): ``nattrav probe --test-mapping`` runs
        each port-mapping method on its own this way.
        """
        specs = assemble(self.host.method_specs(), self.config, self.host.hooks)
        if methods is not None:
            specs = [s for s in specs if s.name in methods]
        return Chain(
            specs,
            config=self.config,
            hooks=self.host.hooks,
            breakers=self.breakers,
            telemetry=self.telemetry,
            verifiers=list(self.host.verifiers),
            path_probes=list(self.host.path_probes),
            settings=self.method_settings,
            journal=self.journal,
        )

    @asynccontextmanager
    async def traverse(
        self,
        request: TraversalRequest,
        *,
        on_event: Callable[[LeaseEvent], None] | None = None,
        cleanup: bool | None = None,
        methods: Sequence[str] | None = None,
    ) -> AsyncIterator[tuple[Held, Any]]:
        """Run the chain for ``request`` with a shared UDP socket on its port (UDP requests).

        Yields ``(held, mux)``; ``mux`` is ``None`` for TCP requests. First releases what a
        crashed earlier run left behind (``cleanup``, default ``cleanup_on_start``), so leaked
        mappings do not pile up. ``methods`` limits the chain to those methods.
        """
        chain = self.chain(methods)
        if self.config.cleanup_on_start if cleanup is None else cleanup:
            await self.cleanup()
        if request.transport is Transport.UDP:
            from nattrav.datagram import DatagramMux

            async with DatagramMux.open(request.port, families=request.families) as mux:
                async with chain.run(request, sockets=mux, on_event=on_event) as held:
                    yield held, mux
        else:
            async with chain.run(request, on_event=on_event) as held:
                yield held, None
