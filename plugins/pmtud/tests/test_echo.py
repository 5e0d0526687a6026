"""The echo responder a nattrav peer runs so others can probe the path to it."""

from __future__ import annotations

from nattrav_pmtud.echo import EchoResponder
from nattrav_pmtud.prober import ProbeCredentials
from nattrav_stun.codec import (
    BINDING,
    ERROR,
    INDICATION,
    PADDING,
    REQUEST,
    SUCCESS,
    UNKNOWN_ATTRIBUTES,
    USERNAME,
    IntegrityKey,
    Message,
    decode,
    encode,
    verify_integrity,
)

SRC = ("2001:db8:1:1::10", 40000)


def request(extra: dict[int, object] | None = None) -> bytes:
    attributes: dict[int, object] = {PADDING: bytes(1000), **(extra or {})}
    return encode(Message(BINDING, REQUEST, bytes(range(12)), attributes))


def test_answers_padded_binding_requests_unpadded() -> None:
    echo = EchoResponder()
    reply = echo.respond(request(), SRC)
    assert reply is not None and len(reply) < 100
    msg = decode(reply)
    assert msg.cls == SUCCESS and msg.transaction_id == bytes(range(12))
    assert msg.xor_mapped_address is not None
    assert (msg.xor_mapped_address.host, msg.xor_mapped_address.port) == SRC
    assert PADDING not in msg and msg.fingerprint and echo.answered == 1


def test_stays_silent_for_anything_else() -> None:
    echo = EchoResponder()
    assert echo.respond(b"hello", SRC) is None
    assert echo.respond(encode(Message(BINDING, INDICATION, bytes(12), {})), SRC) is None
    assert echo.respond(encode(Message(BINDING, SUCCESS, bytes(12), {})), SRC) is None
    assert echo.respond(request()[:-4], SRC) is None
    assert echo.answered == 0 and sum(echo.dropped.values()) == 4


def test_unknown_comprehension_required_attribute_gets_420() -> None:
    reply = EchoResponder().respond(request({0x0077: b"x"}), SRC)
    assert reply is not None
    msg = decode(reply)
    assert msg.cls == ERROR and msg.error_code is not None and msg.error_code.code == 420
    assert msg.get(UNKNOWN_ATTRIBUTES) == (0x0077,)


def test_with_credentials_only_signed_requests_are_answered_and_replies_are_signed() -> None:
    creds = ProbeCredentials("s3cret", "alice")
    key = creds.key()
    echo = EchoResponder(creds)
    assert echo.respond(request(), SRC) is None
    wrong = encode(
        Message(BINDING, REQUEST, bytes(12), {USERNAME: "alice"}), integrity=IntegrityKey(b"x")
    )
    assert echo.respond(wrong, SRC) is None
    other_user = encode(Message(BINDING, REQUEST, bytes(12), {USERNAME: "mallory"}), integrity=key)
    assert echo.respond(other_user, SRC) is None
    good = encode(Message(BINDING, REQUEST, bytes(12), {USERNAME: "alice"}), integrity=key)
    reply = echo.respond(good, SRC)
    assert reply is not None and verify_integrity(decode(reply), key)
    assert dict(echo.dropped) == {"integrity": 2, "username": 1}
