"""STUN authentication (RFC 8489 §9): credentials, keys, the nonce cookie, response checks.

Theory of operation
-------------------
Two credential mechanisms exist. *Short-term* (§9.1): every request carries USERNAME and
MESSAGE-INTEGRITY-SHA256 and/or MESSAGE-INTEGRITY keyed with the prepared password; there is
no challenge. *Long-term* (§9.2): the first request goes out bare, the server answers 401 with
REALM and NONCE (and, if it implements RFC 8489, a NONCE that starts with the *nonce cookie*
``obMatJos2`` plus four base64 characters of security-feature bits, and a PASSWORD-ALGORITHMS
list); the client retries with USERNAME or USERHASH, REALM, NONCE, the chosen
PASSWORD-ALGORITHM and an integrity attribute keyed with ``H(username:realm:password)``.

``AuthSession`` is that per-server state (sans-IO, no clock): ``sign()`` decorates a request
and says how its response must be checked (``IntegrityCheck``); ``on_challenge()`` digests a
401/438 and says whether to retry. The guards RFC 8489 asks for are all here:

* bid-down protection (§9.2.1, §9.2.5): a cookie announcing PASSWORD-ALGORITHMS without the
  attribute, or a server that announced features in an earlier challenge and stops doing so,
  ends the transaction instead of falling back to a weaker algorithm;
* no retry without a change (§9.2.5): a second 401 for the same username, realm and password
  fails with "credentials rejected" instead of looping;
* 438 (stale nonce) retries once per fresh nonce, and the request layer bounds the total;
* responses to authenticated requests must carry a valid MESSAGE-INTEGRITY(-SHA256) of the
  algorithm that was sent (§9.1.4, §9.2.5); only 401 and 438 may come unprotected (the server
  may not be able to compute one), and an unprotected 400 is discarded.

Bit numbering of the security features follows RFC 8489 errata 6290 and the corrected B.1
vector (erratum 6268): bit 0 is the least significant bit of the 24-bit value. The original
text numbered from the most significant bit; a value that only makes sense that way is
accepted too, so a server following either reading is understood.

Password preparation: RFC 8489 applies the PRECIS OpaqueString profile (RFC 8265) to
passwords, realms and usernames. ``opaque_string`` uses precis-i18n for that: it maps
non-ASCII spaces to U+0020 and normalises to NFC; it does *not* case-fold, map full-width
forms or apply NFKC, and it *rejects* (``ValueError``) empty strings, control characters and
default-ignorable code points such as U+00AD SOFT HYPHEN (which the RFC 5769 §2.4 vector's
password contains: under the old SASLprep it mapped to nothing). Credentials can opt out with
``prepare=False`` for servers whose stored keys were made from raw bytes.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
from collections.abc import Iterable
from typing import Any, Literal

import attrs

from nattrav_stun.codec import (
    ERROR,
    ERROR_CODE,
    NONCE,
    PASSWORD_ALGORITHM,
    PASSWORD_ALGORITHMS,
    REALM,
    USERHASH,
    USERNAME,
    AlgorithmEntry,
    IntegrityKey,
    Message,
    verify_integrity,
)

__all__ = [
    "NONCE_COOKIE",
    "AuthSession",
    "Credentials",
    "IntegrityCheck",
    "LongTermCredentials",
    "PasswordAlgorithm",
    "SecurityFeatures",
    "ShortTermCredentials",
    "Signing",
    "Verdict",
    "algorithms_attribute",
    "long_term_key",
    "nonce_cookie",
    "opaque_string",
    "parse_nonce_cookie",
    "short_term_key",
    "userhash",
]

NONCE_COOKIE = "obMatJos2"
_COOKIE_LEN = len(NONCE_COOKIE) + 4


class PasswordAlgorithm(enum.IntEnum):
    """The "STUN Password Algorithms" registry (RFC 8489 §18.5)."""

    MD5 = 0x0001
    SHA256 = 0x0002


# --------------------------------------------------------------------- preparation and keys


def opaque_string(text: str, *, what: str = "string") -> str:
    """Apply the PRECIS OpaqueString profile (RFC 8265 §4.2); ``ValueError`` when disallowed."""
    import precis_i18n

    try:
        result: str = precis_i18n.get_profile("OpaqueString").enforce(text)
    except UnicodeError as exc:
        raise ValueError(
            f"{what} is not allowed by the PRECIS OpaqueString profile (RFC 8265): "
            f"{getattr(exc, 'reason', exc)}"
        ) from None
    return result


def short_term_key(password: str, *, prepare: bool = True) -> bytes:
    """Short-term HMAC key: ``OpaqueString(password)`` in UTF-8 (§9.1.1)."""
    return (opaque_string(password, what="password") if prepare else password).encode()


def long_term_key(
    username: str,
    realm: str,
    password: str,
    algorithm: PasswordAlgorithm = PasswordAlgorithm.MD5,
    *,
    prepare: bool = True,
) -> bytes:
    """Long-term key: ``H(username ":" OpaqueString(realm) ":" OpaqueString(password))``.

    MD5 gives 16 bytes (§9.2.2), SHA-256 32 (§18.5.1.2). ``username`` is used as given: it is
    the value sent in USERNAME, already prepared. ``MD5("user:realm:pass")`` is
    ``8493fbc53ba582fb4c044c456bdc40eb`` (§9.2.2).
    """
    if prepare:
        realm = _prepare_realm(realm)
        password = opaque_string(password, what="password")
    data = f"{username}:{realm}:{password}".encode()
    if algorithm == PasswordAlgorithm.SHA256:
        return hashlib.sha256(data).digest()
    if algorithm == PasswordAlgorithm.MD5:
        return hashlib.md5(data, usedforsecurity=False).digest()
    raise ValueError(f"unsupported password algorithm {algorithm!r}")


def userhash(username: str, realm: str, *, prepare: bool = True) -> bytes:
    """USERHASH: ``SHA-256(OpaqueString(username) ":" OpaqueString(realm))`` (§14.4)."""
    if prepare:
        username = opaque_string(username, what="username")
        realm = _prepare_realm(realm)
    return hashlib.sha256(f"{username}:{realm}".encode()).digest()


def _prepare_realm(realm: str) -> str:
    # The server already applied OpaqueString (§14.9); re-applying is idempotent. If the
    # server's realm does not survive it, use it as sent: it is the server's key material.
    try:
        return opaque_string(realm, what="realm")
    except ValueError:
        return realm


# --------------------------------------------------------------------- the nonce cookie


@attrs.frozen
class SecurityFeatures:
    """The STUN Security Features a nonce cookie announces (§9.2, §18.1)."""

    password_algorithms: bool = False
    username_anonymity: bool = False
    bits: int = 0

    def weaker_than(self, other: SecurityFeatures) -> bool:
        """True when ``other`` announced a feature this one lacks (a bid-down)."""
        return (other.password_algorithms and not self.password_algorithms) or (
            other.username_anonymity and not self.username_anonymity
        )


def parse_nonce_cookie(nonce: str) -> SecurityFeatures | None:
    """The features of a NONCE that starts with the nonce cookie, else ``None``.

    Bit 0 (password algorithms) and bit 1 (username anonymity) are read LSB-first as errata
    6290 says; the MSB-first reading of the original text (0x800000, 0x400000) is honoured
    too: either way the feature counts as announced, which can only make us stricter.
    """
    if len(nonce) < _COOKIE_LEN or not nonce.startswith(NONCE_COOKIE):
        return None
    try:
        raw = base64.b64decode(nonce[len(NONCE_COOKIE) : _COOKIE_LEN], validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 3:
        return None
    bits = int.from_bytes(raw)
    return SecurityFeatures(
        password_algorithms=bool(bits & 0x000001) or bool(bits & 0x800000),
        username_anonymity=bool(bits & 0x000002) or bool(bits & 0x400000),
        bits=bits,
    )


def nonce_cookie(features: SecurityFeatures) -> str:
    """The 13-character cookie for ``features`` (LSB-first bits), for tests and servers."""
    bits = features.bits | (1 if features.password_algorithms else 0)
    bits |= 2 if features.username_anonymity else 0
    return NONCE_COOKIE + base64.b64encode(bits.to_bytes(3)).decode()


# --------------------------------------------------------------------- credentials


def _text(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{attribute.name} must be a non-empty string")


@attrs.frozen(repr=False)
class ShortTermCredentials:
    """Short-term credentials (§9.1): ``integrity`` says which integrity attributes the first
    request carries: ``"both"`` (the default when nothing is known about the server),
    ``"sha256"`` or ``"sha1"``."""

    username: str = attrs.field(validator=_text)
    password: str = attrs.field(validator=_text)
    integrity: Literal["both", "sha256", "sha1"] = "both"
    prepare: bool = True

    def __repr__(self) -> str:
        return f"ShortTermCredentials(username={self.username!r}, password=<secret>)"


@attrs.frozen(repr=False)
class LongTermCredentials:
    """Long-term credentials (§9.2).

    ``algorithms``: the password algorithms we accept when the server offers a list, in no
    particular order (the server's order decides, §9.2.5). ``legacy``: accept servers that
    offer no PASSWORD-ALGORITHMS (RFC 5389 servers such as coturn 4.6) with MD5 keys and
    MESSAGE-INTEGRITY (HMAC-SHA1); a server that *announced* RFC 8489 features is never
    downgraded whatever this says. ``realm``: refuse any other realm (``None``: take the
    server's).
    """

    username: str = attrs.field(validator=_text)
    password: str = attrs.field(validator=_text)
    realm: str | None = None
    algorithms: tuple[PasswordAlgorithm, ...] = (PasswordAlgorithm.SHA256, PasswordAlgorithm.MD5)
    legacy: bool = True
    prepare: bool = True

    def __repr__(self) -> str:
        return (
            f"LongTermCredentials(username={self.username!r}, realm={self.realm!r}, "
            "password=<secret>)"
        )


Credentials = ShortTermCredentials | LongTermCredentials


# --------------------------------------------------------------------- response checks


class Verdict(enum.Enum):
    """What to do with a response, as far as integrity is concerned."""

    AUTHENTICATED = "authenticated"  # integrity verified
    UNPROTECTED = "unprotected"  # acceptable without integrity (401/438 of long-term)
    DISCARD = "discard"  # drop as if never received; retransmissions go on


@attrs.frozen(repr=False)
class IntegrityCheck:
    """How the response to one signed request must be authenticated.

    ``sha1``/``sha256``: which integrity attributes the request carried; a response must use
    one of those (§9.1.4). ``long_term``: 401 and 438 may arrive unprotected (they carry the
    new nonce or realm); every other response needs a valid integrity attribute.
    """

    key: IntegrityKey
    sha1: bool
    sha256: bool
    long_term: bool = False

    def verdict(self, msg: Message) -> Verdict:
        has256 = msg.integrity_sha256_offset >= 0
        has1 = msg.integrity_offset >= 0
        if has256 and self.sha256:
            ok = verify_integrity(msg, self.key, sha256=True)
        elif has1 and self.sha1:
            ok = verify_integrity(msg, self.key, sha256=False)
        elif has256 or has1:
            return Verdict.DISCARD  # the other algorithm than the one we sent (§9.1.4)
        else:
            if self.long_term and msg.cls == ERROR:
                error = msg.get(ERROR_CODE)
                if error is not None and error.code in (401, 438):
                    return Verdict.UNPROTECTED
            return Verdict.DISCARD  # includes the unprotected 400 of §9.2.5
        return Verdict.AUTHENTICATED if ok else Verdict.DISCARD

    def __repr__(self) -> str:
        return f"IntegrityCheck(sha1={self.sha1}, sha256={self.sha256}, long_term={self.long_term})"


@attrs.frozen
class Signing:
    """What ``AuthSession.sign`` decided for one request: the keys to encode with and the
    check its response must pass (all ``None`` for an unauthenticated request)."""

    integrity: IntegrityKey | None = None
    integrity_sha256: IntegrityKey | None = None
    check: IntegrityCheck | None = None
    #: (username-or-userhash, realm, algorithm) used, to detect "retry without change".
    identity: tuple[Any, ...] | None = None

    @property
    def authenticated(self) -> bool:
        return self.check is not None


# --------------------------------------------------------------------- the session


class AuthSession:
    """Authentication state toward one server (same IP and port, §9.1.5): sans-IO.

    Owned by whoever talks to the server (the driver keeps one per server), never global.
    """

    def __init__(self, credentials: Credentials | None) -> None:
        self.credentials = credentials
        # short-term: which integrity algorithm the server answered with (None: unknown yet)
        self._short_algorithm: Literal["sha1", "sha256"] | None = None
        self._short_key: IntegrityKey | None = None
        if isinstance(credentials, ShortTermCredentials):
            self._short_key = IntegrityKey(
                short_term_key(credentials.password, prepare=credentials.prepare)
            )
            if credentials.integrity != "both":
                self._short_algorithm = credentials.integrity
        self._username = self._prepared_username()
        # long-term: what the last challenge taught us
        self.realm: str | None = None
        self.nonce: str | None = None
        self.offered: tuple[AlgorithmEntry, ...] | None = None
        self.algorithm: PasswordAlgorithm | None = None
        self.use_userhash = False
        self.features: SecurityFeatures | None = None
        self._key: IntegrityKey | None = None
        self._stale_nonces: set[str] = set()

    def _prepared_username(self) -> str | None:
        creds = self.credentials
        if creds is None:
            return None
        return opaque_string(creds.username, what="username") if creds.prepare else creds.username

    @property
    def ready(self) -> bool:
        """Requests can be signed right away (short-term, or a long-term nonce is cached)."""
        if isinstance(self.credentials, ShortTermCredentials):
            return True
        return self._key is not None

    # ---------------------------------------------------------------- signing

    def sign(self, attributes: dict[int, Any]) -> Signing:
        """Add the authentication attributes to ``attributes`` (in place); say how to encode.

        Without credentials, or before the first long-term challenge (§9.2.3.1), the request
        goes out unauthenticated.
        """
        creds = self.credentials
        if creds is None:
            return Signing()
        if isinstance(creds, ShortTermCredentials):
            assert self._short_key is not None and self._username is not None
            attributes[USERNAME] = self._username
            algorithm = self._short_algorithm
            sha1 = algorithm in (None, "sha1")
            sha256 = algorithm in (None, "sha256")
            key = self._short_key
            return Signing(
                integrity=key if sha1 else None,
                integrity_sha256=key if sha256 else None,
                check=IntegrityCheck(key, sha1=sha1, sha256=sha256, long_term=False),
                identity=(self._username, None, algorithm),
            )
        if self._key is None or self.realm is None or self.nonce is None:
            return Signing()
        assert self._username is not None
        if self.use_userhash:
            attributes[USERHASH] = userhash(self._username, self.realm, prepare=creds.prepare)
        else:
            attributes[USERNAME] = self._username
        attributes[REALM] = self.realm
        attributes[NONCE] = self.nonce
        identity = (self.use_userhash, self._username, self.realm, self.algorithm)
        if self.offered is not None:
            # §9.2.5: echo the list, name the choice, protect with SHA-256 only.
            attributes[PASSWORD_ALGORITHMS] = self.offered
            attributes[PASSWORD_ALGORITHM] = AlgorithmEntry(int(self.algorithm or 0), b"")
            return Signing(
                integrity_sha256=self._key,
                check=IntegrityCheck(self._key, sha1=False, sha256=True, long_term=True),
                identity=identity,
            )
        return Signing(
            integrity=self._key,
            check=IntegrityCheck(self._key, sha1=True, sha256=False, long_term=True),
            identity=identity,
        )

    # ---------------------------------------------------------------- responses

    def accept(self, response: Message) -> bool:
        """§9.2.5: a response whose NONCE carries the cookie with the password-algorithms bit
        but no PASSWORD-ALGORITHMS must be ignored (discarded, not a failure)."""
        nonce = response.get(NONCE)
        if nonce is None or response.get(PASSWORD_ALGORITHMS) is not None:
            return True
        error = response.get(ERROR_CODE)
        if error is not None and error.code in (401, 438):
            return True  # a challenge: on_challenge refuses to retry it instead
        features = parse_nonce_cookie(nonce)
        return features is None or not features.password_algorithms

    def on_success(self, response: Message, signing: Signing) -> None:
        """Remember what an authenticated exchange settled (§9.1.5: the algorithm)."""
        if (
            isinstance(self.credentials, ShortTermCredentials)
            and signing.check is not None
            and self._short_algorithm is None
        ):
            if response.integrity_sha256_offset >= 0:
                self._short_algorithm = "sha256"
            elif response.integrity_offset >= 0:
                self._short_algorithm = "sha1"

    def on_challenge(self, response: Message, signing: Signing) -> str | None:
        """Digest a 401 or 438 to ``signing``'s request. ``None``: retry with a new
        transaction (the session now holds what the retry needs); else why not to retry."""
        error = response.get(ERROR_CODE)
        code = error.code if error is not None else 0
        creds = self.credentials
        if creds is None:
            return f"server demands authentication ({code}) and no credentials are configured"
        if isinstance(creds, ShortTermCredentials):
            reason = error.reason if error is not None else ""
            return f"server rejected the short-term credentials ({code} {reason})"
        realm = response.get(REALM)
        nonce = response.get(NONCE)
        if realm is None or nonce is None:
            return f"{code} response without REALM and NONCE (RFC 8489 §9.2.4)"
        features = parse_nonce_cookie(nonce)
        offered: tuple[AlgorithmEntry, ...] | None = response.get(PASSWORD_ALGORITHMS)
        if features is not None and features.password_algorithms and offered is None:
            return (
                "possible bid-down attack: the nonce cookie announces PASSWORD-ALGORITHMS but "
                "the response has none (RFC 8489 §9.2.5); not retrying"
            )
        if self.features is not None and (features is None or features.weaker_than(self.features)):
            return (
                "possible bid-down attack: the server announced security features earlier "
                "and this challenge drops them; not retrying"
            )
        if creds.realm is not None and realm != creds.realm:
            return f"server realm {realm!r} is not the configured realm {creds.realm!r}"
        if offered is not None:
            supported = {int(a) for a in creds.algorithms}
            chosen = next(
                (PasswordAlgorithm(e.algorithm) for e in offered if e.algorithm in supported),
                None,
            )
            if chosen is None:
                names = ", ".join(_algorithm_name(e.algorithm) for e in offered) or "none"
                return f"server offers no password algorithm we support ({names})"
        elif not creds.legacy:
            return (
                "server offers no PASSWORD-ALGORITHMS (an RFC 5389 server) and legacy MD5 "
                "authentication is disabled"
            )
        else:
            chosen = PasswordAlgorithm.MD5
        anonymity = bool(features and features.username_anonymity)
        assert self._username is not None
        new_identity = (anonymity, self._username, realm, chosen)
        if code == 401 and signing.authenticated and signing.identity == new_identity:
            reason = error.reason if error is not None else ""
            return f"server rejected the credentials (401 {reason})".rstrip()
        if code == 438:
            if nonce in self._stale_nonces:
                return "server repeated a stale nonce (438); not retrying"
            if self.nonce is not None:
                self._stale_nonces.add(self.nonce)
        try:
            key = long_term_key(
                self._username, realm, creds.password, chosen, prepare=creds.prepare
            )
        except ValueError as exc:
            return str(exc)
        self.realm, self.nonce, self.offered, self.algorithm = realm, nonce, offered, chosen
        self.use_userhash = anonymity
        if features is not None:
            self.features = features
        self._key = IntegrityKey(key)
        return None

    def forget(self) -> None:
        """Drop the cached nonce (after the server restarted, say): the next request starts
        over with an unauthenticated first request."""
        self._key = None
        self.nonce = None


def _algorithm_name(number: int) -> str:
    try:
        return PasswordAlgorithm(number).name
    except ValueError:
        return f"{number:#06x}"


def algorithms_attribute(algorithms: Iterable[PasswordAlgorithm]) -> tuple[AlgorithmEntry, ...]:
    """A PASSWORD-ALGORITHMS value listing ``algorithms`` with empty parameters."""
    return tuple(AlgorithmEntry(int(a), b"") for a in algorithms)
