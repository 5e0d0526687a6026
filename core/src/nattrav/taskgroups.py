"""Keep task groups from turning one error into an exception group.

A context manager that yields inside an anyio task group (the chain, the shared socket, a
method that renews its lease in a background task) would otherwise hand the caller an
``ExceptionGroup`` wrapping the caller's *own* exception, or a group around the one error that
ended it. ``single_errors()`` re-raises the sole real exception of such a group unchanged, so
``except ValueError`` in application code keeps working; groups of several real errors pass
through as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import anyio

__all__ = ["single_errors", "sole_exception"]


def sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The only non-cancellation leaf of ``group`` (nested groups flattened), else ``None``."""
    cancelled = anyio.get_cancelled_exc_class()
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        elif not isinstance(exc, cancelled):
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else None


@contextmanager
def single_errors() -> Iterator[None]:
    """Re-raise the sole exception of an exception group raised inside the block."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaf = sole_exception(group)
        if leaf is None:
            raise
        raise leaf from leaf.__cause__
