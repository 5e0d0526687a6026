"""UPnP Internet Gateway Device support for nattrav: port mappings and IPv6 pinholes.

The protocol cores (SSDP, device description, SOAP, URL safety, the lease ladder) are sans-IO
modules that take bytes and ``now`` and return values; ``driver`` is the thin anyio layer with
the sockets and HTTP; ``lease`` owns mappings and pinholes as async context managers; ``method``
plugs them into the nattrav chain.
"""

from __future__ import annotations

__all__: list[str] = []
