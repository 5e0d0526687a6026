"""The ``[plugins.stun]`` table, validated with attrs + cattrs.

Every problem is collected and raised in one ``ConfigError`` (unknown keys, wrong types, bad
server addresses, out-of-range timers), so a user fixes the table in one pass. Example::

    [plugins.stun]
    servers = ["stun.example.org:3478", "stuns:stun.example.org", "[2001:db8::1]:3478"]
    rto = 0.5            # initial retransmission timeout (s), RFC 8489 §6.2.1
    rc = 7               # requests per transaction over UDP
    rm = 16              # last wait = rm x rto
    ti = 39.5            # TCP/TLS transaction timeout (s)
    keepalive = 15.0     # Binding indication interval while an endpoint is held (s)
    recheck = 60.0       # Binding request interval that re-checks the mapping (s)
    probe_window = 0.5   # how long tests that expect no answer wait (s, >= 0.3)

    [plugins.stun.credentials]
    username = "alice"
    password = "secret"
    mechanism = "long-term"   # or "short-term"

Without a ``servers`` key the public servers in ``DEFAULT_SERVERS`` are used (an explicit
``servers = []`` means none), unless ``NATTRAV_NO_PUBLIC_SERVERS=1`` is set in the
environment: then nothing public is ever contacted (nattrav's test suite sets it).
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

    from nattrav_stun.uri import ServerAddress

__all__ = [
    "DEFAULT_SERVERS",
    "NO_PUBLIC_SERVERS_ENV",
    "CredentialsConfig",
    "StunConfig",
    "load_config",
    "public_defaults_allowed",
]

PLUGIN = "stun"

#: Well-known public STUN servers, used only when ``[plugins.stun]`` has no ``servers`` key.
#: Google's and Cloudflare's answer Binding requests (no RFC 5780 behaviour tests: the NAT
#: type is then "unknown" with the reason); stunprotocol.org's supports RFC 5780.
DEFAULT_SERVERS: tuple[str, ...] = (
    "stun.l.google.com:19302",
    "stun.cloudflare.com:3478",
    "stun.stunprotocol.org:3478",
)

#: Set to 1 (or true/yes) to forbid falling back to public default servers.
NO_PUBLIC_SERVERS_ENV = "NATTRAV_NO_PUBLIC_SERVERS"


def public_defaults_allowed(environ: Mapping[str, str] | None = None) -> bool:
    """False when ``NATTRAV_NO_PUBLIC_SERVERS`` says no public server may be contacted."""
    env = os.environ if environ is None else environ
    return env.get(NO_PUBLIC_SERVERS_ENV, "").strip().lower() not in ("1", "true", "yes", "on")


@attrs.frozen(repr=False)
class CredentialsConfig:
    """``[plugins.stun.credentials]``: used for every configured server."""

    username: str
    password: str
    mechanism: Literal["long-term", "short-term"] = "long-term"
    realm: str | None = None
    #: password algorithms accepted when a server offers PASSWORD-ALGORITHMS
    algorithms: tuple[Literal["sha256", "md5"], ...] = ("sha256", "md5")
    #: accept RFC 5389 servers (MD5 key, HMAC-SHA1) that offer no algorithms
    legacy: bool = True
    #: apply the PRECIS OpaqueString profile to username, realm and password
    prepare: bool = True
    #: short-term only: integrity attributes of the first request
    integrity: Literal["both", "sha256", "sha1"] = "both"

    def __repr__(self) -> str:
        return f"CredentialsConfig(username={self.username!r}, mechanism={self.mechanism!r})"

    def build(self) -> Any:
        """The ``auth`` credentials object (imported lazily: auth pulls in precis-i18n)."""
        from nattrav_stun.auth import LongTermCredentials, PasswordAlgorithm, ShortTermCredentials

        if self.mechanism == "short-term":
            return ShortTermCredentials(
                self.username, self.password, integrity=self.integrity, prepare=self.prepare
            )
        names = {"sha256": PasswordAlgorithm.SHA256, "md5": PasswordAlgorithm.MD5}
        return LongTermCredentials(
            self.username,
            self.password,
            realm=self.realm,
            algorithms=tuple(names[a] for a in self.algorithms),
            legacy=self.legacy,
            prepare=self.prepare,
        )


@attrs.frozen
class StunConfig:
    """The whole ``[plugins.stun]`` table (see the module docstring)."""

    #: ``None`` (the key is absent): ``DEFAULT_SERVERS``; ``()``: no server at all
    servers: tuple[str, ...] | None = None
    credentials: CredentialsConfig | None = None
    rto: float = 0.5
    rc: int = 7
    rm: int = 16
    ti: float = 39.5
    #: floor of a cached (measured) RTO, so a loopback-fast server cannot drive it to ~0
    rto_min: float = 0.1
    keepalive: float = 15.0
    recheck: float = 60.0
    probe_window: float = 0.5
    #: how many servers the method asks (the first answer gives the candidate, the others
    #: say whether the mapping varies by destination)
    compare: int = 3
    #: how long the method waits for a first answer before it gives up (s): a method racing
    #: others needs no RFC 8489 39.5 s schedule to learn that UDP is blocked
    answer_timeout: float = 3.0
    #: how long the method waits for the other servers after the first answer (s)
    compare_wait: float = 1.0
    happy_eyeballs_delay: float = 0.25
    max_outstanding: int = 10
    software: str | None = "nattrav"
    #: add FINGERPRINT to requests (RFC 8489 §7; servers on their own port do not need it)
    fingerprint: bool = False
    #: the method runs a CHANGE-REQUEST probe from the app's port to prove inbound
    filtering_probe: bool = True
    #: CA bundle for stuns: servers (default: the system store)
    ca_file: str | None = None

    @property
    def uses_defaults(self) -> bool:
        """True when no ``servers`` key was given and the public defaults apply."""
        return self.servers is None and public_defaults_allowed()

    def server_list(self) -> tuple[str, ...]:
        """The servers to use: the configured ones, else the public defaults (if allowed)."""
        if self.servers is not None:
            return self.servers
        return DEFAULT_SERVERS if public_defaults_allowed() else ()

    def parsed_servers(self) -> list[ServerAddress]:
        from nattrav_stun.uri import parse_server

        return [parse_server(s) for s in self.server_list()]

    def client_settings(self) -> Any:
        """``driver.ClientSettings`` for this table (imported lazily)."""
        from nattrav_stun.driver import ClientSettings
        from nattrav_stun.transaction import Timers

        return ClientSettings(
            timers=Timers(rto=self.rto, rc=self.rc, rm=self.rm, ti=self.ti),
            rto_min=self.rto_min,
            credentials=self.credentials.build() if self.credentials else None,
            software=self.software,
            fingerprint=self.fingerprint,
            max_outstanding=self.max_outstanding,
            happy_eyeballs_delay=self.happy_eyeballs_delay,
            ca_file=self.ca_file,
        )


def _check(cfg: StunConfig) -> list[str]:
    # Imported here: checking a table is the only part of registration that parses URIs.
    from nattrav_stun.uri import parse_server

    problems: list[str] = []
    for server in cfg.servers or ():
        try:
            parse_server(server)
        except ValueError as exc:
            problems.append(f"[plugins.stun] servers: {exc}")
    positive = {
        "rto": cfg.rto,
        "ti": cfg.ti,
        "rto_min": cfg.rto_min,
        "keepalive": cfg.keepalive,
        "recheck": cfg.recheck,
        "compare_wait": cfg.compare_wait,
        "answer_timeout": cfg.answer_timeout,
    }
    for key, value in positive.items():
        if value <= 0:
            problems.append(f"[plugins.stun] {key} must be > 0, got {value}")
    for key, value in {
        "rc": cfg.rc,
        "rm": cfg.rm,
        "compare": cfg.compare,
        "max_outstanding": cfg.max_outstanding,
    }.items():
        if value < 1:
            problems.append(f"[plugins.stun] {key} must be >= 1, got {value}")
    if cfg.probe_window < 0.3:
        problems.append(
            f"[plugins.stun] probe_window must be >= 0.3 s (a few round trips), got "
            f"{cfg.probe_window}"
        )
    if cfg.happy_eyeballs_delay < 0:
        problems.append("[plugins.stun] happy_eyeballs_delay must be >= 0")
    if cfg.software is not None and len(cfg.software) > 127:
        problems.append("[plugins.stun] software must be shorter than 128 characters")
    creds = cfg.credentials
    if creds is not None:
        if not creds.username:
            problems.append("[plugins.stun.credentials] username must not be empty")
        if len(creds.username.encode()) > 508:
            problems.append("[plugins.stun.credentials] username must be under 509 bytes")
        if not creds.password:
            problems.append("[plugins.stun.credentials] password must not be empty")
        if not creds.algorithms:
            problems.append("[plugins.stun.credentials] algorithms must list at least one")
        if creds.prepare:
            from nattrav_stun.auth import opaque_string

            for what, text in (("username", creds.username), ("password", creds.password)):
                if text:
                    try:
                        opaque_string(text, what=what)
                    except ValueError as exc:
                        problems.append(
                            f"[plugins.stun.credentials] {exc} (set prepare = false to send "
                            "it unprocessed)"
                        )
    return problems


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

    def _servers(value: Any, _t: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"expected a list of server addresses, got {value!r}")
        return tuple(value)

    conv.register_structure_hook(float, _float)
    conv.register_structure_hook(int, _int)
    conv.register_structure_hook(str, _str)
    conv.register_structure_hook(bool, _bool)
    conv.register_structure_hook_func(lambda t: t == tuple[str, ...], _servers)
    for cls in (StunConfig, CredentialsConfig):
        conv.register_structure_hook(
            cls, make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=True)
        )
    return conv


@functools.cache
def _conv() -> cattrs.Converter:
    """Built on first use: importing cattrs and generating hooks costs milliseconds at every
    CLI start, and an empty table never needs them."""
    return _converter()


def load_config(raw: Mapping[str, Any] | None) -> StunConfig:
    """Validate the plugin table; ``ConfigError`` lists every problem."""
    if not raw:
        return StunConfig()  # nothing to validate
    import cattrs

    try:
        cfg = _conv().structure(dict(raw or {}), StunConfig)
    except (cattrs.ClassValidationError, cattrs.IterableValidationError) as exc:
        problems = cattrs.transform_error(exc, path="plugins.stun")
        raise ConfigError([_humanise(p) for p in problems]) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError([f"[plugins.stun] {exc}"]) from None
    problems = _check(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def _humanise(problem: str) -> str:
    message, _, path = problem.partition(" @ ")
    key = path.replace("['", ".").replace("']", "")
    table, _, leaf = key.rpartition(".")
    return f"[{table}] {leaf}: {message}" if table else f"[{key}] {message}"
