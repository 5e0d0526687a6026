"""nattrav-stun: an RFC 8489 STUN client, RFC 5780 NAT behaviour discovery and the ``stun``
server-reflexive method for nattrav.

Importing the package is cheap on purpose (the plugin entry point loads it at every CLI
start); the modules are imported where used:

* ``nattrav_stun.codec``: messages, attributes, encode/decode, integrity keys;
* ``nattrav_stun.auth``: credentials, key derivation, the nonce cookie, response checks;
* ``nattrav_stun.transaction``: the sans-IO transaction and request state machines;
* ``nattrav_stun.driver``: ``StunClient`` (UDP, TCP, TLS; anyio) and the asyncio fast path;
* ``nattrav_stun.discovery``: RFC 5780 mapping/filtering tests and ``discover_nat_behaviour``;
* ``nattrav_stun.method``, ``nattrav_stun.verifier``, ``nattrav_stun.cli``: the nattrav side.
"""

__version__ = "0.1.0"
