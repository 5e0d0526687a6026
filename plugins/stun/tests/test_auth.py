"""Auth: key derivation, OpaqueString, nonce cookie, the 401/438 state machine, checks."""

from __future__ import annotations

import pytest
from nattrav_stun import codec as c
from nattrav_stun.auth import (
    AuthSession,
    IntegrityCheck,
    LongTermCredentials,
    PasswordAlgorithm,
    SecurityFeatures,
    ShortTermCredentials,
    Verdict,
    algorithms_attribute,
    long_term_key,
    nonce_cookie,
    opaque_string,
    parse_nonce_cookie,
    short_term_key,
    userhash,
)


def test_opaque_string_maps_spaces_keeps_case_rejects_controls() -> None:
    assert opaque_string("a\u00a0b") == "a b"  # non-ASCII space mapped
    assert opaque_string("e\u0301") == "\u00e9"  # NFC
    assert opaque_string("\uff21\uff22") == "\uff21\uff22"  # full-width kept (no width map)
    assert opaque_string("CaSe") == "CaSe"
    for bad in ("", "tab\there", "The\u00adM\u00aatr\u2168"):
        with pytest.raises(ValueError, match="OpaqueString"):
            opaque_string(bad)


def test_keys() -> None:
    assert short_term_key("VOkJxbRl1RmTxUk/WvJxBt") == b"VOkJxbRl1RmTxUk/WvJxBt"
    assert len(long_term_key("u", "r", "p", PasswordAlgorithm.SHA256)) == 32
    assert len(long_term_key("u", "r", "p", PasswordAlgorithm.MD5)) == 16
    assert long_term_key("u", "r", "p\u00a0", prepare=True) == long_term_key("u", "r", "p ")
    assert long_term_key("u", "r", "\tp", prepare=False) != long_term_key(
        "u", "r", " p", prepare=False
    )
    assert len(userhash("u", "r")) == 32


def test_nonce_cookie_lsb_numbering_and_msb_tolerance() -> None:
    assert parse_nonce_cookie("obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA") == SecurityFeatures(
        password_algorithms=False, username_anonymity=True, bits=2
    )
    assert parse_nonce_cookie("obMatJos2AAAB" + "x").password_algorithms  # type: ignore[union-attr]
    msb = parse_nonce_cookie("obMatJos2gAAA")  # 0x800000: the original text's bit 0
    assert msb is not None and msb.password_algorithms
    assert parse_nonce_cookie("plain-nonce") is None
    assert parse_nonce_cookie("obMatJos2!!!!") is None  # not base64: no cookie
    cookie = nonce_cookie(SecurityFeatures(password_algorithms=True, username_anonymity=True))
    assert cookie == "obMatJos2AAAD"


# ----------------------------------------------------------------------------- helpers

CREDS = LongTermCredentials("alice", "s3cret")


def _request() -> c.Message:
    return c.Message(c.BINDING, c.REQUEST, attributes={})


def _challenge(
    code: int = 401,
    nonce: str = "nonce-1",
    realm: str = "example.org",
    algorithms: tuple[PasswordAlgorithm, ...] | None = None,
) -> c.Message:
    attrs: dict[int, object] = {
        c.ERROR_CODE: c.ErrorCode(code, "x"),
        c.REALM: realm,
        c.NONCE: nonce,
    }
    if algorithms is not None:
        attrs[c.PASSWORD_ALGORITHMS] = algorithms_attribute(algorithms)
    return c.decode(c.encode(c.Message(c.BINDING, c.ERROR, attributes=attrs)))


def _signed(session: AuthSession) -> tuple[dict[int, object], object]:
    attrs: dict[int, object] = {}
    signing = session.sign(attrs)
    return attrs, signing


# ----------------------------------------------------------------------------- long-term


def test_first_request_is_bare_then_legacy_md5_after_plain_401() -> None:
    session = AuthSession(CREDS)
    attrs, signing = _signed(session)
    assert attrs == {} and not signing.authenticated  # type: ignore[attr-defined]
    assert session.on_challenge(_challenge(), signing) is None  # type: ignore[arg-type]
    attrs, signing = _signed(session)
    assert attrs == {c.USERNAME: "alice", c.REALM: "example.org", c.NONCE: "nonce-1"}
    assert signing.integrity is not None and signing.integrity_sha256 is None  # type: ignore[attr-defined]
    assert signing.integrity.key == long_term_key("alice", "example.org", "s3cret")  # type: ignore[attr-defined]


def test_password_algorithms_negotiation_uses_servers_order_and_sha256_integrity() -> None:
    session = AuthSession(CREDS)
    _, first = _signed(session)
    nonce = nonce_cookie(SecurityFeatures(password_algorithms=True)) + "abc"
    offer = (PasswordAlgorithm.SHA256, PasswordAlgorithm.MD5)
    assert session.on_challenge(_challenge(nonce=nonce, algorithms=offer), first) is None  # type: ignore[arg-type]
    attrs, signing = _signed(session)
    assert attrs[c.PASSWORD_ALGORITHMS] == algorithms_attribute(offer)
    assert attrs[c.PASSWORD_ALGORITHM] == c.AlgorithmEntry(2, b"")
    assert signing.integrity is None and signing.integrity_sha256 is not None  # type: ignore[attr-defined]
    assert signing.integrity_sha256.key == long_term_key(  # type: ignore[attr-defined]
        "alice", "example.org", "s3cret", PasswordAlgorithm.SHA256
    )
    md5_first = AuthSession(CREDS)
    _, s = _signed(md5_first)
    md5_first.on_challenge(
        _challenge(nonce=nonce, algorithms=(PasswordAlgorithm.MD5, PasswordAlgorithm.SHA256)),
        s,  # type: ignore[arg-type]
    )
    assert md5_first.algorithm is PasswordAlgorithm.MD5


def test_username_anonymity_sends_userhash() -> None:
    session = AuthSession(CREDS)
    _, first = _signed(session)
    nonce = nonce_cookie(SecurityFeatures(username_anonymity=True)) + "n"
    assert session.on_challenge(_challenge(nonce=nonce), first) is None  # type: ignore[arg-type]
    attrs, _ = _signed(session)
    assert c.USERNAME not in attrs
    assert attrs[c.USERHASH] == userhash("alice", "example.org")


def test_bid_down_cookie_without_list_refuses_retry() -> None:
    session = AuthSession(CREDS)
    _, first = _signed(session)
    nonce = nonce_cookie(SecurityFeatures(password_algorithms=True)) + "n"
    reason = session.on_challenge(_challenge(nonce=nonce), first)  # type: ignore[arg-type]
    assert reason is not None and "bid-down" in reason


def test_bid_down_features_dropped_later_refuses_retry() -> None:
    session = AuthSession(CREDS)
    _, first = _signed(session)
    nonce = nonce_cookie(SecurityFeatures(password_algorithms=True)) + "n"
    offer = (PasswordAlgorithm.SHA256,)
    assert session.on_challenge(_challenge(nonce=nonce, algorithms=offer), first) is None  # type: ignore[arg-type]
    _, second = _signed(session)
    reason = session.on_challenge(_challenge(438, nonce="plain-new"), second)  # type: ignore[arg-type]
    assert reason is not None and "bid-down" in reason


def test_no_supported_algorithm_refuses() -> None:
    session = AuthSession(CREDS)
    _, first = _signed(session)
    challenge = _challenge(algorithms=())
    reason = session.on_challenge(challenge, first)  # type: ignore[arg-type]
    assert reason is not None and "no password algorithm" in reason


def test_legacy_disabled_refuses_rfc5389_server() -> None:
    session = AuthSession(LongTermCredentials("alice", "s3cret", legacy=False))
    _, first = _signed(session)
    reason = session.on_challenge(_challenge(), first)  # type: ignore[arg-type]
    assert reason is not None and "legacy" in reason


def test_second_401_with_same_identity_fails_438_retries_once_per_nonce() -> None:
    session = AuthSession(CREDS)
    _, first = _signed(session)
    assert session.on_challenge(_challenge(), first) is None  # type: ignore[arg-type]
    _, second = _signed(session)
    reason = session.on_challenge(_challenge(401, nonce="nonce-2"), second)  # type: ignore[arg-type]
    assert reason is not None and "rejected the credentials" in reason
    assert session.on_challenge(_challenge(438, nonce="nonce-2"), second) is None  # type: ignore[arg-type]
    _, third = _signed(session)
    assert third.identity == second.identity  # type: ignore[attr-defined]
    assert session.nonce == "nonce-2"
    reason = session.on_challenge(_challenge(438, nonce="nonce-1"), third)  # type: ignore[arg-type]
    assert reason is not None and "stale nonce" in reason


def test_realm_pinning() -> None:
    session = AuthSession(LongTermCredentials("alice", "s3cret", realm="good.example"))
    _, first = _signed(session)
    reason = session.on_challenge(_challenge(realm="evil.example"), first)  # type: ignore[arg-type]
    assert reason is not None and "realm" in reason


def test_accept_ignores_cookie_response_without_algorithms() -> None:
    session = AuthSession(CREDS)
    nonce = nonce_cookie(SecurityFeatures(password_algorithms=True)) + "n"
    msg = c.decode(c.encode(c.Message(c.BINDING, c.SUCCESS, attributes={c.NONCE: nonce})))
    assert not session.accept(msg)
    plain = c.decode(c.encode(c.Message(c.BINDING, c.SUCCESS, attributes={c.NONCE: "x"})))
    assert session.accept(plain)


def test_no_credentials_challenge_fails_clearly() -> None:
    session = AuthSession(None)
    _, first = _signed(session)
    reason = session.on_challenge(_challenge(), first)  # type: ignore[arg-type]
    assert reason is not None and "no credentials" in reason


# ----------------------------------------------------------------------------- short-term


def test_short_term_sends_both_then_the_one_answered() -> None:
    session = AuthSession(ShortTermCredentials("user", "pass"))
    attrs, signing = _signed(session)
    assert attrs == {c.USERNAME: "user"}
    assert signing.integrity is not None and signing.integrity_sha256 is not None  # type: ignore[attr-defined]
    key = signing.integrity  # type: ignore[attr-defined]
    response = c.decode(c.encode(c.Message(c.BINDING, c.SUCCESS), integrity_sha256=key))
    assert signing.check.verdict(response) is Verdict.AUTHENTICATED  # type: ignore[attr-defined]
    session.on_success(response, signing)  # type: ignore[arg-type]
    _, later = _signed(session)
    assert later.integrity is None and later.integrity_sha256 is not None  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- checks


def _response(cls: c.MessageClass = c.SUCCESS, code: int | None = None, **kw: object) -> c.Message:
    attrs: dict[int, object] = {}
    if code is not None:
        attrs[c.ERROR_CODE] = c.ErrorCode(code, "x")
    return c.decode(c.encode(c.Message(c.BINDING, cls, attributes=attrs), **kw))  # type: ignore[arg-type]


def test_integrity_check_verdicts() -> None:
    key = c.IntegrityKey(b"key")
    other = c.IntegrityKey(b"other")
    sha1_only = IntegrityCheck(key, sha1=True, sha256=False, long_term=True)
    assert sha1_only.verdict(_response(integrity=key)) is Verdict.AUTHENTICATED
    assert sha1_only.verdict(_response(integrity=other)) is Verdict.DISCARD
    assert sha1_only.verdict(_response()) is Verdict.DISCARD  # missing
    assert sha1_only.verdict(_response(integrity_sha256=key)) is Verdict.DISCARD  # S14
    assert sha1_only.verdict(_response(c.ERROR, 401)) is Verdict.UNPROTECTED
    assert sha1_only.verdict(_response(c.ERROR, 438)) is Verdict.UNPROTECTED
    assert sha1_only.verdict(_response(c.ERROR, 400)) is Verdict.DISCARD
    assert sha1_only.verdict(_response(c.ERROR, 401, integrity=other)) is Verdict.DISCARD
    short = IntegrityCheck(key, sha1=True, sha256=True, long_term=False)
    assert short.verdict(_response(c.ERROR, 401)) is Verdict.DISCARD
    assert short.verdict(_response(integrity_sha256=key)) is Verdict.AUTHENTICATED


def test_credentials_repr_hides_password() -> None:
    assert "s3cret" not in repr(CREDS)
    assert "hunter2" not in repr(ShortTermCredentials("user", "hunter2"))
    assert "hunter2" not in repr(c.IntegrityKey(b"hunter2"))
