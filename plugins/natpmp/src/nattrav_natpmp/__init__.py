"""nattrav-natpmp: NAT-PMP (RFC 6886) and PCP (RFC 6887) port mapping for nattrav.

Sans-IO codecs (``natpmp_codec``, ``pcp_codec``), state machines (``transaction``, ``epoch``,
``lease``, ``announce``) under one anyio driver (``driver``); the ``natpmp`` method (``method``),
its configuration (``config``), CLI (``cli``) and probe section (``report``). Importing this
package is cheap; import the modules you use.
"""

__version__ = "0.1.0"
