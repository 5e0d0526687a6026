"""UPnP device descriptions (UDA 1.1 §2.3): find the WAN connection and IPv6 firewall services.

Theory of operation
-------------------
The LOCATION of an SSDP answer points at an XML document (``rootDesc.xml``) describing a
device tree: the InternetGatewayDevice contains a WANDevice, which contains a
WANConnectionDevice, which lists services with a ``serviceType`` and a ``controlURL``. The
document comes from any host on the LAN, so it goes through ``xmlsafe.parse_xml`` (no DTDs,
size, depth and element caps) and every ``controlURL`` through ``urls.resolve_control_url``
(same host as LOCATION).

Quirks handled, each with a fixture in tests/fixtures:

* namespaces: matched by local name, so the usual ``urn:schemas-upnp-org:device-1-0``, another
  URN, a prefix, or no namespace at all all work;
* legacy URNs: ``urn:dslforum-org:service:WANIPConnection:1`` (TR-064 devices) is recognised;
  the service type is kept verbatim because SOAPAction must repeat it exactly;
* whitespace and letter case in ``serviceType``;
* services anywhere in the tree (some routers flatten it, some nest it deeper);
* services with an unsafe or missing controlURL are skipped with a reason, not fatal;
* a description with no usable service parses fine (tailscale/tailscale#10911 crashed on one);
  the caller reports "no WAN connection service" for that device.
"""

from __future__ import annotations

import enum
import re

import attrs
from nattrav.errors import ParseError

from nattrav_upnp.urls import STRICT, HttpUrl, Location, UrlPolicy, resolve_control_url
from nattrav_upnp.xmlsafe import child, children, descendants, local, parse_xml, text_of

__all__ = [
    "DeviceDescription",
    "ServiceInfo",
    "ServiceKind",
    "classify_service_type",
    "parse_description",
]


class ServiceKind(enum.Enum):
    """The services this plugin can drive."""

    WAN_IP = "WANIPConnection"
    WAN_PPP = "WANPPPConnection"
    FIREWALL6 = "WANIPv6FirewallControl"

    @property
    def is_connection(self) -> bool:
        return self is not ServiceKind.FIREWALL6


_SERVICE_TYPE = re.compile(
    r"^urn:(schemas-upnp-org|dslforum-org):service:"
    r"(wanipconnection|wanpppconnection|wanipv6firewallcontrol):(\d{1,3})$"
)
_KINDS = {k.value.lower(): k for k in ServiceKind}


def classify_service_type(service_type: str) -> tuple[ServiceKind, int] | None:
    """``(kind, version)`` for a service type we drive, else ``None`` (case-insensitive)."""
    match = _SERVICE_TYPE.match(service_type.strip().lower())
    if match is None:
        return None
    version = int(match.group(3))
    if version < 1:
        return None
    return _KINDS[match.group(2)], version


@attrs.frozen
class ServiceInfo:
    """One service we can control. ``service_type`` is verbatim (for SOAPAction)."""

    service_type: str
    kind: ServiceKind
    version: int
    control_url: HttpUrl
    service_id: str = ""
    device_type: str = ""
    udn: str = ""

    @property
    def label(self) -> str:
        return f"{self.kind.value}:{self.version}"


@attrs.frozen
class DeviceDescription:
    """What we learnt from one root description.

    ``services`` are the usable ones; ``skipped`` explains each service we could not use.
    ``device_type``/``udn``/``friendly_name``... describe the root device (untrusted text).
    """

    location: str
    device_type: str
    udn: str
    friendly_name: str = ""
    manufacturer: str = ""
    model_name: str = ""
    services: tuple[ServiceInfo, ...] = ()
    skipped: tuple[str, ...] = ()

    @property
    def connection_services(self) -> tuple[ServiceInfo, ...]:
        return tuple(s for s in self.services if s.kind.is_connection)

    @property
    def firewall_service(self) -> ServiceInfo | None:
        return next((s for s in self.services if s.kind is ServiceKind.FIREWALL6), None)

    @property
    def igd_version(self) -> int:
        """2 for an IGD:2 root device, else 1."""
        return 2 if self.device_type.lower().rstrip().endswith("internetgatewaydevice:2") else 1


def parse_description(
    data: bytes, location: Location, *, policy: UrlPolicy = STRICT
) -> DeviceDescription:
    """Parse a root device description fetched from ``location``.

    Raises ``ParseError`` for malformed XML, documents over the limits, and documents that are
    not UPnP descriptions (no ``root``/``device``).
    """
    root = parse_xml(data)
    if local(root.tag) != "root":
        raise ParseError(f"not a UPnP device description (root element {local(root.tag)!r})")
    device = child(root, "device")
    if device is None:
        raise ParseError("UPnP description has no device element")
    url_base = text_of(child(root, "URLBase"), limit=1024, what="URLBase") or None
    services: list[ServiceInfo] = []
    skipped: list[str] = []
    seen: set[tuple[str, str]] = set()
    devices = [device, *descendants(device, "device")]
    for dev in devices:
        dev_type = text_of(child(dev, "deviceType"), limit=256, what="deviceType")
        udn = text_of(child(dev, "UDN"), limit=256, what="UDN")
        for service_list in children(dev, "serviceList"):
            for service in children(service_list, "service"):
                st = text_of(child(service, "serviceType"), limit=256, what="serviceType")
                kind = classify_service_type(st)
                if kind is None:
                    continue
                control = text_of(child(service, "controlURL"), limit=1024, what="controlURL")
                try:
                    url = resolve_control_url(control, location, url_base=url_base, policy=policy)
                except ParseError as exc:
                    skipped.append(f"{st}: {exc}")
                    continue
                key = (st.lower(), str(url))
                if key in seen:
                    continue
                seen.add(key)
                services.append(
                    ServiceInfo(
                        service_type=st,
                        kind=kind[0],
                        version=kind[1],
                        control_url=url,
                        service_id=text_of(child(service, "serviceId"), limit=256),
                        device_type=dev_type,
                        udn=udn,
                    )
                )
    return DeviceDescription(
        location=str(location.url),
        device_type=text_of(child(device, "deviceType"), limit=256, what="deviceType"),
        udn=text_of(child(device, "UDN"), limit=256, what="UDN"),
        friendly_name=text_of(child(device, "friendlyName"), limit=256),
        manufacturer=text_of(child(device, "manufacturer"), limit=256),
        model_name=text_of(child(device, "modelName"), limit=256),
        services=tuple(services),
        skipped=tuple(skipped),
    )
