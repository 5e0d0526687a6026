"""The I/O layer: HTTP bounds (hostile-inputs.md H1-H3, X5) and the SSDP search loop (U3, U4).

The HTTP tests use a scripted server on loopback because miniupnpd never sends malformed
HTTP, absurd chunk sizes, redirects or slow drips; real routers and attackers on the LAN do.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from nattrav.addresses import AddressScope
from nattrav.interfaces import InterfaceAddress
from nattrav_upnp.driver import (
    HttpTransport,
    SearchPlan,
    SocketSpec,
    open_search_sockets,
    plan_search,
    run_search,
)
from nattrav_upnp.errors import BodyTooLargeError, UpnpHttpError, UpnpTimeoutError
from nattrav_upnp.search import SsdpSearch
from nattrav_upnp.testing import ScriptedHttp, SsdpResponder, http_response, igd_answer
from nattrav_upnp.urls import HttpUrl, UrlPolicy

pytestmark = pytest.mark.anyio


def _url(port: int, path: str = "/x") -> HttpUrl:
    return HttpUrl("127.0.0.1", port, path)


async def _fetch(handler: Any, *, timeout: float = 1.0, max_body: int = 4096) -> tuple[int, bytes]:
    server = ScriptedHttp(handler)
    async with server.running(), HttpTransport(timeout=timeout, max_body=max_body) as transport:
        return await transport.request("GET", _url(server.port))


async def test_plain_answer() -> None:
    async def handler(*_: Any) -> bytes:
        return http_response(200, b"<root/>")

    assert await _fetch(handler) == (200, b"<root/>")


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\nabc",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    ],
    ids=["huge-chunk", "negative-chunk", "garbage-chunk"],
)
async def test_absurd_chunk_sizes_end_in_typed_errors(raw: bytes) -> None:
    """H1: chunked encoding with absurd/negative chunk size -> typed error, hard body cap."""

    async def handler(*_: Any) -> bytes:
        return raw

    with pytest.raises(UpnpHttpError):
        await _fetch(handler)


async def test_huge_chunked_body_hits_the_cap() -> None:
    async def handler(*_: Any) -> bytes:
        return (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2000\r\n"
            + b"a" * 0x2000
            + b"\r\n"
        )

    with pytest.raises(BodyTooLargeError):
        await _fetch(handler, max_body=4096)


async def test_body_longer_than_content_length_is_cut_at_content_length() -> None:
    """H2 ("addcrap"): extra bytes after Content-Length are not part of the body."""

    async def handler(*_: Any) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n<root/>GARBAGEGARBAGE"

    assert await _fetch(handler) == (200, b"<root/>")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\r\n\r\n",
        b"HTTP/1.1 OK\r\n\r\n",
        b"garbage\x00\xff\r\n\r\n",
    ],
    ids=["empty", "blank", "no-code", "binary"],
)
async def test_malformed_status_lines_are_typed_errors(raw: bytes) -> None:
    """H2: empty or malformed status line -> UpnpHttpError, no crash."""

    async def handler(*_: Any) -> bytes:
        return raw

    with pytest.raises(UpnpHttpError):
        await _fetch(handler)


async def test_binary_body_is_returned_for_the_parser_to_refuse() -> None:
    async def handler(*_: Any) -> bytes:
        return http_response(200, bytes(range(256)))

    status, body = await _fetch(handler)
    assert status == 200 and len(body) == 256


async def test_content_length_over_cap_is_refused_before_reading() -> None:
    async def handler(*_: Any) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\nabc"

    with pytest.raises(BodyTooLargeError, match="Content-Length"):
        await _fetch(handler)


async def test_never_ending_body_hits_the_cap() -> None:
    """H3: a never-ending response stops at the body cap."""

    async def handler(_m: str, _p: str, _h: Any, _b: bytes, stream: Any) -> None:
        await stream.send(b"HTTP/1.1 200 OK\r\n\r\n")
        while True:
            await stream.send(b"x" * 1024)

    with pytest.raises(BodyTooLargeError):
        await _fetch(handler, max_body=64 * 1024)


@pytest.mark.parametrize("mode", ["hang", "drip", "headers-then-hang"])
async def test_slow_or_hanging_server_hits_the_whole_request_deadline(mode: str) -> None:
    """H3: slow drip / accept-and-hang end at one deadline for connect + headers + body."""

    async def handler(_m: str, _p: str, _h: Any, _b: bytes, stream: Any) -> None:
        if mode == "hang":
            await anyio.sleep_forever()
        if mode == "drip":
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100000:
                await stream.send(bytes([byte]))
                await anyio.sleep(0.05)
        await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
        await anyio.sleep_forever()

    started = anyio.current_time()
    with pytest.raises(UpnpTimeoutError):
        await _fetch(handler, timeout=0.4)
    assert anyio.current_time() - started < 2.0


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirects_are_not_followed(status: int) -> None:
    """X5: a redirect (e.g. to loopback or another host) is an error, never followed."""
    hits: list[str] = []

    async def handler(_m: str, path: str, *_: Any) -> bytes:
        hits.append(path)
        return (
            f"HTTP/1.1 {status} Moved\r\nLocation: http://127.0.0.1:1/admin\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()

    with pytest.raises(UpnpHttpError, match="redirect"):
        await _fetch(handler)
    assert hits == ["/x"]


async def test_connection_refused_is_typed() -> None:
    async with HttpTransport(timeout=1.0) as transport:
        with pytest.raises(UpnpHttpError):
            await transport.get(_url(1))


async def test_proxy_environment_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """A LAN request must never be sent to a proxy from the environment."""
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")

    async def handler(*_: Any) -> bytes:
        return http_response(200, b"ok")

    assert await _fetch(handler) == (200, b"ok")


async def test_gzip_bodies_are_not_decoded() -> None:
    """No content decoding: a gzip bomb stays a few compressed bytes the parser refuses."""
    import gzip

    bomb = gzip.compress(b"\x00" * 1_000_000)

    async def handler(*_: Any) -> bytes:
        return (
            f"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {len(bomb)}\r\n\r\n"
        ).encode() + bomb

    _status, body = await _fetch(handler, max_body=8192)
    assert body == bomb


# ------------------------------------------------------------------- SSDP over loopback


async def _search(
    responder: SsdpResponder, plan_for: Callable[[int], Any], **kw: Any
) -> SsdpSearch:
    plan: SearchPlan = plan_for(responder.port)
    search = SsdpSearch(plan.targets, policy=UrlPolicy(allow_loopback=True), **kw)
    async with open_search_sockets(plan.sockets) as sockets:
        await run_search(search, sockets)
    return search


async def test_search_finds_responder_and_dedupes(loopback_plan: Callable[[int], Any]) -> None:
    """U4: one device answers every ST and every resend: one responder."""
    async with SsdpResponder(igd_answer("http://127.0.0.1:5000/rootDesc.xml")).running() as r:
        search = await _search(r, loopback_plan, window=1.0, settle=0.3, resend_at=(0.0, 0.1))
    (found,) = search.responders
    assert str(found.location.url) == "http://127.0.0.1:5000/rootDesc.xml"
    assert len(found.search_types) == 5
    assert search.discarded["duplicate"] >= 4
    assert len(r.received) == 10  # 5 search targets, two rounds
    assert all(b"MX:" not in d for d in r.received)  # unicast search: no MX


async def test_junk_flood_ends_at_the_absolute_deadline(
    loopback_plan: Callable[[int], Any],
) -> None:
    """U3: continuous junk on the discovery socket; discovery still ends on time."""

    def flood(_data: bytes) -> list[bytes]:
        return [b"\x00junk" * 50] * 40

    async with SsdpResponder(flood).running() as r:
        started = anyio.current_time()
        search = await _search(
            r, loopback_plan, window=0.5, resend_at=(0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
        )
        elapsed = anyio.current_time() - started
    assert search.done
    assert search.responders == []
    assert search.discarded["malformed"] >= 40
    assert elapsed < 1.5


async def test_no_answer_ends_at_window(loopback_plan: Callable[[int], Any]) -> None:
    async with SsdpResponder(lambda _d: []).running() as r:
        started = anyio.current_time()
        search = await _search(r, loopback_plan, window=0.3)
    assert search.responders == []
    assert 0.25 < anyio.current_time() - started < 1.5


async def test_send_failure_is_recorded_not_raised() -> None:
    """An unusable destination (e.g. EADDRNOTAVAIL/ENETUNREACH) is counted, not raised."""
    from collections import Counter

    from nattrav_upnp.search import SearchTarget

    key = "lo/127.0.0.1"
    plan = SearchPlan(
        (SocketSpec(key, "lo", "127.0.0.1", 4),),
        (SearchTarget(key, "127.0.0.1", 0, multicast=False),),  # port 0: EINVAL, stays local
    )
    errors: Counter[str] = Counter()
    search = SsdpSearch(plan.targets, window=0.1)
    async with open_search_sockets(plan.sockets, errors) as sockets:
        await run_search(search, sockets, errors)
    assert search.done
    assert errors, "the failed sends were not recorded"


def test_plan_search_per_interface() -> None:
    addrs = [
        InterfaceAddress("eth0", "192.168.1.20", 24, AddressScope.PRIVATE),
        InterfaceAddress("eth0", "2001:db8::20", 64, AddressScope.PUBLIC),
        InterfaceAddress("eth0", "fe80::20", 64, AddressScope.LINK_LOCAL),
        InterfaceAddress("lo", "127.0.0.1", 8, AddressScope.LOOPBACK),
        InterfaceAddress("wlan0", "10.0.0.5", 24, AddressScope.PRIVATE),
        InterfaceAddress("docker0", "172.17.0.1", 16, AddressScope.PRIVATE),
    ]
    plan = plan_search(
        addrs,
        [("192.168.1.1", "eth0"), ("fe80::1", "eth0")],
        interfaces=("eth0", "wlan0"),
        index_of=lambda name: {"eth0": 2, "wlan0": 3}.get(name, 0),
    )
    assert [s.key for s in plan.sockets] == [
        "eth0/192.168.1.20",
        "eth0/2001:db8::20",
        "wlan0/10.0.0.5",
    ]
    assert plan.interfaces == ["eth0", "wlan0"]
    hosts = {(t.key, t.host, t.multicast) for t in plan.targets}
    assert ("eth0/192.168.1.20", "239.255.255.250", True) in hosts
    assert ("eth0/192.168.1.20", "192.168.1.1", False) in hosts
    assert ("eth0/2001:db8::20", "ff02::c", True) in hosts
    assert ("eth0/2001:db8::20", "ff05::c", True) in hosts
    assert ("wlan0/10.0.0.5", "239.255.255.250", True) in hosts
    assert not any(t.host == "fe80::1" for t in plan.targets)  # link-local gateway: no unicast
    assert not any(t.host == "192.168.1.1" and t.key.startswith("wlan0") for t in plan.targets)


def test_plan_search_gateway_without_interface_uses_on_link_socket() -> None:
    addrs = [
        InterfaceAddress("a", "10.1.0.2", 24, AddressScope.PRIVATE),
        InterfaceAddress("b", "10.2.0.2", 24, AddressScope.PRIVATE),
    ]
    plan = plan_search(addrs, [("10.2.0.1", None)], ipv6=False)
    unicast = [t for t in plan.targets if not t.multicast]
    assert [(t.key, t.host) for t in unicast] == [("b/10.2.0.2", "10.2.0.1")]


def test_user_agent_has_no_secrets() -> None:
    from nattrav_upnp.driver import USER_AGENT

    assert re.fullmatch(r"nattrav-upnp/[\d.]+ UPnP/1\.1", USER_AGENT)
