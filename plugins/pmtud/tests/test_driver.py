"""The anyio driver on both backends, over loopback, against our own echo responder."""

from __future__ import annotations

import socket

import anyio
import pytest
from nattrav.errors import MethodUnavailable
from nattrav_pmtud.driver import discover_pmtu, echo_server, open_probe_socket, resolve
from nattrav_pmtud.prober import ProbeCredentials
from nattrav_pmtud.search import Phase, PlpmtuChanged, SearchSettings

pytestmark = pytest.mark.anyio

FAST = {"probe_timeout": 0.2, "rtt_floor": 0.001}


async def test_discovers_the_maximum_over_loopback_v4() -> None:
    events: list[object] = []
    async with echo_server(("127.0.0.1", 0)) as server:
        result = await discover_pmtu(
            server.address,
            SearchSettings(family=4, max_plpmtu=9000, **FAST),
            on_event=events.append,
        )
    assert result.confirmed and result.plpmtu == 9000 and result.max_udp_payload == 8972
    assert result.limited_by == "configured-maximum" and result.phase is Phase.SEARCH_COMPLETE
    assert result.details["mapped_address"] is not None
    assert any(isinstance(e, PlpmtuChanged) for e in events)
    assert server.responder.answered == result.probes_acked == 2


async def test_discovers_over_loopback_v6_with_integrity() -> None:
    creds = ProbeCredentials("s3cret", "alice")
    try:
        async with echo_server(("::1", 0), credentials=creds) as server:
            result = await discover_pmtu(
                server.address, SearchSettings(family=6, max_plpmtu=4000, **FAST), credentials=creds
            )
    except OSError as exc:  # pragma: no cover - hosts without IPv6 loopback
        pytest.skip(f"no IPv6 loopback here: {exc}")
    assert result.confirmed and result.plpmtu == 4000 and result.details["integrity"] is True


async def test_local_interface_mtu_caps_the_search() -> None:
    """The loopback MTU is 65536: asking for 65535 finds the IPv4 maximum the host can send."""
    async with echo_server(("127.0.0.1", 0)) as server:
        result = await discover_pmtu(
            server.address, SearchSettings(family=4, max_plpmtu=65535, **FAST)
        )
    assert result.confirmed and result.plpmtu == 65532  # 65504 bytes of UDP payload


async def test_wrong_password_means_no_confirmation() -> None:
    async with echo_server(("127.0.0.1", 0), credentials=ProbeCredentials("right")) as server:
        result = await discover_pmtu(
            server.address,
            SearchSettings(family=4, probe_timeout=0.05, max_probes=2),
            credentials=ProbeCredentials("wrong"),
        )
    assert not result.confirmed and result.phase is Phase.ERROR and result.probes_sent == 2
    assert server.responder.dropped["integrity"] == 2


async def test_closed_port_is_reported_as_port_unreachable() -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    result = await discover_pmtu(
        ("127.0.0.1", port), SearchSettings(family=4, probe_timeout=0.05, max_probes=2)
    )
    assert not result.confirmed
    assert result.details.get("port_unreachable_from") == "127.0.0.1"


async def test_deadline_bounds_a_discovery() -> None:
    with anyio.fail_after(3):
        result = await discover_pmtu(
            ("127.0.0.1", 9), SearchSettings(family=4, probe_timeout=5.0), deadline=0.2
        )
    assert not result.confirmed and result.phase is Phase.BASE


async def test_unsupported_platform_refuses() -> None:
    with pytest.raises(MethodUnavailable, match="Don't Fragment"):
        async with open_probe_socket(4, platform="plan9"):
            pass


async def test_probe_socket_sets_dont_fragment_and_is_closed() -> None:
    async with open_probe_socket(4) as ps:
        sock = ps.sock
        assert sock.getsockopt(0, 10) == 3  # IP_MTU_DISCOVER == IP_PMTUDISC_PROBE
        assert ps.local_address()[1] != 0
    assert sock.fileno() == -1


async def test_a_callers_socket_is_left_open() -> None:
    own = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    own.bind(("127.0.0.1", 0))
    async with open_probe_socket(4, sock=own):
        pass
    assert own.fileno() != -1
    own.close()


async def test_resolve() -> None:
    assert await resolve("127.0.0.1", 1) == [("127.0.0.1", 1)]
    assert await resolve("127.0.0.1", 1, 6) == []
    assert ("127.0.0.1", 5) in await resolve("localhost", 5, 4)


async def test_echo_server_stops_on_cancellation() -> None:
    with anyio.move_on_after(0.1):
        async with echo_server(("127.0.0.1", 0)) as server:
            address = server.address
            await anyio.sleep_forever()
    # The port is free again: the socket was closed.
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(address)
    s.close()


async def test_a_long_running_search_keeps_confirming_the_plpmtu() -> None:
    """``until_settled=False``: the confirmation timer re-probes the PLPMTU while it runs."""
    from nattrav_pmtud.driver import run_prober
    from nattrav_pmtud.prober import StunPmtuProber

    async with echo_server(("127.0.0.1", 0)) as server:
        prober = StunPmtuProber(
            server.address,
            SearchSettings(family=4, max_plpmtu=2000, confirm_interval=0.1, **FAST),
        )
        async with open_probe_socket(4) as psock:
            result = await run_prober(prober, psock, deadline=0.55, until_settled=False)
    assert result.plpmtu == 2000 and result.phase is Phase.SEARCH_COMPLETE
    assert result.probes_acked >= 5  # base, 2000, then a confirmation every 0.1 s
    assert result.probes_lost == 0 and server.responder.answered == result.probes_acked
