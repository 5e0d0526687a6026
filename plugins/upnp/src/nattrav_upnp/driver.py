"""The thin I/O layer: SSDP sockets on every suitable interface, and HTTP with hard bounds.

Everything protocol-shaped lives in the sans-IO modules; this module only moves bytes and
reads the clock.

SSDP (``plan_search``, ``open_search_sockets``, ``run_search``)
    One UDP socket per usable interface address, bound to that address so the M-SEARCH leaves
    through that interface (a single socket picks one arbitrary interface: huin/goupnp#33,
    StevenLooman/async_upnp_client#29). IPv4 sockets search 239.255.255.250:1900 and unicast to
    the default gateway; IPv6 sockets (global or ULA source, so that the answer's LOCATION can
    be a fetchable, non-link-local address) search FF02::C and FF05::C. A send that fails
    (``EADDRNOTAVAIL``, ``ENETUNREACH``: home-assistant/core#81459) is recorded, not raised.
    Received datagrams go through a bounded queue: a flood is dropped, never buffered.

HTTP (``HttpTransport``)
    httpx with redirects off (a 3xx is an error: hostile-inputs.md X5), no proxies or netrc
    from the environment (a LAN request must never go to a proxy), no content decoding (no
    decompression bombs), no keep-alive (routers close connections at will), a body cap checked
    on ``Content-Length`` and while streaming, and one deadline for the whole request
    (connect + headers + body, H3). Every failure becomes an ``UpnpHttpError``.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from typing import Any

import anyio
import anyio.abc
import attrs
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from nattrav.addresses import AddressScope
from nattrav.interfaces import InterfaceAddress
from nattrav.taskgroups import single_errors

from nattrav_upnp import ssdp
from nattrav_upnp.errors import BodyTooLargeError, UpnpHttpError, UpnpTimeoutError
from nattrav_upnp.search import Responder, SearchTarget, SsdpSearch
from nattrav_upnp.urls import HttpUrl

__all__ = [
    "HttpTransport",
    "SearchPlan",
    "SocketSpec",
    "local_address_for",
    "open_search_sockets",
    "plan_search",
    "run_search",
]

USER_AGENT = "nattrav-upnp/0.1 UPnP/1.1"
_USABLE_SCOPES = frozenset({AddressScope.PRIVATE, AddressScope.SHARED, AddressScope.PUBLIC})
_QUEUE = 256


@attrs.frozen
class SocketSpec:
    """One search socket: bound to ``address`` on ``interface`` (``index`` for IPv6)."""

    key: str
    interface: str
    address: str
    family: int
    index: int = 0


@attrs.frozen
class SearchPlan:
    """The sockets to open and the targets to search from them."""

    sockets: tuple[SocketSpec, ...]
    targets: tuple[SearchTarget, ...]

    @property
    def interfaces(self) -> list[str]:
        return sorted({s.interface for s in self.sockets})


def plan_search(
    addresses: Iterable[InterfaceAddress],
    gateways: Iterable[tuple[str, str | None]],
    *,
    interfaces: Sequence[str] = (),
    ipv4: bool = True,
    ipv6: bool = True,
    index_of: Any = None,
) -> SearchPlan:
    """Decide which sockets to open and where to search (pure; the OS facts are arguments).

    ``addresses`` are the host's interface addresses; ``gateways`` ``(ip, interface)`` pairs of
    default gateways; ``interfaces`` restricts the search to these names (empty: all);
    ``index_of`` maps an interface name to its index (``socket.if_nametoindex``).
    """
    index_of = index_of or _if_index
    gw_list = [(ip, iface) for ip, iface in gateways]
    sockets: list[SocketSpec] = []
    targets: list[SearchTarget] = []
    for addr in addresses:
        if interfaces and addr.interface not in interfaces:
            continue
        if addr.scope not in _USABLE_SCOPES:
            continue
        key = f"{addr.interface}/{addr.ip}"
        if addr.family == 4:
            if not ipv4:
                continue
            sockets.append(SocketSpec(key, addr.interface, addr.ip, 4))
            targets.append(SearchTarget(key, ssdp.IPV4_GROUP))
            network = ipaddress.ip_network(f"{addr.ip}/{addr.prefix}", strict=False)
            for ip, iface in gw_list:
                if ":" in ip:
                    continue
                on_link = ipaddress.ip_address(ip) in network
                if iface == addr.interface or (iface is None and on_link):
                    targets.append(SearchTarget(key, ip, multicast=False))
        elif ipv6:
            index = index_of(addr.interface)
            if not index:
                continue
            sockets.append(SocketSpec(key, addr.interface, addr.ip, 6, index))
            targets.append(SearchTarget(key, ssdp.IPV6_LINK_GROUP))
            targets.append(SearchTarget(key, ssdp.IPV6_SITE_GROUP))
            for ip, iface in gw_list:
                if (
                    ":" in ip
                    and iface == addr.interface
                    and not ipaddress.ip_address(ip).is_link_local
                ):
                    targets.append(SearchTarget(key, ip, multicast=False))
    # One unicast target per gateway: the first socket that can reach it.
    seen: set[str] = set()
    unique: list[SearchTarget] = []
    for t in targets:
        if not t.multicast:
            if t.host in seen:
                continue
            seen.add(t.host)
        unique.append(t)
    return SearchPlan(tuple(sockets), tuple(unique))


def _if_index(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return 0


# Linux <linux/in.h>, <linux/in6.h>, <linux/errqueue.h>: ICMP errors of an unconnected socket
# are reported (and readable with MSG_ERRQUEUE) only with IP_RECVERR / IPV6_RECVERR set.
_IP_RECVERR = 11
_IPV6_RECVERR = 25
_EE = struct.Struct("=IBBBBII")  # struct sock_extended_err
_UNREACHABLE = {(2, 3), (3, 1)}  # (ee_origin, ee_type): ICMP / ICMPv6 destination unreachable
#: Marks a queue item that is an ICMP refusal of ``host``, not a datagram from it.
_REFUSED = "!"


def _recv_errors(sock: socket.socket, family: int) -> None:
    """Ask the kernel to report ICMP errors (Linux); elsewhere nothing changes."""
    if not sys.platform.startswith("linux"):
        return
    with suppress(OSError):
        if family == 4:
            sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)


def refused_destinations(sock: socket.socket) -> list[str]:
    """Drain the error queue: the destinations an ICMP Destination Unreachable came back for."""
    found: list[str] = []
    for _ in range(16):
        try:
            _data, ancdata, _flags, addr = sock.recvmsg(512, 512, socket.MSG_ERRQUEUE)
        except (BlockingIOError, InterruptedError, OSError, AttributeError):
            break
        for _level, _type, blob in ancdata:
            if len(blob) < _EE.size:
                continue
            _errno, origin, icmp_type, *_rest = _EE.unpack_from(blob)
            if (origin, icmp_type) in _UNREACHABLE and isinstance(addr, tuple) and addr:
                found.append(str(addr[0]).split("%", 1)[0])
    return found


def _open_socket(spec: SocketSpec) -> socket.socket:
    if spec.family == 4:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((spec.address, 0))
            sock.setsockopt(
                socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(spec.address)
            )
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 2)
            _recv_errors(sock, 4)
        except BaseException:
            sock.close()
            raise
        return sock
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((spec.address, 0, 0, 0))
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, spec.index)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 2)
        _recv_errors(sock, 6)
    except BaseException:
        sock.close()
        raise
    return sock


@asynccontextmanager
async def open_search_sockets(
    specs: Sequence[SocketSpec], errors: Counter[str] | None = None
) -> AsyncIterator[dict[str, tuple[SocketSpec, anyio.abc.UDPSocket, socket.socket]]]:
    """Open (and on exit close) one UDP socket per spec; specs that fail to bind are skipped
    and counted in ``errors`` (an address may vanish between enumeration and bind)."""
    async with AsyncExitStack() as stack:
        opened: dict[str, tuple[SocketSpec, anyio.abc.UDPSocket, socket.socket]] = {}
        for spec in specs:
            try:
                raw = _open_socket(spec)
            except OSError as exc:
                if errors is not None:
                    errors[f"{spec.key}: bind: {exc.strerror or exc}"] += 1
                continue
            udp = await anyio.abc.UDPSocket.from_socket(raw)
            await stack.enter_async_context(udp)
            opened[spec.key] = (spec, udp, raw)
        yield opened


async def _receive_into(
    key: str,
    udp: anyio.abc.UDPSocket,
    out: MemoryObjectSendStream[tuple[bytes, str, str]],
    raw: socket.socket | None = None,
) -> None:
    failures = 0
    async with out:
        while True:
            try:
                data, (host, _port) = await udp.receive()
            except anyio.ClosedResourceError:
                return
            except (OSError, anyio.BrokenResourceError):
                # An ICMP error reported on the socket: tell the search who refused (the
                # unicast M-SEARCH to a gateway without SSDP), keep listening (a few times).
                for dest in refused_destinations(raw) if raw is not None else ():
                    with suppress(anyio.WouldBlock, anyio.BrokenResourceError):
                        out.send_nowait((b"", _REFUSED + dest, key))
                failures += 1
                if failures > 16:
                    return
                continue
            try:
                out.send_nowait((data, str(host), key))
            except anyio.WouldBlock:
                pass  # a flood: drop, as UDP would
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return


async def run_search(
    search: SsdpSearch,
    sockets: Mapping[str, tuple[SocketSpec, anyio.abc.UDPSocket, socket.socket]],
    errors: Counter[str] | None = None,
    on_responder: Callable[[Responder], object] | None = None,
) -> SsdpSearch:
    """Drive ``search`` over ``sockets`` until it is done; returns it (responders inside).

    ``on_responder`` is called for each new device as soon as it answers, so the caller can
    fetch its description while the search is still collecting.
    """
    send, recv = anyio.create_memory_object_stream[tuple[bytes, str, str]](_QUEUE)
    search.start(anyio.current_time())
    with single_errors():
        await _drive(search, sockets, errors, send, recv, on_responder)
    return search


async def _drive(
    search: SsdpSearch,
    sockets: Mapping[str, tuple[SocketSpec, anyio.abc.UDPSocket, socket.socket]],
    errors: Counter[str] | None,
    send: MemoryObjectSendStream[tuple[bytes, str, str]],
    recv: MemoryObjectReceiveStream[tuple[bytes, str, str]],
    on_responder: Callable[[Responder], object] | None,
) -> None:
    async with recv, anyio.create_task_group() as tg:
        for key, (_spec, udp, raw) in sockets.items():
            tg.start_soon(_receive_into, key, udp, send.clone(), raw)
        send.close()
        while True:
            for out in search.datagrams_to_send():
                await _send(out.key, out.host, out.port, out.data, sockets, errors)
            # ICMP refusals of the unicast M-SEARCHes (a gateway without SSDP) wait in the
            # sockets' error queues; a send may also have failed because of one.
            for _spec, _udp, raw in sockets.values():
                for dest in refused_destinations(raw):
                    search.gateway_refused(dest, anyio.current_time())
            timer = search.get_timer()
            if timer is None:
                break
            now = anyio.current_time()
            if now >= timer:
                search.handle_timer(now)
                continue
            with anyio.move_on_after(timer - now):
                try:
                    data, host, key = await recv.receive()
                except anyio.EndOfStream:
                    await anyio.sleep(max(0.0, timer - anyio.current_time()))
                    continue
                if host.startswith(_REFUSED):
                    search.gateway_refused(host[len(_REFUSED) :], anyio.current_time())
                    continue
                before = search.found
                search.receive_datagram(data, host, key, anyio.current_time())
                if on_responder is not None and search.found > before:
                    on_responder(search.latest)
        tg.cancel_scope.cancel()


async def _send(
    key: str,
    host: str,
    port: int,
    data: bytes,
    sockets: Mapping[str, tuple[SocketSpec, anyio.abc.UDPSocket, socket.socket]],
    errors: Counter[str] | None,
) -> None:
    entry = sockets.get(key)
    if entry is None:
        return
    spec, _udp, raw = entry
    # Send on the raw socket: errors (EADDRNOTAVAIL, ENETUNREACH, EINVAL) then surface here
    # synchronously on every backend, instead of being parked in the receiver.
    try:
        if spec.family == 6:
            link = host == ssdp.IPV6_LINK_GROUP or ipaddress.ip_address(host).is_link_local
            raw.sendto(data, (host, port, 0, spec.index if link else 0))
        else:
            raw.sendto(data, (host, port))
    except OSError as exc:
        if errors is not None:
            errors[f"{key} -> {host}: {exc.strerror or exc}"] += 1


def local_address_for(host: str) -> str:
    """The source address the kernel would use to reach ``host`` (no packet is sent).

    That is the UPnP ``InternalClient``: miniupnpd's secure mode, and IGD:2 generally, only
    accept a mapping to the address the SOAP request came from.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((host, 1900))
        return str(ipaddress.ip_address(sock.getsockname()[0].split("%", 1)[0]))


class HttpTransport:
    """GET descriptions and POST SOAP actions with one deadline and a body cap per request.

    Use as an async context manager (it owns the httpx client and its connections).
    """

    def __init__(self, *, timeout: float = 2.0, max_body: int = 256 * 1024) -> None:
        self.timeout = timeout
        self.max_body = max_body
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> HttpTransport:
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            # We only ever speak plain http (urls.py refuses https), so skip loading CA
            # certificates: it costs tens of milliseconds per client.
            verify=False,
            timeout=httpx.Timeout(self.timeout),
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={
                "User-Agent": USER_AGENT,
                "Accept-Encoding": "identity",
                "Connection": "close",
            },
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._client is not None:
            with anyio.CancelScope(shield=True):
                await self._client.aclose()
            self._client = None

    async def get(self, url: HttpUrl) -> bytes:
        """The body of a 200 answer to GET ``url``; anything else is an ``UpnpHttpError``."""
        status, body = await self.request("GET", url)
        if status != 200:
            raise UpnpHttpError(f"GET {url}: HTTP {status}", status=status)
        return body

    async def post(
        self, url: HttpUrl, headers: Sequence[tuple[str, str]], body: bytes
    ) -> tuple[int, bytes]:
        """POST ``body``; returns the status and body (a SOAP fault comes with status 500)."""
        return await self.request("POST", url, headers, body)

    async def request(
        self,
        method: str,
        url: HttpUrl,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
    ) -> tuple[int, bytes]:
        if self._client is None:
            raise RuntimeError("HttpTransport used outside 'async with'")
        what = f"{method} {url}"
        try:
            with anyio.fail_after(self.timeout):
                request = self._client.build_request(
                    method, str(url), headers=list(headers), content=body
                )
                request.stream = _Body(body or b"")
                async with _streamed(self._client, request) as response:
                    status = response.status_code
                    if 300 <= status < 400:
                        raise UpnpHttpError(
                            f"{what}: HTTP {status} redirect not followed", status=status
                        )
                    length = response.headers.get("content-length", "")
                    if length.isascii() and length.isdigit() and int(length) > self.max_body:
                        raise BodyTooLargeError(
                            f"{what}: Content-Length {length} exceeds the {self.max_body}-byte cap",
                            status=status,
                        )
                    data = bytearray()
                    too_large = False
                    # On overflow, cancel the read instead of leaving the loop: the next read
                    # then unwinds httpcore's async generators, so none is left unexhausted.
                    with anyio.CancelScope() as reading:
                        async for chunk in response.aiter_raw():
                            if not too_large:
                                data += chunk
                            if len(data) > self.max_body and not too_large:
                                too_large = True
                                reading.cancel()
                    if too_large:
                        raise BodyTooLargeError(
                            f"{what}: body exceeds the {self.max_body}-byte cap", status=status
                        )
                    return status, bytes(data)
        except TimeoutError:
            raise UpnpTimeoutError(
                f"{what}: no complete answer within {self.timeout:.1f} s"
            ) from None
        except httpx.TimeoutException:
            raise UpnpTimeoutError(
                f"{what}: no complete answer within {self.timeout:.1f} s"
            ) from None
        except httpx.HTTPError as exc:
            raise UpnpHttpError(f"{what}: {type(exc).__name__}: {exc}") from None
        except OSError as exc:
            raise UpnpHttpError(f"{what}: {exc.strerror or exc}") from None


class _Body(httpx.AsyncByteStream):
    """A request body as one chunk, iterated without an async generator.

    httpx's own body stream is an async generator suspended at its ``yield`` while the bytes
    are written; a request cancelled right then (the chain cancelling a losing attempt) leaves
    it suspended, and trio warns when it is garbage collected. A plain iterator has no frame
    to leave behind.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _Once(self._data)


class _Once:
    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    def __aiter__(self) -> _Once:
        return self

    async def __anext__(self) -> bytes:
        data, self._data = self._data, None
        if data is None:
            raise StopAsyncIteration
        return data


@asynccontextmanager
async def _streamed(client: httpx.AsyncClient, request: httpx.Request) -> AsyncIterator[Any]:
    response = await client.send(request, stream=True)
    try:
        yield response
    finally:
        with anyio.CancelScope(shield=True):
            await response.aclose()
