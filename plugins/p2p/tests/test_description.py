"""The offer/answer codec: round trip, and hostile input gives one typed error."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nattrav.errors import RemoteProtocolError
from nattrav_p2p.candidates import host_candidates
from nattrav_p2p.description import (
    MAX_CANDIDATES,
    Description,
    decode_description,
    new_credentials,
    new_tiebreaker,
)


def _offer() -> Description:
    ufrag, pwd = new_credentials()
    return Description(
        "offer",
        ufrag,
        pwd,
        "controlling",
        new_tiebreaker(),
        tuple(host_candidates(["192.168.1.10", "2001:db8::5"], 4000)),
    )


def test_round_trip() -> None:
    offer = _offer()
    back = decode_description(offer.to_json(), expect="offer")
    assert (back.ufrag, back.pwd, back.role, back.tiebreaker) == (
        offer.ufrag,
        offer.pwd,
        offer.role,
        offer.tiebreaker,
    )
    assert [c.address for c in back.candidates] == [c.address for c in offer.candidates]
    assert [c.priority for c in back.candidates] == [c.priority for c in offer.candidates]


def test_credentials_have_enough_randomness() -> None:
    ufrag, pwd = new_credentials()
    assert len(ufrag) * 6 >= 24 and len(pwd) * 6 >= 128  # RFC 8445 §5.3
    assert new_credentials() != new_credentials()
    assert 0 <= new_tiebreaker() < 2**64


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda d: d.update(type="answer"), "expected an offer"),
        (lambda d: d.update(p2p=2), "unsupported version"),
        (lambda d: d.update(ufrag="a b"), "ufrag"),
        (lambda d: d.update(pwd="short"), "pwd"),
        (lambda d: d.update(role="boss"), "role"),
        (lambda d: d.update(tiebreaker=12), "tiebreaker"),
        (lambda d: d.update(candidates="x"), "candidates must be a list"),
        (lambda d: d["candidates"].__setitem__(0, {"foundation": "x"}), "priority"),
        (lambda d: d["candidates"][0].update(address="nowhere"), "address"),
        (lambda d: d["candidates"][0].update(kind="magic"), "kind"),
        (lambda d: d["candidates"][0].update(priority=True), "priority"),
        (lambda d: d.update(candidates=[d["candidates"][0]] * (MAX_CANDIDATES + 1)), "at most"),
    ],
)
def test_bad_fields_are_named(mutate: Any, words: str) -> None:
    raw = _offer().to_json()
    mutate(raw)
    with pytest.raises(RemoteProtocolError, match=words):
        decode_description(raw, expect="offer")


def test_other_transports_are_ignored() -> None:
    raw = _offer().to_json()
    raw["candidates"][0]["transport"] = "tcp"
    assert len(decode_description(raw, expect="offer").candidates) == 1


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=6)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_json)
def test_anything_is_rejected_with_one_error_type(raw: Any) -> None:
    try:
        decode_description(raw, expect="answer")
    except RemoteProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["foundation", "priority", "kind", "address", "transport", "component", "related"]
        ),
        _json,
    )
)
def test_hostile_candidates_are_rejected_cleanly(cand: Any) -> None:
    raw = _offer().to_json()
    raw["candidates"] = [cand]
    try:
        decode_description(raw, expect="offer")
    except RemoteProtocolError:
        pass
