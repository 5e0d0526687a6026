"""Errors of peer-to-peer connect (all ``NatTravError``: the CLI prints them as one line)."""

from __future__ import annotations

from nattrav.errors import NatTravError

__all__ = ["ConnectFailed", "ConnectionLost", "SignalError"]


class ConnectFailed(NatTravError):
    """No candidate pair worked (or the peer never answered the offer)."""


class ConnectionLost(NatTravError):
    """The connection worked, then every path stopped answering for the connect timeout."""


class SignalError(NatTravError):
    """The signaling channel failed: closed, timed out, or carried something unusable."""
