"""STUN messages (``nattrav_stun.codec.decode``): one UDP datagram from a server or a peer.

Beyond "returns a Message or raises ParseError": a decoded message must survive everything a
caller does with it (integrity checks with both algorithms, ``describe`` for logs), its
FINGERPRINT flag must agree with ``verify_fingerprint``, and whatever can be re-encoded must
decode to an equal message (the decoder and the encoder agree on every attribute).
"""

from __future__ import annotations

from fuzz.engine import fuzz, instrumented

with instrumented("nattrav_stun"):
    from nattrav_stun import codec

from nattrav.errors import LocalProtocolError, ParseError

DESCRIPTION = "nattrav_stun.codec.decode: one STUN datagram (RFC 8489)"
MAX_LEN = 2048
_KEY = codec.IntegrityKey(b"fuzzing-key")


def check(data: bytes) -> bool:
    try:
        msg = codec.decode(data)
    except ParseError:
        assert not codec.verify_fingerprint(data)
        return False
    assert msg.raw == data
    for sha256 in (None, True, False):
        assert codec.verify_integrity(msg, _KEY, sha256=sha256) in (True, False)
    assert isinstance(msg.describe(), str)
    assert codec.verify_fingerprint(data) is msg.fingerprint
    assert all(t < 0x8000 and t in msg.attributes for t in msg.unknown_required)
    try:
        again = codec.encode(msg, fingerprint=True)
    except LocalProtocolError:
        return True  # decoded but not sendable (e.g. a 700-byte SOFTWARE): fine
    assert codec.decode(again) == msg, (msg, again.hex())
    return True


def main() -> None:
    fuzz(check)


if __name__ == "__main__":
    main()
