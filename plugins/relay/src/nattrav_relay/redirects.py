"""Loop protection for followed TURN redirects (RFC 8489 §10), sans-IO.

Theory of operation
-------------------
A 300 (Try Alternate) to an Allocate sends the client to another server with the same
transport and credentials (``client.py`` decides whether a 300 may be followed at all; the
driver opens the new 5-tuple). Two things can go wrong: servers that redirect to each other
(A -> B -> A), and a chain of redirects that never ends. RFC 8489 §10: "If the client has been
redirected to a server to which it has already sent this request within the last five minutes,
it MUST ignore the redirection and consider the transaction to have failed." ``RedirectGuard``
remembers, per transport, when an Allocate last went to each server address (``sent``), and
refuses a redirect to one of them within ``window`` seconds (300). It also bounds the number
of redirects one allocation attempt follows (``limit``, 3 by default: real deployments redirect
once, from a load balancer or a draining server to a worker); ``begin`` starts a new attempt's
count, while the five-minute memory spans the endpoint's life (a re-allocation after a loss
that is redirected back to a server tried a minute ago is refused too).

Nothing here touches a clock: ``now`` is an argument.
"""

from __future__ import annotations

import attrs
from nattrav_stun.codec import Address

__all__ = ["REDIRECT_WINDOW", "RedirectGuard"]

#: RFC 8489 §10: a redirect to a server this request went to within this long is ignored.
REDIRECT_WINDOW = 300.0


@attrs.define
class RedirectGuard:
    """Which servers an Allocate went to, and whether a redirect may be followed (sans-IO).

    ``limit``: redirects one attempt may follow (0: none). ``followed`` lists the redirects
    of the current attempt as ``(from, to)`` pairs, for reports.
    """

    limit: int = attrs.field(default=3, validator=attrs.validators.ge(0))
    window: float = REDIRECT_WINDOW
    followed: list[tuple[Address, Address]] = attrs.field(factory=list)
    _sent: dict[tuple[str, Address], float] = attrs.field(factory=dict, init=False)

    def begin(self) -> None:
        """A new allocation attempt: its redirect count starts at zero."""
        self.followed = []

    def sent(self, transport: str, server: tuple[str, int], now: float) -> None:
        """An Allocate went to ``server`` over ``transport`` at ``now``."""
        for key, when in list(self._sent.items()):
            if now - when >= self.window:  # forgotten after five minutes: bounded memory
                del self._sent[key]
        self._sent[(transport, _address(server))] = now

    def refusal(self, transport: str, alternate: tuple[str, int], now: float) -> str | None:
        """Why a redirect to ``alternate`` must not be followed, or ``None`` when it may."""
        target = _address(alternate)
        last = self._sent.get((transport, target))
        if last is not None and now - last < self.window:
            return (
                f"an Allocate went to {target} {now - last:.0f} s ago: a redirect loop "
                f"(RFC 8489 §10: ignored within {self.window:.0f} s)"
            )
        if len(self.followed) >= self.limit:
            if not self.limit:
                return "following redirects is off (max_redirects = 0)"
            hops = [self.followed[0][0], *(to for _from, to in self.followed)]
            chain = " -> ".join(str(a) for a in hops)
            return f"already redirected {len(self.followed)} times ({chain}); limit {self.limit}"
        return None

    def follow(self, origin: tuple[str, int], alternate: tuple[str, int]) -> None:
        """The redirect from ``origin`` to ``alternate`` is being followed."""
        self.followed.append((_address(origin), _address(alternate)))


def _address(server: tuple[str, int]) -> Address:
    if type(server) is Address:
        return server
    return Address(str(server[0]).split("%", 1)[0], int(server[1]))
