"""Parse untrusted XML from the LAN with bounded cost.

Why each limit (hostile-inputs.md X1-X4, X7):

* DTDs are forbidden outright (defusedxml ``forbid_dtd=True``): no billion laughs, no quadratic
  blow-up, no external entities, whatever the system expat version does on its own.
* The byte size is capped *before* parsing (CVE-2015-6031 was an oversized element name).
* Depth and element count are capped *during* parsing by the tree builder, so a document of
  200 000 nested elements is refused at element 65, not built and then walked recursively.
* Namespaces are matched by local name (``local``): routers use every prefix and namespace
  spelling imaginable, and some use none.

Only ``ParseError`` leaves this module.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser
from nattrav.errors import ParseError

__all__ = [
    "MAX_DEPTH",
    "MAX_DOCUMENT",
    "MAX_ELEMENTS",
    "MAX_TEXT",
    "child",
    "children",
    "descendants",
    "local",
    "parse_xml",
    "text_of",
]

MAX_DOCUMENT = 256 * 1024
MAX_DEPTH = 64
MAX_ELEMENTS = 20_000
MAX_TEXT = 2048


class _LimitExceeded(Exception):
    pass


class _BoundedBuilder(ET.TreeBuilder):
    """A TreeBuilder that refuses documents nested deeper or larger than the limits."""

    def __init__(self, max_depth: int, max_elements: int) -> None:
        super().__init__()
        self._depth = 0
        self._count = 0
        self._max_depth = max_depth
        self._max_elements = max_elements

    def start(self, tag: Any, attrs: Any) -> ET.Element:
        self._depth += 1
        self._count += 1
        if self._depth > self._max_depth:
            raise _LimitExceeded(f"XML nested deeper than {self._max_depth} elements")
        if self._count > self._max_elements:
            raise _LimitExceeded(f"XML has more than {self._max_elements} elements")
        return super().start(tag, attrs)

    def end(self, tag: Any) -> ET.Element:
        self._depth -= 1
        return super().end(tag)


def parse_xml(
    data: bytes,
    *,
    max_bytes: int = MAX_DOCUMENT,
    max_depth: int = MAX_DEPTH,
    max_elements: int = MAX_ELEMENTS,
) -> ET.Element:
    """Parse ``data`` into an element tree or raise ``ParseError`` saying why not."""
    if len(data) > max_bytes:
        raise ParseError(f"XML document of {len(data)} bytes exceeds the {max_bytes}-byte cap")
    if not data.strip():
        raise ParseError("empty XML document")
    parser = DefusedXMLParser(
        target=_BoundedBuilder(max_depth, max_elements),
        forbid_dtd=True,
        forbid_entities=True,
        forbid_external=True,
    )
    try:
        parser.feed(data)
        root = parser.close()
    except _LimitExceeded as exc:
        raise ParseError(str(exc)) from None
    except DefusedXmlException as exc:
        raise ParseError(f"forbidden XML construct: {type(exc).__name__}") from None
    except ET.ParseError as exc:
        raise ParseError(f"malformed XML: {exc}") from None
    except (ValueError, LookupError, UnicodeError, RecursionError, MemoryError) as exc:
        raise ParseError(f"malformed XML: {type(exc).__name__}") from None
    if not isinstance(root, ET.Element):
        raise ParseError("XML document has no root element")
    return root


def local(tag: object) -> str:
    """The local name of a tag: ``{urn:x}device`` gives ``device``, ``s:Body`` gives ``Body``."""
    if not isinstance(tag, str):  # comments and processing instructions
        return ""
    if tag.startswith("{"):
        tag = tag.rsplit("}", 1)[-1]
    return tag.rsplit(":", 1)[-1]


def children(element: ET.Element, name: str) -> Iterator[ET.Element]:
    """Direct children whose local name is ``name`` (case-sensitive, as XML is)."""
    for item in element:
        if local(item.tag) == name:
            yield item


def child(element: ET.Element, name: str) -> ET.Element | None:
    """The first direct child with local name ``name``, or ``None``."""
    return next(children(element, name), None)


def descendants(element: ET.Element, name: str) -> Iterator[ET.Element]:
    """Every descendant (document order, iterative walk) whose local name is ``name``."""
    for item in element.iter():
        if item is not element and local(item.tag) == name:
            yield item


def text_of(element: ET.Element | None, *, limit: int = MAX_TEXT, what: str = "value") -> str:
    """The stripped text of ``element`` ('' when absent); longer than ``limit`` is a ParseError."""
    if element is None or element.text is None:
        return ""
    text = element.text.strip()
    if len(text) > limit:
        raise ParseError(f"{what} longer than {limit} characters")
    return text
