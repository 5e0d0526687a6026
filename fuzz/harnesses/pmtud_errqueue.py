"""ICMP errors from a Linux socket error queue (``nattrav_pmtud.errqueue``).

The control message is the kernel's, but its content (type, code, MTU, offender, quoted bytes)
comes from whoever sent the ICMP error. Input: byte 0 picks the control message level/type
(the two real ones and two foreign ones), byte 1 the byte order, the rest is the cmsg data;
the quoted payload is the same bytes. Properties: ``parse_extended_error`` and
``queued_error`` return values in their C-struct ranges or raise ParseError.
"""

from __future__ import annotations

from fuzz.engine import fuzz, instrumented, pick

with instrumented("nattrav_pmtud"):
    from nattrav_pmtud import errqueue

from nattrav.errors import ParseError

DESCRIPTION = "nattrav_pmtud.errqueue: IP_RECVERR / IPV6_RECVERR control messages"
MAX_LEN = 256
KINDS = (
    (errqueue.SOL_IP, errqueue.IP_RECVERR),
    (errqueue.SOL_IPV6, errqueue.IPV6_RECVERR),
    (errqueue.SOL_IP, 8),  # IP_PKTINFO: not an error
    (1, 1),  # SOL_SOCKET: not an error
)
ORDERS: tuple[errqueue.ByteOrder, ...] = ("little", "big")
_DESTINATIONS = (("192.0.2.7", 3478), ("2001:db8::7", 3478, 0, 0), None, ("x", "not a port"))


def check(data: bytes) -> bool:
    if len(data) < 2:
        return False
    level, ctype = pick(KINDS, data[0])
    order = pick(ORDERS, data[1])
    payload = data[2:]
    error: errqueue.ExtendedError | None
    try:
        error = errqueue.parse_extended_error(level, ctype, payload, byteorder=order)
    except ParseError:
        error = None
    if error is not None:
        assert 0 <= error.errno <= 0xFFFFFFFF and 0 <= error.info <= 0xFFFFFFFF
        assert 0 <= error.origin <= 6 and 0 <= error.type <= 255 and 0 <= error.code <= 255
        if error.offender is not None:
            assert 0 <= error.offender[1] <= 0xFFFF
    try:
        queued = errqueue.queued_error(
            payload, [(level, ctype, payload)], pick(_DESTINATIONS, len(data)), byteorder=order
        )
    except ParseError:
        assert error is None
        return False
    assert queued.error == error and queued.quoted == payload
    assert queued.mtu == queued.error.info
    assert queued.family in (4, 6)
    for flag in (queued.is_packet_too_big, queued.is_local_mtu, queued.is_port_unreachable):
        assert flag in (True, False)
    return True


def main() -> None:
    fuzz(check)


if __name__ == "__main__":
    main()
