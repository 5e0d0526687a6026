"""The ``[plugins.relay]`` table, validated with attrs + cattrs.

Every problem is collected and raised in one ``ConfigError`` (unknown keys, wrong types, bad
URIs, servers without credentials, peers that are not IP addresses), so a user fixes the table
in one pass. Example::

    [plugins.relay]
    servers = ["turn:203.0.113.1?transport=udp", "turns:turn.example.org"]
    username = "alice"                  # for every server without its own
    password = "secret"
    realm = "example.org"               # optional: refuse any other realm
    lifetime = 600                      # allocation lifetime to ask for (s); the server decides
    permit = ["198.51.100.7"]           # peers allowed to send first (IPs; kept for the lease)
    families = "auto"                   # auto | ipv4 | ipv6 | dual (RFC 8656 dual allocation)
    channels = true                     # ChannelData (4-byte header) instead of Send/Data
    ca_file = "/etc/ssl/turn-ca.pem"    # trust for turns: servers (default: the system store)
    self_test = true                    # prove inbound by relaying a datagram to ourselves
    transport_fallback = true           # turn: URIs without ?transport=: UDP, then TCP
    fallback_after = 2.0                # ... TCP once UDP stayed silent this long (s)
    timeout = 8.0                       # per server allocation attempt (s)
    max_redirects = 3                   # 300 Try Alternate hops followed per attempt (0: none)

    [[plugins.relay.servers]]           # or tables, with per-server settings
    uri = "turns:turn.example.org:5349"
    username = "bob"
    password = "other"
    server_name = "turn.example.org"    # TLS name to verify (default: the URI's host)

``credential_provider = "package.module:function"`` names a function
``f(server, username, realm) -> (username, password) | None`` asked for servers without a
password in the table (see also the ``nattrav_relay_credentials`` hook, docs/relay.md).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import attrs
from nattrav.errors import ConfigError

if TYPE_CHECKING:
    import cattrs

__all__ = ["RelayConfig", "ServerConfig", "fallback_uri", "load_config", "parse_turn_uri"]

PLUGIN = "relay"
Families = Literal["auto", "ipv4", "ipv6", "dual"]


@attrs.frozen(repr=False)
class ServerConfig:
    """One TURN server: its URI and, optionally, its own credentials and TLS settings."""

    uri: str
    username: str | None = None
    password: str | None = None
    realm: str | None = None
    ca_file: str | None = None
    server_name: str | None = None

    def __repr__(self) -> str:
        return f"ServerConfig(uri={self.uri!r}, username={self.username!r})"


@attrs.frozen(repr=False)
class RelayConfig:
    """The whole ``[plugins.relay]`` table (see the module docstring)."""

    servers: tuple[ServerConfig, ...] = ()
    username: str | None = None
    password: str | None = None
    realm: str | None = None
    credential_provider: str | None = None
    lifetime: int = 600
    permit: tuple[str, ...] = ()
    families: Families = "auto"
    channels: bool = True
    ca_file: str | None = None
    server_name: str | None = None
    self_test: bool = True
    self_test_window: float = 1.0
    transport_fallback: bool = True
    #: with a TCP fallback to come, the UDP attempt gets this long (a blocked network answers
    #: nothing, and waiting the whole ``timeout`` for it would only delay the relay)
    fallback_after: float = 2.0
    timeout: float = 8.0
    rto: float = 0.5
    rc: int = 7
    rm: int = 16
    ti: float = 39.5
    keepalive: float = 15.0
    refresh_margin: float = 60.0
    #: refresh at least this often (s; 0: only as the lifetime needs): bounds how long a TURN
    #: server restart (allocation lost) goes unnoticed, at one Refresh transaction each time
    refresh_interval: float = 0.0
    release_timeout: float = 2.0
    #: 300 (Try Alternate) redirects one allocation attempt follows (RFC 8489 §10; 0: none)
    max_redirects: int = 3
    software: str | None = "nattrav"
    algorithms: tuple[Literal["sha256", "md5"], ...] = ("sha256", "md5")

    def __repr__(self) -> str:
        return f"RelayConfig(servers={[s.uri for s in self.servers]!r})"

    def client_settings(self, families: tuple[int, ...], lifetime: int | None = None) -> Any:
        """``client.ClientSettings`` for this table (imported lazily)."""
        from nattrav_stun.transaction import Timers

        from nattrav_relay.client import ClientSettings

        return ClientSettings(
            timers=Timers(rto=self.rto, rc=self.rc, rm=self.rm, ti=self.ti),
            lifetime=self.lifetime if lifetime is None else lifetime,
            refresh_margin=self.refresh_margin,
            refresh_interval=self.refresh_interval or None,
            families=families,
            use_channels=self.channels,
            keepalive=self.keepalive or None,
            software=self.software,
        )

    def credentials_for(self, server: ServerConfig) -> tuple[str, str, str | None] | None:
        """``(username, password, realm)`` from the table, or ``None`` when it has none."""
        username = server.username or self.username
        password = server.password or self.password
        if not username or not password:
            return None
        return username, password, server.realm or self.realm


def parse_turn_uri(text: str) -> Any:
    """``nattrav_stun.uri.ServerAddress`` of a ``turn:``/``turns:`` URI (or ``HOST[:PORT]``,
    taken as ``turn:``); ``ValueError`` says what is wrong."""
    from nattrav_stun.uri import parse_server

    address = parse_server(text, default_scheme="turn")
    if address.scheme not in ("turn", "turns"):
        raise ValueError(
            f"{text!r} is a {address.scheme}: URI; a TURN server needs turn: or turns:"
        )
    return address


def fallback_uri(uri: str) -> str | None:
    """``turn:H:P?transport=tcp`` for a ``turn:`` URI without a transport, else ``None``."""
    if "transport=" in uri:
        return None
    try:
        address = parse_turn_uri(uri)
    except ValueError:
        return None
    if address.scheme != "turn":
        return None
    return f"turn:{address.hostport}?transport=tcp"


def _check(cfg: RelayConfig) -> list[str]:
    problems: list[str] = []
    where = f"[plugins.{PLUGIN}]"
    for n, server in enumerate(cfg.servers):
        label = f"{where} servers[{n}]"
        try:
            address = parse_turn_uri(server.uri)
        except ValueError as exc:
            problems.append(f"{label}: {exc}")
            continue
        username = server.username or cfg.username
        password = server.password or cfg.password
        if bool(username) != bool(password) and cfg.credential_provider is None:
            # Neither is fine: a credential_provider or a plugin implementing the
            # nattrav_relay_credentials hook may supply both. Half of a pair is a mistake.
            missing = "password" if username else "username"
            problems.append(
                f"{label} ({server.uri}): a {'username' if username else 'password'} without a "
                f"{missing} (set both for the server or in {where})"
            )
        for key in ("ca_file",):
            path = getattr(server, key)
            if path is not None and not os.path.isfile(path):
                problems.append(f"{label}: {key} {path!r} is not a readable file")
        if server.server_name is not None and address.transport != "tls":
            problems.append(f"{label}: server_name only applies to turns: (TLS) servers")
    if cfg.ca_file is not None and not os.path.isfile(cfg.ca_file):
        problems.append(f"{where} ca_file {cfg.ca_file!r} is not a readable file")
    for peer in cfg.permit:
        if _peer_ip(peer) is None:
            problems.append(f"{where} permit: {peer!r} is not an IP address (or IP:PORT)")
    if cfg.credential_provider is not None and ":" not in cfg.credential_provider:
        problems.append(
            f"{where} credential_provider must look like 'package.module:function', "
            f"got {cfg.credential_provider!r}"
        )
    if not 0 <= cfg.lifetime <= 86400:
        problems.append(f"{where} lifetime must be 0-86400 s (0: the server's default)")
    for key in (
        "timeout",
        "rto",
        "ti",
        "refresh_margin",
        "release_timeout",
        "self_test_window",
        "fallback_after",
    ):
        if getattr(cfg, key) <= 0:
            problems.append(f"{where} {key} must be > 0, got {getattr(cfg, key)}")
    if not 0 <= cfg.max_redirects <= 10:
        problems.append(f"{where} max_redirects must be 0-10, got {cfg.max_redirects}")
    if cfg.keepalive < 0:
        problems.append(f"{where} keepalive must be >= 0 (0: off)")
    if cfg.refresh_interval < 0:
        problems.append(f"{where} refresh_interval must be >= 0 (0: as the lifetime needs)")
    for key in ("rc", "rm"):
        if getattr(cfg, key) < 1:
            problems.append(f"{where} {key} must be >= 1, got {getattr(cfg, key)}")
    if not cfg.algorithms:
        problems.append(f"{where} algorithms must list at least one of sha256, md5")
    if cfg.software is not None and len(cfg.software) > 127:
        problems.append(f"{where} software must be shorter than 128 characters")
    return problems


def _peer_ip(text: str) -> str | None:
    # Imported here: only a table with ``permit`` entries needs them (not every CLI start).
    import ipaddress

    from nattrav.models import TransportAddress

    try:
        return str(ipaddress.ip_address(text.strip().strip("[]")))
    except ValueError:
        pass
    try:
        return TransportAddress.parse(text.strip()).host
    except ValueError:
        return None


def _converter() -> cattrs.Converter:
    import cattrs
    from cattrs.gen import make_dict_structure_fn

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

    def _strings(value: Any, _t: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"expected a list of strings, got {value!r}")
        return tuple(value)

    server_fn = make_dict_structure_fn(ServerConfig, conv, _cattrs_forbid_extra_keys=True)

    def _server(value: Any, _t: Any) -> ServerConfig:
        if isinstance(value, str):
            return ServerConfig(uri=value.strip())
        if not isinstance(value, Mapping):
            raise TypeError(f"expected a URI or a table with uri = ..., got {value!r}")
        return server_fn(value, ServerConfig)

    def _servers(value: Any, _t: Any) -> tuple[ServerConfig, ...]:
        if isinstance(value, str | Mapping):
            value = (
                [v.strip() for v in value.split(",") if v.strip()]
                if isinstance(value, str)
                else [value]
            )
        if not isinstance(value, list | tuple):
            raise TypeError(f"expected a list of TURN servers, got {value!r}")
        return tuple(_server(v, ServerConfig) for v in value)

    conv.register_structure_hook(float, _float)
    conv.register_structure_hook(int, _int)
    conv.register_structure_hook(str, _str)
    conv.register_structure_hook(bool, _bool)
    conv.register_structure_hook_func(lambda t: t == tuple[str, ...], _strings)
    conv.register_structure_hook_func(lambda t: t == tuple[ServerConfig, ...], _servers)
    conv.register_structure_hook(ServerConfig, _server)
    conv.register_structure_hook(
        RelayConfig, make_dict_structure_fn(RelayConfig, conv, _cattrs_forbid_extra_keys=True)
    )
    return conv


@functools.cache
def _conv() -> cattrs.Converter:
    """Built on first use: importing cattrs and generating hooks costs milliseconds at every
    CLI start, and an empty table never needs them."""
    return _converter()


def load_config(raw: Mapping[str, Any] | None) -> RelayConfig:
    """Validate the plugin table; ``ConfigError`` lists every problem."""
    if not raw:
        return RelayConfig()  # nothing to validate
    import cattrs

    try:
        cfg = _conv().structure(dict(raw or {}), RelayConfig)
    except (cattrs.ClassValidationError, cattrs.IterableValidationError) as exc:
        problems = cattrs.transform_error(exc, path=f"plugins.{PLUGIN}")
        raise ConfigError([_humanise(p) for p in problems]) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError([f"[plugins.{PLUGIN}] {exc}"]) from None
    problems = _check(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def _humanise(problem: str) -> str:
    message, _, path = problem.partition(" @ ")
    key = path.replace("['", ".").replace("']", "")
    table, _, leaf = key.rpartition(".")
    return f"[{table}] {leaf}: {message}" if table else f"[{key}] {message}"
