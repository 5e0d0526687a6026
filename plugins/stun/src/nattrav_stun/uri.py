"""STUN and TURN server addresses: ``HOST:PORT``, ``[IPv6]:PORT`` and RFC 7064/7065 URIs.

Accepted forms (``parse_server``)::

    stun.example.org            (default port 3478; 5349 for stuns/turns)
    stun.example.org:3478       192.0.2.1:3478       [2001:db8::1]:3478
    stun:stun.example.org       stun:stun.example.org:3478     stun:[2001:db8::1]:3478
    stuns:stun.example.org      (STUN over TLS over TCP, RFC 7064)
    turn:turn.example.org?transport=tcp     turns:turn.example.org:5349   (RFC 7065)

RFC 7064 gives ``stun:`` URIs no ``transport`` parameter; nattrav accepts
``?transport=udp|tcp`` on them as well (for STUN over plain TCP), and the relay plugin reuses
this parser for ``turn:``/``turns:``. ``stuns``/``turns`` always mean TLS over TCP here (DTLS is
not supported). A ``//`` after the scheme is tolerated (a common mistake), userinfo is not
(RFC 7064 §3.1 forbids credentials in the URI).
"""

from __future__ import annotations

import socket
from urllib.parse import unquote

import attrs
from nattrav.addresses import parse_hostport

__all__ = ["DEFAULT_PORTS", "ServerAddress", "parse_server"]

DEFAULT_PORTS = {"stun": 3478, "stuns": 5349, "turn": 3478, "turns": 5349}
_SECURE = {"stuns", "turns"}


def _literal(host: str) -> str | None:
    """Canonical text of an IP literal, or ``None`` for a name."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_ntop(family, socket.inet_pton(family, host))
        except OSError:
            continue
    return None


@attrs.frozen
class ServerAddress:
    """Where a STUN/TURN server is: scheme, host (name or IP literal), port, transport.

    ``transport`` is ``"udp"``, ``"tcp"`` or ``"tls"``; ``host`` of an IP literal is in
    canonical form. ``str()`` gives back a URI.
    """

    scheme: str
    host: str
    port: int
    transport: str = "udp"

    @property
    def secure(self) -> bool:
        return self.transport == "tls"

    @property
    def is_literal(self) -> bool:
        return _literal(self.host) is not None

    @property
    def hostport(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        query = ""
        if self.scheme in ("stun", "turn") and self.transport != "udp":
            query = f"?transport={self.transport}"
        return f"{self.scheme}:{self.hostport}{query}"


def parse_server(text: str, *, default_scheme: str = "stun") -> ServerAddress:
    """Parse a server address (forms in the module docstring). ``ValueError`` says why not."""
    raw = text.strip()
    if not raw:
        raise ValueError("empty server address")
    scheme = default_scheme
    rest = raw
    head, sep, tail = raw.partition(":")
    if sep and head.lower() in DEFAULT_PORTS and not tail.isdigit():
        # "stun:host..." is a URI; "stun:3478" is the host "stun" on port 3478.
        scheme = head.lower()
        rest = tail[2:] if tail.startswith("//") else tail
    elif "://" in raw:
        raise ValueError(f"{text!r}: unknown scheme {head!r} (use stun:, stuns:, turn:, turns:)")
    transport = "tls" if scheme in _SECURE else "udp"
    rest, _, query = rest.partition("?")
    if query:
        for part in query.split("&"):
            key, _, value = part.partition("=")
            if key.lower() != "transport":
                raise ValueError(f"{text!r}: unknown URI parameter {key!r}")
            value = value.lower()
            if value not in ("udp", "tcp"):
                raise ValueError(f"{text!r}: transport must be udp or tcp, not {value!r}")
            if scheme in _SECURE:
                if value != "tcp":
                    raise ValueError(f"{text!r}: {scheme} runs over TLS/TCP only")
            else:
                transport = value
    if "@" in rest:
        raise ValueError(f"{text!r}: credentials do not belong in a STUN/TURN URI (RFC 7064)")
    if rest.endswith("/"):
        rest = rest[:-1]
    rest = unquote(rest)
    if rest.count(":") > 1 and not rest.startswith("["):
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, as [2001:db8::1]:3478")
    try:
        host, port = parse_hostport(rest, default_port=DEFAULT_PORTS[scheme])
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from None
    if not host or any(ch.isspace() for ch in host):
        raise ValueError(f"{text!r}: bad host {host!r}")
    literal = _literal(host)
    if literal is None and not _valid_name(host):
        raise ValueError(f"{text!r}: {host!r} is neither an IP address nor a host name")
    return ServerAddress(scheme, literal or host.lower().rstrip("."), port, transport)


def _valid_name(host: str) -> bool:
    labels = host.rstrip(".").split(".")
    if not labels or len(host) > 253:
        return False
    for label in labels:
        if not 1 <= len(label) <= 63:
            return False
        if label.startswith("-") or label.endswith("-"):
            return False
        if not all(ch.isalnum() or ch in "-_" for ch in label):
            return False
    return True
