"""The asyncio edge of the SIP user agent: UDP, TCP and TLS sockets on one event loop.

One `SipTransport` listens on one address and owns every socket SIP uses there: the UDP
socket, the TCP/TLS listeners, and the stream connections in both directions (outgoing ones
are kept and reused per destination; incoming ones carry our responses and, while open, our
requests to that peer). Parsed messages go to `on_message(msg, source)`; what cannot be
parsed is answered with the status the parser chose when enough of a request survives
(RFC 3261 8.2 wants a 400 rather than silence) and otherwise dropped and counted, and
nothing raised by bad input ever leaves the transport.

It also does the transport-level chores of RFC 3261 section 18 and its friends:
- Via: `make_via()` builds ours with `rport` (RFC 3581); incoming requests get
  `received`/`rport` stamped into their top Via, and responses follow them back
  (`respond()`), so UDP answers go to the packet's source ip:port (symmetric routing).
  What responses say our address is (`received`/`rport`) is kept per transport and
  reported through `on_public_address`, so the UA can fix its Contact and re-register.
- Keepalives (`start_keepalive`): CRLFCRLF ping / CRLF pong on TCP/TLS flows (RFC 5626
  4.4.1), and OPTIONS over UDP (see `start_keepalive` for why); pings from the far end are
  answered.
- DSCP CS3 on every SIP socket where the OS lets us (logged and skipped otherwise).
- STUN on the SIP UDP socket: datagrams that are STUN go to hooks (`add_datagram_hook`),
  which `porch.sip.stun.binding(endpoint=transport)` uses.

The timing rules (when to ping, resend, give up) are the sans-IO `KeepaliveSchedule`; the
routing rules are the pure `response_destination` and `stamp_via`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import re
import secrets
import socket
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from porch.sip import stun
from porch.sip.errors import RemoteProtocolError
from porch.sip.headers import Via, header_key, split_list
from porch.sip.locate import Target
from porch.sip.message import (
    DEFAULT_LIMITS,
    REASONS,
    Headers,
    KeepAlive,
    Limits,
    Request,
    Response,
    StreamParser,
    build_request,
    is_keepalive,
    make_response,
    parse_datagram,
)

__all__ = [
    "DSCP_CS3",
    "UDP_SAFE_SIZE",
    "BadInput",
    "Flow",
    "Keepalive",
    "KeepaliveSchedule",
    "SipTransport",
    "Source",
    "TransportError",
    "TransportStats",
    "client_tls_context",
    "error_response",
    "new_branch",
    "response_destination",
    "server_tls_context",
    "stamp_via",
    "too_big_for_udp",
]

log = logging.getLogger("porch.sip.transport")

DSCP_CS3 = 0x60  # TOS byte: DSCP 24 (CS3, signalling) << 2
UDP_MAX_PAYLOAD = 65507
# RFC 3261 18.1.1: a larger request should go over a congestion-controlled transport.
UDP_SAFE_SIZE = 1300
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}
STREAMS = ("tcp", "tls")
PING = b"\r\n\r\n"
PONG = b"\r\n"
PONG_TIMEOUT = 10.0  # RFC 5626 4.4.1: no pong within 10 s means the flow has failed
MAX_WRITE_BUFFER = 1 << 20

Address = tuple[str, int]
Message = Request | Response


class TransportError(Exception):
    """A message could not be sent (no route, connection refused, TLS verification ...).

    For the transaction layer this is the 'transport error' of RFC 3261 8.1.3.1 and 17.1.4.
    """


def new_branch() -> str:
    """A fresh RFC 3261 branch (magic cookie plus 64 random bits)."""
    return "z9hG4bK" + secrets.token_hex(8)


def too_big_for_udp(size: int) -> bool:
    """RFC 3261 18.1.1: a request this size should be sent over TCP instead of UDP."""
    return size > UDP_SAFE_SIZE


# ---------------------------------------------------------------------------------------
# Small value types
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Source:
    """Where a message came from: transport, the peer's ip and port, and for TCP/TLS the
    connection it arrived on (responses go back on it while it is open)."""

    transport: str
    host: str
    port: int
    flow: Flow | None = None

    @property
    def address(self) -> Address:
        return (self.host, self.port)


@dataclass(frozen=True)
class BadInput:
    """Input the transport could not deliver: for `on_bad_input` and the log.

    `answered` is the status we sent back (None when the input was dropped); `error` the
    parser's complaint (None for things like a response with an unreadable Via).
    """

    source: Source
    data: bytes
    error: RemoteProtocolError | None
    answered: int | None


@dataclass
class TransportStats:
    received: int = 0  # SIP messages delivered to on_message
    sent: int = 0  # SIP messages handed to the OS
    answered_bad: int = 0  # malformed requests answered with an error status
    dropped: int = 0  # garbage, broken responses, oversize datagrams: not answered
    pings_in: int = 0  # CRLFCRLF received on streams (answered with a pong)
    pings_out: int = 0  # keepalive probes sent (CRLFCRLF or OPTIONS)
    pongs_in: int = 0
    keepalive_failures: int = 0
    stun_in: int = 0
    connections_in: int = 0
    connections_out: int = 0
    connections_refused: int = 0  # incoming connections over max_connections
    idle_closed: int = 0
    callback_errors: int = 0


# ---------------------------------------------------------------------------------------
# Via rules (pure)
# ---------------------------------------------------------------------------------------


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _unbracket(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _same_ip(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(_unbracket(a)) == ipaddress.ip_address(_unbracket(b))
    except ValueError:
        return False


def stamp_via(via: Via, source: Address) -> Via:
    """The top Via of a received request as RFC 3261 18.2.1 and RFC 3581 4 want it:
    `received` when the source differs from sent-by (or rport was asked for), `rport`
    filled with the source port when the client sent an empty `rport`."""
    host, port = source
    params: dict[str, str | None] = {}
    if via.has_rport:
        params["received"] = _bracket(host)
        params["rport"] = str(port)
    elif not _same_ip(via.host, host):
        params["received"] = _bracket(host)
    return via.with_params(**params) if params else via


def response_destination(via: Via, source: Source | None = None) -> Address:
    """Where a response goes over UDP (RFC 3261 18.2.2 with RFC 3581 4).

    rport with a value: the `received` address and that port (the request's source, so
    answers pass back through the NAT binding the request opened); else `maddr`; else
    `received` with the sent-by port; else sent-by itself. `source` stands in for a
    `received` the request did not get stamped (e.g. a response we build by hand).
    """
    received = via.received
    if via.rport is not None:
        host = received or (source.host if source else via.host)
        return _unbracket(host), via.rport
    if via.has_rport and source is not None:
        return source.host, source.port
    if via.maddr:
        return _unbracket(via.maddr), via.port or 5060
    if received:
        return _unbracket(received), via.port or 5060
    return _unbracket(via.host), via.port or DEFAULT_PORTS.get(via.transport.lower(), 5060)


def _replace_top_via(message: Message, via: Via) -> None:
    """Put `via` in place of the first Via value, keeping every other field as it was."""
    fields = message.headers.items()
    for i, (name, value) in enumerate(fields):
        if header_key(name) == "via":
            items = split_list(value)
            items[0] = str(via)
            fields[i] = (name, ", ".join(items))
            break
    message.headers = Headers(fields)


# ---------------------------------------------------------------------------------------
# Salvaging a reply to a request the parser refused
# ---------------------------------------------------------------------------------------

_REQUEST_LINE = re.compile(r"([!%'*+\-.0-9A-Z_`a-z~]+) +\S.* +SIP/\S+\s*")
_SALVAGE_HEADERS = {
    "via": "Via",
    "v": "Via",
    "from": "From",
    "f": "From",
    "to": "To",
    "t": "To",
    "call-id": "Call-ID",
    "i": "Call-ID",
    "cseq": "CSeq",
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _clean(text: str, limit: int = 200) -> str:
    return _CONTROL.sub(" ", text)[:limit].strip()


def error_response(data: bytes, error: RemoteProtocolError) -> tuple[Response | None, str]:
    """The answer to a request the parser refused, or (None, why) when none is possible.

    Uses the parser's partial message when it has one, else fishes the request line and
    the Via/From/To/Call-ID/CSeq lines out of the raw text. Responses, ACKs and anything
    without a Via get nothing: there is nobody to answer or nothing to match it by.
    """
    status = error.status if 300 <= error.status <= 699 else 400
    reason = _clean(error.reason) or REASONS.get(status, "Bad Request")
    partial = error.message
    if isinstance(partial, Response):
        return None, "malformed response"
    if isinstance(partial, Request):
        if partial.method == "ACK":
            return None, "malformed ACK"
        if not partial.headers.getall("via"):
            return None, "no Via to answer to"
        try:
            response = make_response(
                partial, status, reason, headers=error.headers, to_tag=secrets.token_hex(5)
            )
        except RemoteProtocolError:
            response = make_response(partial, status, reason, headers=error.headers)
        return response, ""
    text = data[:16384].decode("utf-8", "replace").replace("\r\n", "\n")
    lines = text.split("\n")
    first = lines[0].lstrip("\r\n") if lines else ""
    if first.upper().startswith("SIP/"):
        return None, "malformed response"
    m = _REQUEST_LINE.fullmatch(first)
    if m is None:
        return None, "not a SIP request"
    if m.group(1) == "ACK":
        return None, "malformed ACK"
    fields: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line.strip():
            break
        name, sep, value = line.partition(":")
        canonical = _SALVAGE_HEADERS.get(name.strip().lower())
        if sep and canonical:
            fields.append((canonical, _clean(value, 1000)))
    if not any(name == "Via" for name, _ in fields):
        return None, "no Via to answer to"
    fields.extend(error.headers)
    return Response(status, reason, fields), ""


# ---------------------------------------------------------------------------------------
# Keepalive timing (sans-IO)
# ---------------------------------------------------------------------------------------


class KeepaliveSchedule:
    """When to send a keepalive, resend it and declare the flow dead; time is passed in.

    Pings go out every `interval` seconds, each time drawn between 80 % and 100 % of it
    (RFC 5626 4.4.1, so that many devices behind one NAT do not ping in step). With a
    `timeout` each ping waits for its pong that long and a missing one reports "failed";
    with `retransmit` (an OPTIONS over UDP) the probe is resent at T1, 2*T1 ... capped at T2,
    like RFC 3261 Timer E. `on_timer` returns the actions due: "ping", "resend", "failed".
    """

    def __init__(
        self,
        interval: float,
        now: float,
        *,
        timeout: float | None = PONG_TIMEOUT,
        retransmit: bool = False,
        t1: float = 0.5,
        t2: float = 4.0,
        rng: random.Random | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self.timeout = timeout
        self.retransmit = retransmit
        self.t1 = t1
        self.t2 = t2
        self.rng = rng or random.Random()
        self.waiting = False
        self.ping_time = now
        self.next_ping = now + self._spread()
        self.give_up = self.resend_at = 0.0
        self._resend_interval = t1
        self.last_pong: float | None = None

    def _spread(self) -> float:
        return self.interval * self.rng.uniform(0.8, 1.0)

    @property
    def deadline(self) -> float:
        if self.waiting:
            if self.retransmit:
                return min(self.give_up, self.resend_at)
            return self.give_up
        return self.next_ping

    def on_timer(self, now: float) -> list[str]:
        out: list[str] = []
        if self.waiting:
            if now >= self.give_up:
                out.append("failed")
                self._idle(now)
            elif self.retransmit and now >= self.resend_at:
                out.append("resend")
                self._resend_interval = min(self._resend_interval * 2, self.t2)
                self.resend_at = now + self._resend_interval
        if not self.waiting and now >= self.next_ping:
            out.append("ping")
            self.ping_time = now
            if self.timeout is None:
                self.next_ping = now + self._spread()
            else:
                self.waiting = True
                self.give_up = now + self.timeout
                self._resend_interval = self.t1
                self.resend_at = now + self.t1
        return out

    def on_pong(self, now: float) -> bool:
        """A pong (or any response to the OPTIONS) arrived; False if none was awaited."""
        if not self.waiting:
            return False
        self.last_pong = now
        self._idle(now)
        return True

    def on_error(self, now: float) -> None:
        """The ping could not even be sent: the flow is down; try again next interval."""
        self._idle(now)

    def _idle(self, now: float) -> None:
        self.waiting = False
        self.next_ping = max(now, self.ping_time + self._spread())


# ---------------------------------------------------------------------------------------
# TLS contexts
# ---------------------------------------------------------------------------------------


def client_tls_context(cafile: str | None = None) -> ssl.SSLContext:
    """A context that verifies servers: against `cafile` (sip.tls_ca) when given, else the
    system store; the host name is checked (SNI is sent with it)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def server_tls_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    """A context for our TLS listener (clients are not asked for certificates)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


# ---------------------------------------------------------------------------------------
# Sockets
# ---------------------------------------------------------------------------------------


def _set_dscp(sock: Any, tos: int) -> bool:
    """Mark a socket's packets with `tos` (IPv4 TOS / IPv6 traffic class)."""
    if not tos or sock is None:
        return False
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, tos)
            # A dual-stack socket also sends IPv4; the kernel may refuse this, which is fine.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
    except (OSError, AttributeError) as exc:
        log.info("cannot set DSCP on a SIP socket (%s); continuing without", exc)
        return False
    return True


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(_unbracket(host))
    except ValueError:
        return False
    return True


def _wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, owner: SipTransport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.owner._datagram(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from an earlier send and the like: not fatal.
        log.debug("UDP error: %s", exc)


class Flow(asyncio.Protocol):
    """One TCP or TLS connection, in either direction, framed by a StreamParser."""

    def __init__(self, owner: SipTransport, kind: str, outgoing: bool) -> None:
        self.owner = owner
        self.kind = kind
        self.outgoing = outgoing
        self.parser = StreamParser(owner.limits)
        self.transport: asyncio.Transport | None = None
        self.remote: Address = ("", 0)
        self.local: Address = ("", 0)
        self.closed = False
        self.broken = False  # a framing error: no more reading, closing soon
        self.last_message = 0.0  # loop time of the last SIP message either way
        self._pending = bytearray()  # bytes the parser holds, to salvage after an error
        self._lf_run = 0  # LFs seen in a CRLF run between messages
        self._lf_time = 0.0

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.kind, self.remote[0], self.remote[1])

    @property
    def open(self) -> bool:
        return not self.closed and self.transport is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername") or ("", 0)
        local = transport.get_extra_info("sockname") or ("", 0)
        self.remote = (peer[0], peer[1])
        self.local = (local[0], local[1])
        self.last_message = self.owner._now()
        _set_dscp(transport.get_extra_info("socket"), self.owner.tos)
        self.owner._flow_up(self)

    def data_received(self, data: bytes) -> None:
        self.owner._stream_data(self, data)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        by_peer = not self.closed  # `close()` marks the flows we end ourselves
        self.closed = True
        self.owner._flow_down(self, by_peer)

    def write(self, data: bytes) -> None:
        if not self.open:
            raise TransportError(f"{self.kind} connection to {self.remote} is closed")
        assert self.transport is not None
        self.transport.write(data)
        if self.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            log.warning("%s peer %s does not read; closing", self.kind, self.remote)
            self.close()

    def finish(self, grace: float = 1.0) -> None:
        """Stop reading (the stream can no longer be framed) and close after `grace` s."""
        if self.transport is None or self.closed or self.broken:
            return
        self.broken = True
        with contextlib.suppress(Exception):
            self.transport.pause_reading()
        asyncio.get_running_loop().call_later(grace, self.close)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def __repr__(self) -> str:
        direction = "out" if self.outgoing else "in"
        return f"<Flow {self.kind} {direction} {self.remote[0]}:{self.remote[1]}>"


# ---------------------------------------------------------------------------------------
# Keepalive driver
# ---------------------------------------------------------------------------------------


class Keepalive:
    """A running keepalive toward one destination; `stop()` ends it."""

    def __init__(
        self,
        owner: SipTransport,
        transport: str,
        destination: Address,
        schedule: KeepaliveSchedule,
        *,
        method: str,
        server_name: str | None,
        uri: str | None,
        from_uri: str | None,
    ) -> None:
        self.owner = owner
        self.transport = transport
        self.destination = destination
        self.schedule = schedule
        self.method = method
        self.server_name = server_name
        self.uri = uri
        self.from_uri = from_uri
        self.failures = 0
        self._probe: bytes = b""
        self._branch: str | None = None
        self._cseq = 0
        self._call_id = secrets.token_hex(8)
        self._tag = secrets.token_hex(4)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.transport, self.destination[0], self.destination[1])

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.owner._keepalive_gone(self)

    def pong(self) -> None:
        if self.schedule.on_pong(self.owner._now()):
            self.owner.stats.pongs_in += 1
            self._wake.set()  # the next deadline is now earlier than the one slept on

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            delay = max(0.0, self.schedule.deadline - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            for action in self.schedule.on_timer(loop.time()):
                if action == "failed":
                    self._failed("no answer to keepalive")
                elif action == "ping":
                    await self._ping()
                elif action == "resend" and self._probe:
                    with contextlib.suppress(TransportError):
                        self.owner.send_datagram(self._probe, self.destination)

    async def _ping(self) -> None:
        owner = self.owner
        try:
            if self.transport in STREAMS:
                flow = await owner._flow_for(self.transport, self.destination, self.server_name)
                flow.write(PING)
            elif self.method == "options":
                self._probe = self._options().to_bytes()
                owner.send_datagram(self._probe, self.destination)
            else:
                owner.send_datagram(PING, self.destination)
        except TransportError as exc:
            self.schedule.on_error(owner._now())
            self._failed(str(exc))
            return
        owner.stats.pings_out += 1

    def _options(self) -> Request:
        owner = self.owner
        host, port = self.destination
        if self._branch is not None:
            owner._probes.pop(self._branch, None)
        self._branch = new_branch()
        owner._probes[self._branch] = self
        self._cseq += 1
        uri = self.uri or f"sip:{_bracket(host)}:{port}"
        via = owner.make_via("udp", self._branch, toward=host)
        local = _bracket(_unbracket(via.host))
        from_uri = self.from_uri or f"sip:keepalive@{local}"
        return build_request(
            "OPTIONS",
            uri,
            via=via,
            from_=f"<{from_uri}>;tag={self._tag}",
            to=f"<{uri}>",
            call_id=f"{self._call_id}@{local}",
            cseq=self._cseq,
        )

    def _failed(self, reason: str) -> None:
        self.failures += 1
        owner = self.owner
        owner.stats.keepalive_failures += 1
        log.warning("keepalive %s to %s:%s failed: %s", self.transport, *self.destination, reason)
        if self.transport in STREAMS:
            flow = owner._flows.get(self.key)
            if flow is not None:
                flow.close()
        owner._call(owner.on_flow_failed, self.transport, self.destination, reason)


# ---------------------------------------------------------------------------------------
# The transport
# ---------------------------------------------------------------------------------------

OnMessage = Callable[[Message, Source], None]


class SipTransport:
    """All SIP sockets of one listening address.

    `transports` are the listeners to open (UDP and TCP share `port`; TLS uses `tls_port`,
    by default `port` when it is the only listener and `port`+1 otherwise). Outgoing TCP and
    TLS work whatever we listen on; UDP sends need the UDP listener (its socket is the one
    the NAT binding, rport and STUN are about). Port 0 picks a free port.

    Callbacks (plain functions, called on the loop; exceptions are logged and swallowed):
    `on_message(msg, source)`, `on_bad_input(BadInput)`,
    `on_public_address(transport, (host, port))`, `on_flow_failed(transport, dest, reason)`,
    `on_connection_closed(transport, (host, port))`: a TCP/TLS connection in use (either
    direction) ended without us closing it: the peer closed or reset it, or the network
    failed (not idle closing, keepalive failures, which have their own callback, or stop).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 5060,
        *,
        transports: Iterable[str] = ("udp",),
        tls_port: int | None = None,
        on_message: OnMessage | None = None,
        on_bad_input: Callable[[BadInput], None] | None = None,
        on_public_address: Callable[[str, Address], None] | None = None,
        on_flow_failed: Callable[[str, Address, str], None] | None = None,
        on_connection_closed: Callable[[str, Address], None] | None = None,
        tls_ca: str | None = None,
        tls_client_context: ssl.SSLContext | None = None,
        tls_server_context: ssl.SSLContext | None = None,
        advertise: str | None = None,
        limits: Limits = DEFAULT_LIMITS,
        idle_timeout: float = 120.0,
        connect_timeout: float = 10.0,
        max_connections: int = 64,
        tos: int = DSCP_CS3,
    ) -> None:
        self.host = _unbracket(host)
        self.port = port
        self.transports = tuple(t.lower() for t in transports)
        for t in self.transports:
            if t not in ("udp", "tcp", "tls"):
                raise ValueError(f"unknown transport {t!r}")
        self.tls_port = tls_port
        self.on_message = on_message
        self.on_bad_input = on_bad_input
        self.on_public_address = on_public_address
        self.on_flow_failed = on_flow_failed
        self.on_connection_closed = on_connection_closed
        self.tls_ca = tls_ca
        self._client_ctx = tls_client_context
        self._server_ctx = tls_server_context
        if "tls" in self.transports and tls_server_context is None:
            raise ValueError("listening on TLS needs tls_server_context")
        self.advertise = advertise
        self.limits = limits
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self.tos = tos
        self.stats = TransportStats()
        self.ports: dict[str, int] = {}
        self.public_addresses: dict[str, Address] = {}
        self.dscp_ok: dict[str, bool] = {}
        self._udp: asyncio.DatagramTransport | None = None
        self._servers: dict[str, asyncio.AbstractServer] = {}
        self._flows: dict[tuple[str, str, int], Flow] = {}
        self._connecting: dict[tuple[str, str, int], asyncio.Future[Flow]] = {}
        self._hooks: list[Callable[[bytes, Address], bool]] = []
        self._keepalives: dict[tuple[str, str, int], Keepalive] = {}
        self._probes: dict[str, Keepalive] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- life cycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Open the listeners; OSError (e.g. address in use) if a port cannot be bound."""
        self._loop = asyncio.get_running_loop()
        attempts = 5 if self.port == 0 else 1
        for attempt in range(attempts):
            try:
                await self._listen()
                break
            except OSError:
                await self._close_listeners()
                if attempt == attempts - 1:
                    raise
        self._sweeper = self._loop.create_task(self._sweep())
        log.info(
            "SIP listening on %s", ", ".join(f"{t} {self.host}:{p}" for t, p in self.ports.items())
        )

    async def _listen(self) -> None:
        assert self._loop is not None
        loop = self._loop
        port = self.port
        if "udp" in self.transports:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            self._udp, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(self.host, port), family=family
            )
            sock = self._udp.get_extra_info("socket")
            port = sock.getsockname()[1]
            self.ports["udp"] = port
            self.dscp_ok["udp"] = _set_dscp(sock, self.tos)
        if "tcp" in self.transports:
            server = await loop.create_server(
                lambda: Flow(self, "tcp", False), self.host, port, reuse_address=True
            )
            self._servers["tcp"] = server
            port = server.sockets[0].getsockname()[1]
            self.ports["tcp"] = port
            self.dscp_ok["tcp"] = _set_dscp(server.sockets[0], self.tos)
        if "tls" in self.transports:
            tls_port = self.tls_port
            if tls_port is None:
                tls_port = port if len(self.ports) == 0 else (port + 1 if self.port else 0)
            server = await loop.create_server(
                lambda: Flow(self, "tls", False),
                self.host,
                tls_port,
                ssl=self._server_ctx,
                reuse_address=True,
            )
            self._servers["tls"] = server
            self.ports["tls"] = server.sockets[0].getsockname()[1]
            self.dscp_ok["tls"] = _set_dscp(server.sockets[0], self.tos)

    async def _close_listeners(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        for server in self._servers.values():
            server.close()
        self._servers.clear()
        self.ports.clear()

    async def stop(self) -> None:
        """Close every socket and stop keepalives; safe to call twice."""
        for keepalive in list(self._keepalives.values()):
            keepalive.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for pending in self._connecting.values():
            pending.cancel()
        for flow in list(self._flows.values()):
            flow.close()
        servers = list(self._servers.values())
        await self._close_listeners()
        for server in servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        await asyncio.sleep(0)  # let connection_lost callbacks run

    async def __aenter__(self) -> SipTransport:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- addresses ----------------------------------------------------------------------
    def local_address(self, transport: str = "udp") -> Address:
        """The bound (host, port) of a listener."""
        return (self.host, self.ports[transport])

    def sent_by(self, transport: str = "udp", toward: str | None = None) -> Address:
        """The host and port we put in Via and Contact for `transport`.

        `advertise` if set, else the bound address, else (bound to a wildcard) the local
        address the OS would use to reach `toward`.
        """
        port = (
            self.ports.get(transport)
            or self.ports.get("udp")
            or next(iter(self.ports.values()), DEFAULT_PORTS[transport])
        )
        if self.advertise:
            return self.advertise, port
        if not _wildcard(self.host):
            return self.host, port
        return _route_source(toward, ipv6=self.host == "::"), port

    def make_via(
        self, transport: str = "udp", branch: str | None = None, *, toward: str | None = None
    ) -> Via:
        """Our Via for a request: sent-by, a branch and an empty `rport` (RFC 3581)."""
        host, port = self.sent_by(transport, toward)
        return Via(
            transport.upper(),
            _bracket(host),
            port,
            {"branch": branch or new_branch(), "rport": None},
        )

    def public_address(self, transport: str = "udp") -> Address | None:
        """What the far end last told us our address is (received/rport, or STUN)."""
        return self.public_addresses.get(transport)

    def _observe(self, transport: str, address: Address) -> None:
        if self.public_addresses.get(transport) == address:
            return
        old = self.public_addresses.get(transport)
        self.public_addresses[transport] = address
        # On streams the port is that of one connection: less news than a UDP mapping.
        level = logging.INFO if transport == "udp" else logging.DEBUG
        log.log(level, "public %s address %s -> %s:%s", transport, old, *address)
        self._call(self.on_public_address, transport, address)

    # -- sending ------------------------------------------------------------------------
    async def send(
        self,
        message: Message | bytes,
        destination: Address | Target,
        transport: str = "udp",
        *,
        server_name: str | None = None,
    ) -> None:
        """Send one message (or its bytes) to `destination` over `transport`.

        `destination` is (host, port), or a `locate.Target`, which brings its own
        transport and TLS name. TCP/TLS reuse an open connection to that address (ours or
        the peer's) and otherwise connect; TLS verifies the server against `server_name`
        (default: the destination host). Raises TransportError when it cannot be sent.
        """
        if isinstance(destination, Target):
            transport, server_name = destination.transport, server_name or destination.name
            destination = (destination.host, destination.port)
        transport = transport.lower()
        data = message if isinstance(message, bytes | bytearray) else message.to_bytes()
        host, port = destination
        host = _unbracket(host)
        if not _is_ip(host):
            server_name = server_name or host
            host = await self._resolve(host, port, transport)
        if transport == "udp":
            self.send_datagram(bytes(data), (host, port))
        elif transport in STREAMS:
            flow = await self._flow_for(transport, (host, port), server_name)
            flow.write(bytes(data))
            flow.last_message = self._now()
        else:
            raise TransportError(f"unknown transport {transport!r}")
        self.stats.sent += 1

    async def respond(self, response: Response, source: Source, data: bytes | None = None) -> None:
        """Send a response to a request that came from `source` (RFC 3261 18.2.2).

        TCP/TLS: back on the request's connection while it is open, else a new connection
        to `received` (or sent-by) and the sent-by port. UDP: `response_destination`.
        `data` is the response already serialised, if the caller has it.
        """
        data = response.to_bytes() if data is None else data
        if source.transport in STREAMS:
            flow = source.flow
            if flow is not None and flow.open:
                flow.write(data)
                flow.last_message = self._now()
                self.stats.sent += 1
                return
        try:
            via = response.top_via
        except RemoteProtocolError as exc:
            raise TransportError(f"no usable Via to route the response: {exc}") from exc
        if source.transport in STREAMS:
            host = _unbracket(via.received or via.host)
            port = via.port or DEFAULT_PORTS[source.transport]
            await self.send(data, (host, port), source.transport)
            return
        await self.send(data, response_destination(via, source), "udp")

    def send_datagram(self, data: bytes, address: Address) -> None:
        """A raw datagram from the SIP UDP socket (STUN, keepalives)."""
        if self._udp is None:
            raise TransportError("not listening on UDP")
        if len(data) > UDP_MAX_PAYLOAD:
            raise TransportError(f"{len(data)} bytes do not fit in a UDP datagram")
        try:
            self._udp.sendto(data, address)
        except OSError as exc:  # e.g. an IPv6 destination on an IPv4 socket
            raise TransportError(f"UDP send to {address}: {exc}") from exc

    def add_datagram_hook(self, hook: Callable[[bytes, Address], bool]) -> Callable[[], None]:
        """`hook(data, source)` sees non-SIP datagrams (STUN) first; True means consumed.

        Returns a function that removes the hook.
        """
        self._hooks.append(hook)
        return lambda: self._hooks.remove(hook) if hook in self._hooks else None

    async def stun_binding(self, server: Address, **options: Any) -> Address:
        """Ask a STUN server for the public address of our UDP socket; it is recorded as
        the public UDP address (on_public_address fires when it changes)."""
        address = await stun.binding(server, endpoint=self, **options)
        self._observe("udp", address)
        return address

    async def _resolve(self, host: str, port: int, transport: str) -> str:
        assert self._loop is not None
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        try:
            infos = await self._loop.getaddrinfo(host, port, type=kind)
        except OSError as exc:
            raise TransportError(f"cannot resolve {host!r}: {exc}") from exc
        if not infos:
            raise TransportError(f"cannot resolve {host!r}")
        return infos[0][4][0]

    # -- streams ------------------------------------------------------------------------
    def flow(self, transport: str, destination: Address) -> Flow | None:
        """The open connection to (or from) `destination`, if there is one."""
        flow = self._flows.get((transport, _unbracket(destination[0]), destination[1]))
        return flow if flow is not None and flow.open else None

    @property
    def flows(self) -> list[Flow]:
        return [f for f in self._flows.values() if f.open]

    async def _flow_for(
        self, transport: str, destination: Address, server_name: str | None
    ) -> Flow:
        key = (transport, destination[0], destination[1])
        flow = self._flows.get(key)
        if flow is not None and flow.open and not flow.broken:
            return flow
        pending = self._connecting.get(key)
        if pending is None:
            assert self._loop is not None
            pending = self._loop.create_future()
            self._connecting[key] = pending
            try:
                flow = await self._connect(transport, destination, server_name)
            except BaseException as exc:
                if not pending.done():
                    pending.set_exception(
                        exc if isinstance(exc, Exception) else TransportError("cancelled")
                    )
                    pending.exception()  # mark retrieved
                raise
            finally:
                self._connecting.pop(key, None)
            if not pending.done():
                pending.set_result(flow)
            return flow
        return await asyncio.shield(pending)

    async def _connect(self, transport: str, destination: Address, server_name: str | None) -> Flow:
        assert self._loop is not None
        host, port = destination
        ctx = None
        if transport == "tls":
            if self._client_ctx is None:
                self._client_ctx = client_tls_context(self.tls_ca)
            ctx = self._client_ctx
        local = None if _wildcard(self.host) else (self.host, 0)
        try:
            _, flow = await asyncio.wait_for(
                self._loop.create_connection(
                    lambda: Flow(self, transport, True),
                    host,
                    port,
                    ssl=ctx,
                    server_hostname=(server_name or host) if ctx else None,
                    local_addr=local,
                ),
                self.connect_timeout,
            )
        except ssl.SSLCertVerificationError as exc:
            raise TransportError(
                f"TLS to {host}:{port}: certificate not accepted: {exc.verify_message}"
            ) from exc
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise TransportError(f"{transport} connect to {host}:{port}: {exc!r}") from exc
        self.stats.connections_out += 1
        return flow

    def _flow_up(self, flow: Flow) -> None:
        if not flow.outgoing:
            if len(self.flows) >= self.max_connections:
                self.stats.connections_refused += 1
                log.warning("too many SIP connections; refusing %s", flow.remote)
                flow.close()
                return
            self.stats.connections_in += 1
        old = self._flows.get(flow.key)
        if old is not None and old is not flow and old.open:
            old.close()
        self._flows[flow.key] = flow

    def _flow_down(self, flow: Flow, by_peer: bool) -> None:
        if self._flows.get(flow.key) is not flow:
            return  # replaced by a newer connection to the same peer, or refused
        del self._flows[flow.key]
        if by_peer:
            log.debug("%s connection %s:%s closed by the far end", flow.kind, *flow.remote)
            self._call(self.on_connection_closed, flow.kind, flow.remote)

    def _stream_data(self, flow: Flow, data: bytes) -> None:
        try:
            self._stream_in(flow, data)
        except Exception:  # as for datagrams; the stream cannot be trusted any more
            self.stats.dropped += 1
            log.exception("unexpected error on %r", flow)
            flow.close()

    def _stream_in(self, flow: Flow, data: bytes) -> None:
        if flow.closed or flow.broken:
            return
        if flow.parser.buffered == 0 and data[:1] in (b"\r", b"\n"):
            rest = data.lstrip(b"\r\n")
            self._crlf_run(flow, data[: len(data) - len(rest)])
            data = rest
            if not data:
                return
        flow._lf_run = 0
        flow._pending += data
        source = Source(flow.kind, flow.remote[0], flow.remote[1], flow)
        try:
            items = flow.parser.feed(data)
        except RemoteProtocolError as exc:
            self._stream_error(flow, source, exc)
            return
        self._keep_pending(flow)
        self._stream_items(flow, source, items)

    def _keep_pending(self, flow: Flow) -> None:
        held = flow.parser.buffered
        if held == 0:
            flow._pending.clear()
        elif held < len(flow._pending):
            del flow._pending[: len(flow._pending) - held]

    def _stream_items(self, flow: Flow, source: Source, items: list[Any]) -> None:
        for item in items:
            if isinstance(item, KeepAlive):
                if item.ping:
                    self._answer_ping(flow)
                else:
                    self._got_pong(flow)
                continue
            flow.last_message = self._now()
            self._deliver(item, source, b"")
            if flow.closed:
                return

    def _stream_error(self, flow: Flow, source: Source, exc: RemoteProtocolError) -> None:
        """The stream cannot be framed any more: deliver what came before the bad message
        (the parser consumed it), answer the bad one if possible, stop reading, and close
        after a grace period in which answers to the good ones can still go out."""
        held = flow.parser.buffered
        good, bad = (
            bytes(flow._pending[: len(flow._pending) - held]),
            bytes(flow._pending[len(flow._pending) - held :]),
        )
        if good:
            try:
                items = StreamParser(self.limits).feed(good)
            except RemoteProtocolError:
                items = []
            self._stream_items(flow, source, items)
        self._reject(bad, exc, source, reply=flow.write)
        flow.finish()

    def _crlf_run(self, flow: Flow, run: bytes) -> None:
        """CR/LF between messages: two line ends are a ping (answer a pong), one is a pong.

        While we await a pong on this flow a single CRLF is taken as that pong. Otherwise
        a lone CRLF is remembered for a moment, so that a ping split over two segments is
        still answered.
        """
        now = self._now()
        if flow._lf_run and now - flow._lf_time > 1.0:
            flow._lf_run = 0
        flow._lf_time = now
        keepalive = self._keepalives.get(flow.key)
        for byte in run:
            if byte != 10:
                continue
            flow._lf_run += 1
            if flow._lf_run == 2:
                flow._lf_run = 0
                self._answer_ping(flow)
            elif keepalive is not None and keepalive.schedule.waiting:
                flow._lf_run = 0
                keepalive.pong()

    def _answer_ping(self, flow: Flow) -> None:
        self.stats.pings_in += 1
        with contextlib.suppress(TransportError):
            flow.write(PONG)

    def _got_pong(self, flow: Flow) -> None:
        keepalive = self._keepalives.get(flow.key)
        if keepalive is not None:
            keepalive.pong()

    async def _sweep(self) -> None:
        """Close stream connections that carried no SIP message for `idle_timeout`
        (keepalive pings do not count; flows with a running keepalive are kept)."""
        period = max(0.5, min(30.0, self.idle_timeout / 4))
        while True:
            await asyncio.sleep(period)
            now = self._now()
            for flow in list(self._flows.values()):
                if flow.key in self._keepalives:
                    continue
                if now - flow.last_message >= self.idle_timeout:
                    log.debug("closing idle %r", flow)
                    self.stats.idle_closed += 1
                    flow.close()

    # -- receiving ----------------------------------------------------------------------
    def _datagram(self, data: bytes, addr: Address) -> None:
        try:
            self._datagram_in(data, addr)
        except Exception:  # a bug must not stop the socket: log it, count it, go on
            self.stats.dropped += 1
            log.exception("unexpected error on a datagram from %s:%s", *addr)

    def _datagram_in(self, data: bytes, addr: Address) -> None:
        if data[:1] in (b"\x00", b"\x01", b"\x02", b"\x03"):
            if stun.is_stun(data):
                self.stats.stun_in += 1
            for hook in list(self._hooks):
                try:
                    if hook(data, addr):
                        return
                except Exception:
                    self.stats.callback_errors += 1
                    log.exception("datagram hook failed")
            self._drop(data, None, Source("udp", *addr))
            return
        if is_keepalive(data):
            return  # CRLF keepalives over UDP need no answer
        source = Source("udp", addr[0], addr[1])
        try:
            message = parse_datagram(data, self.limits)
        except RemoteProtocolError as exc:
            self._reject(data, exc, source, reply=lambda out: self.send_datagram(out, addr))
            return
        self._deliver(message, source, data)

    def _deliver(self, message: Message, source: Source, raw: bytes) -> None:
        if isinstance(message, Request):
            try:
                top = message.top_via
            except RemoteProtocolError as exc:
                exc.message = message
                self._reject(raw, exc, source, reply=self._replier(source))
                return
            stamped = stamp_via(top, source.address)
            if stamped is not top:
                _replace_top_via(message, stamped)
        else:
            try:
                top = message.top_via
            except RemoteProtocolError as exc:
                self._drop(raw or message.to_bytes(), exc, source)
                return
            self._learn(top, source)
            probe = self._probes.get(top.branch or "")
            if probe is not None:
                probe.pong()
                return
        self.stats.received += 1
        self._call(self.on_message, message, source)

    def _learn(self, via: Via, source: Source) -> None:
        """received/rport in a response's Via: how the far end sees us (RFC 3581)."""
        if via.received is None and via.rport is None:
            return
        host = _unbracket(via.received or via.host)
        port = via.rport or via.port or DEFAULT_PORTS.get(source.transport, 5060)
        if _is_ip(host):
            self._observe(source.transport, (host, port))

    def _replier(self, source: Source) -> Callable[[bytes], None]:
        if source.flow is not None:
            return source.flow.write
        return lambda out: self.send_datagram(out, source.address)

    def _reject(
        self,
        data: bytes,
        exc: RemoteProtocolError,
        source: Source,
        *,
        reply: Callable[[bytes], None],
    ) -> None:
        """Answer a request the parser refused (to its packet's source: a forged Via must
        not aim our answer at a third party), or drop and count what cannot be answered."""
        response, why = error_response(data, exc)
        if response is None:
            log.debug("dropping input from %s:%s: %s (%s)", source.host, source.port, why, exc)
            self._drop(data, exc, source)
            return
        try:
            reply(response.to_bytes())
        except TransportError as send_exc:
            log.debug("cannot answer bad input: %s", send_exc)
            self._drop(data, exc, source)
            return
        self.stats.answered_bad += 1
        self.stats.sent += 1
        log.info(
            "answered bad request from %s:%s with %s %s",
            source.host,
            source.port,
            response.status,
            response.reason,
        )
        self._call(self.on_bad_input, BadInput(source, data[:2048], exc, response.status))

    def _drop(self, data: bytes, exc: RemoteProtocolError | None, source: Source) -> None:
        self.stats.dropped += 1
        self._call(self.on_bad_input, BadInput(source, data[:2048], exc, None))

    # -- keepalives ---------------------------------------------------------------------
    def start_keepalive(
        self,
        destination: Address,
        transport: str = "udp",
        interval: float = 25.0,
        *,
        method: str | None = None,
        server_name: str | None = None,
        uri: str | None = None,
        from_uri: str | None = None,
        timeout: float | None = None,
    ) -> Keepalive:
        """Keep the flow to `destination` (the registrar or outbound proxy) alive.

        TCP/TLS: CRLFCRLF every `interval` s (80-100 % jitter), a CRLF pong expected within
        10 s (RFC 5626 4.4.1); the connection is kept open and exempt from idle closing.
        UDP: an OPTIONS request by default (`method="crlf"` sends a bare CRLFCRLF). OPTIONS
        costs a few hundred bytes but, unlike a CRLF that no UDP server answers, it proves
        the registrar is alive (so the UA can fail over) and its response carries
        received/rport, so a changed NAT mapping shows up at once in `public_address`.
        Any response counts, even 404 or 405. The probe is resent like Timer E and counts
        as lost after `timeout` (default: the smaller of 32 s and the interval).
        A failure calls `on_flow_failed(transport, destination, reason)`; pinging goes on.
        """
        transport = transport.lower()
        if method is None:
            method = "options" if transport == "udp" else "crlf"
        if transport == "udp":
            if timeout is None:
                timeout = min(32.0, interval) if method == "options" else None
            retransmit = method == "options"
        else:
            timeout = PONG_TIMEOUT if timeout is None else timeout
            retransmit = False
        host = _unbracket(destination[0])
        key = (transport, host, destination[1])
        old = self._keepalives.get(key)
        if old is not None:
            old.stop()
        schedule = KeepaliveSchedule(interval, self._now(), timeout=timeout, retransmit=retransmit)
        keepalive = Keepalive(
            self,
            transport,
            (host, destination[1]),
            schedule,
            method=method,
            server_name=server_name,
            uri=uri,
            from_uri=from_uri,
        )
        self._keepalives[key] = keepalive
        keepalive.start()
        return keepalive

    def stop_keepalive(self, destination: Address, transport: str = "udp") -> None:
        keepalive = self._keepalives.get(
            (transport.lower(), _unbracket(destination[0]), destination[1])
        )
        if keepalive is not None:
            keepalive.stop()

    def _keepalive_gone(self, keepalive: Keepalive) -> None:
        if self._keepalives.get(keepalive.key) is keepalive:
            del self._keepalives[keepalive.key]
        for branch in [b for b, k in self._probes.items() if k is keepalive]:
            del self._probes[branch]

    # -- helpers ------------------------------------------------------------------------
    def _now(self) -> float:
        loop = self._loop or asyncio.get_running_loop()
        return loop.time()

    def _call(self, callback: Callable[..., Any] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            self.stats.callback_errors += 1
            log.exception("SIP transport callback %r failed", callback)


def _route_source(toward: str | None, *, ipv6: bool) -> str:
    """The local address the OS would use to reach `toward` (no packet is sent)."""
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    target = (
        _unbracket(toward)
        if toward and _is_ip(toward)
        else ("2001:db8::1" if ipv6 else "192.0.2.1")
    )
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((target, 9))
            return probe.getsockname()[0]
        except OSError:
            return "::1" if ipv6 else "127.0.0.1"
