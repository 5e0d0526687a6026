"""A tiny STUN Binding responder so two nattrav peers can probe each other's path MTU: sans-IO.

Theory of operation
-------------------
``EchoResponder.respond(data, source)`` returns the reply to send, or ``None`` to stay silent.
It answers Binding requests (padded or not) with a success response carrying
XOR-MAPPED-ADDRESS and FINGERPRINT, and **never pads the reply**: the reply is smaller than
the probe, so the responder cannot be used to amplify traffic towards a spoofed source, and a
small reply crosses any return path, so the probe's outcome depends on the forward path only.

With credentials (a shared password, RFC 8489 §9.1 short-term), requests must carry a valid
MESSAGE-INTEGRITY (and the configured USERNAME, when one is set); anything else gets no reply
at all (a 401 would confirm to a scanner that something listens), and replies are signed so the
prober can reject forged confirmations (hostile-inputs M3). A request with an unknown
comprehension-required attribute gets 420 with UNKNOWN-ATTRIBUTES (RFC 8489 §6.3.1).
"""

from __future__ import annotations

import collections
import ipaddress

from nattrav.errors import ParseError
from nattrav_stun.codec import (
    BINDING,
    ERROR,
    ERROR_CODE,
    REQUEST,
    SOFTWARE,
    SUCCESS,
    UNKNOWN_ATTRIBUTES,
    USERNAME,
    XOR_MAPPED_ADDRESS,
    ErrorCode,
    Message,
    decode,
    encode,
    is_stun,
    verify_integrity,
)

from nattrav_pmtud.prober import ProbeCredentials

__all__ = ["EchoResponder"]


class EchoResponder:
    """Answers Binding requests; see the module docstring."""

    def __init__(
        self, credentials: ProbeCredentials | None = None, *, software: str | None = "nattrav"
    ) -> None:
        self.credentials = credentials
        self._key = credentials.key() if credentials is not None else None
        self._software = software
        self.answered = 0
        self.dropped: collections.Counter[str] = collections.Counter()

    def respond(self, data: bytes, source: tuple[str, int]) -> bytes | None:
        """The reply to ``data`` from ``source``, or ``None``."""
        if not is_stun(data):
            self.dropped["not-stun"] += 1
            return None
        try:
            msg = decode(data)
        except ParseError:
            self.dropped["malformed"] += 1
            return None
        if msg.method != BINDING or msg.cls != REQUEST:
            self.dropped["not-a-binding-request"] += 1
            return None
        if self._key is not None:
            assert self.credentials is not None
            if not verify_integrity(msg, self._key):
                self.dropped["integrity"] += 1
                return None
            want = self.credentials.username
            if want and msg.get(USERNAME) != want:
                self.dropped["username"] += 1
                return None
        try:
            host = str(ipaddress.ip_address(str(source[0]).split("%", 1)[0]))
        except ValueError:
            self.dropped["bad-source"] += 1
            return None
        attributes: dict[int, object] = {}
        if msg.unknown_required:
            attributes[ERROR_CODE] = ErrorCode(420, "Unknown Attribute")
            attributes[UNKNOWN_ATTRIBUTES] = msg.unknown_required
            cls = ERROR
        else:
            attributes[XOR_MAPPED_ADDRESS] = (host, int(source[1]))
            cls = SUCCESS
        if self._software:
            attributes[SOFTWARE] = self._software
        reply = Message(BINDING, cls, msg.transaction_id, attributes)
        self.answered += 1
        return encode(reply, integrity=self._key, fingerprint=True)
