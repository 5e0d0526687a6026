"""Signals: how two peers exchange their offer and answer (``nattrav.connect.Signal``).

* ``memory_signal_pair()``: two connected in-memory signals, for tests and for two peers in
  one process.
* ``PasteSignal``: the copy-and-paste blob of ``nattrav connect --paste``. ``send`` prints
  the message as one line (``nattrav-p2p:`` + base64url of the deflated JSON: a few hundred
  characters that survive chat windows and terminals); ``receive`` reads the line the user
  pasted. The pasted text is untrusted: its size is bounded (``MAX_BLOB`` characters,
  ``MAX_JSON`` bytes once inflated: no decompression bomb) and any problem is a
  ``SignalError`` saying what is wrong with the paste.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from nattrav_p2p.errors import SignalError

__all__ = [
    "BLOB_PREFIX",
    "MemorySignal",
    "PasteSignal",
    "ThreadSignal",
    "decode_blob",
    "encode_blob",
    "memory_signal_pair",
    "thread_signal_pair",
]

BLOB_PREFIX = "nattrav-p2p:"
MAX_BLOB = 16384
MAX_JSON = 65536


def encode_blob(message: Mapping[str, Any]) -> str:
    """One line: prefix + base64url(deflate(compact JSON)), no padding."""
    raw = json.dumps(message, separators=(",", ":"), sort_keys=True).encode()
    packed = base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode().rstrip("=")
    return BLOB_PREFIX + packed


def decode_blob(text: str) -> dict[str, Any]:
    """The message in a pasted line; ``SignalError`` when it is not one of ours."""
    text = "".join(text.split())  # terminals and chats wrap long lines
    if len(text) > MAX_BLOB:
        raise SignalError(f"pasted text is {len(text)} characters; an offer is under {MAX_BLOB}")
    if not text.startswith(BLOB_PREFIX):
        raise SignalError(f"pasted text does not start with {BLOB_PREFIX!r}; copy the whole line")
    body = text[len(BLOB_PREFIX) :]
    try:
        packed = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        inflater = zlib.decompressobj()
        raw = inflater.decompress(packed, MAX_JSON + 1)
        if len(raw) > MAX_JSON or inflater.unconsumed_tail:
            raise SignalError(f"pasted offer inflates to more than {MAX_JSON} bytes")
        if not inflater.eof:
            raise SignalError("pasted text is cut short; copy the whole line")
        value = json.loads(raw)
    except SignalError:
        raise
    except (binascii.Error, ValueError, zlib.error, RecursionError) as exc:
        raise SignalError(f"pasted text is damaged ({type(exc).__name__}); copy it again") from None
    if not isinstance(value, dict):
        raise SignalError("pasted text does not hold an offer or answer")
    return value


class MemorySignal:
    """One end of an in-memory signal pair."""

    def __init__(
        self,
        send: MemoryObjectSendStream[dict[str, Any]],
        recv: MemoryObjectReceiveStream[dict[str, Any]],
    ) -> None:
        self._send = send
        self._recv = recv

    async def send(self, message: Mapping[str, Any]) -> None:
        # A JSON round trip, so the peer sees exactly what a real channel would carry.
        await self._send.send(json.loads(json.dumps(dict(message))))

    async def receive(self) -> Mapping[str, Any]:
        try:
            return await self._recv.receive()
        except anyio.EndOfStream:
            raise SignalError("the other end of the signal was closed") from None

    def close(self) -> None:
        self._send.close()
        self._recv.close()


def memory_signal_pair() -> tuple[MemorySignal, MemorySignal]:
    """Two connected signals (what one sends the other receives)."""
    a_send, b_recv = anyio.create_memory_object_stream[dict[str, Any]](8)
    b_send, a_recv = anyio.create_memory_object_stream[dict[str, Any]](8)
    return MemorySignal(a_send, a_recv), MemorySignal(b_send, b_recv)


class PasteSignal:
    """Copy-and-paste signaling: ``write(line)`` shows our blob, ``read()`` gets theirs.

    Defaults print to stderr-like ``write`` and read one line from standard input in a
    worker thread (the event loop stays free to answer the peer's early checks).
    """

    def __init__(
        self,
        write: Callable[[str], Any] | None = None,
        read: Callable[[], Awaitable[str]] | None = None,
        *,
        prompt: str = "paste the peer's line and press Enter:",
    ) -> None:
        self._write = write or _stderr_line
        self._read = read or _stdin_line
        self.prompt = prompt

    async def send(self, message: Mapping[str, Any]) -> None:
        kind = message.get("type", "message")
        self._write(f"send this {kind} to the peer (one line):")
        self._write(encode_blob(message))

    async def receive(self) -> Mapping[str, Any]:
        self._write(self.prompt)
        line = await self._read()
        if not line:
            raise SignalError("nothing was pasted (end of input)")
        return decode_blob(line)


def _stderr_line(text: str) -> None:
    import sys

    sys.stderr.write(text + "\n")
    sys.stderr.flush()


async def _stdin_line() -> str:
    import sys

    line: str = await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
    return line


class ThreadSignal:
    """One end of a signal between two threads (each running its own event loop).

    Waits poll a ``queue.Queue`` from a worker thread in short slices, so a cancelled wait
    leaves no thread blocked forever.
    """

    def __init__(self, outbox: Any, inbox: Any) -> None:
        self._outbox = outbox
        self._inbox = inbox

    async def send(self, message: Mapping[str, Any]) -> None:
        self._outbox.put(json.dumps(dict(message)))

    async def receive(self) -> Mapping[str, Any]:
        import queue

        while True:
            try:
                text = self._inbox.get_nowait()
            except queue.Empty:
                try:
                    text = await anyio.to_thread.run_sync(self._inbox.get, True, 0.1)
                except queue.Empty:
                    continue
            value = json.loads(text)
            if not isinstance(value, dict):
                raise SignalError("signal carried something that is not an object")
            return value


def thread_signal_pair() -> tuple[ThreadSignal, ThreadSignal]:
    """Two connected signals for peers in two threads of one process."""
    import queue

    a_to_b: queue.Queue[str] = queue.Queue()
    b_to_a: queue.Queue[str] = queue.Queue()
    return ThreadSignal(a_to_b, b_to_a), ThreadSignal(b_to_a, a_to_b)
