"""Hook implementations of the ``relay`` plugin (being built)."""

from __future__ import annotations
