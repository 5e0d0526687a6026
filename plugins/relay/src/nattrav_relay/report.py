"""The ``relay`` section of ``nattrav probe``: can each TURN server be used, over what?

For every configured server it tries each transport that the URI implies (``turn:`` over
UDP and TCP on the same port, ``turns:`` over TLS), all at once: allocate, note the relayed
and mapped addresses and how long it took, delete. The mapped addresses go to core's
double-NAT verdict (``mapped_ips``). A transport that works when another does not is the
interesting fact (UDP blocked but TCP/TLS open: the relay still works).
"""

from __future__ import annotations

import time
from typing import Any

import anyio

from nattrav_relay.config import RelayConfig, ServerConfig, load_config, parse_turn_uri

__all__ = ["probe_server", "report_section", "transports_to_test"]


def transports_to_test(server: ServerConfig) -> list[tuple[str, str]]:
    """``(transport, uri)`` pairs: the URI's own transport first."""
    address = parse_turn_uri(server.uri)
    if address.transport == "tls":
        return [("tls", server.uri)]
    host = f"[{address.host}]" if ":" in address.host else address.host
    own = address.transport
    other = "tcp" if own == "udp" else "udp"
    return [
        (own, f"turn:{host}:{address.port}?transport={own}"),
        (other, f"turn:{host}:{address.port}?transport={other}"),
    ]


async def probe_server(
    config: RelayConfig,
    server: ServerConfig,
    transport: str,
    uri: str,
    credentials: Any,
    timeout: float,
) -> dict[str, Any]:
    """Allocate and delete once on ``uri``; a JSON-able result (never raises)."""
    from nattrav_stun.auth import LongTermCredentials

    from nattrav_relay.driver import RelayError, allocate

    result: dict[str, Any] = {"transport": transport, "uri": uri, "ok": False}
    if credentials is None:
        result["error"] = "no credentials"
        return result
    started = time.monotonic()
    released: list[bool] = []

    def on_event(event: Any) -> None:
        if event.kind.value == "released":
            released.append(bool(event.details.get("confirmed")))

    try:
        with anyio.fail_after(timeout + config.release_timeout + 0.5):
            async with allocate(
                parse_turn_uri(uri),
                credentials=LongTermCredentials(
                    credentials.username, credentials.password, realm=credentials.realm
                ),
                settings=config.client_settings((4,), lifetime=60),
                ca_file=server.ca_file or config.ca_file,
                server_name=server.server_name or config.server_name,
                allocate_timeout=timeout,
                release_timeout=config.release_timeout,
                recover=False,
                on_event=on_event,
                max_redirects=config.max_redirects,
            ) as ep:
                result.update(
                    ok=True,
                    relayed=str(ep.relayed),
                    mapped=None if ep.mapped is None else str(ep.mapped),
                    lifetime=ep.lifetime,
                    allocate_ms=round((time.monotonic() - started) * 1000, 1),
                )
                if ep.redirected_from:
                    result["server_address"] = str(ep.server_address)
                    result["redirected_from"] = [str(a) for a in ep.redirected_from]
    except RelayError as exc:
        result["error"] = str(exc)
        code = getattr(exc.event, "code", None)
        if code:
            result["code"] = code
    except TimeoutError:
        result["error"] = f"no answer within {timeout:.1f} s"
    if result["ok"]:
        result["deleted"] = bool(released and released[-1])
    return result


async def report_section(ctx: Any) -> dict[str, Any]:
    """The probe section (``ctx`` is core's ``ProbeContext``)."""
    from nattrav_relay.credentials import CredentialSource, hook_provider

    config = load_config(ctx.settings("relay"))
    if not config.servers:
        return {
            "configured": False,
            "servers": [],
            "note": "no TURN server configured ([plugins.relay] servers, or --turn URI)",
        }
    providers = []
    pm = getattr(getattr(getattr(ctx, "runtime", None), "host", None), "pm", None)
    if pm is not None:
        providers.append(hook_provider(pm))
    source = CredentialSource(config, providers)
    # A transport that answers nothing (UDP blocked) costs a few probe windows, not the
    # method's whole allocation timeout.
    window = float(getattr(ctx.options, "window", 0.5))
    timeout = max(
        0.5,
        min(
            config.timeout,
            max(2.0, 4 * window),
            ctx.options.timeout - config.release_timeout - 1.0,
        ),
    )
    results: list[dict[str, Any]] = []

    async def one(server: ServerConfig, transport: str, uri: str) -> None:
        try:
            creds = await source.get(server)
        except Exception as exc:  # a provider's bug must not cost the section
            results.append(
                {
                    "server": server.uri,
                    "transport": transport,
                    "ok": False,
                    "error": f"credential provider failed: {exc}",
                }
            )
            return
        outcome = await probe_server(config, server, transport, uri, creds, timeout)
        outcome["server"] = server.uri
        results.append(outcome)

    async with anyio.create_task_group() as tg:
        for server in config.servers:
            for transport, uri in transports_to_test(server):
                tg.start_soon(one, server, transport, uri)
    order = {s.uri: n for n, s in enumerate(config.servers)}
    rank = {"udp": 0, "tcp": 1, "tls": 2}
    results.sort(key=lambda r: (order.get(r["server"], 99), rank.get(r["transport"], 9)))
    reachable: dict[str, dict[str, bool]] = {}
    for r in results:
        reachable.setdefault(r["server"], {})[r["transport"]] = bool(r["ok"])
    mapped = sorted({r["mapped"].rsplit(":", 1)[0].strip("[]") for r in results if r.get("mapped")})
    return {
        "configured": True,
        "usable": any(r["ok"] for r in results),
        "reachable": reachable,
        "servers": results,
        "mapped_ips": mapped,
    }


def render_section(data: Any) -> list[str]:
    """Readable lines for the human ``nattrav probe`` output."""
    if not data.get("configured"):
        return [str(data.get("note") or "no TURN server configured")]
    lines = []
    for r in data.get("servers") or []:
        if r.get("ok"):
            lines.append(
                f"{r['server']} over {r['transport'].upper()}: allocation works "
                f"({r.get('relayed')}, {r.get('allocate_ms')} ms"
                + (f", on {r['server_address']} by redirect" if r.get("redirected_from") else "")
                + (", deleted)" if r.get("deleted") else ", not confirmed deleted)")
            )
        else:
            lines.append(f"{r['server']} over {r['transport'].upper()}: no ({r.get('error')})")
    lines.append(
        "usable: "
        + ("yes" if data.get("usable") else "no")
        + " (a relayed address is reachable only by peers with a permission)"
    )
    return lines
