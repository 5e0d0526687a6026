"""The only module here that touches sockets, anyio or the clock.

``discover_pmtu`` runs one ``StunPmtuProber`` over a UDP socket it configures with the
platform's Don't Fragment options (``sockopts``) until the search settles (SEARCH_COMPLETE or
ERROR) or a deadline passes. ``ProbeSocket`` is that socket: it drains the Linux error queue
before every send (a pending socket error would otherwise make the *next* ``sendto`` fail and
silently drop that probe) and after every wake-up, turning entries into ``QueuedError``s for the
prober. ``echo_server`` runs an ``EchoResponder`` on a UDP port.

Every socket is owned by an async context manager and closed on exit, error or cancellation;
a socket passed in by the caller (e.g. one made inside a lab namespace) is used but left open.
"""

from __future__ import annotations

import errno
import logging
import math
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

import anyio
import anyio.abc
import attrs
from nattrav.addresses import format_hostport
from nattrav.errors import MethodUnavailable, NatTravError, ParseError
from nattrav.taskgroups import single_errors

from nattrav_pmtud.echo import EchoResponder
from nattrav_pmtud.errqueue import QueuedError, queued_error
from nattrav_pmtud.prober import ProbeCredentials, StunPmtuProber
from nattrav_pmtud.search import Event, PmtuResult, SearchSettings
from nattrav_pmtud.sockopts import DontFragmentPlan, current_platform, dont_fragment_plan

__all__ = [
    "EchoServer",
    "ProbeSocket",
    "discover_pmtu",
    "echo_server",
    "open_probe_socket",
    "resolve",
]

log = logging.getLogger("nattrav.pmtud")

_MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
#: bounded draining: a flood cannot keep the loop from its timers
_DRAIN_LIMIT = 256


async def resolve(host: str, port: int, family: int | None = None) -> list[tuple[str, int]]:
    """IP literals pass through; names resolve (UDP) to every address of the wanted family."""
    try:
        import ipaddress

        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    else:
        if family is not None and ip.version != family:
            return []
        return [(str(ip), port)]
    af = {4: socket.AF_INET, 6: socket.AF_INET6, None: socket.AF_UNSPEC}[family]
    try:
        infos = await anyio.getaddrinfo(host, port, family=af, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise NatTravError(f"cannot resolve {host!r}: {exc}") from None
    out: list[tuple[str, int]] = []
    for _fam, _t, _p, _c, sockaddr in infos:
        addr = (str(sockaddr[0]), int(sockaddr[1]))
        if addr not in out:
            out.append(addr)
    return out


@attrs.define
class ProbeSocket:
    """A UDP socket with Don't Fragment set, and its error queue, for one family."""

    sock: socket.socket
    plan: DontFragmentPlan

    @property
    def family(self) -> int:
        return self.plan.family

    def local_address(self) -> tuple[str, int]:
        name = self.sock.getsockname()
        return str(name[0]), int(name[1])

    def read_errors(self) -> list[QueuedError]:
        """Everything in the error queue now (Linux); also clears a pending socket error."""
        if not self.plan.error_queue:
            return []
        out: list[QueuedError] = []
        for _ in range(_DRAIN_LIMIT):
            try:
                data, anc, _flags, addr = self.sock.recvmsg(2048, 1024, _MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    break
                log.debug("error queue read failed: %s", exc)
                break
            try:
                out.append(queued_error(data, anc, addr))
            except ParseError as exc:
                log.debug("unparsable error-queue entry: %s", exc)
        return out

    def read_datagrams(self) -> tuple[list[tuple[bytes, tuple[str, int]]], list[QueuedError]]:
        """Datagrams waiting now, and errors met while reading them."""
        datagrams: list[tuple[bytes, tuple[str, int]]] = []
        errors = self.read_errors()
        for _ in range(_DRAIN_LIMIT):
            try:
                data, addr = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                # An ICMP error reported as a socket error (ECONNREFUSED, EMSGSIZE): the entry
                # itself is in the error queue.
                more = self.read_errors()
                errors += more
                if not more:
                    break
                continue
            datagrams.append((data, (str(addr[0]).split("%", 1)[0], int(addr[1]))))
        return datagrams, errors

    async def send(self, data: bytes, address: tuple[str, int]) -> OSError | None:
        """Send one datagram; return the error the host raised (None when it left)."""
        for _ in range(3):
            try:
                self.sock.sendto(data, address)
                return None
            except (BlockingIOError, InterruptedError):
                await anyio.wait_writable(self.sock)
            except OSError as exc:
                return exc
        return OSError(errno.EAGAIN, "socket stayed busy")

    async def wait(self, deadline: float) -> None:
        """Until the socket is readable (data or an error) or ``deadline`` (anyio time)."""
        with anyio.CancelScope(deadline=deadline):
            await anyio.wait_readable(self.sock)


def _apply(sock: socket.socket, plan: DontFragmentPlan) -> None:
    for option in plan.options:
        try:
            sock.setsockopt(option.level, option.name, option.value)
        except OSError as exc:
            raise MethodUnavailable(
                "pmtud", f"cannot set {option.label} on this socket: {exc.strerror or exc}"
            ) from None


@asynccontextmanager
async def open_probe_socket(
    family: int,
    *,
    sock: socket.socket | None = None,
    bind: tuple[str, int] | None = None,
    platform: str | None = None,
) -> AsyncIterator[ProbeSocket]:
    """A ``ProbeSocket`` for ``family``: ours (closed on exit) or ``sock`` (left open)."""
    plan = dont_fragment_plan(platform or current_platform(), family)
    if not plan.supported:
        raise MethodUnavailable("pmtud", plan.notes)
    owned = sock is None
    if sock is None:
        sock = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        if owned:
            if family == 6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(bind or (("0.0.0.0" if family == 4 else "::"), 0))
        sock.setblocking(False)
        _apply(sock, plan)
        yield ProbeSocket(sock, plan)
    finally:
        if owned:
            sock.close()


async def run_prober(
    prober: StunPmtuProber,
    psock: ProbeSocket,
    *,
    deadline: float = 30.0,
    until_settled: bool = True,
    on_event: Callable[[Event], None] | None = None,
) -> PmtuResult:
    """Drive ``prober`` over ``psock`` until it settles (or forever) or ``deadline`` seconds."""
    end = anyio.current_time() + deadline
    overhead = 28 if psock.family == 4 else 48
    with anyio.move_on_after(deadline):
        prober.start(anyio.current_time())
        while True:
            for data, address in prober.datagrams_to_send():
                for entry in psock.read_errors():  # clears a pending error first
                    prober.receive_error(entry, anyio.current_time())
                failure = await psock.send(data, address)
                if failure is None:
                    continue
                now = anyio.current_time()
                if failure.errno in (psock.plan.emsgsize, errno.EMSGSIZE):
                    local_mtu: int | None = None
                    for entry in psock.read_errors():
                        if entry.is_local_mtu and entry.mtu > 0:
                            local_mtu = entry.mtu
                        else:
                            prober.receive_error(entry, now)
                    log.debug(
                        "probe of %d bytes refused locally (interface MTU %s)",
                        len(data) + overhead,
                        local_mtu,
                    )
                    prober.send_failed(data, now, local_mtu)
                else:  # no route, firewall...: the probe is lost; the probe timer decides
                    log.debug("probe to %s not sent: %s", format_hostport(*address), failure)
            event = prober.next_event()
            while event is not None:
                if on_event is not None:
                    on_event(event)
                event = prober.next_event()
            if until_settled and prober.settled:
                break
            if prober.has_outgoing:
                continue
            timer = prober.get_timer()
            await psock.wait(min(end, math.inf if timer is None else timer))
            now = anyio.current_time()
            datagrams, errors = psock.read_datagrams()
            for entry in errors:
                prober.receive_error(entry, now)
            for data, source in datagrams:
                prober.receive_datagram(data, source, now)
            if timer is not None and now >= timer:
                prober.handle_timer(now)
    return prober.result()


async def discover_pmtu(
    target: tuple[str, int],
    settings: SearchSettings | None = None,
    *,
    credentials: ProbeCredentials | None = None,
    software: str | None = None,
    sock: socket.socket | None = None,
    platform: str | None = None,
    deadline: float = 30.0,
    on_event: Callable[[Event], None] | None = None,
) -> PmtuResult:
    """Find the path MTU towards ``target`` (an IP literal and port of a STUN server or a
    nattrav echo peer) with padded Binding probes; return when the search settles.

    ``settings.family`` must match the target's family (it is set from the target when
    ``settings`` is None). ``sock``: use this UDP socket (of that family) instead of a new one.
    """
    host, port = target
    family = 6 if ":" in host else 4
    settings = settings or SearchSettings(family=family)
    if settings.family != family:
        settings = attrs.evolve(settings, family=family)
    prober = StunPmtuProber((host, port), settings, credentials=credentials, software=software)
    async with open_probe_socket(family, sock=sock, platform=platform) as psock:
        return await run_prober(prober, psock, deadline=deadline, on_event=on_event)


# ------------------------------------------------------------------------ echo responder


@attrs.define
class EchoServer:
    """A running echo responder: where it listens and what it did."""

    address: tuple[str, int]
    responder: EchoResponder


@asynccontextmanager
async def echo_server(
    bind: tuple[str, int] = ("::", 0),
    *,
    sock: socket.socket | None = None,
    credentials: ProbeCredentials | None = None,
    software: str | None = "nattrav",
) -> AsyncIterator[EchoServer]:
    """Answer Binding requests on ``bind`` (or ``sock``, which the server then owns and
    closes) while the context is open."""
    responder = EchoResponder(credentials, software=software)
    if sock is None:
        family = socket.AF_INET6 if ":" in bind[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                with suppress(OSError):  # "::" serves both families where the host allows
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(bind)
        except BaseException:
            sock.close()
            raise
    sock.setblocking(False)
    udp = await anyio.abc.UDPSocket.from_socket(sock)
    name = sock.getsockname()
    server = EchoServer((str(name[0]), int(name[1])), responder)

    async def serve() -> None:
        while True:
            try:
                data, addr = await udp.receive()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            except OSError:
                continue  # an ICMP error about an earlier reply
            reply = responder.respond(data, (str(addr[0]), int(addr[1])))
            if reply is not None:
                with suppress(OSError):
                    await udp.sendto(reply, str(addr[0]), int(addr[1]))

    try:
        with single_errors():
            async with anyio.create_task_group() as tg:
                tg.start_soon(serve)
                try:
                    yield server
                finally:
                    tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await udp.aclose()
