"""Spans for the STUN transactions the method and the verifier run (one span per Binding).

``traced_binding`` wraps ``StunClient.binding`` in a ``nattrav.stun.binding`` span when the
attempt has telemetry, with the attributes every protocol transaction span carries
(docs/observability.md): ``nattrav.method`` (the attempt's method: ``stun``, or the method
whose candidate the verifier checks), ``nattrav.server``, ``nattrav.purpose``,
``nattrav.outcome`` (``succeeded``, ``timed-out``, ``error-response``, ``failed``,
``cancelled``) and the retransmission count.

The client (``driver.py``) is a hot path and reports retransmissions only where it has them:
a timeout carries its ``sends``; a success carries an RTT only when the request went out once
(Karn's rule), so a success reports ``nattrav.retransmitted`` (and ``nattrav.retransmissions``
0 with ``nattrav.rtt_ms`` when there was none). Without telemetry the call costs nothing extra.
"""

from __future__ import annotations

from typing import Any

from nattrav.method import AttemptContext

from nattrav_stun.driver import StunClient, StunError
from nattrav_stun.events import BindingResult, ErrorResponse, TimedOut

__all__ = ["traced_binding"]

SPAN = "nattrav.stun.binding"


async def traced_binding(
    client: StunClient,
    ctx: AttemptContext | None,
    server: Any,
    *,
    purpose: str,
    method: str | None = None,
    **kwargs: Any,
) -> BindingResult:
    """``client.binding(server, **kwargs)`` inside a span (see the module docstring)."""
    telemetry = ctx.telemetry if ctx is not None else None
    if telemetry is None or ctx is None:
        return await client.binding(server, **kwargs)
    with telemetry.span(
        SPAN, method=method or ctx.method, server=str(server), purpose=purpose
    ) as span:
        try:
            result = await client.binding(server, **kwargs)
        except StunError as exc:
            event = exc.event
            outcome = (
                "timed-out"
                if isinstance(event, TimedOut)
                else "error-response"
                if isinstance(event, ErrorResponse)
                else "failed"
            )
            span.set_attribute("nattrav.outcome", outcome)
            sends = getattr(event, "sends", None)
            if isinstance(sends, int):
                span.set_attribute("nattrav.retransmissions", max(0, sends - 1))
            raise
        span.set_attribute("nattrav.retransmitted", result.rtt is None)
        if result.rtt is not None:
            span.set_attribute("nattrav.retransmissions", 0)
            span.set_attribute("nattrav.rtt_ms", round(result.rtt * 1000, 3))
        span.set_attribute("nattrav.mapped", str(result.mapped))
        return result
