"""SOAP 1.1 control messages (UDA 1.1 §3.2): request bodies and response/fault parsing.

Theory of operation
-------------------
A UPnP action is an HTTP POST to the service's controlURL with a ``SOAPAction`` header
``"<serviceType>#<Action>"`` and an envelope whose body holds ``<u:Action xmlns:u=...>`` with
one child per argument, in the order the service specification lists them (some routers
parse positionally). The answer is either ``<u:ActionResponse>`` with the out-arguments or,
usually with HTTP 500, a ``s:Fault`` whose ``detail/UPnPError`` carries ``errorCode`` and
``errorDescription``.

Building: values are XML-escaped, and characters XML 1.0 cannot carry are refused (they would
otherwise let a description string break out of its element). Protocol names are sent upper
case by the callers (``UDP``/``TCP``): the TP-Link ER605 rejects lower case
(tailscale/tailscale#7377).

Parsing is namespace-tolerant (routers answer with any prefix, a wrong namespace, or none) and
bounded by ``xmlsafe``. ``parse_response`` returns the out-arguments, raises the typed
``UpnpActionError`` subclass for a UPnPError fault, ``UpnpHttpError`` for a non-200 status
without a fault, and ``ParseError`` for anything malformed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from xml.etree.ElementTree import Element
from xml.sax.saxutils import escape

import attrs
from nattrav.errors import LocalProtocolError, ParseError

from nattrav_upnp.errors import UpnpHttpError, error_for_code
from nattrav_upnp.xmlsafe import child, descendants, local, parse_xml, text_of

__all__ = ["SoapRequest", "build_request", "parse_response"]

SOAP_ENVELOPE = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP_ENCODING = "http://schemas.xmlsoap.org/soap/encoding/"
MAX_RESPONSE = 64 * 1024
MAX_VALUE = 1024

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
# Characters XML 1.0 cannot carry at all (C0 controls except TAB, LF, CR; surrogates; FFFE/F).
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@attrs.frozen
class SoapRequest:
    """An encoded action call: POST ``body`` with ``headers`` to the service's controlURL."""

    service_type: str
    action: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


def build_request(
    service_type: str, action: str, arguments: Sequence[tuple[str, str | int]] = ()
) -> SoapRequest:
    """Encode ``action`` of ``service_type`` with ``arguments`` in the order given."""
    if not _NAME.match(action):
        raise LocalProtocolError(f"invalid SOAP action name {action!r}")
    if not service_type or any(c in service_type for c in '\r\n"<>&#') or len(service_type) > 256:
        raise LocalProtocolError(f"invalid service type {service_type!r}")
    parts = []
    for name, value in arguments:
        if not _NAME.match(name):
            raise LocalProtocolError(f"invalid SOAP argument name {name!r}")
        text = str(value)
        if _XML_INVALID.search(text):
            raise LocalProtocolError(f"argument {name} contains characters XML cannot carry")
        parts.append(f"<{name}>{escape(text)}</{name}>")
    body = (
        '<?xml version="1.0" encoding="utf-8"?>\r\n'
        f'<s:Envelope xmlns:s="{SOAP_ENVELOPE}" s:encodingStyle="{SOAP_ENCODING}">'
        f'<s:Body><u:{action} xmlns:u="{escape(service_type, {chr(34): "&quot;"})}">'
        f"{''.join(parts)}</u:{action}></s:Body></s:Envelope>\r\n"
    ).encode()
    headers = (
        ("Content-Type", 'text/xml; charset="utf-8"'),
        ("SOAPAction", f'"{service_type}#{action}"'),
    )
    return SoapRequest(service_type, action, headers, body)


def parse_response(
    action: str, status: int, body: bytes, *, firewall: bool = False
) -> Mapping[str, str]:
    """The out-arguments of ``action`` (local name -> stripped text), or a typed error.

    ``firewall`` selects the WANIPv6FirewallControl meaning of the 70x error codes.
    """

    def http_error() -> UpnpHttpError:
        return UpnpHttpError(f"{action}: HTTP {status} without a UPnP fault", status=status)

    if status != 200 and not body.strip():
        raise http_error()
    try:
        root = parse_xml(body, max_bytes=MAX_RESPONSE)
    except ParseError:
        if status != 200:
            raise http_error() from None
        raise
    soap_body = child(root, "Body") if local(root.tag) == "Envelope" else None
    fault = child(soap_body, "Fault") if soap_body is not None else None
    if fault is not None:
        raise _fault_error(action, fault, firewall=firewall)
    if status != 200:
        raise http_error()
    if soap_body is None:
        raise ParseError(f"{action}: response is not a SOAP Envelope with a Body")
    wanted = f"{action}Response".lower()
    response = next((e for e in soap_body if local(e.tag).lower() == wanted), None)
    if response is None:
        raise ParseError(f"{action}: SOAP body has no {action}Response")
    values: dict[str, str] = {}
    for item in response:
        name = local(item.tag)
        if name and name not in values:
            values[name] = text_of(item, limit=MAX_VALUE, what=f"{action} {name[:64]}")
    return values


def _fault_error(action: str, fault: Element, *, firewall: bool) -> Exception:
    error = next(descendants(fault, "UPnPError"), None)
    if error is None:
        return ParseError(f"{action}: SOAP fault without a UPnPError detail")
    code_text = text_of(child(error, "errorCode"), limit=16, what="errorCode")
    if not (code_text.isascii() and code_text.isdigit()):
        return ParseError(f"{action}: UPnPError code {code_text[:16]!r} is not a number")
    description = text_of(child(error, "errorDescription"), limit=MAX_VALUE)
    printable = "".join(c if c.isprintable() else "?" for c in description[:128])
    return error_for_code(int(code_text), printable, action=action, firewall=firewall)
