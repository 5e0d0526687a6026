"""A scripted UPnP IGD on loopback, for tests of behaviours real gateways here cannot produce.

For tests only (nattrav's and third parties'): it listens on 127.0.0.1, and the plugin only
talks to loopback when given ``UrlPolicy(allow_loopback=True)``, which no configuration sets.

miniupnpd never answers 725, 402-on-lease, 726, 727, never drips a response byte by byte,
never sends a chunk size of 2**64 and never redirects; real routers do. Tests that use this
server say so in their docstring; everything miniupnpd can do is tested against it in the lab
(test_lab.py).

``ScriptedHttp`` is a raw TCP server (so it can also send malformed HTTP); ``FakeIgd`` serves a
description and implements the IGD actions over an in-memory mapping table, with knobs for
each router quirk; ``SsdpResponder`` answers M-SEARCH on a loopback UDP port.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import attrs
from nattrav.taskgroups import single_errors

from nattrav_upnp.xmlsafe import local, parse_xml

Handler = Callable[
    [str, str, dict[str, str], bytes, anyio.abc.SocketStream], Awaitable[bytes | None]
]


async def _read_request(stream: anyio.abc.SocketStream) -> tuple[str, str, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive()
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _version = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        rest += await stream.receive()
    return method, path, headers, rest[:length]


@attrs.define
class ScriptedHttp:
    """Accepts connections on 127.0.0.1 and lets ``handler`` answer each request."""

    handler: Handler
    port: int = 0
    requests: list[tuple[str, str, dict[str, str], bytes]] = attrs.field(factory=list)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ScriptedHttp]:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=self.port)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        with single_errors():
            async with listener, anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, self._serve)
                try:
                    yield self
                finally:
                    tg.cancel_scope.cancel()

    async def _serve(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                request = await _read_request(stream)
            except (anyio.EndOfStream, anyio.BrokenResourceError, ValueError, OSError):
                return
            self.requests.append(request)
            try:
                answer = await self.handler(*request, stream)
                if answer is not None:
                    await stream.send(answer)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                return  # the client gave up (deadline, body cap): expected in these tests


def http_response(status: int, body: bytes, content_type: str = "text/xml") -> bytes:
    reason = {200: "OK", 500: "Internal Server Error", 404: "Not Found"}.get(status, "X")
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def soap_fault(code: int, description: str = "") -> bytes:
    return http_response(
        500,
        (
            '<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
            "<s:Body><s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring>"
            '<detail><UPnPError xmlns="urn:schemas-upnp-org:control-1-0">'
            f"<errorCode>{code}</errorCode><errorDescription>{description}</errorDescription>"
            "</UPnPError></detail></s:Fault></s:Body></s:Envelope>"
        ).encode(),
    )


def soap_ok(service_type: str, action: str, values: dict[str, Any]) -> bytes:
    inner = "".join(f"<{k}>{v}</{k}>" for k, v in values.items())
    return http_response(
        200,
        (
            '<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
            f'<s:Body><u:{action}Response xmlns:u="{service_type}">{inner}'
            f"</u:{action}Response></s:Body></s:Envelope>"
        ).encode(),
    )


DESCRIPTION = """<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0">
<device>
<deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:{version}</deviceType>
<friendlyName>Scripted IGD</friendlyName>
<UDN>uuid:{udn}</UDN>
<deviceList><device>
<deviceType>urn:schemas-upnp-org:device:WANDevice:{version}</deviceType>
<deviceList><device>
<deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:{version}</deviceType>
<serviceList>
<service>
<serviceType>urn:schemas-upnp-org:service:WANIPConnection:{version}</serviceType>
<serviceId>urn:upnp-org:serviceId:WANIPConn1</serviceId>
<controlURL>/ctl/IPConn</controlURL>
</service>
<service>
<serviceType>urn:schemas-upnp-org:service:WANIPv6FirewallControl:1</serviceType>
<serviceId>urn:upnp-org:serviceId:WANIPv6Firewall1</serviceId>
<controlURL>/ctl/IP6FCtl</controlURL>
</service>
</serviceList>
</device></deviceList>
</device></deviceList>
</device>
</root>
"""


@attrs.define
class Mapping:
    external_port: int
    protocol: str
    internal_port: int
    internal_client: str
    description: str
    lease: int
    remote_host: str = ""


@attrs.define
class FakeIgd:
    """An IGD whose quirks a test switches on. ``calls`` records (action, args)."""

    version: int = 2
    udn: str = "fake-igd-0001"
    external_ip: str = "203.0.113.5"
    status: str = "Connected"
    permanent_only: bool = False  # 725 on any lease > 0
    lease_402: bool = False  # 402 on any lease > 0
    max_lease: int | None = None  # grant at most this (H7)
    wildcard_remote_only: bool = False  # 726 on a non-empty RemoteHost
    wildcard_external_only: bool = False  # 727 on AddPortMapping
    deny: bool = False  # 606 on Add*
    faults: dict[str, list[int]] = attrs.field(factory=dict)  # action -> codes to answer first
    # action -> function of the arguments returning out-arguments or an error code
    overrides: dict[str, Callable[[dict[str, str]], dict[str, Any] | int]] = attrs.field(
        factory=dict
    )
    firewall_enabled: bool = True
    pinholes_allowed: bool = True
    mappings: dict[tuple[int, str], Mapping] = attrs.field(factory=dict)
    pinholes: dict[int, dict[str, Any]] = attrs.field(factory=dict)
    calls: list[tuple[str, dict[str, str]]] = attrs.field(factory=list)
    broken: bool = False  # answer every SOAP request with HTTP 503 (gateway "gone")
    http: ScriptedHttp | None = None
    _next_uid: int = 1

    @property
    def service_type(self) -> str:
        return f"urn:schemas-upnp-org:service:WANIPConnection:{self.version}"

    @property
    def location(self) -> str:
        assert self.http is not None
        return f"http://127.0.0.1:{self.http.port}/rootDesc.xml"

    def actions(self, name: str) -> list[dict[str, str]]:
        return [args for action, args in self.calls if action == name]

    @asynccontextmanager
    async def running(self) -> AsyncIterator[FakeIgd]:
        self.http = ScriptedHttp(self._handle)
        async with self.http.running():
            yield self

    async def _handle(
        self, method: str, path: str, headers: dict[str, str], body: bytes, _s: Any
    ) -> bytes:
        if method == "GET" and path == "/rootDesc.xml":
            return http_response(
                200, DESCRIPTION.format(version=self.version, udn=self.udn).encode()
            )
        if method != "POST":
            return http_response(404, b"")
        if self.broken:
            return http_response(503, b"")
        soap_action = headers.get("soapaction", "").strip('"')
        service_type, _, action = soap_action.partition("#")
        root = parse_xml(body)
        (body_el,) = [e for e in root if local(e.tag) == "Body"]
        (action_el,) = list(body_el)
        assert local(action_el.tag) == action, "SOAPAction and body disagree"
        args = {local(e.tag): (e.text or "") for e in action_el}
        self.calls.append((action, args))
        queued = self.faults.get(action)
        if queued:
            return soap_fault(queued.pop(0))
        firewall = path == "/ctl/IP6FCtl"
        handler = self.overrides.get(action) or getattr(
            self, f"_{'fw' if firewall else 'ip'}_{action}", None
        )
        if handler is None:
            return soap_fault(401, "Invalid Action")
        result = handler(args)
        if isinstance(result, int):
            return soap_fault(result)
        return soap_ok(service_type, action, result)

    # ------------------------------------------------------------- WANIPConnection

    def _ip_GetExternalIPAddress(self, _a: dict[str, str]) -> dict[str, Any]:
        return {"NewExternalIPAddress": self.external_ip}

    def _ip_GetStatusInfo(self, _a: dict[str, str]) -> dict[str, Any]:
        return {
            "NewConnectionStatus": self.status,
            "NewLastConnectionError": "ERROR_NONE",
            "NewUptime": 42,
        }

    def _check_add(self, a: dict[str, str]) -> int | None:
        if self.deny:
            return 606
        lease = int(a["NewLeaseDuration"])
        if self.permanent_only and lease > 0:
            return 725
        if self.lease_402 and lease > 0:
            return 402
        if self.wildcard_remote_only and a["NewRemoteHost"]:
            return 726
        if a["NewProtocol"] not in ("UDP", "TCP"):
            return 402
        return None

    def _store(self, port: int, a: dict[str, str]) -> int | None:
        key = (port, a["NewProtocol"])
        old = self.mappings.get(key)
        if old is not None and (
            old.internal_client != a["NewInternalClient"]
            or old.internal_port != int(a["NewInternalPort"])
        ):
            return 718
        lease = int(a["NewLeaseDuration"])
        if self.max_lease is not None and (lease == 0 or lease > self.max_lease):
            lease = self.max_lease
        self.mappings[key] = Mapping(
            port,
            a["NewProtocol"],
            int(a["NewInternalPort"]),
            a["NewInternalClient"],
            a["NewPortMappingDescription"],
            lease,
            a["NewRemoteHost"],
        )
        return None

    def _ip_AddPortMapping(self, a: dict[str, str]) -> dict[str, Any] | int:
        error = self._check_add(a)
        if error is None and self.wildcard_external_only:
            error = 727
        if error is None:
            error = self._store(int(a["NewExternalPort"]), a)
        return {} if error is None else error

    def _ip_AddAnyPortMapping(self, a: dict[str, str]) -> dict[str, Any] | int:
        if self.version < 2:
            return 401
        error = self._check_add(a)
        if error is not None:
            return error
        port = int(a["NewExternalPort"]) or 1024
        while (port, a["NewProtocol"]) in self.mappings:
            port += 1
        error = self._store(port, a)
        return {"NewReservedPort": port} if error is None else error

    def _ip_DeletePortMapping(self, a: dict[str, str]) -> dict[str, Any] | int:
        key = (int(a["NewExternalPort"]), a["NewProtocol"])
        if key not in self.mappings:
            return 714
        del self.mappings[key]
        return {}

    def _ip_GetSpecificPortMappingEntry(self, a: dict[str, str]) -> dict[str, Any] | int:
        m = self.mappings.get((int(a["NewExternalPort"]), a["NewProtocol"]))
        if m is None:
            return 714
        return {
            "NewInternalPort": m.internal_port,
            "NewInternalClient": m.internal_client,
            "NewEnabled": 1,
            "NewPortMappingDescription": m.description,
            "NewLeaseDuration": m.lease,
        }

    def _ip_GetGenericPortMappingEntry(self, a: dict[str, str]) -> dict[str, Any] | int:
        rows = list(self.mappings.values())
        index = int(a["NewPortMappingIndex"])
        if index >= len(rows):
            return 713
        m = rows[index]
        return {
            "NewRemoteHost": m.remote_host,
            "NewExternalPort": m.external_port,
            "NewProtocol": m.protocol,
            "NewInternalPort": m.internal_port,
            "NewInternalClient": m.internal_client,
            "NewEnabled": 1,
            "NewPortMappingDescription": m.description,
            "NewLeaseDuration": m.lease,
        }

    # ------------------------------------------------------------- WANIPv6FirewallControl

    def _fw_GetFirewallStatus(self, _a: dict[str, str]) -> dict[str, Any]:
        return {
            "FirewallEnabled": int(self.firewall_enabled),
            "InboundPinholeAllowed": int(self.pinholes_allowed),
        }

    def _fw_AddPinhole(self, a: dict[str, str]) -> dict[str, Any] | int:
        if not self.pinholes_allowed:
            return 703
        uid = self._next_uid
        self._next_uid += 1
        self.pinholes[uid] = dict(a)
        return {"UniqueID": uid}

    def _fw_UpdatePinhole(self, a: dict[str, str]) -> dict[str, Any] | int:
        uid = int(a["UniqueID"])
        if uid not in self.pinholes:
            return 704
        self.pinholes[uid]["LeaseTime"] = a["NewLeaseTime"]
        return {}

    def _fw_DeletePinhole(self, a: dict[str, str]) -> dict[str, Any] | int:
        if self.pinholes.pop(int(a["UniqueID"]), None) is None:
            return 704
        return {}

    def _fw_CheckPinholeWorking(self, a: dict[str, str]) -> dict[str, Any] | int:
        if int(a["UniqueID"]) not in self.pinholes:
            return 704
        return {"IsWorking": 1}


@attrs.define
class SsdpResponder:
    """Answers every datagram on a loopback UDP port with ``answer(data)`` (or junk)."""

    answer: Callable[[bytes], list[bytes]]
    port: int = 0
    received: list[bytes] = attrs.field(factory=list)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[SsdpResponder]:
        sock = await anyio.create_udp_socket(local_host="127.0.0.1", local_port=self.port)
        self.port = sock.extra(anyio.abc.SocketAttribute.local_port)
        with single_errors():
            async with sock, anyio.create_task_group() as tg:
                tg.start_soon(self._serve, sock)
                try:
                    yield self
                finally:
                    tg.cancel_scope.cancel()

    async def _serve(self, sock: anyio.abc.UDPSocket) -> None:
        async for data, (host, port) in sock:
            self.received.append(data)
            for reply in self.answer(data):
                await sock.sendto(reply, host, port)


def igd_answer(location: str, st: str | None = None) -> Callable[[bytes], list[bytes]]:
    """An SSDP responder answering each M-SEARCH for its own ST with ``location``."""

    def answer(data: bytes) -> list[bytes]:
        match = re.search(rb"\r\nST: ?([^\r\n]+)", data)
        if match is None:
            return []
        target = st or match.group(1).decode()
        return [
            (
                f"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: {target}\r\n"
                f"USN: uuid:fake-igd-0001::{target}\r\nEXT:\r\nSERVER: fake/1 UPnP/1.1\r\n"
                f"LOCATION: {location}\r\n\r\n"
            ).encode()
        ]

    return answer
