"""``make demo``: nattrav doing its job from behind a real home router, then cleaned up.

Brings up the ``eim`` lab, runs from the LAN host ``nattrav plugins list``, ``nattrav probe``
(when the installed nattrav has that command; it is detected at run time) and ``nattrav map
40000 --hold 3``, prints what each said, and tears the lab down. Options that installed plugins
add to those commands are fed the lab's servers when present (``--stun``, ``--turn``...). The
exit code is non-zero if any step fails, so CI can run the demo as a check.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Sequence

__all__ = ["main"]

NATTRAV = [sys.executable, "-m", "nattrav.cli"]


def _banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def _has_command(lab: object, name: str) -> bool:
    from nattrav_lab.lab import Lab

    assert isinstance(lab, Lab)
    proc = lab.exec("lan", [*NATTRAV, name, "--help"], timeout=60)
    return proc.returncode == 0


def _server_options(lab: object, command: str) -> list[str]:
    """Options pointing the command at the lab's STUN/TURN server, if plugins offer them."""
    from nattrav_lab.lab import Lab

    assert isinstance(lab, Lab)
    help_text = lab.exec("lan", [*NATTRAV, command, "--help"], timeout=60).stdout
    host, port = lab.stun_primary4
    turn = lab.turn
    options: list[str] = []
    if "--stun" in help_text:
        options += ["--stun", f"{host}:{port}"]
    if "--turn " in help_text or "--turn\n" in help_text or "--turn=" in help_text:
        options += ["--turn", f"turn://{turn.user}:{turn.password}@{host}:{port}"]
    return options


def _run_step(lab: object, title: str, argv: Sequence[str], timeout: float) -> bool:
    from nattrav_lab.lab import Lab

    assert isinstance(lab, Lab)
    _banner(f"{title}: {shlex.join(argv[2:] if argv[:3] == NATTRAV else argv)}")
    started = time.monotonic()
    proc = lab.exec("lan", list(argv), timeout=timeout)
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
    _banner(f"bringing up the {topology} lab (home router with NAT, UPnP/NAT-PMP/PCP, coturn)")
    try:
        lab = Lab.up(topology)
    except LabError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    failures: list[str] = []
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
        if _has_command(lab, "probe"):
            steps.append(("probe", [*NATTRAV, "probe", *_server_options(lab, "probe")], 120))
        else:
            print("(this nattrav has no `probe` command yet: skipping it)")
        steps.append(
            ("map", [*NATTRAV, "map", "40000", "--hold", "3", *_server_options(lab, "map")], 120)
        )
        for title, step_argv, timeout in steps:
            try:
                ok = _run_step(lab, title, step_argv, timeout)
            except LabError as exc:
                print(f"--- FAILED: {exc}", flush=True)
                ok = False
            if not ok:
                failures.append(title)
        state = lab.gateway_state() if lab.has_igd() else None
        if state is not None:
            _banner("router after the demo")
            print(
                "no mappings left behind"
                if state.empty
                else f"mappings still on the router: {state.rules} {state.leases}"
            )
            if not state.empty:
                failures.append("cleanup")
    finally:
        started = time.monotonic()
        lab.down()
        _banner(f"lab down in {time.monotonic() - started:.2f} s")
    if failures:
        print(f"demo: failed steps: {', '.join(failures)}", file=sys.stderr)
        return 1
    print("demo: all steps succeeded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
