"""JSON form of nattrav's models, shared by every ``--json`` output.

One cattrs converter so the shapes are the same everywhere: enums become their values,
addresses become ``{"host", "port", "transport", "family"}`` plus a ``text`` form, and
``details`` mappings pass through. The shapes are documented in ``docs/json.md`` and checked
against the JSON Schemas in ``nattrav/schemas`` by the tests.
"""

from __future__ import annotations

import enum
import json
from typing import Any

import cattrs

from nattrav.models import TransportAddress

__all__ = ["dumps", "to_jsonable"]


def _make() -> cattrs.Converter:
    conv = cattrs.Converter()
    conv.register_unstructure_hook(
        TransportAddress,
        lambda a: {
            "host": a.host,
            "port": a.port,
            "transport": a.transport.value,
            "family": a.family,
            "text": str(a),
        },
    )
    conv.register_unstructure_hook_func(
        lambda t: isinstance(t, type) and issubclass(t, enum.Enum), lambda e: e.value
    )
    return conv


_CONVERTER = _make()


def to_jsonable(value: Any) -> Any:
    """Turn models (and containers of them) into JSON-compatible data."""
    data = _CONVERTER.unstructure(value)
    return _clean(data)


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_clean(v) for v in value]
        return sorted(items) if isinstance(value, set | frozenset) else items
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, TransportAddress):
        return _CONVERTER.unstructure(value)
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    return value


def dumps(value: Any, *, indent: int | None = None) -> str:
    """Serialise ``value`` (models welcome) as JSON text."""
    return json.dumps(to_jsonable(value), indent=indent, sort_keys=False, default=str)
