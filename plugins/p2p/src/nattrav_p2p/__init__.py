"""nattrav-p2p: peer-to-peer connect for nattrav.

Importing the package is cheap on purpose (the plugin entry point loads it at every CLI start):

* ``nattrav_p2p.candidates``: ICE candidates, priorities and foundations (RFC 8445 §5.1);
* ``nattrav_p2p.description``: the offer/answer codec exchanged through a signal;
* ``nattrav_p2p.agent``: the sans-IO connectivity-check agent (checks, nomination, consent);
* ``nattrav_p2p.driver``: the ``ice`` connector and the ``Connection`` it yields (anyio);
* ``nattrav_p2p.signals``: in-memory and copy-and-paste signals;
* ``nattrav_p2p.rendezvous``: the rendezvous server and client (websocket rooms, wsproto);
* ``nattrav_p2p.benchmark``: time to a working connection between two lab sites.
"""

__version__ = "0.1.0"
