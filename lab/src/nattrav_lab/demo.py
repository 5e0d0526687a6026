"""``make demo``: nattrav doing its job from behind a real home router, then cleaned up.

Brings up a lab (``eim`` by default: a home router with NAT, UPnP IGD, NAT-PMP and PCP, and
coturn on the "internet"), then from the LAN host runs ``nattrav plugins list``, ``nattrav
probe`` (one report of the whole network) and a short ``nattrav map 40000`` (a reachable public
endpoint, held for a few seconds, then released). Every command is pointed at the lab's own
servers with the options the installed plugins offer (``--stun HOST:PORT``, ``--turn`` as an
RFC 7065 ``turn:`` URI with ``--turn-user``/``--turn-password``), so nothing leaves the lab.
Afterwards it checks that the router holds no mapping any more, and tears the lab down. The
exit code is non-zero if any step fails, so CI can run the demo as a check.

``python -m nattrav_lab.demo [TOPOLOGY]`` (eim, symmetric, open, double, no-igd, udp-blocked).
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence

__all__ = ["main", "server_options"]

NATTRAV = [sys.executable, "-m", "nattrav.cli"]


def _banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def _help(lab: object, command: str, env: dict[str, str]) -> str | None:
    """The command's ``--help`` text, or ``None`` when the installed nattrav lacks it."""
    from nattrav_lab.lab import Lab

    assert isinstance(lab, Lab)
    proc = lab.exec("lan", [*NATTRAV, command, "--help"], timeout=60, env=env)
    return proc.stdout if proc.returncode == 0 else None


def server_options(lab: object, help_text: str) -> list[str]:
    """Options pointing a command at the lab's STUN/TURN server, for those the plugins offer.

    STUN: the primary IPv4 and IPv6 addresses (not the RFC 5780 alternate ones: a port that
    talked to the alternate address cannot have its inbound reachability verified). TURN: an
    RFC 7065 URI without a transport (UDP, then TCP) and long-term credentials.
    """
    from nattrav_lab.lab import Lab

    assert isinstance(lab, Lab)
    host4, port4 = lab.stun_primary4
    host6, port6 = lab.stun_primary6
    turn = lab.turn
    options: list[str] = []
    if "--stun" in help_text:
        options += ["--stun", f"{host4}:{port4}", "--stun", f"[{host6}]:{port6}"]
    if "--turn-user" in help_text:
        options += [
            "--turn",
            f"turn:{turn.host4}:{turn.port}",
            "--turn-user",
            turn.user,
            "--turn-password",
            turn.password,
        ]
    return options


def _run_step(
    lab: object, title: str, argv: Sequence[str], timeout: float, env: dict[str, str]
) -> bool:
    from nattrav_lab.lab import Lab

    assert isinstance(lab, Lab)
    shown = [
        ("<secret>" if i and argv[i - 1] == "--turn-password" else a) for i, a in enumerate(argv)
    ]
    _banner(f"{title}: nattrav {shlex.join(shown[len(NATTRAV) :])}")
    started = time.monotonic()
    proc = lab.exec("lan", list(argv), timeout=timeout, env=env)
    took = time.monotonic() - started
    if proc.stdout:
        print(proc.stdout.rstrip())
    if proc.stderr:
        print(proc.stderr.rstrip(), file=sys.stderr)
    ok = proc.returncode == 0
    print(f"--- {'ok' if ok else f'FAILED (exit {proc.returncode})'} in {took:.1f} s", flush=True)
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    from nattrav_lab.lab import Lab, LabError

    args = list(sys.argv[1:] if argv is None else argv)
    topology = args[0] if args else "eim"
    if os.geteuid() != 0:
        print("demo: the lab needs root (network namespaces, nftables, daemons)", file=sys.stderr)
        return 2
    started_all = time.monotonic()
    _banner(f"bringing up the {topology} lab (home router with NAT, UPnP/NAT-PMP/PCP, coturn)")
    try:
        lab = Lab.up(topology)
    except LabError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    failures: list[str] = []
    state = tempfile.TemporaryDirectory(prefix="nattrav-demo-")
    # The demo's own journal (not the user's), and never a public server.
    env = dict(os.environ, NATTRAV_STATE_DIR=state.name, NATTRAV_NO_PUBLIC_SERVERS="1")
    try:
        print(f"lab {lab.name} up in {lab.up_seconds or 0:.2f} s")
        print(
            f"LAN host {lab.lan_host_ip4} / {lab.lan_host_ip6} behind router "
            f"{lab.router_lan_ip4} -> public {lab.public_ip4}; "
            f"STUN/TURN at {lab.stun_primary4[0]}:{lab.stun_primary4[1]}"
        )
        steps: list[tuple[str, list[str], float]] = [
            ("plugins", [*NATTRAV, "plugins", "list"], 60),
        ]
        probe_help = _help(lab, "probe", env)
        if probe_help is not None:
            steps.append(("probe", [*NATTRAV, "probe", *server_options(lab, probe_help)], 120))
        else:
            print("(this nattrav has no `probe` command: skipping it)")
        map_help = _help(lab, "map", env) or ""
        steps.append(
            (
                "map",
                [*NATTRAV, "map", "40000", "--hold", "3", *server_options(lab, map_help)],
                120,
            )
        )
        for title, step_argv, timeout in steps:
            try:
                ok = _run_step(lab, title, step_argv, timeout, env)
            except LabError as exc:
                print(f"--- FAILED: {exc}", flush=True)
                ok = False
            if not ok:
                failures.append(title)
        if lab.has_igd():
            gateway = lab.gateway_state()
            _banner("router after the demo")
            print(
                "no mapping or pinhole left behind"
                if gateway.empty
                else f"mappings still on the router: {gateway.rules} {gateway.leases}"
            )
            if not gateway.empty:
                failures.append("cleanup")
    finally:
        started = time.monotonic()
        lab.down()
        state.cleanup()
        _banner(f"lab down in {time.monotonic() - started:.2f} s")
    print(f"demo took {time.monotonic() - started_all:.1f} s")
    if failures:
        print(f"demo: failed steps: {', '.join(failures)}", file=sys.stderr)
        return 1
    print("demo: all steps succeeded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
