from __future__ import annotations

from nattrav.errors import (
    ChainExhausted,
    CircuitOpen,
    ConfigError,
    LocalProtocolError,
    MethodError,
    MethodUnavailable,
    NatTravError,
    ParseError,
    PluginError,
    ProtocolError,
    RemoteProtocolError,
)
from nattrav.models import AttemptOutcome, AttemptRecord


def test_hierarchy() -> None:
    assert issubclass(ParseError, RemoteProtocolError)
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(MethodUnavailable, MethodError)
    assert issubclass(CircuitOpen, MethodUnavailable)
    for cls in (ConfigError, PluginError, ProtocolError, MethodError, ChainExhausted):
        assert issubclass(cls, NatTravError)


def test_config_error_lists_every_problem() -> None:
    err = ConfigError(["a is wrong", "b is wrong"], source="x.toml")
    assert err.problems == ("a is wrong", "b is wrong")
    assert "2 problems" in str(err) and "x.toml" in str(err)
    assert "a is wrong" in str(err) and "b is wrong" in str(err)


def test_method_errors_carry_method_and_retryability() -> None:
    err = MethodError("stun", "lost", retryable=True)
    assert (err.method, err.reason, err.retryable) == ("stun", "lost", True)
    assert MethodUnavailable("upnp", "no IGD").retryable is False
    assert "next try in 2.5 s" in str(CircuitOpen("stun", 2.5))


def test_chain_exhausted_explains_each_failure() -> None:
    records = [
        AttemptRecord("direct", AttemptOutcome.UNAVAILABLE, "no public address"),
        AttemptRecord("relay", AttemptOutcome.TIMED_OUT, "no result within 5.0 s"),
    ]
    err = ChainExhausted(records)
    text = str(err)
    assert "direct: unavailable: no public address" in text
    assert "relay: timed-out" in text
    assert err.failures == tuple(records)
    assert "no traversal method" in str(ChainExhausted([]))
