"""The impairment knobs do what they say, measured with a UDP ping between namespaces.

Bounds are wide on purpose (the machine is shared and loaded): each one still fails if the knob
did nothing, e.g. a 50 ms delay per direction must add at least ~100 ms to the round trip.
"""

from __future__ import annotations

import errno
import socket
import time

import pytest
from nattrav_lab import Lab
from nattrav_lab.measure import udp_ping

# <linux/in.h>; Python's socket module does not export them.
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DO = 2
IP_MTU = 14


def test_loss_drops_about_the_asked_share_then_stops(lab: Lab) -> None:
    lab.set_loss(30, direction="outbound")
    lossy = udp_ping(lab, count=300, interval=0.0005, wait=0.3)
    assert 0.15 <= lossy.loss <= 0.45, lossy.loss
    lab.set_loss(0)
    clean = udp_ping(lab, count=100, interval=0.0005, wait=0.5)
    assert clean.loss == 0.0


def test_delay_adds_to_the_round_trip_both_ways(lab: Lab) -> None:
    base = udp_ping(lab, count=10)
    assert base.median_rtt is not None and base.median_rtt < 0.05
    lab.set_delay(0.05)
    slow = udp_ping(lab, count=10, wait=1.0)
    assert slow.received == 10
    assert slow.median_rtt is not None and 0.095 <= slow.median_rtt <= 0.3, slow.median_rtt
    lab.set_delay(0.05, direction="outbound")
    one_way = udp_ping(lab, count=10, wait=1.0)
    assert one_way.median_rtt is not None and 0.045 <= one_way.median_rtt <= 0.095


def test_reorder_and_jitter_reorder_packets(lab: Lab) -> None:
    lab.set_delay(0.03, reorder=40, direction="outbound")
    result = udp_ping(lab, count=60, interval=0.001, wait=1.0)
    assert result.received == 60
    assert result.reordered >= 5, result.order
    lab.set_delay(0.03, jitter=0.025, direction="outbound")
    jittery = udp_ping(lab, count=60, interval=0.001, wait=1.0)
    assert jittery.reordered >= 5, jittery.order
    assert max(jittery.rtts) - min(jittery.rtts) >= 0.02


def test_duplicate_sends_copies_in_both_directions(lab: Lab) -> None:
    lab.set_delay(0.0, duplicate=100, direction="outbound")
    out = udp_ping(lab, count=10, wait=0.5)
    assert out.received == 10 and out.duplicates >= 8, out.order  # echo server answers both
    lab.set_delay(0.0, duplicate=100, direction="inbound")
    back = udp_ping(lab, count=10, wait=0.5)
    assert back.received == 10 and back.duplicates >= 8, back.order
    lab.set_delay(0)
    clean = udp_ping(lab, count=10, wait=0.3)
    assert clean.duplicates == 0


def test_rate_limit_queues_a_burst(lab: Lab) -> None:
    free = udp_ping(lab, count=20, size=1200, interval=0, wait=0.5)
    lab.set_rate(2000)
    limited = udp_ping(lab, count=20, size=1200, interval=0, wait=1.0)
    # 20 x 1200 B at 2 Mbit/s take ~96 ms to drain; unlimited the burst is back in a few ms
    assert max(limited.rtts) >= 0.05, (max(free.rtts), max(limited.rtts))
    assert max(free.rtts) < 0.05


def _send_df(lab: Lab, size: int) -> tuple[int | None, int]:
    """Send two ``size``-byte DF datagrams from the LAN host; (errno of the second send or
    None, the path MTU the kernel then believes)."""
    with lab.inside("internet"):
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # no "port unreachable"
    with lab.inside("lan"):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock, sink:
        sink.bind((lab.internet_peer_ip4, 9))
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        sock.connect((lab.internet_peer_ip4, 9))
        sock.send(b"x" * size)
        time.sleep(0.1)  # let the router's ICMP "fragmentation needed" arrive
        err = None
        try:
            sock.send(b"x" * size)
        except OSError as exc:
            err = exc.errno
        return err, sock.getsockopt(socket.IPPROTO_IP, IP_MTU)


def test_wan_mtu_and_pmtud_black_hole(lab: Lab) -> None:
    lab.set_wan_mtu(1400)
    try:
        lab.flush_pmtu_cache()
        err, mtu = _send_df(lab, 1450)
        assert err == errno.EMSGSIZE and mtu == 1400, (err, mtu)
        lab.block_icmp(True)
        lab.flush_pmtu_cache()
        err, mtu = _send_df(lab, 1450)
        assert err is None and mtu == 1500, (err, mtu)  # the black hole: no signal at all
    finally:
        lab.block_icmp(False)
        lab.set_wan_mtu(1500)
        lab.flush_pmtu_cache()


def test_jumbo_frames_pass_unfragmented(lab_factory: object) -> None:
    jumbo = lab_factory("eim", wan_mtu=9000, lan_mtu=9000)  # type: ignore[operator]
    assert "mtu 9000" in jumbo.exec("router", ["ip", "link", "show", "wan0"]).stdout
    err, mtu = _send_df(jumbo, 8000)
    assert err is None and mtu == 9000
    result = udp_ping(jumbo, count=3, size=8900)
    assert result.received == 3


@pytest.mark.parametrize("lab", ["udp-blocked"], indirect=True)
def test_udp_blocked_lets_only_tcp_and_tls_out(lab: Lab) -> None:
    import ssl

    assert udp_ping(lab, count=5, wait=0.3).received == 0
    context = ssl.create_default_context(cafile=str(lab.turn.ca_path))
    with lab.inside("lan"):
        raw = socket.create_connection((lab.turn.host4, lab.turn.tls_port), timeout=5)
    with context.wrap_socket(raw, server_hostname=lab.turn.server_name) as tls:
        assert tls.version() is not None
        assert tls.getpeercert() is not None
