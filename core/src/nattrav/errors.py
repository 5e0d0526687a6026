"""The error hierarchy every nattrav distribution raises.

Why a small, fixed tree: applications catch ``NatTravError`` to handle anything nattrav does,
the chain decides whether to retry or fall through by looking only at ``MethodError.retryable``
and ``MethodUnavailable``, and parsers promise to raise nothing but ``ParseError`` so that
garbage from the network can never escape as an arbitrary exception.

::

    NatTravError
     ├─ ConfigError            config failed validation; lists every problem
     ├─ PluginError            a plugin broke the hook contract
     ├─ ProtocolError
     │   ├─ LocalProtocolError   we misused a state machine (our bug)
     │   └─ RemoteProtocolError  the peer violated the RFC
     │       └─ ParseError         bytes from the network could not be decoded
     ├─ MethodError(method, reason, retryable)
     │   ├─ MethodUnavailable    not applicable here: skip, never retry
     │   └─ CircuitOpen          the method's circuit breaker is open
     └─ ChainExhausted(failures) every method failed; carries each failure and why
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nattrav.models import AttemptRecord

__all__ = [
    "ChainExhausted",
    "CircuitOpen",
    "ConfigError",
    "LocalProtocolError",
    "MethodError",
    "MethodUnavailable",
    "NatTravError",
    "ParseError",
    "PluginError",
    "ProtocolError",
    "RemoteProtocolError",
]


class NatTravError(Exception):
    """Base of every error nattrav raises on purpose."""


class ConfigError(NatTravError):
    """The configuration is invalid.

    ``problems`` lists every problem found (not just the first), each as a human sentence that
    names the offending key, so a user can fix the whole file in one pass.
    """

    def __init__(self, problems: Iterable[str], *, source: str | None = None) -> None:
        self.problems: tuple[str, ...] = tuple(problems) or ("invalid configuration",)
        self.source = source
        where = f" in {source}" if source else ""
        if len(self.problems) == 1:
            message = f"invalid configuration{where}: {self.problems[0]}"
        else:
            listed = "\n".join(f"  - {p}" for p in self.problems)
            message = f"invalid configuration{where} ({len(self.problems)} problems):\n{listed}"
        super().__init__(message)


class PluginError(NatTravError):
    """A plugin broke the hook contract (raised in a hook, registered a duplicate, ...)."""

    def __init__(self, plugin: str, message: str) -> None:
        self.plugin = plugin
        super().__init__(f"plugin {plugin!r}: {message}")


class ProtocolError(NatTravError):
    """A protocol rule was broken, by us or by the peer."""


class LocalProtocolError(ProtocolError):
    """We misused a state machine or codec: a bug in nattrav or in the caller."""


class RemoteProtocolError(ProtocolError):
    """The peer violated its RFC in a way the protocol does not let us ignore."""


class ParseError(RemoteProtocolError):
    """Bytes received from the network could not be decoded.

    Parsers raise only this; drivers discard the datagram and count it.
    """


class MethodError(NatTravError):
    """A traversal method failed.

    ``retryable`` tells the chain whether another attempt of the same method may succeed
    (a lost packet, a stale nonce) or not (authentication refused, gateway says no).
    ``candidate`` is what the method obtained before it failed, when that explains the failure
    (a mapping the gateway created that does not forward): reports show it.
    """

    def __init__(
        self, method: str, reason: str, *, retryable: bool = False, candidate: Any = None
    ) -> None:
        self.method = method
        self.reason = reason
        self.retryable = retryable
        self.candidate = candidate
        super().__init__(f"{method}: {reason}")


class MethodUnavailable(MethodError):
    """The method does not apply here (no gateway answered, no public address): skip it."""

    def __init__(self, method: str, reason: str) -> None:
        super().__init__(method, reason, retryable=False)


class CircuitOpen(MethodUnavailable):
    """The method's circuit breaker is open: it failed repeatedly and is cooling down."""

    def __init__(self, method: str, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(
            method,
            f"circuit breaker open after repeated failures; next try in {retry_after:.1f} s",
        )


class ChainExhausted(NatTravError):
    """Every method in the chain failed or was skipped.

    ``failures`` holds one record per attempt, each with the method, outcome and reason, so the
    message can say why each method did not produce an endpoint.
    """

    def __init__(self, failures: Sequence[AttemptRecord], *, goal: str = "reachable") -> None:
        self.failures: tuple[AttemptRecord, ...] = tuple(failures)
        self.goal = goal
        if not self.failures:
            message = "no traversal method is installed or enabled"
        else:
            lines = "\n".join(
                f"  - {f.method}: {f.outcome.value}: {f.reason}" for f in self.failures
            )
            message = f"no method produced a {goal} endpoint:\n{lines}"
        super().__init__(message)
