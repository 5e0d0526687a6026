"""The relay plugin's own hook: where TURN credentials come from (pluggy ``add_hookspecs``).

Static passwords in a config file are often not how TURN credentials work: services hand out
short-lived ones (the TURN REST API convention: username ``expiry:user``, password an HMAC),
or keep them in a secret store. A plugin that knows how implements::

    from nattrav.hookspecs import hookimpl

    @hookimpl
    def nattrav_relay_credentials(server, username, realm):
        if server.startswith("turn:turn.example.org"):
            return ("1700000000:alice", fetch_secret("turn"))
        return None

in the module its ``nattrav`` entry point names. ``add_hookspecs(pm)`` (called by the relay
plugin wherever it has the plugin manager: the ``nattrav relay`` commands and the ``probe``
section) registers this spec so pluggy validates the implementations' signatures.
"""

from __future__ import annotations

from typing import Any

import pluggy
from nattrav.hookspecs import PROJECT

__all__ = ["add_hookspecs", "nattrav_relay_credentials"]

hookspec = pluggy.HookspecMarker(PROJECT)


@hookspec(firstresult=True)
def nattrav_relay_credentials(server: str, username: str | None, realm: str | None) -> Any:
    """Return TURN long-term credentials for ``server`` (its URI), or ``None`` to pass.

    Called when a configured TURN server has no password in ``[plugins.relay]``, before each
    allocation (so short-lived credentials are fetched fresh). ``username`` and ``realm`` are
    what the config says, if anything. Return ``(username, password)``,
    ``(username, password, realm)`` or a ``nattrav_relay.credentials.RelayCredentials``.
    The first non-``None`` answer wins. Do no blocking I/O for long: it runs on the event loop.

    Example::

        @hookimpl
        def nattrav_relay_credentials(server, username, realm):
            return ("alice", os.environ["TURN_PASSWORD"])
    """


def add_hookspecs(pm: pluggy.PluginManager) -> None:
    """Register ``nattrav_relay_credentials`` with ``pm`` (idempotent)."""
    caller = getattr(pm.hook, "nattrav_relay_credentials", None)
    if caller is not None and caller.spec is not None:
        return
    import sys

    pm.add_hookspecs(sys.modules[__name__])
