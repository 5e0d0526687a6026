"""nattrav-pmtud: RFC 8899 datagram path MTU discovery (DPLPMTUD) for nattrav.

Modules: ``search`` (the sans-IO RFC 8899 state machine), ``prober`` (padded STUN probes over
it), ``errqueue`` (ICMP errors from the Linux error queue), ``sockopts`` (Don't Fragment per
platform), ``echo`` (a Binding responder for peers), ``driver`` (sockets and anyio), ``config``,
``pathprobe`` and ``report`` (the chain and ``nattrav probe``), ``cli``, ``plugin`` (hooks).

Quick use::

    from nattrav_pmtud.driver import discover_pmtu
    result = await discover_pmtu(("203.0.113.1", 3478))
    result.path_mtu, result.max_udp_payload, result.how
"""

from __future__ import annotations

__all__: list[str] = []
