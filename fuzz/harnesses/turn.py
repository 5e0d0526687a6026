"""TURN messages (``nattrav_stun.codec.decode`` with ``nattrav_relay.attributes.TURN_ATTRIBUTES``).

A TURN server's answers and a peer's Data indications are STUN-framed, with RFC 8656's
attributes. Properties: returns a Message or raises ParseError; ``occurrences`` (every
XOR-RELAYED-ADDRESS / ADDRESS-ERROR-CODE of a dual allocation) never raises and never
reports more than the message holds; re-encodable messages decode to themselves.
"""

from __future__ import annotations

from fuzz.engine import fuzz, instrumented

with instrumented("nattrav_relay", "nattrav_stun"):
    from nattrav_relay import attributes as turn
    from nattrav_stun import codec

from nattrav.errors import LocalProtocolError, ParseError

DESCRIPTION = "TURN messages: STUN decode with the TURN attribute table (RFC 8656)"
MAX_LEN = 2048
_TABLE = turn.TURN_ATTRIBUTES
_KEY = codec.IntegrityKey(b"fuzzing-key")


def check(data: bytes) -> bool:
    try:
        msg = codec.decode(data, _TABLE)
    except ParseError:
        return False
    for attr in (turn.XOR_RELAYED_ADDRESS, turn.ADDRESS_ERROR_CODE, turn.XOR_PEER_ADDRESS):
        found = turn.occurrences(msg, attr)
        assert len(found) <= len(data) // 4
        if attr in msg.attributes:
            assert found, "the first occurrence must be among all occurrences"
    assert codec.verify_integrity(msg, _KEY) in (True, False)
    assert isinstance(msg.describe(_TABLE), str)
    try:
        again = codec.encode(msg, table=_TABLE)
    except LocalProtocolError:
        return True
    assert codec.decode(again, _TABLE) == msg, (msg, again.hex())
    return True


def main() -> None:
    fuzz(check)


if __name__ == "__main__":
    main()
