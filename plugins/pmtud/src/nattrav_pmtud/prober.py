"""Padded STUN Binding probes driving a ``PmtuSearch``: sans-IO, on the STUN plugin's codec.

Theory of operation
-------------------
A probe is a one-shot Binding request padded with PADDING (RFC 5780 §7.6) so that the UDP
payload is exactly ``size - 28`` (IPv4) or ``size - 48`` (IPv6) bytes, sent with DF. There is
no retransmission at this layer: a lost probe is information, and the search decides whether
to send another (MAX_PROBES). A probe is confirmed only by a reply nobody off the path can
forge (RFC 8899 §8, hostile-inputs M3): a STUN response (success *or* error: a 420 from a
server that does not know PADDING still proves the padded request arrived whole) that

* carries the 96-bit random transaction ID of one of our recent probes,
* comes from the address the probe went to,
* passes MESSAGE-INTEGRITY with our key when credentials are configured (echo peers).

What the reply looks like does not matter beyond that: coturn pads its reply to about 1600
bytes and a nattrav echo peer does not pad at all. The result is the *forward* path MTU (from
us to the server); the reply may be fragmented on its way back and still count.

ICMP errors come in through ``receive_error`` (see ``errqueue``). A PTB is used as a hint only
when the quoted payload starts with the STUN header of one of our recent probes (magic cookie,
Binding request, our transaction ID) and its destination is our target (RFC 8899 §4.6.1,
hostile-inputs M1); the search then checks the size (§4.6.2, M2). A router that quotes too
little of our packet (RFC 792 asks only for 8 bytes past the IP header) cannot be validated,
so its PTB is dropped and the search falls back on probe loss.
"""

from __future__ import annotations

import collections
import ipaddress

import attrs
from nattrav.addresses import format_hostport
from nattrav.errors import LocalProtocolError, ParseError
from nattrav_stun.codec import (
    BINDING,
    COOKIE_BYTES,
    ERROR,
    PADDING,
    REQUEST,
    SOFTWARE,
    SUCCESS,
    USERNAME,
    IntegrityKey,
    Message,
    decode,
    encode,
    is_stun,
    new_transaction_id,
    verify_integrity,
)

from nattrav_pmtud.errqueue import QueuedError
from nattrav_pmtud.search import Event, PmtuResult, PmtuSearch, SearchSettings, udp_payload

__all__ = ["ProbeCredentials", "StunPmtuProber", "min_probe_size"]

#: header (20) + PADDING TLV header (4) + FINGERPRINT (8): the smallest padded probe payload
_BARE = 32
_BINDING_REQUEST_TYPE = b"\x00\x01"


@attrs.frozen(repr=False)
class ProbeCredentials:
    """Short-term credentials shared with a cooperating echo peer (RFC 8489 §9.1).

    Probes then carry USERNAME (when set) and MESSAGE-INTEGRITY; replies must carry a valid
    MESSAGE-INTEGRITY, so even an on-path observer of the transaction ID cannot confirm a probe
    that never arrived.
    """

    password: str
    username: str | None = None

    def key(self) -> IntegrityKey:
        from nattrav_stun.auth import short_term_key

        return IntegrityKey(short_term_key(self.password))

    def __repr__(self) -> str:
        return f"ProbeCredentials(username={self.username!r}, password=<secret>)"


def min_probe_size(family: int) -> int:
    """The smallest IP packet a padded probe can be (no USERNAME, no integrity)."""
    return _BARE + (28 if family == 4 else 48)


def _canonical(address: tuple[str, int]) -> tuple[str, int]:
    return str(ipaddress.ip_address(str(address[0]).split("%", 1)[0])), int(address[1])


class StunPmtuProber:
    """One path's PMTU search, probed with padded STUN Binding requests to ``target``."""

    def __init__(
        self,
        target: tuple[str, int],
        settings: SearchSettings,
        *,
        credentials: ProbeCredentials | None = None,
        software: str | None = None,
    ) -> None:
        self.target = _canonical(target)
        family = 6 if ":" in self.target[0] else 4
        if family != settings.family:
            raise LocalProtocolError(
                f"target {format_hostport(*self.target)} is IPv{family}, the search IPv"
                f"{settings.family}"
            )
        self.family = family
        self.search = PmtuSearch(settings)
        self.credentials = credentials
        self._key = credentials.key() if credentials is not None else None
        self._software = software
        self._by_txid: collections.OrderedDict[bytes, int] = collections.OrderedDict()
        self._outgoing: list[tuple[bytes, tuple[str, int]]] = []
        self.mapped: tuple[str, int] | None = None
        self.padding_rejected = False
        self.port_unreachable_from: str | None = None
        #: datagrams and ICMP errors that were not accepted, by reason
        self.discarded: collections.Counter[str] = collections.Counter()
        if settings.step % 4:
            raise LocalProtocolError("STUN probes come in steps of 4 bytes: step must be 4k")
        smallest = self._build_bare_size()
        if udp_payload(self.search.base, family) < smallest:
            raise LocalProtocolError(f"the base size cannot hold a {smallest}-byte STUN probe")

    # ------------------------------------------------------------------ building probes

    def _attributes(self) -> dict[int, object]:
        attributes: dict[int, object] = {}
        if self._software:
            attributes[SOFTWARE] = self._software
        if self.credentials is not None and self.credentials.username:
            attributes[USERNAME] = self.credentials.username
        return attributes

    def _encode(self, msg: Message) -> bytes:
        return encode(msg, integrity=self._key, fingerprint=True)

    def _build_bare_size(self) -> int:
        msg = Message(BINDING, REQUEST, bytes(12), self._attributes())
        return len(self._encode(msg)) + 4  # plus the PADDING TLV header

    def build_probe(self, size: int) -> tuple[bytes, bytes]:
        """A Binding request whose IP packet is exactly ``size`` bytes: (data, txid)."""
        payload = udp_payload(size, self.family)
        attributes = self._attributes()
        txid = new_transaction_id()
        pad = payload - (len(self._encode(Message(BINDING, REQUEST, txid, attributes))) + 4)
        if pad < 0:
            raise LocalProtocolError(f"a probe of {size} bytes cannot hold a STUN request")
        attributes[PADDING] = bytes(pad)
        data = self._encode(Message(BINDING, REQUEST, txid, attributes))
        if len(data) != payload:  # only when payload is not a multiple of 4: a search bug
            raise LocalProtocolError(f"probe payload {len(data)} != {payload} (size {size})")
        return data, txid

    def _collect(self) -> None:
        for order in self.search.probes_to_send():
            data, txid = self.build_probe(order.size)
            self._by_txid[txid] = order.probe_id
            self._outgoing.append((data, self.target))
        if len(self._by_txid) > 256:  # forget probes the search no longer remembers
            for tid, pid in list(self._by_txid.items()):
                if self.search.probe_size(pid) is None:
                    del self._by_txid[tid]

    # ------------------------------------------------------------------ the sans-IO surface

    def start(self, now: float) -> None:
        self.search.start(now)
        self._collect()

    def datagrams_to_send(self) -> list[tuple[bytes, tuple[str, int]]]:
        out, self._outgoing = self._outgoing, []
        return out

    @property
    def has_outgoing(self) -> bool:
        """Datagrams are waiting in ``datagrams_to_send``."""
        return bool(self._outgoing)

    def get_timer(self) -> float | None:
        return self.search.get_timer()

    def handle_timer(self, now: float) -> None:
        self.search.handle_timer(now)
        self._collect()

    def next_event(self) -> Event | None:
        return self.search.next_event()

    @property
    def settled(self) -> bool:
        return self.search.settled

    def receive_datagram(self, data: bytes, source: tuple[str, int], now: float) -> bool:
        """Feed one datagram; True when it confirmed a probe."""
        if not is_stun(data):
            self.discarded["not-stun"] += 1
            return False
        try:
            msg = decode(data)
        except ParseError:
            self.discarded["malformed"] += 1
            return False
        if msg.method != BINDING or msg.cls not in (SUCCESS, ERROR):
            self.discarded["not-a-binding-response"] += 1
            return False
        probe_id = self._by_txid.get(msg.transaction_id)
        if probe_id is None:
            self.discarded["unknown-transaction"] += 1
            return False
        try:
            if _canonical(source) != self.target:
                self.discarded["wrong-source"] += 1
                return False
        except ValueError:
            self.discarded["wrong-source"] += 1
            return False
        if self._key is not None and not verify_integrity(msg, self._key):
            self.discarded["integrity"] += 1
            return False
        if msg.cls == ERROR:
            code = msg.error_code
            if code is not None and code.code == 420:
                self.padding_rejected = True
        else:
            xma = msg.xor_mapped_address
            if xma is not None:
                self.mapped = (xma.host, xma.port)
        del self._by_txid[msg.transaction_id]
        accepted = self.search.probe_acked(probe_id, now)
        self._collect()
        return accepted

    def _quoted_probe(self, entry: QueuedError) -> int | str:
        """The probe an ICMP error quotes, or why it cannot be attributed to one (M1)."""
        if entry.family != self.family:
            return "wrong-family"
        try:
            if entry.destination is None or _canonical(entry.destination) != self.target:
                return "wrong-destination"
        except ValueError:
            return "wrong-destination"
        quoted = entry.quoted
        if len(quoted) < 20:
            return "quote-too-short"
        if quoted[4:8] != COOKIE_BYTES or quoted[:2] != _BINDING_REQUEST_TYPE:
            return "not-our-probe"
        probe_id = self._by_txid.get(bytes(quoted[8:20]))
        if probe_id is None:
            return "unknown-transaction"
        return probe_id

    def receive_error(self, entry: QueuedError, now: float) -> str:
        """Feed one error-queue entry; returns what was done with it (for logs and tests)."""
        if entry.is_local_mtu:
            if entry.mtu > 0:
                self.search.local_limit(entry.mtu, now)
                self._collect()
                return "local-mtu"
            return "ignored"
        if entry.is_port_unreachable:
            found = self._quoted_probe(entry)
            if isinstance(found, str):
                self.discarded[f"icmp-{found}"] += 1
                return found
            offender = entry.error.offender
            self.port_unreachable_from = offender[0] if offender else self.target[0]
            return "port-unreachable"
        if not entry.is_packet_too_big:
            self.discarded["icmp-other"] += 1
            return "ignored"
        found = self._quoted_probe(entry)
        if isinstance(found, str):
            self.discarded[f"ptb-{found}"] += 1
            return found
        verdict = self.search.ptb_received(found, entry.mtu, now)
        self._collect()
        return verdict.value

    def send_failed(self, data: bytes, now: float, local_mtu: int | None = None) -> None:
        """The host refused to send ``data`` (one of our probes) with EMSGSIZE."""
        probe_id = self._by_txid.pop(bytes(data[8:20]), None)
        if probe_id is None:
            return
        self.search.send_failed(probe_id, now, local_mtu)
        self._collect()

    def result(self) -> PmtuResult:
        """The search's result, with what the replies and ICMP errors taught us."""
        base = self.search.result(target=format_hostport(*self.target))
        details: dict[str, object] = {
            "mapped_address": None if self.mapped is None else format_hostport(*self.mapped),
            "server_rejected_padding": self.padding_rejected,
            "integrity": self._key is not None,
        }
        if self.port_unreachable_from:
            details["port_unreachable_from"] = self.port_unreachable_from
        if self.discarded:
            details["discarded"] = dict(self.discarded)
        if self.search.ptb_discarded:
            details["ptb_discarded_by_size"] = dict(self.search.ptb_discarded)
        return attrs.evolve(base, details=details)
