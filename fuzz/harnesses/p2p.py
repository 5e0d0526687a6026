"""Peer-to-peer offer/answer (``nattrav_p2p.description.decode_description``) and the pasted
blob of ``nattrav connect --paste`` (``nattrav_p2p.signals.decode_blob``).

Input: byte 0 picks the path, the rest is the peer's text:

* 0: a pasted line, as the user pasted it (``decode_blob``), then the offer/answer in it;
* 1: JSON text, deflated and wrapped into a well-formed blob here, so that the JSON and the
  offer/answer checks behind the base64 and zlib layers are reached;
* 2: a JSON document handed to ``decode_description`` as a signal would (the JSON decoding of
  a transport such as a WebSocket belongs to that transport; bytes that are not JSON end here).

Properties: ``decode_blob`` returns a dict or raises ``SignalError``; ``decode_description``
returns a ``Description`` (at most ``MAX_CANDIDATES`` UDP candidates with IP-literal
addresses and ports 1-65535) or raises ``RemoteProtocolError``.
"""

from __future__ import annotations

import base64
import json
import zlib

from fuzz.engine import fuzz, instrumented

with instrumented("nattrav_p2p"):
    from nattrav_p2p import description, signals
    from nattrav_p2p.errors import SignalError

from nattrav.errors import RemoteProtocolError

DESCRIPTION = "nattrav_p2p: offer/answer decoding and the pasted blob"
MAX_LEN = 8192


def known_issue(exc: BaseException) -> bool:
    """Findings already reported and tolerated so a long session finds new ones (none now:
    the ones found earlier are fixed, docs/threats.md)."""
    return False


def _offer_or_answer(raw: object) -> bool:
    accepted = False
    for expect in ("offer", "answer"):
        try:
            found = description.decode_description(raw, expect=expect)
        except RemoteProtocolError:
            continue
        accepted = True
        assert found.type == expect
        assert len(found.candidates) <= description.MAX_CANDIDATES
        for candidate in found.candidates:
            assert 0 < candidate.address.port < 65536
            assert 1 <= candidate.priority < 2**32
    return accepted


def check(data: bytes) -> bool:
    if not data:
        return False
    mode, rest = data[0] % 3, data[1:]
    if mode == 2:
        try:
            raw = json.loads(rest)
        except (ValueError, RecursionError):
            return False
        return _offer_or_answer(raw)
    if mode == 0:
        text = rest.decode("utf-8", "replace")
    else:
        packed = base64.urlsafe_b64encode(zlib.compress(rest, 9)).decode().rstrip("=")
        text = signals.BLOB_PREFIX + packed
    try:
        message = signals.decode_blob(text)
    except SignalError:
        return False
    except RecursionError as exc:
        if known_issue(exc):
            return False
        raise
    assert isinstance(message, dict)
    return _offer_or_answer(message)


def main() -> None:
    fuzz(check)


if __name__ == "__main__":
    main()
