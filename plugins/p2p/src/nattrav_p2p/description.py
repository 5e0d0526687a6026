"""The offer and the answer: what two peers tell each other through the signal (pure codec).

Theory of operation
-------------------
One JSON object per direction, sent once through whatever ``Signal`` the application chose::

    {"p2p": 1, "type": "offer", "ufrag": "...", "pwd": "...", "role": "controlling",
     "tiebreaker": "9f3c...16 hex digits", "candidates": [
        {"foundation": "1a2b3c4d", "priority": 2130706431, "kind": "host",
         "address": "192.168.1.10:40000", "transport": "udp", "component": 1}, ...]}

``ufrag``/``pwd`` are the short-term credentials of the connectivity checks (RFC 8445 §5.3:
at least 24 and 128 bits of randomness, ice-chars only); the tie-breaker is a 64-bit number
sent as hex text because JSON numbers above 2^53 lose precision in many parsers.

The peer's message is untrusted input: ``decode_description`` checks every field (types,
lengths, character set, address syntax, at most ``MAX_CANDIDATES`` candidates) and raises
``RemoteProtocolError`` naming the first problem; nothing else escapes it.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from typing import Any, Literal

import attrs
from nattrav.errors import RemoteProtocolError
from nattrav.models import CandidateKind, Transport, TransportAddress

from nattrav_p2p.candidates import IceCandidate

__all__ = [
    "MAX_CANDIDATES",
    "VERSION",
    "Description",
    "decode_description",
    "new_credentials",
    "new_tiebreaker",
]

VERSION = 1
MAX_CANDIDATES = 64
_ICE_CHARS = re.compile(r"^[A-Za-z0-9+/]+$")  # RFC 8839 ice-char
_FOUNDATION = re.compile(r"^[A-Za-z0-9+/]{1,32}$")
Role = Literal["controlling", "controlled"]


def new_credentials() -> tuple[str, str]:
    """A fresh (ufrag, pwd): 8 and 24 URL-safe-free base64 characters (48 and 144 bits)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    ufrag = "".join(secrets.choice(alphabet) for _ in range(8))
    pwd = "".join(secrets.choice(alphabet) for _ in range(24))
    return ufrag, pwd


def new_tiebreaker() -> int:
    """A random 64-bit tie-breaker (§7.3.1.1)."""
    return secrets.randbits(64)


@attrs.frozen
class Description:
    """One side's offer or answer."""

    type: Literal["offer", "answer"]
    ufrag: str
    pwd: str
    role: Role
    tiebreaker: int
    candidates: tuple[IceCandidate, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "p2p": VERSION,
            "type": self.type,
            "ufrag": self.ufrag,
            "pwd": self.pwd,
            "role": self.role,
            "tiebreaker": f"{self.tiebreaker:016x}",
            "candidates": [c.to_json() for c in self.candidates],
        }


def _bad(why: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"peer's offer/answer rejected: {why}")


def _text(raw: Mapping[str, Any], key: str, low: int, high: int) -> str:
    value = raw.get(key)
    if not isinstance(value, str):
        raise _bad(f"{key} must be a string")
    if not low <= len(value) <= high or not _ICE_CHARS.match(value):
        raise _bad(f"{key} must be {low}-{high} characters of A-Z a-z 0-9 + /")
    return value


def _address(value: Any, what: str) -> TransportAddress:
    if not isinstance(value, str) or len(value) > 64:
        raise _bad(f"{what} must be an 'IP:port' string")
    try:
        return TransportAddress.parse(value)
    except (ValueError, TypeError) as exc:
        raise _bad(f"{what} {value!r}: {exc}") from None


def _candidate(raw: Any, index: int) -> IceCandidate | None:
    where = f"candidates[{index}]"
    if not isinstance(raw, Mapping):
        raise _bad(f"{where} must be an object")
    transport = raw.get("transport", "udp")
    if transport != Transport.UDP.value:
        return None  # another transport: not ours to check (ignored, not an error)
    foundation = raw.get("foundation")
    if not isinstance(foundation, str) or not _FOUNDATION.match(foundation):
        raise _bad(f"{where}.foundation must be 1-32 ice-chars")
    priority = raw.get("priority")
    if isinstance(priority, bool) or not isinstance(priority, int) or not 1 <= priority < 2**32:
        raise _bad(f"{where}.priority must be an integer 1..2^32-1")
    try:
        kind = CandidateKind(raw.get("kind"))
    except ValueError:
        raise _bad(f"{where}.kind must be one of host, srflx, prflx, mapped, relay") from None
    component = raw.get("component", 1)
    if isinstance(component, bool) or not isinstance(component, int) or not 1 <= component <= 256:
        raise _bad(f"{where}.component must be 1-256")
    address = _address(raw.get("address"), f"{where}.address")
    related_raw = raw.get("related")
    related = None if related_raw is None else _address(related_raw, f"{where}.related")
    return IceCandidate(
        foundation=foundation,
        priority=priority,
        kind=kind,
        address=address,
        component=component,
        related=related,
        route="",
    )


def decode_description(raw: Any, *, expect: Literal["offer", "answer"]) -> Description:
    """Validate the peer's message; ``RemoteProtocolError`` on any problem."""
    if not isinstance(raw, Mapping):
        raise _bad("not a JSON object")
    if raw.get("p2p") != VERSION:
        raise _bad(f"unsupported version {raw.get('p2p')!r} (this side speaks {VERSION})")
    if raw.get("type") != expect:
        raise _bad(f"expected an {expect}, got {raw.get('type')!r}")
    ufrag = _text(raw, "ufrag", 4, 256)
    pwd = _text(raw, "pwd", 22, 256)
    role = raw.get("role")
    if role not in ("controlling", "controlled"):
        raise _bad("role must be 'controlling' or 'controlled'")
    tb = raw.get("tiebreaker")
    if not isinstance(tb, str) or not re.fullmatch(r"[0-9a-fA-F]{1,16}", tb):
        raise _bad("tiebreaker must be 1-16 hex digits")
    cands = raw.get("candidates")
    if not isinstance(cands, list):
        raise _bad("candidates must be a list")
    if len(cands) > MAX_CANDIDATES:
        raise _bad(f"{len(cands)} candidates (at most {MAX_CANDIDATES})")
    parsed = [c for i, raw_c in enumerate(cands) if (c := _candidate(raw_c, i)) is not None]
    return Description(
        type=expect,
        ufrag=ufrag,
        pwd=pwd,
        role=role,
        tiebreaker=int(tb, 16),
        candidates=tuple(parsed),
    )
