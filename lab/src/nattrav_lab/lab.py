"""The lab: namespaces, links, NAT, coturn and miniupnpd, brought up and torn down as one.

Theory of operation. A lab is a set of network namespaces named ``ntl-<name>-<role>``: one
"internet" (coturn, test peers, and the routing between sites), and per site a home router, a
LAN host, optionally a second LAN host and (``double``) a carrier-grade NAT. veth links are made
directly between those namespaces, so nothing ever touches the host's own namespace. ``up`` runs
named steps (state, namespaces, sysctls, links, addresses, nftables, tls, coturn, miniupnpd);
if one fails, everything made so far is torn down and ``LabError`` says which step failed and
why. Every daemon is recorded by PID and start time in ``lab.json`` so ``down`` (from this
process or a later ``nattrav lab down``) stops exactly those and deletes exactly the namespaces
the lab made.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import attrs

from nattrav_lab import netns, ruleset
from nattrav_lab.errors import LabError, LabStepError
from nattrav_lab.plan import InternetPlan, SitePlan, internet_plan, site_plan, topology
from nattrav_lab.processes import Daemon, is_alive, start_daemon, stop_daemon
from nattrav_lab.readiness import log_contains, stun_answers, tcp_accepts, wait_for
from nattrav_lab.registry import (
    LabRecord,
    Owner,
    list_records,
    load_record,
    state_root,
    validate_name,
)
from nattrav_lab.servers import (
    STUN_PORT,
    TLS_PORT,
    UPNP_HTTP_PORT,
    TurnCredentials,
    TurnTls,
    coturn_argv,
    issue_tls,
    miniupnpd_argv,
    miniupnpd_config,
)

__all__ = ["GatewayState", "Lab", "LabError", "TurnInfo"]

NS_PREFIX = "ntl-"
Direction = Literal["both", "inbound", "outbound"]
IMPAIR_QUEUE = 7


@attrs.frozen
class TurnInfo:
    """How to reach the lab's coturn (STUN and TURN on the same ports).

    ``host4``/``host6`` are the primary addresses; ``alternate_host4``/``alternate_host6`` with
    ``alternate_port`` answer RFC 5780 CHANGE-REQUEST. UDP and TCP on ``port``, TLS on
    ``tls_port`` (verify with ``ca_path``, server name ``server_name``; the certificate also
    names the IP addresses).
    """

    host4: str
    host6: str
    alternate_host4: str
    alternate_host6: str
    port: int
    alternate_port: int
    tls_port: int
    user: str
    password: str
    realm: str
    ca_path: Path
    server_name: str


@attrs.frozen
class GatewayState:
    """What a site's router currently holds for miniupnpd: nft rules and lease-file lines.

    ``rules`` are the rules in miniupnpd's three chains (``nft list chain`` text, one per
    rule); ``leases`` the lines of its IPv4 and IPv6 lease files. Empty when no mapping and no
    pinhole exists: tests use it to check that a client released what it made.
    """

    rules: tuple[str, ...]
    leases: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not self.rules and not self.leases


def _default_name() -> str:
    return f"{os.getpid()}{secrets.token_hex(2)}"


_ROLES_PER_SITE = ("router", "lan", "lan2", "cgnat")
_ROLE_SHORT = {"router": "r", "lan": "h", "lan2": "hb", "cgnat": "c"}


class Lab:
    """A network lab: make one with ``Lab.up("eim")`` and use it as a context manager.

    ``topology``: eim, symmetric, open, double, no-igd, udp-blocked (site 1).
    ``second_site``: topology of an optional second site (its own router and LAN host on the
    same internet), e.g. for peer-to-peer tests between two NATed hosts.
    ``second_lan_host``: add a second host on each site's LAN (role ``lan2``).
    ``wan_mtu``/``lan_mtu``: link MTUs (default 1500; jumbo 9000 works).
    ``name``: the lab's name (default: pid plus random hex); namespaces are
    ``ntl-<name>-<role>``. ``state_dir_root``: where state lives (default ``/run/nattrav-lab``).
    ``persistent``: the lab belongs to nobody (the CLI uses this), so reaping leaves it alone;
    otherwise it belongs to this process and is reaped once this process is gone.
    ``coturn_args``: extra coturn command-line options. ``miniupnpd_options``: config keys
    to add or override (unknown keys make miniupnpd exit).
    """

    def __init__(
        self,
        topology_name: str = "eim",
        *,
        name: str | None = None,
        second_site: str | None = None,
        second_lan_host: bool = False,
        wan_mtu: int = 1500,
        lan_mtu: int = 1500,
        state_dir_root: str | Path | None = None,
        persistent: bool = False,
        coturn_args: Sequence[str] = (),
        miniupnpd_options: Mapping[str, str] | None = None,
        ready_timeout: float = 10.0,
    ) -> None:
        for label, mtu in (("wan_mtu", wan_mtu), ("lan_mtu", lan_mtu)):
            if not 1280 <= mtu <= 65535:
                raise ValueError(f"{label} {mtu} out of range 1280-65535 (IPv6 needs 1280)")
        self.name = validate_name(name or _default_name())
        self.topology = topology(topology_name).name
        self.second_site = topology(second_site).name if second_site else None
        self.second_lan_host = second_lan_host
        self.wan_mtu = wan_mtu
        self.lan_mtu = lan_mtu
        self.persistent = persistent
        self.coturn_args = tuple(coturn_args)
        self.miniupnpd_options = dict(miniupnpd_options or {})
        self.ready_timeout = ready_timeout
        self.state_dir = state_root(state_dir_root) / self.name
        self.internet: InternetPlan = internet_plan()
        self.sites: dict[int, SitePlan] = {1: site_plan(1, topology(self.topology))}
        if self.second_site:
            self.sites[2] = site_plan(2, topology(self.second_site))
        self.credentials = TurnCredentials()
        self.namespaces: dict[str, str] = self._plan_namespaces()
        self._created: list[str] = []
        self._daemons: dict[str, Daemon] = {}
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._tls: TurnTls | None = None
        self._impair: dict[int, dict[str, Any]] = {}
        self._up = False
        self.up_seconds: float | None = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def up(cls, topology_name: str = "eim", **options: Any) -> Lab:
        """Make a lab and bring it up (see the class docstring for ``options``).

        With an explicit ``name`` of a lab that is already up, this attaches to it and does
        nothing else, so calling it twice is harmless.
        """
        lab = cls(topology_name, **options)
        lab.bring_up()
        return lab

    @classmethod
    def attach(cls, name: str, *, state_dir_root: str | Path | None = None) -> Lab:
        """The lab called ``name`` that some process brought up (``LabError`` if none)."""
        rec = load_record(state_root(state_dir_root) / validate_name(name))
        if rec is None:
            raise LabError(f"no lab named {name!r} under {state_root(state_dir_root)}")
        return cls._from_record(rec, state_dir_root)

    @classmethod
    def _from_record(cls, rec: LabRecord, state_dir_root: str | Path | None) -> Lab:
        opts = rec.options
        lab = cls(
            rec.topology,
            name=rec.name,
            second_site=rec.second_site,
            second_lan_host=bool(opts.get("second_lan_host", False)),
            wan_mtu=int(opts.get("wan_mtu", 1500)),
            lan_mtu=int(opts.get("lan_mtu", 1500)),
            state_dir_root=state_dir_root,
            persistent=rec.owner is None,
            coturn_args=tuple(opts.get("coturn_args", ())),
            miniupnpd_options=dict(opts.get("miniupnpd_options", {})),
        )
        lab.state_dir = Path(rec.state_dir)
        lab.namespaces = dict(rec.namespaces)
        lab._created = list(rec.created)
        lab._daemons = {d["name"]: Daemon.from_json(d) for d in rec.daemons}
        lab._impair = {int(k): v for k, v in opts.get("impair", {}).items()}
        tls_dir = lab.state_dir / "tls"
        if (tls_dir / "ca.pem").exists():
            lab._tls = TurnTls(
                tls_dir / "ca.pem",
                tls_dir / "turn-cert.pem",
                tls_dir / "turn-key.pem",
                opts.get("tls_server_name", "turn.lab.nattrav.test"),
            )
        lab._up = rec.up
        return lab

    @classmethod
    def all(cls, *, state_dir_root: str | Path | None = None) -> list[Lab]:
        """Every lab in the registry (made by nattrav-lab, from any process)."""
        records = list_records(state_root(state_dir_root))
        return [cls._from_record(r, state_dir_root) for r in records]

    def _plan_namespaces(self) -> dict[str, str]:
        ns = {"internet": f"{NS_PREFIX}{self.name}-inet"}
        for index, site in self.sites.items():
            for role in _ROLES_PER_SITE:
                if role == "cgnat" and not site.topology.cgnat:
                    continue
                if role == "lan2" and not self.second_lan_host:
                    continue
                key = role if index == 1 else f"site{index}.{role}"
                ns[key] = f"{NS_PREFIX}{self.name}-{_ROLE_SHORT[role]}{index}"
        return ns

    # ------------------------------------------------------------------ context manager

    def __enter__(self) -> Lab:
        self.bring_up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def __repr__(self) -> str:
        extra = f" + {self.second_site}" if self.second_site else ""
        return f"<Lab {self.name} {self.topology}{extra} {'up' if self._up else 'down'}>"

    # ------------------------------------------------------------------ facts

    @property
    def is_up(self) -> bool:
        return self._up

    @property
    def roles(self) -> list[str]:
        """The roles ``exec``/``popen``/``inside`` accept (site 2's are ``site2.<role>``)."""
        return list(self.namespaces)

    def netns(self, role: str) -> str:
        """The namespace name of ``role`` (``internet``, ``router``, ``lan``, ``lan2``,
        ``cgnat``, ``site2.router``...; ``site1.<role>`` and ``inet`` are accepted too)."""
        key = role.removeprefix("site1.")
        if key == "inet":
            key = "internet"
        try:
            return self.namespaces[key]
        except KeyError:
            raise LabError(
                f"lab {self.name} has no role {role!r}; roles: {', '.join(self.namespaces)}"
            ) from None

    @property
    def site1(self) -> SitePlan:
        return self.sites[1]

    @property
    def site2(self) -> SitePlan | None:
        return self.sites.get(2)

    def site(self, index: int = 1) -> SitePlan:
        try:
            return self.sites[index]
        except KeyError:
            raise LabError(f"lab {self.name} has no site {index}") from None

    # site 1 facts, the ones most tests need
    @property
    def lan_host_ip4(self) -> str:
        return self.site1.lan_host_ip4

    @property
    def lan_host_ip6(self) -> str:
        return self.site1.lan_host_ip6

    @property
    def lan_host2_ip4(self) -> str:
        return self.site1.lan_host2_ip4

    @property
    def lan_host2_ip6(self) -> str:
        return self.site1.lan_host2_ip6

    @property
    def router_lan_ip4(self) -> str:
        return self.site1.router_lan_ip4

    @property
    def router_lan_ip6(self) -> str:
        return self.site1.router_lan_ip6

    @property
    def router_wan_ip4(self) -> str:
        return self.site1.router_wan_ip4

    @property
    def router_wan_ip6(self) -> str:
        return self.site1.router_wan_ip6

    @property
    def public_ip4(self) -> str:
        """The IPv4 source address the internet sees for site 1's LAN host."""
        return self.site1.public_ip4

    @property
    def cgnat_wan_ip4(self) -> str | None:
        return self.site1.cgnat_wan_ip4

    @property
    def lan_subnet4(self) -> str:
        return self.site1.lan_subnet4

    @property
    def lan_subnet6(self) -> str:
        return self.site1.lan_subnet6

    @property
    def stun_primary4(self) -> tuple[str, int]:
        return (self.internet.stun_primary_ip4, STUN_PORT)

    @property
    def stun_alternate4(self) -> tuple[str, int]:
        return (self.internet.stun_alternate_ip4, STUN_PORT + 1)

    @property
    def stun_primary6(self) -> tuple[str, int]:
        return (self.internet.stun_primary_ip6, STUN_PORT)

    @property
    def stun_alternate6(self) -> tuple[str, int]:
        return (self.internet.stun_alternate_ip6, STUN_PORT + 1)

    @property
    def internet_peer_ip4(self) -> str:
        return self.internet.peer_ips4[0]

    @property
    def internet_peer_ip6(self) -> str:
        return self.internet.peer_ips6[0]

    @property
    def internet_peer_ips4(self) -> tuple[str, ...]:
        return self.internet.peer_ips4

    @property
    def internet_peer_ips6(self) -> tuple[str, ...]:
        return self.internet.peer_ips6

    @property
    def upnp_http_port(self) -> int:
        return UPNP_HTTP_PORT

    def has_igd(self, site: int = 1) -> bool:
        """True if the site's router runs miniupnpd (UPnP IGD v2, NAT-PMP, PCP)."""
        return self.site(site).topology.igd

    @property
    def turn(self) -> TurnInfo:
        if self._tls is None:
            raise LabError(f"lab {self.name} is not up: no TURN certificate yet")
        return TurnInfo(
            host4=self.internet.stun_primary_ip4,
            host6=self.internet.stun_primary_ip6,
            alternate_host4=self.internet.stun_alternate_ip4,
            alternate_host6=self.internet.stun_alternate_ip6,
            port=STUN_PORT,
            alternate_port=STUN_PORT + 1,
            tls_port=TLS_PORT,
            user=self.credentials.user,
            password=self.credentials.password,
            realm=self.credentials.realm,
            ca_path=self._tls.ca_path,
            server_name=self._tls.server_name,
        )

    def facts(self) -> dict[str, Any]:
        """Everything a test or a user needs, as JSON-ready data (``nattrav lab status``)."""
        sites = {}
        for index, s in self.sites.items():
            d = attrs.asdict(s, recurse=False)
            d["topology"] = s.topology.name
            d["igd"] = s.topology.igd
            sites[str(index)] = d
        out: dict[str, Any] = {
            "name": self.name,
            "topology": self.topology,
            "second_site": self.second_site,
            "up": self._up,
            "state_dir": str(self.state_dir),
            "namespaces": dict(self.namespaces),
            "stun_primary4": list(self.stun_primary4),
            "stun_alternate4": list(self.stun_alternate4),
            "stun_primary6": list(self.stun_primary6),
            "stun_alternate6": list(self.stun_alternate6),
            "internet_peer_ips4": list(self.internet_peer_ips4),
            "internet_peer_ips6": list(self.internet_peer_ips6),
            "upnp_http_port": UPNP_HTTP_PORT,
            "sites": sites,
            "daemons": {
                n: {"pid": d.pid, "namespace": d.namespace, "alive": is_alive(d)}
                for n, d in self._daemons.items()
            },
            "impairments": {str(k): v for k, v in self._impair.items()},
        }
        if self._tls is not None:
            out["turn"] = {
                k: str(v) if isinstance(v, Path) else v for k, v in attrs.asdict(self.turn).items()
            }
        return out

    # ------------------------------------------------------------------ running code inside

    def exec(
        self,
        role: str,
        argv: Sequence[str],
        *,
        timeout: float | None = 30.0,
        check: bool = False,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in ``role``'s namespace and wait; output captured as text.

        ``check=True`` raises ``LabError`` with the output on a non-zero exit.
        """
        cmd = ["ip", "netns", "exec", self.netns(role), *argv]
        try:
            proc = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=timeout,
                input=input,
                env=dict(env) if env is not None else None,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"{role}: {' '.join(argv)} timed out after {timeout} s") from exc
        if check and proc.returncode != 0:
            raise LabError(
                f"{role}: {' '.join(argv)} exited {proc.returncode}: "
                f"{(proc.stderr or proc.stdout).strip()[-2000:]}"
            )
        return proc

    def popen(self, role: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in ``role``'s namespace; ``kwargs`` go to ``subprocess.Popen``.

        The caller owns the process (wait for it or kill it); the lab does not track it.
        """
        return subprocess.Popen(["ip", "netns", "exec", self.netns(role), *argv], **kwargs)

    @contextmanager
    def inside(self, role: str) -> Iterator[None]:
        """Switch the calling thread into ``role``'s namespace for the body (setns(2)).

        Sockets created in the body keep living in that namespace afterwards. With an event
        loop, everything the loop runs during the body is in the namespace too: create the
        sockets, then leave the block.
        """
        with netns.in_namespace(self.netns(role)):
            yield

    # ------------------------------------------------------------------ up

    def bring_up(self) -> Lab:
        """Bring the lab up; a no-op if it is up already. ``LabError`` names a failed step."""
        if self._up:
            return self
        existing = load_record(self.state_dir)
        if existing is not None:
            other = Lab._from_record(existing, self.state_dir.parent)
            if other._up and other._healthy():
                if (existing.topology, existing.second_site) != (self.topology, self.second_site):
                    raise LabError(
                        f"lab {self.name} is already up with topology {existing.topology}"
                        f"{' + ' + existing.second_site if existing.second_site else ''}"
                    )
                self.__dict__.update(other.__dict__)
                return self
            raise LabError(
                f"lab {self.name} exists in {self.state_dir} but is not healthy; "
                f"run `nattrav lab down --name {self.name}` first",
                step="state",
            )
        step = "state"
        started = time.monotonic()
        try:
            self._step_state()
            step = "namespaces"
            self._step_namespaces()
            step = "sysctls"
            self._step_sysctls()
            step = "links"
            self._step_links()
            step = "addresses"
            self._step_addresses()
            step = "nftables"
            self._step_nftables()
            step = "tls"
            self._tls = issue_tls(self._mkdir("tls"), self.internet)
            step = "coturn"
            self._step_coturn()
            for index, site in self.sites.items():
                if site.topology.igd:
                    step = f"miniupnpd (site {index})"
                    self._start_miniupnpd(index)
        except Exception as exc:
            detail = str(exc) or type(exc).__name__
            try:
                self.down()
            except Exception as cleanup:  # report both, the first one matters most
                detail += f" (and cleaning up failed too: {cleanup})"
            raise LabError(
                f"lab {self.name}: bringing up {self.topology} failed at step '{step}': {detail}",
                step=step,
            ) from exc
        self._up = True
        self._save()
        self.up_seconds = time.monotonic() - started
        return self

    def _healthy(self) -> bool:
        return all(netns.exists(n) for n in self._created) and all(
            is_alive(d) for d in self._daemons.values()
        )

    def _mkdir(self, *parts: str) -> Path:
        path = self.state_dir.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _record(self) -> LabRecord:
        opts: dict[str, Any] = {
            "second_lan_host": self.second_lan_host,
            "wan_mtu": self.wan_mtu,
            "lan_mtu": self.lan_mtu,
            "coturn_args": list(self.coturn_args),
            "miniupnpd_options": self.miniupnpd_options,
            "impair": {str(k): v for k, v in self._impair.items()},
        }
        if self._tls is not None:
            opts["tls_server_name"] = self._tls.server_name
        return LabRecord(
            name=self.name,
            topology=self.topology,
            second_site=self.second_site,
            state_dir=str(self.state_dir),
            namespaces=dict(self.namespaces),
            created=list(self._created),
            daemons=[d.to_json() for d in self._daemons.values()],
            owner=None if self.persistent else Owner.current(),
            options=opts,
            up=self._up,
        )

    def _save(self) -> None:
        if self.state_dir.is_dir():
            self._record().save()

    def _step_state(self) -> None:
        self.state_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.state_dir.mkdir()
        except FileExistsError:
            raise LabStepError(f"state directory {self.state_dir} exists already") from None
        self._save()

    def _step_namespaces(self) -> None:
        names = list(self.namespaces.values())
        taken = [n for n in names if netns.exists(n)]
        if taken:
            raise LabStepError(f"namespace(s) exist already, not ours: {', '.join(taken)}")
        # Record first: if creation fails half-way, down() still finds what was made.
        self._created = names
        self._save()
        netns.add_namespaces(names)

    def _step_sysctls(self) -> None:
        routers = {"internet"} | {
            r for r in self.namespaces if r.split(".")[-1] in ("router", "cgnat")
        }
        for role, name in self.namespaces.items():
            values = {
                "net.ipv6.conf.all.accept_dad": "0",
                "net.ipv6.conf.default.accept_dad": "0",
                "net.ipv6.conf.default.accept_ra": "0",
            }
            if role in routers:
                values["net.ipv4.ip_forward"] = "1"
                values["net.ipv6.conf.all.forwarding"] = "1"
            netns.write_sysctl(name, values)

    def _ip_batch(self, role: str, lines: list[str]) -> None:
        proc = subprocess.run(
            ["ip", "-n", self.netns(role), "-batch", "-"],
            input="".join(line + "\n" for line in lines),
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise LabStepError(f"ip in {role}: {(proc.stderr or proc.stdout).strip()}")

    def _site_roles(self, index: int) -> dict[str, str]:
        pre = "" if index == 1 else f"site{index}."
        return {r: pre + r for r in _ROLES_PER_SITE if pre + r in self.namespaces}

    def _step_links(self) -> None:
        inet = self.netns("internet")
        for index, site in self.sites.items():
            roles = self._site_roles(index)
            router = roles["router"]
            if "cgnat" in roles:
                self._ip_batch(
                    roles["cgnat"],
                    [f"link add wan0 type veth peer name site{index} netns {inet}"],
                )
                wan_peer = f"lan0 netns {self.netns(roles['cgnat'])}"
            else:
                wan_peer = f"site{index} netns {inet}"
            lines = [
                f"link add wan0 type veth peer name {wan_peer}",
                "link add lan0 type bridge",
                f"link add p1 type veth peer name eth0 netns {self.netns(roles['lan'])}",
            ]
            if "lan2" in roles:
                host2 = self.netns(roles["lan2"])
                lines.append(f"link add p2 type veth peer name eth0 netns {host2}")
            self._ip_batch(router, lines)
            del site

    def _step_addresses(self) -> None:
        inet_lines = ["link set lo up"]
        for ip in (
            self.internet.stun_primary_ip4,
            self.internet.stun_alternate_ip4,
            *self.internet.peer_ips4,
        ):
            inet_lines.append(f"addr add {ip}/32 dev lo")
        for ip in (
            self.internet.stun_primary_ip6,
            self.internet.stun_alternate_ip6,
            *self.internet.peer_ips6,
        ):
            inet_lines.append(f"addr add {ip}/128 dev lo nodad")
        wan, lan = self.wan_mtu, self.lan_mtu
        for index, site in self.sites.items():
            roles = self._site_roles(index)
            dev = f"site{index}"
            outer_mtu = 1500 if "cgnat" in roles else wan
            inet_lines += [
                f"link set {dev} mtu {outer_mtu} up",
                f"addr add {site.inet_link_ip4}/{site.inet_link_prefix4} dev {dev}",
                f"addr add {site.inet_link_ip6}/64 dev {dev} nodad",
                f"route add {site.site_prefix6} via {site.cgnat_wan_ip6 or site.router_wan_ip6}",
            ]
            if site.topology.nat is None:
                inet_lines.append(f"route add {site.lan_subnet4} via {site.router_wan_ip4}")
            if "cgnat" in roles:
                assert site.cgnat_wan_ip4 and site.cgnat_lan_ip4 and site.cgnat_lan_ip6
                self._ip_batch(
                    roles["cgnat"],
                    [
                        "link set lo up",
                        "link set wan0 up",
                        f"link set lan0 mtu {wan} up",
                        f"addr add {site.cgnat_wan_ip4}/{site.inet_link_prefix4} dev wan0",
                        f"addr add {site.cgnat_wan_ip6}/64 dev wan0 nodad",
                        f"addr add {site.cgnat_lan_ip4}/24 dev lan0",
                        f"addr add {site.cgnat_lan_ip6}/64 dev lan0 nodad",
                        f"route add default via {site.inet_link_ip4}",
                        f"route add ::/0 via {site.inet_link_ip6}",
                        f"route add {site.lan_subnet6} via {site.router_wan_ip6}",
                    ],
                )
            router_lines = [
                "link set lo up",
                f"link set wan0 mtu {wan} up",
                f"link set p1 mtu {lan} master lan0 up",
                f"link set lan0 mtu {lan} type bridge stp_state 0 forward_delay 0",
                "link set lan0 up",
                f"addr add {site.router_wan_ip4}/{site.router_wan_prefix4} dev wan0",
                f"addr add {site.router_wan_ip6}/64 dev wan0 nodad",
                f"addr add {site.router_lan_ip4}/{site.lan_prefix4} dev lan0",
                f"addr add {site.router_lan_ip6}/64 dev lan0 nodad",
                f"route add default via {site.router_wan_gateway4}",
                f"route add ::/0 via {site.router_wan_gateway6}",
            ]
            if "lan2" in roles:
                router_lines.insert(3, f"link set p2 mtu {lan} master lan0 up")
            self._ip_batch(roles["router"], router_lines)
            hosts = [("lan", site.lan_host_ip4, site.lan_host_ip6)]
            if "lan2" in roles:
                hosts.append(("lan2", site.lan_host2_ip4, site.lan_host2_ip6))
            for role, ip4, ip6 in hosts:
                self._ip_batch(
                    roles[role],
                    [
                        "link set lo up",
                        f"link set eth0 mtu {lan} up",
                        f"addr add {ip4}/{site.lan_prefix4} dev eth0",
                        f"addr add {ip6}/64 dev eth0 nodad",
                        f"route add default via {site.router_lan_ip4}",
                        f"route add ::/0 via {site.router_lan_ip6}",
                    ],
                )
        self._ip_batch("internet", inet_lines)

    def _nft(self, role: str, script: str) -> None:
        proc = subprocess.run(
            ["ip", "netns", "exec", self.netns(role), "nft", "-f", "-"],
            input=script,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise LabStepError(f"nft in {role}: {proc.stderr.strip()}")

    def _step_nftables(self) -> None:
        for index, site in self.sites.items():
            roles = self._site_roles(index)
            self._nft(roles["router"], ruleset.router_ruleset(site))
            if "cgnat" in roles:
                self._nft(roles["cgnat"], ruleset.cgnat_ruleset(site))

    # ------------------------------------------------------------------ daemons

    def _start(self, key: str, role: str, argv: list[str]) -> Daemon:
        log = self._mkdir("logs") / f"{key}.log"
        daemon = start_daemon(key, self.netns(role), argv, log, children=self._children)
        self._daemons[key] = daemon
        self._save()
        return daemon

    def _stop(self, key: str, sig: int = signal.SIGTERM) -> None:
        daemon = self._daemons.get(key)
        if daemon is None:
            return
        stop_daemon(daemon, children=self._children, sig=sig)
        del self._daemons[key]
        self._save()

    def _log_tail(self, key: str, lines: int = 8) -> str:
        daemon = self._daemons.get(key)
        path = Path(daemon.log) if daemon else self.state_dir / "logs" / f"{key}.log"
        try:
            text = path.read_text(errors="replace").strip().splitlines()
        except FileNotFoundError:
            return ""
        return " | ".join(text[-lines:])

    def _wait(self, key: str, what: str, check: Any) -> None:
        daemon = self._daemons[key]
        try:
            wait_for(what, check, timeout=self.ready_timeout, alive=lambda: is_alive(daemon))
        except LabStepError as exc:
            raise LabStepError(f"{exc}; log: {self._log_tail(key)}") from None

    def _step_coturn(self) -> None:
        assert self._tls is not None
        state = self._mkdir("coturn")
        argv = coturn_argv(self.internet, self.credentials, self._tls, state, self.coturn_args)
        self._start("coturn", "internet", argv)
        inet = self.netns("internet")
        p4, p6 = self.internet.stun_primary_ip4, self.internet.stun_primary_ip6
        a4 = self.internet.stun_alternate_ip4
        self._wait(
            "coturn",
            "coturn answering STUN",
            lambda: (
                stun_answers(inet, p4, STUN_PORT)
                and stun_answers(inet, a4, STUN_PORT + 1)
                and stun_answers(inet, p6, STUN_PORT)
                and tcp_accepts(inet, p4, TLS_PORT)
            ),
        )

    def _start_miniupnpd(self, index: int) -> None:
        site = self.sites[index]
        role = self._site_roles(index)["router"]
        state = self._mkdir(f"miniupnpd{index}")
        conf = state / "miniupnpd.conf"
        conf.write_text(miniupnpd_config(site, self.internet, state, self.miniupnpd_options))
        key = f"miniupnpd{index}"
        self._start(key, role, miniupnpd_argv(conf, state / "miniupnpd.pid"))
        log = self._daemons[key].log
        ns = self.netns(role)
        self._wait(
            key,
            "miniupnpd serving HTTP after its STUN check",
            lambda: (
                tcp_accepts(ns, site.router_lan_ip4, UPNP_HTTP_PORT)
                and log_contains(log, "STUN: ", "Port forwarding", "port forwarding")
            ),
        )

    # ------------------------------------------------------------------ down

    def down(self) -> None:
        """Stop the lab's daemons (by PID) and delete its namespaces and state. Idempotent."""
        errors: list[str] = []
        for key in sorted(self._daemons, key=lambda k: (k == "coturn", k)):
            try:
                self._stop(key)
            except Exception as exc:
                errors.append(f"{key}: {exc}")
        for name in reversed(self._created):
            try:
                netns.delete_namespace(name)
            except Exception as exc:
                errors.append(str(exc))
        if errors:
            self._save()
            raise LabError(f"lab {self.name}: down left things behind: {'; '.join(errors)}")
        self._created = []
        self._up = False
        shutil.rmtree(self.state_dir, ignore_errors=True)

    # ------------------------------------------------------------------ knobs

    def _router(self, site: int) -> str:
        self.site(site)
        return "router" if site == 1 else f"site{site}.router"

    def restart_miniupnpd(self, *, site: int = 1, lose_state: bool = False) -> None:
        """Restart the router's miniupnpd, like a router reboot.

        The NAT-PMP/PCP epoch restarts (``system_uptime=no``). ``lose_state=True`` also forgets
        every mapping and pinhole: lease files removed and miniupnpd's nft chains flushed.
        """
        if not self.has_igd(site):
            raise LabError(f"site {site} ({self.site(site).topology.name}) runs no miniupnpd")
        key = f"miniupnpd{site}"
        self._stop(key)
        if lose_state:
            state = self.state_dir / key
            for name in ("upnp.leases", "upnp6.leases"):
                (state / name).unlink(missing_ok=True)
            self._nft(
                self._router(site),
                "flush chain inet filter miniupnpd\n"
                "flush chain inet filter prerouting_miniupnpd\n"
                "flush chain inet filter postrouting_miniupnpd\n",
            )
        try:
            self._start_miniupnpd(site)
        except LabStepError as exc:
            raise LabError(f"restarting miniupnpd: {exc}") from exc

    def restart_coturn(self) -> None:
        """Restart coturn (allocations and permissions are lost, like a server restart)."""
        self._stop("coturn")
        try:
            self._step_coturn()
        except LabStepError as exc:
            raise LabError(f"restarting coturn: {exc}") from exc

    def gateway_state(self, site: int = 1) -> GatewayState:
        """miniupnpd's current mappings and pinholes on ``site``'s router (see GatewayState)."""
        rules: list[str] = []
        for chain in ("miniupnpd", "prerouting_miniupnpd", "postrouting_miniupnpd"):
            out = self.exec(
                self._router(site), ["nft", "list", "chain", "inet", "filter", chain], check=True
            ).stdout
            body = out.split("{", 2)[-1] if out.count("{") >= 2 else ""
            for line in body.splitlines():
                line = line.strip()
                if line and line != "}":
                    rules.append(line)
        leases: list[str] = []
        for name in ("upnp.leases", "upnp6.leases"):
            path = self.state_dir / f"miniupnpd{site}" / name
            if path.exists():
                leases += [ln for ln in path.read_text().splitlines() if ln.strip()]
        return GatewayState(tuple(rules), tuple(leases))

    def _apply_impair_rules(self, site: int) -> None:
        knobs = self._impair.get(site, {})
        direction = knobs.get("loss_direction", "both")
        loss = int(knobs.get("loss", 0))
        self._nft(
            self._router(site),
            ruleset.impair_ruleset(
                loss_in=loss if direction in ("both", "inbound") else 0,
                loss_out=loss if direction in ("both", "outbound") else 0,
                block_icmp=bool(knobs.get("block_icmp", False)),
            ),
        )
        self._save()

    def set_loss(self, percent: int, *, site: int = 1, direction: Direction = "both") -> None:
        """Drop ``percent``% of the packets crossing the site's WAN link, at random.

        ``direction``: ``inbound`` (towards the LAN), ``outbound`` or ``both`` (each direction
        loses ``percent``%, so a round trip survives with (1 - p)^2). 0 turns it off.
        """
        if not 0 <= percent <= 100:
            raise ValueError(f"loss {percent}% out of range 0-100")
        knobs = self._impair.setdefault(site, {})
        knobs["loss"] = int(percent)
        knobs["loss_direction"] = direction
        self._apply_impair_rules(site)

    def block_icmp(self, blocked: bool = True, *, site: int = 1) -> None:
        """Make the router drop ICMP (IPv4) and ICMPv6 errors and echo (not neighbour
        discovery): forwarded, sent and received. With a small WAN MTU this is a PMTUD black
        hole: "fragmentation needed" / "packet too big" never reach the sender."""
        self._impair.setdefault(site, {})["block_icmp"] = bool(blocked)
        self._apply_impair_rules(site)

    def set_delay(
        self,
        delay: float = 0.0,
        *,
        jitter: float = 0.0,
        reorder: float = 0.0,
        duplicate: float = 0.0,
        site: int = 1,
        direction: Direction = "both",
    ) -> None:
        """Delay packets crossing the site's WAN link (seconds, per direction).

        Each packet waits ``delay`` ± uniform ``jitter``; ``reorder`` percent of packets skip
        the wait (so they overtake); ``duplicate`` percent are sent twice. All zero turns it
        off. Served from an NFQUEUE by ``python -m nattrav_lab.impair`` in the router's
        namespace (needs the ``impair`` extra: NetfilterQueue).
        """
        for label, pct in (("reorder", reorder), ("duplicate", duplicate)):
            if not 0 <= pct <= 100:
                raise ValueError(f"{label} {pct}% out of range 0-100")
        if delay < 0 or jitter < 0:
            raise ValueError("delay and jitter must be >= 0")
        router = self._router(site)
        key = f"impair{site}"
        self._set_queue_rules(router, None)
        self._stop(key)
        knobs = self._impair.setdefault(site, {})
        for k in ("delay", "jitter", "reorder", "duplicate"):
            knobs.pop(k, None)
        if not (delay or jitter or reorder or duplicate):
            self._save()
            return
        queue = IMPAIR_QUEUE + 2 * site
        argv = [
            sys.executable,
            "-m",
            "nattrav_lab.impair",
            "--queue-in",
            str(queue),
            "--queue-out",
            str(queue + 1),
            "--delay",
            str(delay),
            "--jitter",
            str(jitter),
            "--reorder",
            str(reorder),
            "--duplicate",
            str(duplicate),
        ]
        self._start(key, router, argv)
        log = self._daemons[key].log
        try:
            self._wait(key, "impairment queue", lambda: log_contains(log, "ready"))
        except LabStepError as exc:
            self._stop(key)
            raise LabError(f"set_delay: {exc} (is NetfilterQueue installed?)") from None
        self._set_queue_rules(router, (queue, direction))
        knobs.update(
            delay=delay,
            jitter=jitter,
            reorder=reorder,
            duplicate=duplicate,
            delay_direction=direction,
        )
        self._save()

    def _set_queue_rules(self, router: str, spec: tuple[int, str] | None) -> None:
        rules = []
        if spec is not None:
            queue, direction = spec
            target = "-j NFQUEUE --queue-bypass --queue-num"
            if direction in ("both", "inbound"):
                rules.append(f"-A FORWARD -i wan0 {target} {queue}")
            if direction in ("both", "outbound"):
                rules.append(f"-A FORWARD -o wan0 {target} {queue + 1}")
        table = "*mangle\n" + "".join(r + "\n" for r in rules) + "COMMIT\n"
        for tool in ("iptables-restore", "ip6tables-restore"):
            self.exec(router, [tool], input=table, check=True)

    def clear_impairments(self, *, site: int = 1) -> None:
        """Remove loss, delay, ICMP blocking and rate limits from the site's WAN link."""
        self.set_delay(0, site=site)
        self.set_rate(None, site=site)
        self._impair[site] = {}
        self._apply_impair_rules(site)

    def set_rate(self, kbit: int | None, *, site: int = 1, direction: Direction = "both") -> None:
        """Limit the site's WAN link to ``kbit`` kbit/s with tbf (None removes the limit).

        Outbound is shaped on the router's WAN interface, inbound on its LAN bridge.
        """
        router = self._router(site)
        for dev in ("wan0", "lan0"):
            self.exec(router, ["tc", "qdisc", "del", "dev", dev, "root"])
        knobs = self._impair.setdefault(site, {})
        knobs.pop("rate_kbit", None)
        if kbit is not None:
            if kbit <= 0:
                raise ValueError("rate must be positive")
            burst = max(kbit * 1000 // 8 // 50, 3000)  # ~20 ms worth, at least two packets
            devs = {"both": ("wan0", "lan0"), "outbound": ("wan0",), "inbound": ("lan0",)}
            for dev in devs[direction]:
                self.exec(
                    router,
                    [
                        "tc",
                        "qdisc",
                        "add",
                        "dev",
                        dev,
                        "root",
                        "tbf",
                        "rate",
                        f"{kbit}kbit",
                        "burst",
                        str(burst),
                        "latency",
                        "100ms",
                    ],
                    check=True,
                )
            knobs["rate_kbit"] = kbit
        self._save()

    def set_wan_mtu(self, mtu: int, *, site: int = 1) -> None:
        """Set the MTU of the link between the site's router and the next hop upstream."""
        if not 1280 <= mtu <= 65535:
            raise ValueError(f"MTU {mtu} out of range 1280-65535")
        s = self.site(site)
        router = self._router(site)
        self.exec(router, ["ip", "link", "set", "wan0", "mtu", str(mtu)], check=True)
        if s.topology.cgnat:
            upstream, dev = ("cgnat" if site == 1 else f"site{site}.cgnat"), "lan0"
        else:
            upstream, dev = "internet", f"site{site}"
        self.exec(upstream, ["ip", "link", "set", dev, "mtu", str(mtu)], check=True)
        if site == 1:
            self.wan_mtu = mtu
        self._save()

    def flush_pmtu_cache(self, role: str | None = None) -> None:
        """Forget learned path MTUs (kept 600 s per namespace) in ``role`` or everywhere."""
        roles = [role] if role else list(self.namespaces)
        for r in roles:
            for fam in ("-4", "-6"):
                self.exec(r, ["ip", fam, "route", "flush", "cache"])

    def status(self) -> dict[str, Any]:
        return self.facts()


def reap(
    *,
    state_dir_root: str | Path | None = None,
    include_persistent: bool = False,
    include_live: bool = False,
) -> list[str]:
    """Tear down registered labs whose owner is gone (and more if asked); return their names.

    ``include_persistent``: also labs made by the CLI (they have no owner).
    ``include_live``: also labs whose owning process still runs (another test session!).
    """
    removed = []
    for rec in list_records(state_root(state_dir_root)):
        if rec.owner is None and not include_persistent:
            continue
        if rec.owner is not None and rec.owner.alive() and not include_live:
            continue
        Lab._from_record(rec, state_dir_root).down()
        removed.append(rec.name)
    return removed
