"""ChannelData messages and TURN's TCP/TLS framing (RFC 8656 §12.4, §12.5, §12.6).

Theory of operation
-------------------
A ChannelData message is a 4-byte header (channel number, length) and the application data:
the lean alternative to Send/Data indications (36+ bytes of STUN framing per datagram). Valid
channel numbers are 0x4000-0x4FFF (§12); the first two bits 01 tell ChannelData from STUN
(00) on the wire, so 0x5000-0x7FFF look like ChannelData but are reserved and are discarded
(hostile-inputs T5).

Over UDP one datagram holds one message; padding is optional and anything after
``4 + length`` is ignored, while a datagram shorter than ``4 + length`` is discarded (§12.6).
Over TCP and TLS there is no datagram boundary: ChannelData is padded to a multiple of four
bytes (§12.5) and ``TurnStreamFramer`` cuts the byte stream into STUN messages and ChannelData
messages by looking at the first two bits of each. The STUN plugin's ``StreamFramer`` only
knows STUN, hence a framer here.

The hot path (one call per relayed datagram) is a precompiled ``struct`` and a slice: no
attribute parsing, no allocation beyond the payload itself.
"""

from __future__ import annotations

import struct

from nattrav.errors import LocalProtocolError, ParseError

__all__ = [
    "CHANNEL_MAX",
    "CHANNEL_MIN",
    "TurnStreamFramer",
    "decode_channel_data",
    "encode_channel_data",
    "is_channel_data",
    "valid_channel",
]

CHANNEL_MIN = 0x4000
CHANNEL_MAX = 0x4FFF

_HEAD = struct.Struct("!HH")
_pack_head = _HEAD.pack
_unpack_head = _HEAD.unpack_from
_PADS = (b"", b"\0\0\0", b"\0\0", b"\0")


def valid_channel(number: int) -> bool:
    """True for the channel numbers a client may bind (0x4000-0x4FFF, §12)."""
    return CHANNEL_MIN <= number <= CHANNEL_MAX


def is_channel_data(data: bytes) -> bool:
    """First two bits 01: a ChannelData message, valid channel or not (RFC 7983 demux)."""
    return len(data) >= 4 and 0x40 <= data[0] <= 0x7F


def encode_channel_data(channel: int, data: bytes, *, pad: bool = False) -> bytes:
    """One ChannelData message; ``pad=True`` (TCP/TLS) pads it to a multiple of 4 bytes."""
    n = len(data)
    if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
        raise LocalProtocolError(f"channel number {channel:#06x} outside 0x4000-0x4FFF")
    if n > 0xFFFF:
        raise LocalProtocolError(f"ChannelData payload of {n} bytes exceeds 65535")
    if pad:
        return _pack_head(channel, n) + data + _PADS[n & 3]
    return _pack_head(channel, n) + data


def decode_channel_data(message: bytes) -> tuple[int, bytes]:
    """``(channel, payload)`` of one ChannelData message; ``ParseError`` when invalid.

    Trailing bytes (padding) are ignored; a reserved channel number (0x5000-0xFFFF) or a
    message shorter than its header says is an error (§12.6).
    """
    if len(message) < 4:
        raise ParseError(f"ChannelData of {len(message)} bytes is shorter than its header")
    channel, length = _unpack_head(message)
    if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
        raise ParseError(f"ChannelData on reserved channel number {channel:#06x}")
    if len(message) < 4 + length:
        raise ParseError(f"ChannelData says {length} bytes of data, {len(message) - 4} arrived")
    return channel, message[4 : 4 + length]


class TurnStreamFramer:
    """Cut STUN and ChannelData messages out of a TCP/TLS byte stream (§12.5).

    ``feed(data)`` returns the complete messages received so far: STUN messages whole, and
    ChannelData messages *without* their padding (header plus ``length`` bytes). A first byte
    whose top bits are 10 or 11, or a STUN message length that is not a multiple of four,
    means the stream is out of sync: ``ParseError``, and the connection must be closed (there
    is no way to find the next message boundary).
    """

    __slots__ = ("_buffer", "max_message")

    def __init__(self, max_message: int = 65535 + 20) -> None:
        self._buffer = bytearray()
        self.max_message = max_message

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buffer
        buf += data
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        try:
            while end - pos >= 4:
                first = buf[pos]
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                if first < 0x40:  # STUN
                    if length & 3:
                        raise ParseError(f"STUN message length {length} is not a multiple of 4")
                    total = 20 + length
                    keep = total
                elif first < 0x80:  # ChannelData
                    keep = 4 + length
                    total = keep + (-length & 3)
                else:
                    raise ParseError(f"TCP stream out of sync: first byte {first:#04x}")
                if total > self.max_message:
                    raise ParseError(f"message of {total} bytes exceeds the limit")
                if end - pos < total:
                    break
                out.append(bytes(buf[pos : pos + keep]))
                pos += total
        finally:
            if pos:
                del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        """Bytes buffered toward an incomplete message."""
        return len(self._buffer)
