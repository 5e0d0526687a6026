"""Benchmark 1: STUN codec build and parse, nattrav_stun vs aioice.

Like with like: for every case both libraries build the *same bytes* (checked before timing:
the benchmark refuses to run if they differ) and parse the same datagram. "Build" is what a
sender does per message: make the message object from its attributes and serialise it, adding
MESSAGE-INTEGRITY and/or FINGERPRINT where the case has them. "Parse" is what a receiver does:
bytes to message (FINGERPRINT checked by both parsers) plus the MESSAGE-INTEGRITY check with the
key when the case has MI (nattrav ``verify_integrity``, aioice ``check_message_integrity``),
and for responses reading the mapped address (both parsers decode it eagerly). Each library is
used the way its documentation says: nattrav builds one ``IntegrityKey`` per key and reuses
it, aioice takes the key bytes. The transaction ID is fixed so neither pays for randomness.

Targets (issue 11): geometric mean of the per-case ratios >= 3x aioice, no case below 1.5x.

    python -m benchmarks.codec [--rounds N] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from typing import Any, cast

import attrs

from benchmarks import harness
from benchmarks.harness import Report, Row, Unavailable

TARGET_GEOMEAN = 3.0
TARGET_MIN = 1.5

TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
SHORT_TERM_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"
ICE_USERNAME = "evtj:h6vY"
ICE_PRIORITY = 0x6E0001FF
ICE_TIEBREAKER = 0x932FF9B151263B36
MAPPED4 = ("192.0.2.1", 32853)
MAPPED6 = ("2001:db8:1234:5678:11:2233:4455:6677", 32853)
SERVER4 = ("203.0.113.1", 3478)
OTHER4 = ("203.0.113.2", 3479)
SOFTWARE = "Coturn-4.6.1 'Gorst'"


@attrs.frozen
class Case:
    """One message shape. ``kind``: request | response; ``attrs``: (type name, value) pairs
    in wire order; ``mi``/``fp``: MESSAGE-INTEGRITY / FINGERPRINT present."""

    name: str
    kind: str
    attrs: tuple[tuple[str, Any], ...]
    mi: bool
    fp: bool


def cases() -> list[Case]:
    ice = (
        ("USERNAME", ICE_USERNAME),
        ("PRIORITY", ICE_PRIORITY),
        ("ICE-CONTROLLED", ICE_TIEBREAKER),
    )
    out = [
        Case("request", "request", (), False, False),
        Case("request +FP", "request", (), False, True),
        Case("request ICE", "request", ice, False, False),
        Case("request ICE +MI", "request", ice, True, False),
        Case("request ICE +MI+FP", "request", ice, True, True),
    ]
    for family, mapped in (("v4", MAPPED4), ("v6", MAPPED6)):
        xma = (("XOR-MAPPED-ADDRESS", mapped),)
        out += [
            Case(f"response {family}", "response", xma, False, False),
            Case(f"response {family} +FP", "response", xma, False, True),
            Case(f"response {family} +MI", "response", xma, True, False),
            Case(f"response {family} +MI+FP", "response", xma, True, True),
        ]
    coturn_like = (
        ("XOR-MAPPED-ADDRESS", MAPPED4),
        ("MAPPED-ADDRESS", MAPPED4),
        ("RESPONSE-ORIGIN", SERVER4),
        ("OTHER-ADDRESS", OTHER4),
        ("SOFTWARE", SOFTWARE),
    )
    out.append(Case("response v4 coturn-like +FP", "response", coturn_like, False, True))
    return out


# --------------------------------------------------------------------- the two libraries


def _load() -> tuple[Any, Any]:
    try:
        from aioice import stun as aioice_stun
    except ImportError as exc:
        raise Unavailable(
            f"aioice is not installed ({exc}): pip install -r benchmarks/requirements.txt"
        ) from None
    try:
        from nattrav_stun import codec
    except ImportError as exc:
        raise Unavailable(f"nattrav-stun is not installed ({exc})") from None
    return codec, aioice_stun


@attrs.frozen
class Contender:
    build: Callable[[], bytes]
    parse: Callable[[bytes], object]


def nattrav_contender(case: Case, codec: Any) -> Contender:
    names = {
        "USERNAME": codec.USERNAME,
        "PRIORITY": codec.PRIORITY,
        "ICE-CONTROLLED": codec.ICE_CONTROLLED,
        "XOR-MAPPED-ADDRESS": codec.XOR_MAPPED_ADDRESS,
        "MAPPED-ADDRESS": codec.MAPPED_ADDRESS,
        "RESPONSE-ORIGIN": codec.RESPONSE_ORIGIN,
        "OTHER-ADDRESS": codec.OTHER_ADDRESS,
        "SOFTWARE": codec.SOFTWARE,
    }
    items = tuple(
        (names[n], codec.Address(*v) if isinstance(v, tuple) else v) for n, v in case.attrs
    )
    cls = codec.REQUEST if case.kind == "request" else codec.SUCCESS
    key = codec.IntegrityKey(SHORT_TERM_PASSWORD) if case.mi else None
    fp = case.fp
    Message, encode, decode = codec.Message, codec.encode, codec.decode
    verify = codec.verify_integrity
    binding = codec.BINDING
    xma = codec.XOR_MAPPED_ADDRESS

    def build() -> bytes:
        return encode(Message(binding, cls, TID, dict(items)), integrity=key, fingerprint=fp)  # type: ignore[no-any-return]

    if case.kind == "response":
        if key is not None:

            def parse(data: bytes) -> object:
                msg = decode(data)
                if not verify(msg, key):
                    raise AssertionError("integrity check failed")
                return msg.attributes[xma]

        else:

            def parse(data: bytes) -> object:
                return decode(data).attributes[xma]

    elif key is not None:

        def parse(data: bytes) -> object:
            msg = decode(data)
            if not verify(msg, key):
                raise AssertionError("integrity check failed")
            return msg

    else:
        parse = decode
    return Contender(build, parse)


def aioice_contender(case: Case, stun: Any) -> Contender:
    items = tuple(case.attrs)
    cls = stun.Class.REQUEST if case.kind == "request" else stun.Class.RESPONSE
    method = stun.Method.BINDING
    key = SHORT_TERM_PASSWORD
    Message, parse_message = stun.Message, stun.parse_message
    message_integrity = stun.message_integrity

    if case.mi and case.fp:

        def build() -> bytes:
            msg = Message(method, cls, TID, dict(items))
            msg.add_message_integrity(key)  # adds FINGERPRINT too
            return bytes(msg)

    elif case.mi:
        # aioice always pairs MI with FINGERPRINT; without it, the same steps minus the last.
        def build() -> bytes:
            msg = Message(method, cls, TID, dict(items))
            msg.attributes["MESSAGE-INTEGRITY"] = message_integrity(bytes(msg), key)
            return bytes(msg)

    elif case.fp:

        def build() -> bytes:
            msg = Message(method, cls, TID, dict(items))
            msg.add_fingerprint()
            return bytes(msg)

    else:

        def build() -> bytes:
            return bytes(Message(method, cls, TID, dict(items)))

    if case.kind == "response":
        if case.mi:

            def parse(data: bytes) -> object:
                msg = parse_message(data)
                if not msg.check_message_integrity(key):
                    raise AssertionError("integrity check failed")
                return msg.attributes["XOR-MAPPED-ADDRESS"]

        else:

            def parse(data: bytes) -> object:
                return parse_message(data).attributes["XOR-MAPPED-ADDRESS"]

    elif case.mi:

        def parse(data: bytes) -> object:
            msg = parse_message(data)
            if not msg.check_message_integrity(key):
                raise AssertionError("integrity check failed")
            return msg

    else:
        parse = parse_message
    return Contender(build, parse)


def check_like_with_like(case: Case, ours: Contender, theirs: Contender) -> bytes:
    """Both build identical bytes and parse them to the same mapped address."""
    data = ours.build()
    other = theirs.build()
    if data != other:
        raise AssertionError(
            f"{case.name}: the libraries build different bytes:\n{data.hex()}\n{other.hex()}"
        )
    a, b = ours.parse(data), theirs.parse(data)
    if case.kind == "response" and tuple(cast(Any, a)) != tuple(cast(Any, b)):
        raise AssertionError(f"{case.name}: parsed addresses differ: {a} vs {b}")
    return data


# --------------------------------------------------------------------- the run


def measure(
    rounds: int, sample_seconds: float, progress: Callable[[str], None] | None = None
) -> tuple[dict[str, dict[str, list[float]]], list[str]]:
    """Samples (ns/op) per ``"<direction> <case>"`` and contender, interleaved by round."""
    codec, stun = _load()
    plans: list[tuple[str, dict[str, Callable[[], object]]]] = []
    for case in cases():
        ours = nattrav_contender(case, codec)
        theirs = aioice_contender(case, stun)
        data = check_like_with_like(case, ours, theirs)
        plans.append((f"build {case.name}", {"nattrav": ours.build, "aioice": theirs.build}))
        ours_parse, theirs_parse = ours.parse, theirs.parse
        plans.append(
            (
                f"parse {case.name}",
                {
                    "nattrav": lambda p=ours_parse, d=data: p(d),  # type: ignore[misc]
                    "aioice": lambda p=theirs_parse, d=data: p(d),  # type: ignore[misc]
                },
            )
        )
    numbers = {
        (label, who): harness.calibrate(fn, sample_seconds)
        for label, fns in plans
        for who, fn in fns.items()
    }
    samples: dict[str, dict[str, list[float]]] = {
        label: {"nattrav": [], "aioice": []} for label, _ in plans
    }
    order = ["nattrav", "aioice"]
    for r in range(rounds):
        for label, fns in plans:
            for who in order if r % 2 == 0 else order[::-1]:
                samples[label][who].append(
                    harness.best_per_op_ns(fns[who], numbers[label, who]) / 1000
                )
        if progress is not None:
            progress(f"codec round {r + 1}/{rounds}")
    return samples, [label for label, _ in plans]


def run(args: argparse.Namespace) -> Report:
    rounds = 3 if args.quick and args.rounds == DEFAULT_ROUNDS else args.rounds
    sample = 0.01 if args.quick else 0.03
    report = Report(
        "codec",
        "STUN codec build and parse, nattrav vs aioice (µs per message)",
        rounds=rounds,
        quick=args.quick,
    )
    samples, labels = measure(rounds, sample, harness.progress)
    for label in labels:
        report.record_samples(label, samples[label])
        report.compare(
            label,
            samples[label],
            "nattrav",
            "aioice",
            unit="µs",
            higher_is_better=False,
            min_ratio=TARGET_MIN,
        )
    summarize(report)
    return report


def summarize(
    report: Report, *, geomean_target: float = TARGET_GEOMEAN, min_target: float = TARGET_MIN
) -> None:
    case_ratios = [row.ratio for row in report.rows if row.ratio is not None]
    worst = min(report.rows, key=lambda row: row.ratio or 0.0)
    report.add(
        Row(
            "geometric mean (all cases)",
            "nattrav",
            "aioice",
            "",
            None,
            None,
            harness.geometric_mean(case_ratios),
            min_ratio=geomean_target,
        )
    )
    report.add(
        Row(
            f"worst case ({worst.case})",
            "nattrav",
            "aioice",
            "",
            None,
            None,
            worst.ratio,
            min_ratio=min_target,
        )
    )
    report.extra["median_of_case_ratios"] = statistics.median(case_ratios)


DEFAULT_ROUNDS = 9


def main(argv: list[str] | None = None) -> int:
    parser = harness.common_arguments(
        argparse.ArgumentParser(
            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        ),
        rounds=DEFAULT_ROUNDS,
    )
    return harness.run_main("codec", run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
