"""Copy-and-paste blobs and the thread signal."""

from __future__ import annotations

import base64
import threading
import zlib

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nattrav_p2p.errors import SignalError
from nattrav_p2p.signals import (
    BLOB_PREFIX,
    MAX_JSON,
    PasteSignal,
    decode_blob,
    encode_blob,
    thread_signal_pair,
)


def test_blob_round_trip_is_one_line() -> None:
    message = {"p2p": 1, "type": "offer", "candidates": [{"a": 1}] * 5}
    blob = encode_blob(message)
    assert "\n" not in blob and blob.startswith(BLOB_PREFIX)
    assert decode_blob(blob) == message
    # A terminal that wrapped the line, and surrounding spaces, do not matter.
    wrapped = "  " + "\n".join(blob[i : i + 40] for i in range(0, len(blob), 40)) + " \n"
    assert decode_blob(wrapped) == message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("hello", "does not start"),
        (BLOB_PREFIX + "!!!!", "damaged|cut short"),
        (BLOB_PREFIX + "AAAA", "damaged"),
        (encode_blob({"a": "b" * 100})[:-6], "cut short|damaged"),
        (BLOB_PREFIX + base64.urlsafe_b64encode(zlib.compress(b"[1,2]")).decode(), "does not hold"),
        (
            BLOB_PREFIX
            + base64.urlsafe_b64encode(zlib.compress(b" " * (MAX_JSON * 4), 9)).decode(),
            "inflates",
        ),
        (BLOB_PREFIX + "A" * 20000, "characters"),
    ],
)
def test_bad_pastes_say_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(SignalError, match=words):
        decode_blob(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_paste_gives_a_message_or_a_signal_error(text: str) -> None:
    for candidate in (text, BLOB_PREFIX + text):
        try:
            decode_blob(candidate)
        except SignalError:
            pass


@pytest.mark.anyio
async def test_paste_signal_prints_and_reads() -> None:
    shown: list[str] = []
    reply = encode_blob({"type": "answer"})

    async def read() -> str:
        return reply + "\n"

    sig = PasteSignal(shown.append, read)
    await sig.send({"type": "offer"})
    assert decode_blob(shown[-1]) == {"type": "offer"}
    assert await sig.receive() == {"type": "answer"}

    async def empty() -> str:
        return ""

    with pytest.raises(SignalError, match="nothing was pasted"):
        await PasteSignal(shown.append, empty).receive()


def test_thread_signal_between_two_event_loops() -> None:
    a, b = thread_signal_pair()
    got: dict[str, object] = {}

    def side_b() -> None:
        async def main() -> None:
            got["b"] = await b.receive()
            await b.send({"pong": 1})

        anyio.run(main, backend="trio")

    t = threading.Thread(target=side_b)
    t.start()

    async def main_a() -> None:
        await a.send({"ping": 1})
        with anyio.fail_after(5):
            got["a"] = await a.receive()

    anyio.run(main_a)
    t.join(5)
    assert got == {"b": {"ping": 1}, "a": {"pong": 1}}
