"""The benchmark hooks work (small counts; the speed targets live in benchmarks/)."""

from __future__ import annotations

import pytest
from nattrav_relay import bench
from nattrav_relay.testing import Coturn

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("mode", ["channel", "indication"])
async def test_relay_send_direction(coturn: Coturn, mode: str) -> None:
    result = await bench.relay_throughput(
        coturn.uri("udp"),
        username=coturn.username,
        password=coturn.password,
        count=400,
        size=100,
        mode=mode,
    )
    assert result.mode == f"relay-{mode}" and result.count == 400
    assert result.received >= 360 and result.delivered_pps > 0
    assert set(result.as_dict()) >= {"sent_pps", "delivered_pps", "loss"}


async def test_relay_receive_direction(coturn: Coturn) -> None:
    result = await bench.relay_throughput(
        coturn.uri("udp"),
        username=coturn.username,
        password=coturn.password,
        count=300,
        size=100,
        direction="receive",
        rate=5000.0,
    )
    assert result.mode == "relay-channel-receive" and result.received >= 270


def test_blocking_reference_and_raw_udp(coturn: Coturn) -> None:
    reference = bench.blocking_channel_data_throughput(
        "127.0.0.1",
        coturn.port,
        username=coturn.username,
        password=coturn.password,
        count=400,
        size=100,
    )
    assert reference.mode == "blocking-channel" and reference.received >= 360
    raw = bench.raw_udp_throughput(400, 100)
    assert raw.mode == "raw-udp" and raw.received >= 360
