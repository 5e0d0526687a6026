"""The chain's ``relay`` method: a TURN allocation, the last resort (priority 90, RELAYED).

``acquire(ctx)`` tries the configured servers in order (skipping one whose circuit breaker
is open or that RFC 8656 §7.3 told us not to use again), allocates, and yields the relayed
address as a ``RELAYED`` candidate with the relay endpoint as ``Acquisition.channel``: the
application sends and receives through it (``await channel.send_to(data, peer)``,
``await channel.receive()``), not through its own socket. While the context is open the
endpoint refreshes, re-creates a lost allocation and reports ``RENEWED``/``LOST``/
``CHANGED``/``RECOVERED`` through ``ctx.emit``; on exit the allocation is deleted.

Inbound semantics (why the candidate claims ``Inbound.YES``): a TURN relay forwards to us
only what comes from peers that have a *permission* (RFC 8656 §9), one per peer IP address.
That is the filtering of an address-restricted NAT whose "outbound" is under our control:
a peer becomes reachable-from once the application sends to it (the permission is created
on demand) or once it is listed in ``[plugins.relay] permit`` / ``--turn-permit`` / learned
out of band and passed to ``channel.permit(ip)``. Arbitrary unknown peers cannot reach a
relayed address; no TURN feature changes that. The candidate is ``proven`` when the
self-test worked: a permission for our own public address (XOR-MAPPED-ADDRESS), then a
datagram sent from a fresh local socket to the relayed address arrived back through the
relay, i.e. a packet from the internet side really reaches us through it. Otherwise it is
``claimed`` (the server granted the allocation). The self-test's permission is left to lapse.

``cleanup(entry, ctx)`` handles a crashed run's journal entry: an allocation over TCP/TLS
died with its connection (the server deletes it when the connection closes); one over UDP
is bound to the old 5-tuple, which a new process can only re-use by binding the same local
port and only if the NAT still maps it the same way (checked with a Binding request); then
it is deleted with LIFETIME 0. When that is impossible the entry is kept and the allocation
simply expires with its (finite, default 600 s) lifetime; ``nattrav cleanup`` says so.
"""

from __future__ import annotations

import logging
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager, nullcontext
from typing import Any

import anyio
import anyio.abc
import attrs
from nattrav.errors import MethodError, MethodUnavailable
from nattrav.journal import JournalEntry
from nattrav.method import Acquisition, AttemptContext
from nattrav.models import (
    Candidate,
    CandidateKind,
    LeaseEvent,
    LeaseEventKind,
    Reachability,
    Transport,
    TransportAddress,
)
from nattrav_stun.auth import LongTermCredentials, PasswordAlgorithm

from nattrav_relay.config import RelayConfig, ServerConfig, fallback_uri, parse_turn_uri
from nattrav_relay.credentials import CredentialProvider, CredentialSource
from nattrav_relay.driver import RelayEndpoint, RelayError, allocate, release_orphan
from nattrav_relay.transport import Opener

__all__ = ["NAME", "PRIORITY", "RelayMethod", "ServerBook"]

NAME = "relay"
PRIORITY = 90
log = logging.getLogger("nattrav.relay")

_ALGORITHMS = {"sha256": PasswordAlgorithm.SHA256, "md5": PasswordAlgorithm.MD5}


class ServerBook:
    """Servers RFC 8656 §7.3 says not to use again (T1), shared by every method object the
    plugin makes, so one run's verdict holds for the next (until the process restarts)."""

    def __init__(self) -> None:
        self._blocked: dict[str, str] = {}

    def block(self, uri: str, reason: str) -> None:
        self._blocked[uri] = reason

    def blocked(self, uri: str) -> str | None:
        return self._blocked.get(uri)


class RelayMethod:
    """TURN relay as a chain method (see the module docstring).

    ``providers`` are extra credential providers (a library's callable, the
    ``nattrav_relay_credentials`` hook); ``opener`` replaces how connections to the server
    are made (tests open them inside a lab namespace); ``probe_socket`` makes the self-test's
    socket (same reason).
    """

    def __init__(
        self,
        config: RelayConfig | None = None,
        book: ServerBook | None = None,
        *,
        providers: list[CredentialProvider] | None = None,
        opener: Opener | None = None,
        probe_socket: Callable[[int], socket.socket] | None = None,
    ) -> None:
        self.config = config or RelayConfig()
        self.book = book if book is not None else ServerBook()
        self.credentials = CredentialSource(self.config, list(providers or []))
        self.opener = opener
        self.probe_socket = probe_socket or _probe_socket
        self._hooked = False

    # ---------------------------------------------------------------- acquire

    def _use_hooks(self, ctx: AttemptContext) -> None:
        """Ask ``nattrav_relay_credentials`` implementations too (once per method object)."""
        if ctx.pluginmanager is not None and not self._hooked:
            from nattrav_relay.credentials import hook_provider

            self.credentials.providers.append(hook_provider(ctx.pluginmanager))
            self._hooked = True

    def families(self, ctx: AttemptContext) -> tuple[int, ...]:
        wanted = ctx.request.families
        mode = self.config.families
        if mode == "ipv4":
            return (4,)
        if mode == "ipv6":
            return (6,)
        if mode == "dual":
            return (4, 6) if {4, 6} <= wanted else ((4,) if 4 in wanted else (6,))
        return (4,) if 4 in wanted else (6,)

    @asynccontextmanager
    async def acquire(self, ctx: AttemptContext) -> AsyncIterator[Acquisition]:
        self._use_hooks(ctx)
        if ctx.request.transport is not Transport.UDP:
            raise MethodUnavailable(
                NAME, "TURN relays UDP (RFC 8656); TCP relaying (RFC 6062) is not supported"
            )
        if not self.config.servers:
            raise MethodUnavailable(
                NAME, "no TURN server configured ([plugins.relay] servers, or --turn URI)"
            )
        families = self.families(ctx)
        lifetime = int(min(self.config.lifetime or 600, ctx.request.lifetime))
        failures: list[str] = []
        retryable = False
        skip: set[str] = set()
        udp_silent = False  # a UDP attempt got no answer: UDP is probably blocked here
        async with AsyncExitStack() as stack:
            endpoint: RelayEndpoint | None = None
            server: ServerConfig | None = None
            for server in self.attempts():
                if server.uri in skip:
                    continue
                reason = self.book.blocked(server.uri)
                if reason is not None:
                    failures.append(f"{server.uri}: not used again ({reason})")
                    continue
                breaker = ctx.breakers.get(f"relay:{server.uri}") if ctx.breakers else None
                if breaker is not None and not breaker.allow():
                    failures.append(f"{server.uri}: circuit breaker open")
                    continue
                timeout = self.config.timeout
                if self.config.transport_fallback and fallback_uri(server.uri):
                    timeout = min(timeout, self.config.fallback_after)
                try:
                    with _span(ctx, server) as span:
                        held: RelayEndpoint = await stack.enter_async_context(
                            await self._allocate(ctx, server, families, lifetime, timeout)
                        )
                        endpoint = held
                        if span is not None:
                            # Allocate (with its 401 round) and the configured permissions
                            span.set_attribute(
                                "nattrav.retransmissions", held.stats.retransmissions
                            )
                            span.set_attribute("nattrav.transport", held.transport)
                except RelayError as exc:
                    if breaker is not None:
                        breaker.failure()
                    event = exc.event
                    if event is not None and getattr(event, "blocked", False):
                        self.book.block(server.uri, str(exc))
                    failures.append(str(exc))
                    retryable = retryable or exc.retryable
                    if exc.retryable and _transport_of(server.uri) == "udp":
                        udp_silent = True
                    if not exc.retryable:
                        # The server answered and said no: another transport will not help.
                        skip.add(fallback_uri(server.uri) or "")
                    continue
                if breaker is not None:
                    breaker.success()
                break
            if endpoint is None or server is None:
                raise MethodError(
                    NAME, "; ".join(failures) or "no usable server", retryable=retryable
                )
            permitted = endpoint.permitted  # before the self-test's own permission
            reachability = await self._reachability(
                endpoint, udp_blocked=udp_silent and endpoint.transport != "udp"
            )
            candidates = [
                self._candidate(ctx, endpoint, server, address, reachability, permitted)
                for address in endpoint.relayed_addresses
            ]
            yield Acquisition(candidates[0], channel=endpoint, also=tuple(candidates[1:]))

    def attempts(self) -> list[ServerConfig]:
        """The servers in order; a ``turn:`` URI that names no transport is tried over UDP
        and then, if UDP got no answer within ``fallback_after`` (UDP blocked, "408 -> try
        another transport" in hostile-inputs' faults), over TCP on the same port
        (``transport_fallback``)."""
        out: list[ServerConfig] = []
        for server in self.config.servers:
            out.append(server)
            fallback = fallback_uri(server.uri) if self.config.transport_fallback else None
            if fallback is not None:
                out.append(attrs.evolve(server, uri=fallback))
        return out

    async def _allocate(
        self,
        ctx: AttemptContext,
        server: ServerConfig,
        families: tuple[int, ...],
        lifetime: int,
        timeout: float | None = None,
    ) -> Any:
        creds = await self.credentials.get(server)
        if creds is None:
            raise RelayError(f"{server.uri}: no credentials (config, provider or hook)")
        try:
            address = parse_turn_uri(server.uri)
        except ValueError as exc:
            raise RelayError(str(exc)) from None
        try:
            credentials = LongTermCredentials(
                creds.username,
                creds.password,
                realm=creds.realm,
                algorithms=tuple(_ALGORITHMS[a] for a in self.config.algorithms),
            )
        except ValueError as exc:
            raise RelayError(f"{server.uri}: bad credentials: {exc}") from None

        def forward(event: LeaseEvent) -> None:
            # The chain itself reports ACQUIRED and RELEASED for the endpoint it holds.
            if event.kind not in (LeaseEventKind.ACQUIRED, LeaseEventKind.RELEASED):
                ctx.emit(event)

        return allocate(
            address,
            credentials=credentials,
            settings=self.config.client_settings(families, lifetime),
            permit=self.config.permit,
            ca_file=server.ca_file or self.config.ca_file,
            server_name=server.server_name or self.config.server_name,
            opener=self.opener,
            on_event=forward,
            allocate_timeout=self.config.timeout if timeout is None else timeout,
            release_timeout=self.config.release_timeout,
            journal=ctx.journal,
            method=ctx.method,
            max_redirects=self.config.max_redirects,
        )

    async def _reachability(
        self, endpoint: RelayEndpoint, *, udp_blocked: bool = False
    ) -> Reachability:
        permitted = endpoint.permitted
        base = (
            "TURN relay: reachable by peers with a permission (the application sends to them, "
            "or permits them)"
        )
        if self.config.self_test and udp_blocked:
            # The self-test's datagram goes to the relayed address over UDP, which got no
            # answer from here: it could only wait out its window for nothing.
            base += "; self-test skipped: UDP from this host to the relay got no answer"
        elif self.config.self_test:
            try:
                how = await self.self_test(endpoint)
            except (OSError, ValueError, RelayError) as exc:  # a failed proof is no failure
                log.info("relay self-test failed: %s", exc)
                how = None
            if how is not None:
                return Reachability.proven(f"{base}; {how}")
        if permitted:
            base += f"; permitted now: {', '.join(permitted)}"
        return Reachability.claimed(base)

    async def self_test(self, endpoint: RelayEndpoint) -> str | None:
        """Prove inbound: permit our own public IP, send a nonce to the relayed address from a
        fresh local socket, and see it come back through the relay. ``None`` if it did not."""
        mapped = endpoint.mapped
        if mapped is None:
            return None
        relayed = endpoint.relayed_for(mapped.family)
        if relayed is None:
            return None
        client = endpoint._client
        assert client is not None
        already = client.has_permission(mapped.host) or mapped.host in endpoint._permit
        try:
            await endpoint.permit(mapped.host, timeout=self.config.self_test_window)
        except RelayError as exc:
            log.info("relay self-test: no permission for our own address: %s", exc)
            return None
        nonce = b"nattrav-relay-self-test " + secrets.token_hex(8).encode()
        held: list[tuple[bytes, TransportAddress]] = []
        found: TransportAddress | None = None
        try:
            sock = self.probe_socket(relayed.family)
        except OSError as exc:
            log.info("relay self-test: no socket: %s", exc)
            return None
        try:
            with anyio.move_on_after(self.config.self_test_window):
                udp = await anyio.abc.UDPSocket.from_socket(sock)
                async with udp:
                    await udp.sendto(nonce, relayed.host, relayed.port)
                    while found is None:
                        data, peer = await endpoint.receive()
                        if data == nonce:
                            found = peer
                        else:
                            held.append((data, peer))
        finally:
            sock.close()
            for item in reversed(held):  # what permitted peers sent meanwhile stays queued
                endpoint._inbox.appendleft(item)
            if not already:
                client.forget_permission(mapped.host)
        if found is None:
            return None
        return f"self-test: a datagram from {found} to {relayed} arrived through the relay"

    def _candidate(
        self,
        ctx: AttemptContext,
        endpoint: RelayEndpoint,
        server: ServerConfig,
        address: TransportAddress,
        reachability: Reachability,
        permitted: list[str],
    ) -> Candidate:
        return Candidate(
            kind=CandidateKind.RELAYED,
            address=address,
            method=ctx.method,
            base=endpoint.local,
            reachability=reachability,
            lifetime=float(endpoint.lifetime),
            details={
                "server": server.uri,
                # the server holding the allocation: the alternate after a 300 redirect
                "server_address": str(endpoint.server_address),
                "redirected_from": [str(a) for a in endpoint.redirected_from],
                "transport": endpoint.transport,
                "mapped": None if endpoint.mapped is None else str(endpoint.mapped),
                "relayed": [str(a) for a in endpoint.relayed_addresses],
                "inbound": "peers with a permission only (RFC 8656 §9)",
                "permitted": permitted,
                "channels": self.config.channels,
                "lifetime": endpoint.lifetime,
            },
        )

    # ---------------------------------------------------------------- cleanup

    async def cleanup(self, entry: JournalEntry, ctx: AttemptContext) -> None:
        """Release a crashed run's allocation (see the module docstring for what is possible).

        Returns normally when it is gone (expired, died with its TCP/TLS connection, or
        deleted now); raises ``MethodError`` (the entry is kept) when it cannot be reached.
        """
        self._use_hooks(ctx)
        data = entry.data
        if entry.expired():
            return
        transport = str(data.get("transport", "udp"))
        if transport != "udp":
            return  # the server deleted it when the dead process's connection closed
        local, server_address = data.get("local"), data.get("server_address")
        if not local or not server_address:
            return  # recorded before the connection existed: nothing was sent
        expires = (
            ""
            if entry.expires is None
            else f"; it expires at {time.strftime('%H:%M:%S', time.localtime(entry.expires))}"
        )
        server = next(
            (s for s in self.config.servers if s.uri == data.get("server")),
            ServerConfig(str(data.get("server")), username=data.get("username")),
        )
        creds = await self.credentials.get(server)
        if creds is None:
            raise MethodError(NAME, f"no credentials for {server.uri} to delete it{expires}")
        mapped = data.get("mapped")
        try:
            await release_orphan(
                TransportAddress.parse(str(server_address)),
                TransportAddress.parse(str(local)),
                LongTermCredentials(creds.username, creds.password, realm=creds.realm),
                mapped=None if not mapped else TransportAddress.parse(str(mapped)),
            )
        except (RelayError, ValueError) as exc:
            raise MethodError(NAME, f"{exc}{expires}") from exc


def _transport_of(uri: str) -> str | None:
    try:
        return str(parse_turn_uri(uri).transport)
    except ValueError:
        return None


def _span(ctx: AttemptContext, server: ServerConfig) -> Any:
    """A telemetry span around one server's allocation (a no-op without telemetry)."""
    if ctx.telemetry is None:
        return nullcontext()
    return ctx.telemetry.span("nattrav.relay.allocate", method=ctx.method, server=server.uri)


def _probe_socket(family: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if family == 6 else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind(("::" if family == 6 else "0.0.0.0", 0))
    except OSError:
        sock.close()
        raise
    return sock
