"""Server epoch tracking: has the gateway lost its mapping state (rebooted) since we last heard?

Theory of operation
-------------------
Every NAT-PMP and PCP response carries the server's *epoch*: seconds since its mapping table
was (re)initialised. A client compares it with its own clock to notice a reboot, because a
rebooted gateway has forgotten every mapping and nothing else tells the client so.

Two rules, one per RFC, both on a monotonic clock (``now`` is an argument: the driver passes
``anyio.current_time()``, tests a fake clock), so a wall-clock step never looks like a reboot:

* NAT-PMP (RFC 6886 §3.6): the client's conservative estimate of the new epoch is the previous
  epoch plus 7/8 of the client time elapsed since it was received. An epoch more than 2 s below
  that estimate means the gateway lost state.
* PCP (RFC 6887 §8.5): the epoch is invalid when it went *backwards* by more than 1 s;
  otherwise, with ``client_delta`` and ``server_delta`` the two elapsed times, it is invalid
  when ``client_delta + 2 < server_delta - server_delta/16`` or
  ``server_delta + 2 < client_delta - client_delta/16`` (integer arithmetic, as the RFC says).

The first epoch seen from a server is valid by definition. The previous values are updated
after every observation, valid or not, so one reboot is reported once.
"""

from __future__ import annotations

import enum
from typing import Literal

import attrs

__all__ = ["EpochObservation", "EpochTracker", "EpochVerdict"]


class EpochVerdict(enum.Enum):
    FIRST = "first"  # nothing to compare with
    VALID = "valid"
    WENT_BACKWARDS = "went-backwards"  # PCP: more than 1 s below the previous epoch
    DRIFTED = "drifted"  # PCP: client and server elapsed times disagree too much
    BELOW_ESTIMATE = "below-estimate"  # NAT-PMP: below prev + 7/8 elapsed - 2 s

    @property
    def lost_state(self) -> bool:
        """True when the gateway must be assumed to have lost every mapping."""
        return self in (
            EpochVerdict.WENT_BACKWARDS,
            EpochVerdict.DRIFTED,
            EpochVerdict.BELOW_ESTIMATE,
        )


@attrs.frozen
class EpochObservation:
    """The verdict on one epoch value, with the numbers that led to it (for logs and reports)."""

    verdict: EpochVerdict
    epoch: int
    previous: int | None = None
    client_delta: float | None = None

    @property
    def lost_state(self) -> bool:
        return self.verdict.lost_state

    def describe(self) -> str:
        if self.previous is None:
            return f"epoch {self.epoch} (first)"
        return (
            f"epoch {self.epoch} after {self.previous} "
            f"({self.client_delta:.1f} s later by our clock): {self.verdict.value}"
        )


def _trunc_div(value: int, divisor: int) -> int:
    # C integer division truncates toward zero; Python's // floors.
    return int(value / divisor)


@attrs.define
class EpochTracker:
    """Epoch state for one server and one protocol (``"natpmp"`` or ``"pcp"``)."""

    rule: Literal["natpmp", "pcp"]
    previous_epoch: int | None = None
    previous_time: float | None = None

    def observe(self, epoch: int, now: float) -> EpochObservation:
        """Judge ``epoch`` received at monotonic time ``now``, then remember it."""
        prev_epoch, prev_time = self.previous_epoch, self.previous_time
        self.previous_epoch, self.previous_time = epoch, now
        if prev_epoch is None or prev_time is None:
            return EpochObservation(EpochVerdict.FIRST, epoch)
        elapsed = max(0.0, now - prev_time)
        if self.rule == "natpmp":
            estimate = prev_epoch + elapsed * 7 / 8
            verdict = EpochVerdict.BELOW_ESTIMATE if epoch < estimate - 2 else EpochVerdict.VALID
            return EpochObservation(verdict, epoch, prev_epoch, elapsed)
        if epoch < prev_epoch - 1:
            return EpochObservation(EpochVerdict.WENT_BACKWARDS, epoch, prev_epoch, elapsed)
        client_delta = int(elapsed)
        server_delta = epoch - prev_epoch
        if client_delta + 2 < server_delta - _trunc_div(server_delta, 16) or (
            server_delta + 2 < client_delta - _trunc_div(client_delta, 16)
        ):
            return EpochObservation(EpochVerdict.DRIFTED, epoch, prev_epoch, elapsed)
        return EpochObservation(EpochVerdict.VALID, epoch, prev_epoch, elapsed)

    def forget(self) -> None:
        """Start over (a different server, or the protocol changed)."""
        self.previous_epoch = self.previous_time = None
