"""ChannelData framing and the TURN TCP/TLS stream framer (RFC 8656 §12.4-§12.6)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nattrav.errors import LocalProtocolError, ParseError
from nattrav_relay.framing import (
    TurnStreamFramer,
    decode_channel_data,
    encode_channel_data,
    is_channel_data,
    valid_channel,
)
from nattrav_stun import codec as c


def test_encode_channel_data() -> None:
    assert encode_channel_data(0x4000, b"abc") == b"\x40\x00\x00\x03abc"
    assert encode_channel_data(0x4FFF, b"abc", pad=True) == b"\x4f\xff\x00\x03abc\x00"
    assert encode_channel_data(0x4001, b"abcd", pad=True) == b"\x40\x01\x00\x04abcd"
    assert encode_channel_data(0x4001, b"", pad=True) == b"\x40\x01\x00\x00"


@pytest.mark.parametrize("number", [0x3FFF, 0x5000, 0xFFFF, 0])
def test_only_0x4000_to_0x4fff_can_be_sent(number: int) -> None:
    assert not valid_channel(number)
    with pytest.raises(LocalProtocolError):
        encode_channel_data(number, b"x")


def test_decode_channel_data_ignores_padding_and_rejects_short_and_reserved() -> None:
    assert decode_channel_data(b"\x40\x00\x00\x03abc\x00") == (0x4000, b"abc")
    with pytest.raises(ParseError):
        decode_channel_data(b"\x40\x00\x00\x05abc")
    with pytest.raises(ParseError):
        decode_channel_data(b"\x50\x00\x00\x01a")
    with pytest.raises(ParseError):
        decode_channel_data(b"\x40\x00")


def test_is_channel_data_is_the_rfc_7983_first_byte_test() -> None:
    assert is_channel_data(b"\x40\x00\x00\x00")
    assert is_channel_data(b"\x7f\x00\x00\x00")  # reserved, but ChannelData-shaped
    assert not is_channel_data(b"\x00\x01\x00\x00")
    assert not is_channel_data(b"\x80\x00\x00\x00")


def test_stream_framer_splits_stun_and_padded_channeldata() -> None:
    stun = c.encode(c.Message(c.BINDING, c.INDICATION, bytes(12)))
    stream = stun + b"\x40\x00\x00\x05hello\x00\x00\x00" + b"\x40\x01\x00\x04abcd"
    framer = TurnStreamFramer()
    out: list[bytes] = []
    for i in range(len(stream)):  # one byte at a time: boundaries anywhere
        out += framer.feed(stream[i : i + 1])
    assert out == [stun, b"\x40\x00\x00\x05hello", b"\x40\x01\x00\x04abcd"]
    assert framer.pending == 0


@pytest.mark.parametrize("junk", [b"\x80\x00\x00\x00", b"\xc0abc", b"\x00\x01\x00\x03" + bytes(20)])
def test_stream_framer_refuses_a_stream_out_of_sync(junk: bytes) -> None:
    with pytest.raises(ParseError):
        TurnStreamFramer().feed(junk)


def test_stream_framer_bounds_message_size() -> None:
    with pytest.raises(ParseError):
        TurnStreamFramer(max_message=100).feed(b"\x40\x00\x01\x00")


@given(
    st.lists(st.tuples(st.integers(0x4000, 0x4FFF), st.binary(max_size=40)), max_size=8),
    st.integers(1, 17),
)
def test_stream_framer_reassembles_any_split(messages: list[tuple[int, bytes]], chunk: int) -> None:
    stream = b"".join(encode_channel_data(n, d, pad=True) for n, d in messages)
    framer = TurnStreamFramer()
    out: list[bytes] = []
    for i in range(0, len(stream), chunk):
        out += framer.feed(stream[i : i + chunk])
    assert [decode_channel_data(m) for m in out] == messages


@given(st.binary(max_size=200))
def test_stream_framer_raises_only_parse_errors(data: bytes) -> None:
    try:
        TurnStreamFramer().feed(data)
    except ParseError:
        pass
