"""TURN ChannelData (``nattrav_relay.framing``): one UDP datagram, and the TCP/TLS framer.

Input: byte 0 is the read size for the framer, the rest is both the datagram handed to
``decode_channel_data`` and the stream fed to ``TurnStreamFramer`` (``fuzz.engine.chunked``).
The decoder returns a channel in 0x4000-0x4FFF with exactly the payload the header announces;
the framer emits STUN messages whole and ChannelData without padding, in stream order, and
raises only ParseError.
"""

from __future__ import annotations

from fuzz.engine import chunked, fuzz, instrumented

with instrumented("nattrav_relay"):
    from nattrav_relay import framing

from nattrav.errors import ParseError

DESCRIPTION = "nattrav_relay.framing: ChannelData datagrams and the TURN TCP/TLS framer"
MAX_LEN = 4096


def _datagram(data: bytes) -> bool:
    try:
        channel, payload = framing.decode_channel_data(data)
    except ParseError:
        return False
    assert framing.valid_channel(channel)
    assert framing.is_channel_data(data)
    length = int.from_bytes(data[2:4])
    assert payload == data[4 : 4 + length]
    return True


def _stream(stream: bytes, pieces: list[bytes]) -> bool:
    framer = framing.TurnStreamFramer(max_message=2048)
    emitted: list[bytes] = []
    try:
        for piece in pieces:
            emitted += framer.feed(piece)
    except ParseError:
        return False
    pos = 0
    for message in emitted:
        # Each message sits at ``pos`` in the stream; ChannelData is followed by its padding.
        assert stream[pos : pos + len(message)] == message
        length = int.from_bytes(message[2:4])
        if message[0] < 0x40:
            assert len(message) == 20 + length
            pos += len(message)
        else:
            assert len(message) == 4 + length
            pos += len(message) + (-length & 3)
    assert pos + framer.pending == len(stream)
    return True


def check(data: bytes) -> bool:
    stream, pieces = chunked(data)
    accepted = _datagram(stream)
    _stream(stream, pieces)
    return accepted


def main() -> None:
    fuzz(check)


if __name__ == "__main__":
    main()
