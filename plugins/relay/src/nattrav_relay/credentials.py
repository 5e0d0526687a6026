"""Where TURN credentials come from: the config table, a provider function, or the hook.

``CredentialSource`` answers "which username, password and realm for this server?" in this
order: the server's own entry in ``[plugins.relay]``, the table's defaults, the
``credential_provider`` function the table names (``package.module:function``), and the
``nattrav_relay_credentials`` hook of installed plugins when the caller has the plugin manager
(the ``nattrav relay`` commands, ``nattrav probe``). Library users pass a provider callable.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import attrs

from nattrav_relay.config import RelayConfig, ServerConfig

__all__ = [
    "CredentialProvider",
    "CredentialSource",
    "RelayCredentials",
    "hook_provider",
    "import_provider",
]


@attrs.frozen(repr=False)
class RelayCredentials:
    """TURN long-term credentials (RFC 8489 §9.2). ``realm``: refuse any other realm."""

    username: str
    password: str
    realm: str | None = None

    def __repr__(self) -> str:
        return f"RelayCredentials(username={self.username!r}, realm={self.realm!r})"

    @classmethod
    def coerce(cls, value: Any) -> RelayCredentials | None:
        """Accept what providers return: this class, a 2- or 3-tuple, or ``None``."""
        if value is None or isinstance(value, RelayCredentials):
            return value
        if isinstance(value, tuple | list) and len(value) in (2, 3):
            username, password = str(value[0]), str(value[1])
            realm = str(value[2]) if len(value) == 3 and value[2] is not None else None
            return cls(username, password, realm)
        raise TypeError(f"a credential provider returned {value!r}; want (username, password)")


#: ``provider(server_uri, username, realm)`` -> credentials (or an awaitable of them) or None.
CredentialProvider = Callable[[str, "str | None", "str | None"], Any]


def import_provider(spec: str) -> CredentialProvider:
    """Import ``package.module:function``; ``ValueError`` when it cannot be found."""
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
        func = getattr(module, attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"credential_provider {spec!r} not found: {exc}") from exc
    if not callable(func):
        raise ValueError(f"credential_provider {spec!r} is not callable")
    return func  # type: ignore[no-any-return]


def hook_provider(pm: Any) -> CredentialProvider:
    """A provider that asks the ``nattrav_relay_credentials`` hook of ``pm``'s plugins."""
    from nattrav_relay.hookspecs import add_hookspecs

    add_hookspecs(pm)

    def provide(server: str, username: str | None, realm: str | None) -> Any:
        return pm.hook.nattrav_relay_credentials(server=server, username=username, realm=realm)

    return provide


@attrs.define
class CredentialSource:
    """Credentials for each configured server (see the module docstring)."""

    config: RelayConfig
    providers: list[CredentialProvider] = attrs.field(factory=list)

    def __attrs_post_init__(self) -> None:
        if self.config.credential_provider:
            self.providers.insert(0, import_provider(self.config.credential_provider))

    async def get(self, server: ServerConfig) -> RelayCredentials | None:
        static = self.config.credentials_for(server)
        if static is not None:
            return RelayCredentials(*static)
        username = server.username or self.config.username
        realm = server.realm or self.config.realm
        for provider in self.providers:
            value = provider(server.uri, username, realm)
            if inspect.isawaitable(value):
                value = await value
            found = RelayCredentials.coerce(value)
            if found is not None:
                return found
        return None
