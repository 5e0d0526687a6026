"""Command lines and config files of the lab's daemons: coturn and miniupnpd.

coturn runs with ``-n`` (never read /etc/turnserver.conf) and listens on two addresses per
family: with two listeners it switches RFC 5780 behaviour discovery on and answers
CHANGE-REQUEST from the alternate address and port (port + 1). TLS uses a certificate issued at
lab start by a throwaway CA whose certificate clients are given to verify against.

miniupnpd is Debian's nftables build. Points that cost time to find:

* it refuses to forward while its WAN address is "reserved" (RFC 1918, 100.64/10 and the
  documentation ranges the lab uses), and ``ext_ip=`` with such an address makes it exit;
  ``ext_perform_stun=yes`` against the lab's coturn makes it check what the internet sees and
  then enables forwarding (behind the CGNAT of ``double`` the check finds a filtering NAT and
  forwarding stays off, which is the point of that topology);
* ``listening_ip`` must be an interface name for IPv6 to be served; unknown keys make it exit;
  ``enable_natpmp=yes`` enables both NAT-PMP and PCP;
* ``system_uptime=no`` makes the NAT-PMP/PCP epoch restart with the daemon, so a restart looks
  like a router reboot to clients;
* it reloads ``lease_file`` at start: a reboot that loses state removes the lease files first.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path

import attrs

from nattrav_lab.plan import InternetPlan, SitePlan

__all__ = [
    "TurnCredentials",
    "TurnTls",
    "coturn_argv",
    "issue_tls",
    "miniupnpd_argv",
    "miniupnpd_config",
]

STUN_PORT = 3478
TLS_PORT = 5349
UPNP_HTTP_PORT = 5000
TLS_SERVER_NAME = "turn.lab.nattrav.test"


@attrs.frozen
class TurnCredentials:
    """Long-term credentials of the lab's TURN server."""

    user: str = "nattrav"
    password: str = "lab-secret"
    realm: str = "lab.nattrav.test"


@attrs.frozen
class TurnTls:
    """Where the TLS material is: clients verify ``ca_path``; coturn uses cert and key."""

    ca_path: Path
    cert_path: Path
    key_path: Path
    server_name: str


def issue_tls(directory: Path, plan: InternetPlan) -> TurnTls:
    """Make a CA and a server certificate for coturn's addresses and name."""
    import trustme

    ca = trustme.CA(organization_name="nattrav lab")
    cert = ca.issue_cert(
        TLS_SERVER_NAME,
        plan.stun_primary_ip4,
        plan.stun_alternate_ip4,
        plan.stun_primary_ip6,
        plan.stun_alternate_ip6,
    )
    tls = TurnTls(
        ca_path=directory / "ca.pem",
        cert_path=directory / "turn-cert.pem",
        key_path=directory / "turn-key.pem",
        server_name=TLS_SERVER_NAME,
    )
    ca.cert_pem.write_to_path(str(tls.ca_path))
    cert.private_key_pem.write_to_path(str(tls.key_path))
    # The chain (leaf first) so clients that only trust the CA can build the path.
    with open(tls.cert_path, "wb") as out:
        for pem in cert.cert_chain_pems:
            out.write(pem.bytes())
    tls.key_path.chmod(0o600)
    return tls


def coturn_argv(
    plan: InternetPlan,
    creds: TurnCredentials,
    tls: TurnTls,
    state: Path,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """coturn's command line: foreground, no config file, every path under ``state``."""
    listen = [
        plan.stun_primary_ip4,
        plan.stun_alternate_ip4,
        plan.stun_primary_ip6,
        plan.stun_alternate_ip6,
    ]
    return [
        "turnserver",
        "-n",
        *(f"--listening-ip={ip}" for ip in listen),
        f"--relay-ip={plan.stun_primary_ip4}",
        f"--relay-ip={plan.stun_primary_ip6}",
        f"--listening-port={STUN_PORT}",
        f"--tls-listening-port={TLS_PORT}",
        "--lt-cred-mech",
        f"--user={creds.user}:{creds.password}",
        f"--realm={creds.realm}",
        f"--cert={tls.cert_path}",
        f"--pkey={tls.key_path}",
        f"--pidfile={state / 'turnserver.pid'}",
        f"--userdb={state / 'turnserver.db'}",
        f"--log-file={state / 'turnserver.log'}",
        "--simple-log",
        "--no-cli",
        "--no-multicast-peers",
        "--min-port=49152",
        "--max-port=65535",
        *extra,
    ]


def miniupnpd_config(
    site: SitePlan,
    plan: InternetPlan,
    state: Path,
    options: Mapping[str, str] = {},
) -> str:
    """The miniupnpd config file for ``site``'s router (``options`` override or add keys)."""
    conf: dict[str, str] = {
        "ext_ifname": "wan0",
        "listening_ip": "lan0",
        "http_port": str(UPNP_HTTP_PORT),
        "enable_upnp": "yes",
        "enable_natpmp": "yes",
        "secure_mode": "yes",
        "system_uptime": "no",
        "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"nattrav-lab:{state}")),
        "lease_file": str(state / "upnp.leases"),
        "lease_file6": str(state / "upnp6.leases"),
        "ext_perform_stun": "yes",
        "ext_stun_host": plan.stun_primary_ip4,
        "ext_stun_port": str(STUN_PORT),
        "notify_interval": "60",
        "clean_ruleset_interval": "600",
        "min_lifetime": "10",
        "max_lifetime": "86400",
        "friendly_name": f"nattrav lab router {site.index}",
    }
    conf.update(options)
    lines = [f"{k}={v}" for k, v in conf.items()]
    lines += [
        f"allow 1024-65535 {site.lan_subnet4} 1024-65535",
        "deny 0-65535 0.0.0.0/0 0-65535",
    ]
    return "\n".join(lines) + "\n"


def miniupnpd_argv(config: Path, pidfile: Path) -> list[str]:
    return ["miniupnpd", "-f", str(config), "-d", "-P", str(pidfile)]
