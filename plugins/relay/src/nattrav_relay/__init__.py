"""nattrav-relay: a TURN client (RFC 8656) for nattrav."""
