"""The lab's errors: a ``NatTravError`` so the CLI prints one clean line."""

from __future__ import annotations

from nattrav.errors import NatTravError

__all__ = ["LabError", "LabStepError"]


class LabError(NatTravError):
    """The lab could not do what was asked; ``step`` names the step of ``up`` that failed."""

    def __init__(self, message: str, *, step: str | None = None) -> None:
        self.step = step
        super().__init__(message)


class LabStepError(LabError):
    """One command or readiness check inside the lab failed (``up`` wraps it with the step)."""
