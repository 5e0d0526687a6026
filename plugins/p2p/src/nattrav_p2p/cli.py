"""``nattrav connect`` and ``nattrav rendezvous serve``.

``nattrav connect --rendezvous ws://HOST:PORT --room NAME`` joins a room; the first peer in
the room makes the offer, the second answers (``--role`` overrides). ``nattrav connect
--paste --role offer|answer`` signals by copy and paste instead: the offer and the answer
are single lines printed on stderr, the other side's line is read from the terminal.

Once connected, standard input is sent to the peer (one datagram per read, at most
``--chunk`` bytes: UDP semantics, no retransmission) and what the peer sends is written to
standard output. Status goes to stderr (``--json``: one JSON object per line: ``connected``
with the path, ``path_changed``, ``closed`` with statistics), so stdout carries only data.
At end of input the command waits ``--linger`` seconds for the peer's last datagrams.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["configure_connect", "configure_rendezvous", "run_connect", "run_rendezvous"]


def configure_connect(parser: argparse.ArgumentParser) -> None:
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--rendezvous", metavar="URL", help="rendezvous server (ws://HOST:PORT)")
    how.add_argument(
        "--paste", action="store_true", help="signal by copying and pasting one line each way"
    )
    parser.add_argument("--room", metavar="NAME", help="room on the rendezvous server")
    parser.add_argument(
        "--role",
        choices=["offer", "answer", "auto"],
        default="auto",
        help="offer or answer (auto: first in the room offers; --paste needs it)",
    )
    parser.add_argument("--port", type=int, default=0, help="local UDP port (default: any)")
    parser.add_argument("--chunk", type=int, default=1200, help="bytes per datagram")
    parser.add_argument("--linger", type=float, default=1.0, help="seconds to wait at EOF")
    parser.add_argument(
        "--gather-timeout", type=float, default=5.0, help="seconds to gather candidates"
    )
    parser.add_argument(
        "--family",
        choices=["4", "6", "both"],
        default="both",
        help="IP families to connect over (default both)",
    )


def configure_rendezvous(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["serve"], help="serve: run the server")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=8765, help="TCP port to listen on")


def _status(cli: Any, event: str, text: str, **fields: Any) -> None:
    if cli.json:
        sys.stderr.write(json.dumps({"event": event, **fields}, default=str) + "\n")
    else:
        sys.stderr.write(text + "\n")
    sys.stderr.flush()


def run_connect(args: argparse.Namespace, cli: Any) -> int:
    from nattrav.cli import UsageError

    if args.paste:
        if args.role == "auto":
            raise UsageError("nattrav connect --paste needs --role offer or --role answer")
    elif not args.rendezvous or not args.room:
        raise UsageError("nattrav connect needs --rendezvous URL --room NAME, or --paste")
    if args.chunk < 1 or args.chunk > 65000:
        raise UsageError("--chunk must be 1-65000")
    result: int = cli.run(_connect, args, cli)
    return result


async def _connect(args: argparse.Namespace, cli: Any) -> int:
    from contextlib import AsyncExitStack

    import anyio
    from nattrav.connect import connect

    from nattrav_p2p.signals import PasteSignal

    runtime = cli.runtime()
    async with AsyncExitStack() as stack:
        if args.paste:
            signal: Any = PasteSignal()
            role = args.role
        else:
            from nattrav_p2p.rendezvous import rendezvous_signal

            signal = await stack.enter_async_context(rendezvous_signal(args.rendezvous, args.room))
            role = (
                args.role if args.role != "auto" else ("offer" if signal.peers <= 1 else "answer")
            )
        conn: Any = await stack.enter_async_context(
            connect(
                signal,
                role=role,
                port=args.port,
                runtime=runtime,
                gather_timeout=args.gather_timeout,
                families=(4, 6) if args.family == "both" else (int(args.family),),
            )
        )
        path = conn.path
        _status(cli, "connected", f"connected ({role}): {path.describe()}", path=path.to_json())
        async with anyio.create_task_group() as tg:

            async def downstream() -> None:
                out = sys.stdout.buffer
                while True:
                    data = await conn.receive()
                    out.write(data)
                    out.flush()

            async def changes() -> None:
                async for event in conn.path_changes():
                    name = type(event).__name__
                    if name == "PathChanged":
                        _status(
                            cli,
                            "path_changed",
                            f"path changed ({event.reason}): {event.new.describe()}",
                            path=event.new.to_json(),
                            reason=event.reason,
                        )

            tg.start_soon(downstream)
            tg.start_soon(changes)
            stdin: Any = sys.stdin.buffer
            while True:
                chunk = await anyio.to_thread.run_sync(
                    stdin.read1, args.chunk, abandon_on_cancel=True
                )
                if not chunk:
                    break
                await conn.send(chunk)
            await anyio.sleep(args.linger)
            stats = conn.stats()
            _status(
                cli,
                "closed",
                f"closed: sent {stats['datagrams_sent']} and received "
                f"{stats['datagrams_received']} datagrams over {path.kind}",
                stats=stats,
            )
            tg.cancel_scope.cancel()
    return 0


def run_rendezvous(args: argparse.Namespace, cli: Any) -> int:
    result: int = cli.run(_serve, args, cli)
    return result


async def _serve(args: argparse.Namespace, cli: Any) -> int:
    import anyio

    from nattrav_p2p.rendezvous import serve

    async with anyio.create_task_group() as tg:
        port = await tg.start(serve, args.host, args.port)
        _status(
            cli,
            "listening",
            f"rendezvous server listening on {args.host}:{port} (Ctrl-C stops it)",
            host=args.host,
            port=port,
        )
    return 0
