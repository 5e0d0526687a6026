"""``nattrav lab up|down|status|exec``: drive labs from the shell.

Labs made here are *persistent*: they outlive the command (that is the point) and belong to no
process, so only ``nattrav lab down`` removes them. ``configure`` runs at every ``nattrav``
start, so this module imports nothing heavy at module level.
"""

from __future__ import annotations

import argparse
import subprocess
from typing import Any

__all__ = ["configure", "run"]


def _json_flag(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: an unset flag here must not overwrite `nattrav lab --json ...`.
    parser.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )


def configure(parser: argparse.ArgumentParser) -> None:
    from nattrav_lab.plan import TOPOLOGIES

    sub = parser.add_subparsers(dest="lab_command", metavar="ACTION")
    sub.required = True

    up = sub.add_parser("up", help="bring a lab up (a no-op if that name is up already)")
    up.add_argument("--topology", "-t", choices=list(TOPOLOGIES), default="eim")
    up.add_argument("--name", help="lab name (default: generated; printed)")
    up.add_argument(
        "--second-site",
        choices=list(TOPOLOGIES),
        default=None,
        help="add a second site with this topology on the same internet",
    )
    up.add_argument("--second-lan-host", action="store_true", help="add role lan2")
    up.add_argument("--wan-mtu", type=int, default=1500)
    up.add_argument("--lan-mtu", type=int, default=1500)
    _json_flag(up)

    down = sub.add_parser("down", help="tear labs down")
    which = down.add_mutually_exclusive_group(required=True)
    which.add_argument("--name", help="the lab to remove")
    which.add_argument(
        "--all",
        action="store_true",
        help="every lab made by `nattrav lab up` and every lab whose owning process is gone",
    )
    down.add_argument(
        "--force",
        action="store_true",
        help="with --all: also labs of running processes (e.g. a test session)",
    )
    _json_flag(down)

    status = sub.add_parser("status", help="list labs, or show one lab's facts")
    status.add_argument("--name", help="show this lab in full")
    _json_flag(status)

    ex = sub.add_parser("exec", help="run a command in a lab namespace: exec ROLE -- CMD...")
    ex.add_argument("--name", help="the lab (default: the only one)")
    ex.add_argument("role", help="internet, router, lan, lan2, cgnat, site2.router, site2.lan...")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    _json_flag(ex)


def run(args: argparse.Namespace, cli: Any) -> int:
    from nattrav_lab.lab import LabError

    json_out = bool(getattr(args, "json", False))
    action = args.lab_command
    try:
        if action == "up":
            return _up(args, cli, json_out)
        if action == "down":
            return _down(args, cli, json_out)
        if action == "status":
            return _status(args, cli, json_out)
        return _exec(args, cli, json_out)
    except ValueError as exc:
        raise LabError(str(exc)) from None


def _root_check() -> None:
    import os

    from nattrav_lab.lab import LabError

    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, nftables, daemons)")


def _up(args: argparse.Namespace, cli: Any, json_out: bool) -> int:
    from nattrav_lab.lab import Lab

    _root_check()
    lab = Lab(
        args.topology,
        name=args.name,
        second_site=args.second_site,
        second_lan_host=args.second_lan_host,
        wan_mtu=args.wan_mtu,
        lan_mtu=args.lan_mtu,
        persistent=True,
    )
    lab.bring_up()
    if json_out:
        cli.emit_json(lab.facts())
    else:
        cli.line(
            f"lab {lab.name} is up ({lab.topology}"
            f"{' + ' + lab.second_site if lab.second_site else ''})"
        )
        _print_summary(cli, lab)
        cli.line(f"remove it with: nattrav lab down --name {lab.name}")
    return 0


def _print_summary(cli: Any, lab: Any) -> None:
    cli.table(["role", "namespace"], sorted(lab.namespaces.items()))
    cli.line(f"LAN host:  {lab.lan_host_ip4}  {lab.lan_host_ip6}")
    cli.line(f"router:    LAN {lab.router_lan_ip4}  WAN {lab.router_wan_ip4}  {lab.router_wan_ip6}")
    cli.line(f"public:    {lab.public_ip4}")
    t = lab.turn
    cli.line(
        f"STUN/TURN: {t.host4}:{t.port} [{t.host6}]:{t.port} (alternate "
        f"{t.alternate_host4}:{t.alternate_port}), TLS {t.tls_port}, user {t.user} "
        f"password {t.password} realm {t.realm}"
    )
    cli.line(f"TLS CA:    {t.ca_path}")
    cli.line(
        f"peers:     {lab.internet_peer_ips4[0]}-{lab.internet_peer_ips4[-1].split('.')[-1]}"
        f"  {lab.internet_peer_ips6[0]}-{lab.internet_peer_ips6[-1].split(':')[-1]}"
    )


def _down(args: argparse.Namespace, cli: Any, json_out: bool) -> int:
    from nattrav_lab.lab import Lab, reap

    _root_check()
    if args.all:
        removed = reap(include_persistent=True, include_live=args.force)
    else:
        Lab.attach(args.name).down()
        removed = [args.name]
    if json_out:
        cli.emit_json({"removed": removed})
    else:
        cli.line(f"removed: {', '.join(removed) if removed else 'nothing'}")
    return 0


def _status(args: argparse.Namespace, cli: Any, json_out: bool) -> int:
    from nattrav_lab.lab import Lab

    labs = [Lab.attach(args.name)] if args.name else Lab.all()
    if json_out:
        cli.emit_json({"labs": [lab.facts() for lab in labs]})
        return 0
    if args.name:
        lab = labs[0]
        cli.line(f"lab {lab.name}: {lab.topology}, {'up' if lab.is_up else 'not up'}")
        _print_summary(cli, lab)
        return 0
    rows = []
    for lab in labs:
        facts = lab.facts()
        alive = all(d["alive"] for d in facts["daemons"].values())
        rows.append(
            [
                lab.name,
                lab.topology + (f"+{lab.second_site}" if lab.second_site else ""),
                "up" if lab.is_up and alive else "broken" if lab.is_up else "down",
                "cli" if lab.persistent else "process",
                str(lab.state_dir),
            ]
        )
    if rows:
        cli.table(["name", "topology", "state", "owner", "state dir"], rows)
    else:
        cli.line("no labs")
    return 0


def _exec(args: argparse.Namespace, cli: Any, json_out: bool) -> int:
    from nattrav_lab.lab import Lab, LabError

    _root_check()
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise LabError("nothing to run: nattrav lab exec ROLE -- CMD...")
    if args.name:
        lab = Lab.attach(args.name)
    else:
        labs = Lab.all()
        if len(labs) != 1:
            names = ", ".join(x.name for x in labs) or "none"
            raise LabError(f"pass --name: {len(labs)} labs exist ({names})")
        lab = labs[0]
    ns = lab.netns(args.role)
    if json_out:
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, check=False
        )
        cli.emit_json(
            {
                "lab": lab.name,
                "role": args.role,
                "namespace": ns,
                "argv": cmd,
                "returncode": proc.returncode,
                "stdout": proc.stdout,
                "stderr": proc.stderr,
            }
        )
        return proc.returncode
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], check=False).returncode
