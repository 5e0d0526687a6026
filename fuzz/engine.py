"""What every fuzz harness shares: optional coverage instrumentation, the libFuzzer entry point,
and the conventions that turn one flat byte string into structured parser arguments.

Why a harness is importable without atheris: the same ``check`` function that libFuzzer drives
is replayed in-process by the tests (every committed seed must be accepted), and a module that
imported atheris at the top would tie those tests to a native wheel they do not need.

A harness module (``fuzz/harnesses/<name>.py``) provides:

* ``DESCRIPTION``: one line for ``python -m fuzz.run --list``;
* ``MAX_LEN``: the largest input libFuzzer generates for it (``-max_len``);
* ``check(data: bytes) -> bool``: feed ``data`` to the parser, assert every property the parser
  promises, and return whether the input was accepted as a valid message. Anything the parser
  may legitimately raise (``ParseError`` or the documented subclass) is caught inside; every
  other exception, and every failed ``assert``, is a finding;
* ``main()``: ``fuzz(check)``.

The parsers are imported inside ``instrumented(...)`` so that atheris adds coverage feedback to
exactly the packages under test (and not to the standard library or the test tooling).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

__all__ = ["chunked", "fields", "fuzz", "instrumented", "pick"]

T = TypeVar("T")


#: Set (to anything) to import harnesses without coverage instrumentation, e.g. to replay the
#: seeds in-process (``python -m fuzz.run --check-seeds``).
NO_INSTRUMENT = "NATTRAV_FUZZ_NO_INSTRUMENT"


@contextlib.contextmanager
def instrumented(*packages: str) -> Iterator[None]:
    """Instrument ``packages`` for coverage when atheris is present; a no-op otherwise."""
    if os.environ.get(NO_INSTRUMENT):
        yield
        return
    try:
        import atheris  # type: ignore[import-untyped]
    except ImportError:
        yield
        return
    with atheris.instrument_imports(include=list(packages)):
        yield


def fuzz(check: Callable[[bytes], object]) -> None:
    """Hand ``check`` to libFuzzer with this process's command line (corpus dirs, -flags)."""
    import atheris

    def one_input(data: bytes) -> None:
        check(data)

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


def chunked(data: bytes) -> tuple[bytes, list[bytes]]:
    """Split a stream-framer input: byte 0 is the chunk size (0 means 1), the rest the stream.

    Returns the stream and the chunks it is fed in, so that every harness of a TCP framer
    exercises messages split across reads as well as several messages in one read.
    """
    if not data:
        return b"", []
    size = data[0] or 1
    stream = data[1:]
    return stream, [stream[i : i + size] for i in range(0, len(stream), size)]


def fields(data: bytes, count: int, sep: bytes = b"\0") -> list[bytes]:
    """``count`` fields separated by ``sep`` (missing ones empty, extra ones left in the last)."""
    parts = data.split(sep, count - 1)
    return parts + [b""] * (count - len(parts))


def pick(options: Sequence[T], selector: int) -> T:
    """``options[selector % len(options)]``: a selector byte choosing among fixed alternatives."""
    return options[selector % len(options)]
