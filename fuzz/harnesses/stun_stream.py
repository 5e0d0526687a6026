"""STUN over TCP/TLS (``nattrav_stun.codec.StreamFramer``): a byte stream cut into messages.

Input: byte 0 is the read size, the rest the stream (``fuzz.engine.chunked``). The framer must
emit exactly a prefix of the stream, message by message, keep the rest pending, never buffer
more than its limit, and raise only ParseError (stream out of sync). Every emitted message goes
through the STUN decoder too.
"""

from __future__ import annotations

from fuzz.engine import chunked, fuzz, instrumented

with instrumented("nattrav_stun"):
    from nattrav_stun import codec

from nattrav.errors import ParseError

DESCRIPTION = "nattrav_stun.codec.StreamFramer: STUN messages cut out of a TCP/TLS stream"
MAX_LEN = 4096


def check(data: bytes) -> bool:
    stream, pieces = chunked(data)
    framer = codec.StreamFramer(max_message=1024)
    emitted: list[bytes] = []
    fed = 0
    try:
        for piece in pieces:
            fed += len(piece)
            emitted += framer.feed(piece)
            joined = b"".join(emitted)
            assert stream[: len(joined)] == joined
            assert len(joined) + framer.pending == fed
            assert framer.pending < framer.max_message
    except ParseError:
        return False
    for message in emitted:
        assert 20 <= len(message) <= framer.max_message
        try:
            codec.decode(message)
        except ParseError:
            pass
    return bool(emitted) and framer.pending == 0


def main() -> None:
    fuzz(check)


if __name__ == "__main__":
    main()
