"""The SIP user agent: porch on the wire (SPEC 4-6), the asyncio glue of the SIP core.

`UserAgent` implements the intercom's `CallPlan`. It owns one `SipTransport` (the sockets),
one `TransactionLayer` (whose timers it runs on the loop), the `Registration` state
machine, the dialogs, and the one call a door station has at a time. Everything with
rules in it lives in sans-IO modules it drives: transactions, dialogs, registration, SDP,
digest, `callplan` (which targets to ring when), `policy` (who may call), `session_timer`
(RFC 4028) and `info` (what an INFO body asks for). What is here is wiring: messages in,
actions out, timers on the loop, and reports to the intercom (`call_state`,
`registration_changed`, `dtmf`, `info_unlock`).

Shape of a call:
- out: `place_call` takes the media session bound ahead of time (so the INVITE leaves in
  the same loop turn as the button event; a new spare is bound in the background), builds
  one SDP offer and lets `TargetPlan` dial; each dialled target is a `Leg` (its INVITE, its
  early dialogs, one digest retry). "calling" is reported once the first INVITE is out.
  The first 2xx wins; the other legs are cancelled, and any 2xx that still comes is ACKed
  and hung up at once.
- in: an INVITE passes validation, the caller policy and the busy check, gets its answer
  (SDP, session timer) and the 200 at once, or, when the caller requires 100rel, a
  reliable 180 first and the 200 after its PRACK.
- connected: BYE either way, INFO digits and unlock, re-INVITE/UPDATE (hold, resume, codec
  change, session refresh), call.max_duration and session-timer expiry end it with BYE.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from porch import __version__
from porch.config import Config, is_extension
from porch.media.session import MediaSession
from porch.sip import callplan, info
from porch.sip.auth import AuthError, DigestClient
from porch.sip.dialog import Dialog, DialogId, Dialogs, next_hop
from porch.sip.errors import LocalProtocolError, RemoteProtocolError
from porch.sip.headers import NameAddress
from porch.sip.locate import DEFAULT_PORTS, LocateError, Target, locate, plan
from porch.sip.message import Request, Response, build_request, make_response, validate_request
from porch.sip.policy import CallerPolicy, caller_text
from porch.sip.registration import (
    PublicAddress,
    Registration,
    RegistrationConfig,
    RegState,
    SendRegister,
    StatusChanged,
    Stopped,
)
from porch.sip.sdp import (
    AudioSession,
    SdpNegotiationError,
    SessionDescription,
    answer,
    build_offer,
    process_answer,
)
from porch.sip.session_timer import (
    SessionTimer,
    answer_headers,
    refresh_headers,
    timer_from_response,
)
from porch.sip.timers import DEFAULT_TIMERS, Timers
from porch.sip.transaction import (
    AckReceived,
    AckTimeout,
    CancelReceived,
    ClientKey,
    Malformed,
    MergedRequest,
    PrackTimeout,
    RequestReceived,
    ResponseReceived,
    Send,
    ServerKey,
    StrayResponse,
    TransactionLayer,
    TransactionTerminated,
    TransactionTimeout,
    TransportError,
)
from porch.sip.transport import (
    BadInput,
    SipTransport,
    Source,
    response_destination,
)
from porch.sip.transport import TransportError as SendError
from porch.sip.uri import SipUri, parse_uri

__all__ = ["ALLOW", "SUPPORTED", "UserAgent"]

log = logging.getLogger("porch.sip")

USER_AGENT = f"porch/{__version__}"
METHODS = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO", "UPDATE", "PRACK")
ALLOW = ", ".join(METHODS)
SUPPORTED = ("100rel", "timer")
SDP = "application/sdp"
ACCEPT_BY_METHOD: dict[str, tuple[str, ...]] = {
    "INVITE": (SDP,),
    "ACK": (SDP,),
    "UPDATE": (SDP,),
    "PRACK": (SDP,),
    "INFO": info.ACCEPT,
}
ACCEPT_ALL = (SDP, *info.ACCEPT)
TRANSPORTS = ("udp", "tcp", "tls")
TELEPHONE_EVENT_PT = 101
UNREGISTER_WAIT = 0.8  # s: de-registration gets this much of the 3 s SIGTERM budget
STOP_TRANSPORT_WAIT = 0.2
PLACEHOLDER_VIA = "SIP/2.0/UDP 0.0.0.0"  # replaced once the transport to use is known


def _token() -> str:
    return secrets.token_hex(6)


def _answer_type(request: Request) -> str | None:
    """The body type our final answer to `request` carries, for its Accept (406 check).

    An INVITE is always answered with SDP (our answer, or our offer when it had none); an
    UPDATE only when it carries an offer.
    """
    if request.method == "INVITE" or (request.method == "UPDATE" and request.body):
        return SDP
    return None


@dataclass(frozen=True)
class LocateFailed:
    """The next hop of a request could not be resolved (DNS), reported to its handler."""

    reason: str


Handler = Callable[[Any], None]


@dataclass
class Leg:
    """One dialled target of an outgoing call: its INVITE and what came back."""

    index: int
    target: str
    uri: SipUri
    request: Request
    key: ClientKey | None = None
    peer: Target | None = None
    auth_tried: bool = False
    cancelled: bool = False
    done: bool = False  # final response (or timeout) seen
    dialogs: dict[str, Dialog] = field(default_factory=dict)
    early_answer: bytes | None = None


@dataclass
class Call:
    """The call porch is in (a door station has one line)."""

    direction: Literal["out", "in"]
    media: MediaSession
    session_id: str
    sdp_host: str = "127.0.0.1"  # our address in SDP (the media socket may be a wildcard)
    reported: bool = False  # out: the intercom has been told "calling"
    sdp_version: int = 1
    local_sdp: SessionDescription | None = None  # what we last sent (offer or answer)
    pending_offer: SessionDescription | None = None  # our offer awaiting its answer
    peer: str | None = None
    dialog: Dialog | None = None  # the established dialog
    connected: bool = False
    over: bool = False
    audio: AudioSession | None = None
    peer_allow: frozenset[str] = frozenset()
    timer: SessionTimer | None = None
    handles: dict[str, asyncio.TimerHandle] = field(default_factory=dict)
    # out
    plan: callplan.TargetPlan | None = None
    legs: dict[int, Leg] = field(default_factory=dict)
    early_leg: int | None = None  # the leg whose early media (18x with SDP) is played
    # in
    invite: Request | None = None
    server_key: ServerKey | None = None
    answer_headers: list[tuple[str, str]] = field(default_factory=list)  # RFC 4028, in 200
    awaiting_prack: bool = False  # the 200 waits for the PRACK of our reliable 180


class UserAgent:
    """porch's SIP user agent; the intercom's `CallPlan`."""

    def __init__(
        self,
        cfg: Config,
        intercom: Any,
        *,
        state_dir: Path | None = None,
        sim: bool = False,
        get_config: Callable[[], Config] | None = None,
        timers: Timers = DEFAULT_TIMERS,
        media_factory: Callable[..., MediaSession] | None = None,
    ) -> None:
        self.cfg = cfg
        self.intercom = intercom
        self.state_dir = state_dir
        self.sim = sim
        self._get_config = get_config or (lambda: self.cfg)
        self.timers = timers
        self._media_factory = media_factory or MediaSession
        sip = cfg.sip
        self.transport_name = sip.transport
        self.layer = TransactionLayer(timers)
        self.dialogs = Dialogs()
        self.transport: SipTransport | None = None
        self.registration: Registration | None = None
        self.call: Call | None = None
        self.digest = DigestClient(sip.effective_auth_username, sip.password)
        self.user = sip.username or "door"
        self.domain = sip.effective_domain.strip("[]")
        self.registrar_uri = SipUri.parse(sip.registrar) if sip.registrar else None
        self.backup_uri = SipUri.parse(sip.backup_registrar) if sip.backup_registrar else None
        self.proxy_uri = SipUri.parse(sip.outbound_proxy) if sip.outbound_proxy else None
        self.trusted: set[tuple[str, int]] = set()
        self._answered_at: dict[str, Target] = {}  # hop -> the RFC 3263 target that answered
        self.public: tuple[str, int] | None = None  # our address as the registrar sees it
        self.last_error = ""
        self._handlers: dict[ClientKey, Handler] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._layer_handle: asyncio.TimerHandle | None = None
        self._layer_due: float | None = None
        self._reg_handle: asyncio.TimerHandle | None = None
        # Where the REGISTERs to each registrar (by URI) last went: the registration's flow.
        self._reg_targets: dict[str, Target] = {}
        self._keepalive_to: tuple[str, tuple[str, int]] | None = None
        self._unregistered = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        # A media session bound ahead of time, so that a press sends its INVITE at once.
        self._spare: MediaSession | None = None
        # Dialogs we hung up before their ACK came: BYE once it does (RFC 3261 15.1.1).
        self._bye_on_ack: dict[DialogId, str] = {}
        self._stopping = False

    # ======================================================================================
    # life cycle
    # ======================================================================================

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        sip = self.cfg.sip
        listeners = ("udp",) if self.transport_name in ("udp", "tls") else ("udp", "tcp")
        self.transport = await self._open_transport(sip.listen_host, sip.listen_port, listeners)
        if self.transport is None:
            return
        self._spawn(self._refill_spare())
        for hop in (self.registrar_uri, self.backup_uri, self.proxy_uri):
            if hop is not None:
                self._spawn(self._trust(hop))
        if sip.stun_server:
            self._spawn(self._stun())
        if self.registrar_uri is None:
            self.intercom.registration_changed("disabled", "peer-to-peer (no sip.registrar)")
            return
        self.registration = Registration(self._registration_config())
        self._registration_actions(self.registration.start(self.now()))

    async def _open_transport(
        self, host: str, port: int, listeners: tuple[str, ...]
    ) -> SipTransport | None:
        def make(p: int) -> SipTransport:
            return SipTransport(
                host,
                p,
                transports=listeners,
                on_message=self._on_message,
                on_bad_input=self._on_bad_input,
                on_flow_failed=self._on_flow_failed,
                on_connection_closed=self._on_connection_closed,
                tls_ca=self.cfg.sip.tls_ca or None,
            )

        transport = make(port)
        try:
            await transport.start()
            return transport
        except OSError as exc:
            first = exc
        log.warning(
            "sip.listen: cannot listen on %s:%s (%s); trying a free port", host, port, first
        )
        transport = make(0)
        try:
            await transport.start()
        except OSError as exc:
            reason = f"sip.listen: cannot listen on {host}:{port}: {exc}"
            log.error("%s", reason)
            self.last_error = reason
            self.intercom.events.append("error", part="sip", reason=reason)
            self.intercom.registration_changed("failed", reason)
            return None
        bound = transport.local_address("udp")
        note = (
            f"sip.listen {host}:{port} is in use ({first.strerror}); listening on port {bound[1]}"
        )
        log.warning("%s", note)
        self.intercom.events.append("sip_listen_fallback", reason=note, port=bound[1])
        return transport

    async def stop(self) -> None:
        """Hang up, de-register (bounded: SIGTERM must end within 3 s), close everything."""
        if self._stopping:
            return
        self._stopping = True
        if self.call is not None:
            self._hang_up("shutdown")
        if self.registration is not None and self.transport is not None:
            self._registration_actions(self.registration.stop(self.now()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._unregistered.wait(), UNREGISTER_WAIT)
        for handle in (self._layer_handle, self._reg_handle):
            if handle is not None:
                handle.cancel()
        self._layer_handle = self._reg_handle = None
        for task in list(self._tasks):
            task.cancel()
        if self.transport is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.transport.stop(), STOP_TRANSPORT_WAIT)
        if self.call is not None:
            self._end_call(self.call, "shutdown")
        if self._spare is not None:
            self._spare.close()
            self._spare = None

    # ======================================================================================
    # CallPlan (the intercom's side)
    # ======================================================================================

    def place_call(self, targets: list[str], strategy: str, ring_timeout: float) -> None:
        if self.call is not None:
            log.info("call requested while another call is up")
            return
        if self.transport is None:
            self.intercom.call_state("calling")
            self._call_failed_early(targets, self.last_error or "SIP is not running")
            return
        media = self._take_media()
        toward = self._hop_host(targets[0] if targets else None)
        call = Call(
            "out",
            media or self._new_media(),
            session_id=str(secrets.randbits(31)),
            sdp_host=self._sdp_host(toward),
        )
        call.plan = callplan.TargetPlan(list(targets), strategy, ring_timeout)
        self.call = call
        if media is not None:
            self._begin_outgoing(call)
        else:
            self._spawn(self._start_outgoing(call, targets))

    async def _start_outgoing(self, call: Call, targets: list[str]) -> None:
        """No spare media session was ready: bind one first (the INVITE waits for it)."""
        try:
            await call.media.open()
        except OSError as exc:
            if not call.over:
                for target in targets:
                    self.intercom.events.append(
                        "call_target_failed", target=target, reason=f"no RTP port: {exc}"
                    )
                self._end_call(call, f"no RTP port: {exc}")
            return
        if call.over or call.plan is None:
            call.media.close()
            return
        self._begin_outgoing(call)

    def _begin_outgoing(self, call: Call) -> None:
        assert call.plan is not None
        call.local_sdp = self._offer(call, "sendrecv")
        call.pending_offer = call.local_sdp
        self._plan_actions(call, call.plan.start(self.now()))
        # SPEC 6: "calling" from the INVITE; telling the intercom (LEDs, event log) after the
        # INVITE is on the wire keeps that work out of the button-to-INVITE path.
        if not call.over:
            self._report_calling(call)

    def _report_calling(self, call: Call) -> None:
        if not call.reported:
            call.reported = True
            self.intercom.call_state("calling")

    def hang_up(self, reason: str) -> None:
        self._hang_up(reason)

    def media_figures(self) -> dict[str, Any] | None:
        """The answered call's media figures so far, for /api/status."""
        call = self.call
        if call is None or not call.connected:
            return None
        return call.media.figures()

    def feedback(self, kind: Literal["confirm", "error"]) -> None:
        call = self.call
        if call is not None and call.connected:
            call.media.feedback(kind)

    # ======================================================================================
    # the loop: transport in, transaction layer, actions out
    # ======================================================================================

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("SIP task failed", exc_info=task.exception())

    def _on_message(self, message: Request | Response, source: Source) -> None:
        if self._stopping and isinstance(message, Request) and message.method == "INVITE":
            return
        reliable = source.transport != "udp"
        self._process(self.layer.on_message(message, source, reliable=reliable, now=self.now()))

    def _on_bad_input(self, bad: BadInput) -> None:
        if bad.answered:
            log.info(
                "answered malformed input from %s:%s with %s",
                bad.source.host,
                bad.source.port,
                bad.answered,
            )

    def _process(self, actions: list[Any]) -> None:
        for action in actions:
            try:
                self._dispatch(action)
            except Exception:  # one bad message or bug must not stop the door
                log.exception("SIP: handling %r failed", type(action).__name__)
        self._arm_layer()

    def _dispatch(self, action: Any) -> None:
        if isinstance(action, Send):
            self._transmit(action)
        elif isinstance(action, RequestReceived):
            self._on_request(action)
        elif isinstance(action, ResponseReceived | TransactionTimeout | TransportError):
            if isinstance(action.key, ClientKey):
                handler = self._handlers.get(action.key)
                if handler is not None:
                    handler(action)
            else:
                log.info("server transaction %s: %s", action.key.method, type(action).__name__)
        elif isinstance(action, AckReceived):
            self._on_ack(action)
        elif isinstance(action, CancelReceived):
            self._on_cancel(action)
        elif isinstance(action, AckTimeout):
            self._on_ack_timeout(action)
        elif isinstance(action, PrackTimeout):
            self._on_prack_timeout(action)
        elif isinstance(action, TransactionTerminated):
            if isinstance(action.key, ClientKey):
                self._handlers.pop(action.key, None)
        elif isinstance(action, StrayResponse):
            log.debug("stray response %s %s", action.response.status, action.response.reason)
        elif isinstance(action, MergedRequest):
            log.info("merged request answered 482: %s", action.request.method)
        elif isinstance(action, Malformed):
            log.info("malformed %s: %s", type(action.message).__name__, action.error)

    def _arm_layer(self) -> None:
        if self._loop is None or (self._stopping and self.transport is None):
            return
        due = self.layer.next_deadline
        if due == self._layer_due and (due is None or self._layer_handle is not None):
            return
        if self._layer_handle is not None:
            self._layer_handle.cancel()
            self._layer_handle = None
        self._layer_due = due
        if due is not None:
            self._layer_handle = self._loop.call_at(due, self._layer_fired, due)

    def _layer_fired(self, due: float) -> None:
        self._layer_handle = None
        self._layer_due = None
        self._process(self.layer.on_timer(max(self.now(), due)))

    # -- sending ---------------------------------------------------------------------------
    def _transmit(self, send: Send) -> None:
        if self.transport is None:
            return
        peer = send.peer
        if isinstance(peer, Target):
            if peer.transport == "udp":
                try:
                    self.transport.send_datagram(send.data, (peer.host, peer.port))
                except SendError as exc:
                    self._send_failed(send, exc)
                return
            self._spawn(self._send_stream(send, peer))
        elif isinstance(peer, Source):
            if peer.transport == "udp":
                try:
                    dest = response_destination(send.message.top_via, peer)
                    self.transport.send_datagram(send.data, dest)
                except (SendError, RemoteProtocolError) as exc:
                    log.info("cannot send response to %s:%s: %s", peer.host, peer.port, exc)
                return
            self._spawn(self._respond_stream(send, peer))

    async def _send_stream(self, send: Send, target: Target) -> None:
        assert self.transport is not None
        try:
            await self.transport.send(send.data, target)
        except SendError as exc:
            self._send_failed(send, exc)

    async def _respond_stream(self, send: Send, source: Source) -> None:
        assert self.transport is not None
        try:
            await self.transport.respond(send.message, source, send.data)  # type: ignore[arg-type]
        except SendError as exc:
            log.info("cannot send response over %s: %s", source.transport, exc)

    def _send_failed(self, send: Send, exc: Exception) -> None:
        log.info("cannot send %s: %s", _first_line(send.data), exc)
        if send.key is not None:
            self._process(self.layer.transport_error(send.key, self.now()))

    def _toward(
        self,
        hop: SipUri,
        then: Callable[[list[Target]], None],
        failed: Callable[[str], None],
    ) -> None:
        """Resolve `hop` (RFC 3263) and call `then` with the targets in the order to try:
        at once when it is numeric (a press sends its INVITE in the same loop turn), else
        after DNS. `failed` gets the reason when it cannot be resolved."""
        try:
            p = plan(hop, TRANSPORTS)
        except LocateError as exc:
            failed(exc.reason)
            return
        transport = p.transport or self.transport_name
        if p.numeric:
            then([Target(transport, p.host, p.port or DEFAULT_PORTS[transport], p.name)])
            return

        async def located() -> None:
            try:
                targets = await self._locate(hop, transport)
            except LocateError as exc:
                failed(exc.reason)
                return
            preferred = self._answered_at.get(str(hop))
            if preferred in targets:  # where the last request went and was answered
                targets.remove(preferred)
                targets.insert(0, preferred)
            then(targets)

        self._spawn(located())

    async def _locate(self, hop: SipUri, transport: str) -> list[Target]:
        """RFC 3263 targets of `hop` that our SIP socket can reach: it listens on one
        address family, so only that family's address records are asked for."""
        family = "AAAA" if ":" in self.cfg.sip.listen_host else "A"
        return await locate(hop, transports=(transport,), families=(family,))

    def _send_request(self, request: Request, hop: SipUri, handler: Handler) -> None:
        """Send `request` (any Via) in a new client transaction to `hop`; its Via is set once
        the transport is known. `handler` gets the transaction's events."""
        self._toward(
            hop,
            lambda targets: self._launch(request, targets, handler, str(hop)),
            lambda reason: handler(LocateFailed(reason)),
        )

    def _launch(
        self, request: Request, targets: list[Target], handler: Handler, hop: str = ""
    ) -> None:
        """Send to the first of `targets`; the others are tried in turn when it does not
        answer, cannot be reached or answers 503 (RFC 3263 4.3), each with a new branch.
        The target that answers is tried first by the next request to the same `hop` (a
        digest retry must reach the server that gave the nonce)."""
        assert self.transport is not None
        target, rest = targets[0], targets[1:]
        if hop and target.name != target.host:  # found by DNS: failover and preference apply
            handler = _Failover(self, request, hop, target, rest, handler)
        via = self.transport.make_via(target.transport, toward=target.host)
        request.headers.set("Via", str(via))
        try:
            key, actions = self.layer.send_request(
                request, target, reliable=target.transport != "udp", now=self.now()
            )
        except SendError as exc:
            handler(LocateFailed(str(exc)))
            return
        self._handlers[key] = handler
        sent = getattr(handler, "sent", None)
        if sent is not None:
            sent(key, request, target)
        self._process(actions)

    def _send_ack(self, ack: Request) -> None:
        """The ACK for a 2xx: no transaction, but the layer keeps it for retransmitted 2xx."""
        hop = next_hop(ack)
        if not isinstance(hop, SipUri):
            return

        def go(targets: list[Target]) -> None:
            assert self.transport is not None
            target = targets[0]
            via = self.transport.make_via(target.transport, toward=target.host)
            ack.headers.set("Via", str(via))
            self._process(self.layer.send_ack(ack, target, now=self.now()))

        self._toward(hop, go, lambda reason: log.warning("cannot route ACK: %s", reason))

    def _reply(
        self,
        key: ServerKey,
        request: Request,
        status: int,
        reason: str | None = None,
        *,
        headers: list[tuple[str, str]] | tuple[tuple[str, str], ...] = (),
        dialog: Dialog | None = None,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Response:
        extra = [("Server", USER_AGENT), *headers]
        if dialog is not None:
            response = dialog.create_response(
                request, status, reason, headers=extra, body=body, content_type=content_type
            )
        else:
            response = make_response(
                request,
                status,
                reason,
                to_tag=_token() if status != 100 else None,
                headers=extra,
                body=body,
                content_type=content_type,
            )
        try:
            self._process(self.layer.send_response(key, response, self.now()))
        except LocalProtocolError as exc:
            log.debug("cannot answer %s: %s", request.method, exc)
        return response

    # ======================================================================================
    # identity, routes, SDP
    # ======================================================================================

    def _aor(self) -> SipUri:
        if self.registrar_uri is not None:
            return SipUri(self.domain, self.user)
        assert self.transport is not None
        host, port = self.transport.sent_by(self.transport_name)
        return SipUri(host.strip("[]"), self.user, port=port)

    def _contact(self, toward: str | None = None) -> NameAddress:
        assert self.transport is not None
        host, port = self.transport.sent_by(self.transport_name, toward)
        if self.public is not None and self.transport_name == "udp":
            host, port = self.public
        params = {} if self.transport_name == "udp" else {"transport": self.transport_name}
        return NameAddress(SipUri(host.strip("[]"), self.user, port=port, params=params))

    def _registration_config(self) -> RegistrationConfig:
        sip = self.cfg.sip
        assert self.registrar_uri is not None
        headers = [
            ("User-Agent", USER_AGENT),
            ("Allow", ALLOW),
            ("Supported", ", ".join(SUPPORTED)),
        ]
        if self.proxy_uri is not None:
            headers.insert(0, ("Route", f"<{_loose(self.proxy_uri)}>"))
        toward = (self.proxy_uri or self.registrar_uri).host
        return RegistrationConfig(
            aor=self._aor(),
            registrar=self.registrar_uri,
            contact=self._contact(toward),
            via=PLACEHOLDER_VIA,
            username=sip.effective_auth_username,
            password=sip.password,
            backup=self.backup_uri,
            expires=sip.register_expires,
            display_name=self._get_config().device.name,
            headers=tuple(headers),
        )

    def _outbound_hop(self, uri: SipUri) -> tuple[SipUri, list[str]]:
        """Where an out-of-dialog request goes first, and the Route it carries."""
        if self.proxy_uri is not None:
            return self.proxy_uri, [f"<{_loose(self.proxy_uri)}>"]
        if self.registration is not None:
            return self.registration.registrar, []
        return uri, []

    def _target_uri(self, target: str) -> SipUri:
        if is_extension(target):
            if not self.domain:
                raise LocateError(f"{target!r} is an extension, which needs sip.registrar")
            return SipUri(self.domain, target)
        uri = parse_uri(target)
        if not isinstance(uri, SipUri):
            raise LocateError(f"not a SIP URI: {target!r}")
        return uri

    def _sdp_host(self, toward: str | None) -> str:
        """Our address in SDP: the listen address, or (listening on a wildcard) the local
        address that leads toward the peer."""
        host = self.cfg.sip.listen_host
        if host not in ("0.0.0.0", "::", ""):
            return host
        assert self.transport is not None
        return self.transport.sent_by(self.transport_name, toward)[0].strip("[]")

    def _hop_host(self, target: str | None) -> str | None:
        hop = self.proxy_uri or self.registrar_uri
        if hop is not None:
            return hop.host
        try:
            return self._target_uri(target).host if target else None
        except (LocateError, RemoteProtocolError):
            return None

    def _new_media(self) -> MediaSession:
        """A media session on the SIP listen address, not yet bound (`await open()`)."""
        audio = self.cfg.audio
        source = Path(audio.capture) if audio.capture.endswith(".wav") else None
        sink = None
        if audio.playback.endswith(".wav"):
            sink = Path(audio.playback)
        elif self.sim and self.state_dir is not None:
            sink = self.state_dir / "sim-last-call.wav"
        return self._media_factory(
            self.cfg.sip.listen_host,
            on_dtmf=self._media_digit,
            source=source,
            sink=sink,
            audible=self.sim,
            local_event_pt=TELEPHONE_EVENT_PT,
        )

    def _take_media(self) -> MediaSession | None:
        """The spare media session (bound, ready for SDP) if there is one; a new spare is
        bound in the background."""
        media, self._spare = self._spare, None
        if not self._stopping:
            self._spawn(self._refill_spare())
        return media

    async def _refill_spare(self) -> None:
        if self._spare is not None:
            return
        media = self._new_media()
        try:
            await media.open()
        except OSError as exc:
            log.warning("cannot bind a media port ahead of time: %s", exc)
            return
        if self._stopping or self._spare is not None:
            media.close()
            return
        self._spare = media

    def _offer(self, call: Call, direction: str) -> SessionDescription:
        return build_offer(
            host=call.sdp_host,
            port=call.media.port,
            session_id=call.session_id,
            session_version=call.sdp_version,
            codecs=list(self.cfg.audio.codecs),
            telephone_event_pt=TELEPHONE_EVENT_PT,
            direction=direction,
        )

    def _answer(
        self, call: Call, offer: SessionDescription
    ) -> tuple[SessionDescription, AudioSession]:
        if call.local_sdp is not None:
            call.sdp_version += 1
        return answer(
            offer,
            host=call.sdp_host,
            port=call.media.port,
            session_id=call.session_id,
            session_version=call.sdp_version,
            codecs=list(self.cfg.audio.codecs),
        )

    def _media_digit(self, digit: str, source: str) -> None:
        """A digit heard in the media (RFC 4733 or in-band) of the answered call."""
        if self.call is not None and self.call.connected:
            self.intercom.dtmf(digit, source)

    # ======================================================================================
    # registration
    # ======================================================================================

    def _registration_actions(self, actions: list[Any]) -> None:
        reg = self.registration
        assert reg is not None
        for action in actions:
            if isinstance(action, SendRegister):
                hop = self.proxy_uri or action.registrar
                self._send_request(action.request, hop, _RegisterHandler(self, action))
            elif isinstance(action, StatusChanged):
                self._registration_status(action)
            elif isinstance(action, PublicAddress):
                self._public_address(action.transport.lower(), (action.host, action.port))
            elif isinstance(action, Stopped):
                self._unregistered.set()
        self._arm_registration()

    def _arm_registration(self) -> None:
        if self._reg_handle is not None:
            self._reg_handle.cancel()
            self._reg_handle = None
        reg = self.registration
        if reg is None or self._loop is None or reg.stopping:
            return
        due = reg.deadline
        if due is not None:
            self._reg_handle = self._loop.call_at(due, self._registration_fired, due)

    def _registration_fired(self, due: float) -> None:
        self._reg_handle = None
        if self.registration is not None:
            self._registration_actions(self.registration.on_timer(max(self.now(), due)))

    def _registration_status(self, change: StatusChanged) -> None:
        where = str(change.registrar) + (" (backup)" if change.backup else "")
        if change.state is RegState.REGISTERED:
            text = f"registered at {where} for {change.expires} s"
            log.info("%s", text)
            self._start_keepalive()
        elif change.state is RegState.FAILED:
            reason = change.reason.text if change.reason else "failed"
            text = f"{reason} ({change.detail})" if change.detail else reason
            log.warning("registration at %s failed: %s", where, text)
        elif change.state is RegState.REGISTERING:
            text = f"registering at {where}"
        else:
            text = ""
        self.intercom.registration_changed(change.state.value, text)

    def _registration_outcome(self, action: SendRegister, event: Any) -> None:
        reg = self.registration
        if reg is None:
            return
        now = self.now()
        request = action.request
        if isinstance(event, ResponseReceived):
            if event.response.status < 200:
                return
            actions = reg.on_response(event.response, now)
        elif isinstance(event, TransactionTimeout):
            actions = reg.on_timeout(request, now)
        elif isinstance(event, TransportError):
            actions = reg.on_transport_error(request, now, "cannot send to the registrar")
        elif isinstance(event, LocateFailed):
            actions = reg.on_dns_failure(request, now, event.reason)
        else:
            return
        self._registration_actions(actions)

    def _registration_target(self) -> Target | None:
        """Where our REGISTERs to the current registrar go (it, or the outbound proxy): the
        flow the registrar reaches us by (RFC 5626)."""
        reg = self.registration
        return self._reg_targets.get(str(reg.registrar)) if reg is not None else None

    def _start_keepalive(self) -> None:
        interval = self.cfg.sip.keepalive_seconds
        target = self._registration_target()
        if not interval or target is None or self.transport is None or self._stopping:
            return
        key = (target.transport, (target.host, target.port))
        if self._keepalive_to == key:
            return
        self._stop_keepalive()
        self._keepalive_to = key
        registrar = self.registration.registrar if self.registration else None
        uri = None
        if registrar is not None and self.proxy_uri is None:
            uri = f"sip:{registrar.hostport}"
        self.transport.start_keepalive(
            (target.host, target.port),
            target.transport,
            float(interval),
            server_name=target.name,
            uri=uri,
            from_uri=str(self._aor()),
        )

    def _on_flow_failed(self, transport: str, destination: tuple[str, int], reason: str) -> None:
        """The keepalive to the registrar failed (RFC 5626 4.4.1)."""
        if self._keepalive_to == (transport, destination):
            self._register_again(f"keepalive to the registrar failed ({reason})")

    def _on_connection_closed(self, transport: str, peer: tuple[str, int]) -> None:
        """The far end closed the TCP/TLS connection our registration runs over (a PBX
        restarting, a NAT or firewall dropping it): the registrar can no longer reach us."""
        target = self._registration_target()
        if target is None or target.transport != transport:
            return
        if (target.host.strip("[]"), target.port) == peer:
            self._register_again(f"the registrar closed our {transport} connection")

    def _register_again(self, why: str) -> None:
        """The registration's flow is gone: register again now, over a new one, rather than
        at the next refresh, so a restarted or replaced PBX learns of us (RFC 5626 4.5)."""
        reg = self.registration
        if reg is None or self._stopping:
            return
        if reg.state is not RegState.REGISTERED or reg.failures or reg.active.outstanding:
            return  # already retrying (with its backoff and failover): leave it to that
        log.warning("%s: registering again", why)
        self._stop_keepalive()
        self._registration_actions(reg.start(self.now()))

    def _stop_keepalive(self) -> None:
        if self._keepalive_to is not None and self.transport is not None:
            transport, destination = self._keepalive_to
            self.transport.stop_keepalive(destination, transport)
        self._keepalive_to = None

    def _public_address(self, transport: str, address: tuple[str, int]) -> None:
        """The registrar (a REGISTER response of ours) or STUN says we are seen at `address`
        (NAT): register that as our Contact. UDP only: a stream's port belongs to one
        connection, which the registrar reuses anyway. (The transport's own report, which
        any response can trigger, even one matching no request of ours, is not used.)"""
        if transport != "udp" or self.transport_name != "udp" or self.registration is None:
            return
        if self.public == address:
            return
        bound = self.transport.sent_by("udp") if self.transport else None
        self.public = None if bound == address else address
        log.info("public address %s:%s", *address)
        contact = self._contact()
        self._registration_actions(self.registration.update_contact(contact, self.now()))

    async def _trust(self, hop: SipUri) -> None:
        """Resolve the registrar/proxy so that calls from them are recognised (policy)."""
        try:
            p = plan(hop, TRANSPORTS)
            transport = p.transport or self.transport_name
            if p.numeric:
                targets = [Target(transport, p.host, p.port or DEFAULT_PORTS[transport], p.name)]
            else:
                targets = await self._locate(hop, transport)
        except LocateError as exc:
            log.warning("cannot resolve %s: %s", hop, exc.reason)
            return
        for t in targets:
            self.trusted.add((t.host, t.port))

    async def _stun(self) -> None:
        assert self.transport is not None
        sip = self.cfg.sip
        try:
            host = sip.stun_host
            if not _is_ip(host):
                assert self._loop is not None
                infos = await self._loop.getaddrinfo(host, sip.stun_port)
                host = infos[0][4][0]
            address = await self.transport.stun_binding((host, sip.stun_port))
        except Exception as exc:  # STUN is a nicety: registration works without it
            log.warning("STUN %s failed: %s", sip.stun_server, exc)
            return
        log.info("STUN: public address %s:%s", *address)
        self._public_address("udp", address)

    # ======================================================================================
    # requests in
    # ======================================================================================

    def _on_request(self, ev: RequestReceived) -> None:
        req = ev.request
        try:
            validate_request(
                req,
                methods=METHODS,
                supported=SUPPORTED,
                schemes=("sip", "sips"),
                accept=ACCEPT_BY_METHOD.get(req.method),
                answer_type=_answer_type(req),
            )
        except RemoteProtocolError as exc:
            log.info("refusing %s: %s %s", req.method, exc.status, exc.reason)
            if req.method == "INVITE" and exc.status == 415:
                self._reply(ev.key, req, 415, exc.reason, headers=[("Accept", SDP)])
            else:
                self._reply(ev.key, req, exc.status, exc.reason, headers=exc.headers)
            return
        if req.to.tag is not None:
            dialog = self.dialogs.for_request(req)
            if dialog is None:
                if req.method == "OPTIONS":
                    self._options(ev)
                else:
                    self._reply(ev.key, req, 481, "Call/Transaction Does Not Exist")
                return
            self._in_dialog(ev, dialog)
            return
        if req.method == "INVITE":
            self._incoming_invite(ev)
        elif req.method == "OPTIONS":
            self._options(ev)
        else:
            self._reply(ev.key, req, 481, "Call/Transaction Does Not Exist")

    def _options(self, ev: RequestReceived) -> None:
        self._reply(
            ev.key,
            ev.request,
            200,
            headers=[
                ("Allow", ALLOW),
                ("Accept", ", ".join(ACCEPT_ALL)),
                ("Accept-Encoding", "identity"),
                ("Supported", ", ".join(SUPPORTED)),
            ],
        )

    def _in_dialog(self, ev: RequestReceived, dialog: Dialog) -> None:
        req = ev.request
        try:
            dialog.on_request(req)
        except RemoteProtocolError as exc:
            self._reply(ev.key, req, exc.status, exc.reason, headers=exc.headers)
            return
        call = self.call
        ours = call is not None and (call.dialog is dialog or _dialog_of_call(call, dialog))
        method = req.method
        if method == "BYE":
            self._reply(ev.key, req, 200, dialog=dialog)
            self.dialogs.remove(dialog)
            if call is not None and ours:
                self._remote_hangup(call, dialog)
        elif method == "OPTIONS":
            self._options(ev)
        elif not ours or call is None:
            self._reply(ev.key, req, 481, "Call/Transaction Does Not Exist")
        elif method == "INFO":
            self._on_info(ev, call, dialog)
        elif method == "PRACK":
            self._on_prack(ev, call, dialog)
        elif method in ("INVITE", "UPDATE"):
            self._on_offer_request(ev, call, dialog)

    # -- INFO: DTMF and unlock -----------------------------------------------------------
    def _on_info(self, ev: RequestReceived, call: Call, dialog: Dialog) -> None:
        req = ev.request
        try:
            what = info.parse_info(req.content_type, req.body)
        except RemoteProtocolError as exc:
            self._reply(ev.key, req, exc.status, exc.reason, headers=exc.headers, dialog=dialog)
            return
        if not call.connected or call.dialog is not dialog:
            self._reply(ev.key, req, 403, "Not In An Answered Call", dialog=dialog)
            return
        if isinstance(what, info.Digit):
            self.intercom.dtmf(what.digit, "info")
            self._reply(ev.key, req, 200, dialog=dialog)
        elif isinstance(what, info.Unlock):
            if self.intercom.info_unlock():
                self._reply(ev.key, req, 200, dialog=dialog)
            else:
                self._reply(ev.key, req, 403, "Unlock Refused", dialog=dialog)
        else:
            self._reply(ev.key, req, 200, dialog=dialog)

    # -- incoming calls ------------------------------------------------------------------
    def _incoming_invite(self, ev: RequestReceived) -> None:
        req = ev.request
        source = ev.peer if isinstance(ev.peer, Source) else None
        cfg = self._get_config()
        caller = req.from_.uri
        peer = caller_text(caller)
        policy = CallerPolicy(
            cfg.call.auto_answer,
            tuple(cfg.call.allow),
            self.domain,
            self.registrar_uri is not None,
            frozenset(self.trusted),
        )
        verdict = policy.check(caller, source.address if source else None)
        if not verdict.allowed:
            log.info("refusing call from %s: %s", peer, verdict.reason)
            self.intercom.events.append(
                "call_refused", peer=peer, status=verdict.status, reason=verdict.reason
            )
            self._reply(ev.key, req, verdict.status, "Forbidden")
            return
        if self.call is not None or self.intercom.call != "idle" or self._stopping:
            self.intercom.events.append("call_refused", peer=peer, status=486, reason="busy")
            self._reply(ev.key, req, 486, "Busy Here")
            return
        try:
            offer = SessionDescription.parse(req.body) if req.body else None
        except RemoteProtocolError as exc:
            self._reply(ev.key, req, exc.status, exc.reason)
            return
        media = self._take_media()
        call = Call(
            "in",
            media or self._new_media(),
            session_id=str(secrets.randbits(31)),
            sdp_host=self._sdp_host(source.host if source else None),
            peer=peer,
        )
        call.invite = req
        call.server_key = ev.key
        call.peer_allow = req.allow
        self.call = call  # busy from now on
        log.info("answering call from %s (%s)", peer, verdict.reason)
        if media is not None:
            self._answer_incoming(call, offer, source)
        else:
            self._spawn(self._open_and_answer(call, offer, source))

    async def _open_and_answer(
        self, call: Call, offer: SessionDescription | None, source: Source | None
    ) -> None:
        """No spare media session was ready: bind one, then answer."""
        assert call.invite is not None and call.server_key is not None
        try:
            await call.media.open()
        except OSError as exc:
            log.error("no RTP port for an incoming call: %s", exc)
            if not call.over:
                self._reply(
                    call.server_key, call.invite, 500, "No Media Port",
                    headers=[("Retry-After", "5")],
                )  # fmt: skip
                self._end_call(call, f"no RTP port: {exc}")
            return
        if call.over:  # cancelled meanwhile
            call.media.close()
            return
        self._answer_incoming(call, offer, source)

    def _answer_incoming(
        self, call: Call, offer: SessionDescription | None, source: Source | None
    ) -> None:
        req = call.invite
        key = call.server_key
        assert req is not None and key is not None
        try:
            if offer is not None:
                call.local_sdp, call.audio = self._answer(call, offer)
            else:
                call.local_sdp = self._offer(call, "sendrecv")
                call.pending_offer = call.local_sdp
            call.answer_headers, call.timer = answer_headers(req, self.now())
            dialog = Dialog.uas(
                req,
                local_tag=_token(),
                local_contact=self._contact(source.host if source else None),
            )
        except RemoteProtocolError as exc:
            if isinstance(exc, SdpNegotiationError):
                self.intercom.events.append(
                    "call_refused", peer=call.peer, status=488, reason="no common codec"
                )
            self._reply(key, req, exc.status, exc.reason, headers=exc.headers)
            self._end_call(call, f"refused: {exc.status} {exc.reason}")
            return
        call.dialog = dialog
        self.dialogs.add(dialog)
        if "100rel" in req.require:
            # RFC 3262: the 180 is sent reliably and the 200 waits for its PRACK.
            rseq = dialog.next_rseq()
            self._reply(
                key, req, 180, headers=[("Require", "100rel"), ("RSeq", str(rseq))], dialog=dialog
            )
            call.awaiting_prack = True
            self.intercom.call_state("ringing", call.peer)
            return
        # No 180 first: the door answers at once, and a 180 right before the 200 can arrive
        # after it when a multi-process proxy relays the two.
        self._send_answer(call)

    def _send_answer(self, call: Call) -> None:
        assert call.server_key is not None and call.invite is not None
        assert call.dialog is not None and call.local_sdp is not None
        call.awaiting_prack = False
        response = call.dialog.create_response(
            call.invite,
            200,
            headers=[
                ("Server", USER_AGENT),
                ("Allow", ALLOW),
                ("Supported", ", ".join(SUPPORTED)),
                *call.answer_headers,
            ],
            body=call.local_sdp.to_bytes(),
            content_type=SDP,
        )
        try:
            self._process(self.layer.send_response(call.server_key, response, self.now()))
        except LocalProtocolError as exc:  # the INVITE is gone (CANCEL won the race)
            log.info("cannot answer: %s", exc)
            self._end_call(call, "cancelled by the caller")
            return
        self._connected(call)

    def _on_prack(self, ev: RequestReceived, call: Call, dialog: Dialog) -> None:
        self._reply(ev.key, ev.request, 200, dialog=dialog)
        if call.awaiting_prack and call.dialog is dialog and not call.over:
            self._send_answer(call)

    def _on_cancel(self, ev: CancelReceived) -> None:
        call = self.call
        if call is None or call.server_key != ev.key:
            return
        if not ev.answered_487 and call.invite is not None:
            self._reply(ev.key, call.invite, 487, dialog=call.dialog)
        log.info("caller cancelled before the answer")
        self._end_call(call, "cancelled by the caller")

    def _on_prack_timeout(self, ev: PrackTimeout) -> None:
        call = self.call
        if call is None or call.server_key != ev.key or call.invite is None:
            return
        self._reply(ev.key, call.invite, 500, "No PRACK", dialog=call.dialog)
        self._end_call(call, "no PRACK for the reliable 180")

    def _on_ack(self, ev: AckReceived) -> None:
        ack = ev.request
        dialog = self.dialogs.for_request(ack)
        if dialog is None:
            return
        dialog.on_request(ack)
        reason = self._bye_on_ack.pop(dialog.id, None)
        if reason is not None:
            self._bye(dialog, reason)
            return
        call = self.call
        if call is None or call.dialog is not dialog:
            return
        if call.pending_offer is not None and ack.body:
            try:
                audio = process_answer(call.pending_offer, SessionDescription.parse(ack.body))
            except RemoteProtocolError as exc:
                log.warning("bad SDP answer in ACK: %s", exc)
                self._hang_up_call(call, "no usable SDP answer in the ACK")
                return
            call.pending_offer = None
            self._media(call, audio)

    def _on_ack_timeout(self, ev: AckTimeout) -> None:
        r = ev.response
        did = DialogId(r.call_id, r.to.tag or "", r.from_.tag)
        dialog = self.dialogs.get(did)
        if dialog is None:
            return
        dialog.awaiting_ack = None
        reason = self._bye_on_ack.pop(did, None) or "no ACK from the caller"
        log.warning("no ACK for our 200: hanging up")
        call = self.call
        if call is not None and call.dialog is dialog:
            self._hang_up_call(call, reason)
        else:
            self._bye(dialog, reason)

    # -- offers inside the dialog (re-INVITE, UPDATE) --------------------------------------
    def _on_offer_request(self, ev: RequestReceived, call: Call, dialog: Dialog) -> None:
        req = ev.request
        try:
            timer_headers, timer = answer_headers(req, self.now())
            body = b""
            audio = None
            if req.body:
                offer = SessionDescription.parse(req.body)
                sdp, audio = self._answer(call, offer)
                call.local_sdp = sdp
                body = sdp.to_bytes()
            elif req.method == "INVITE":
                # An offerless re-INVITE (often a session refresh): offer what we have.
                body = (call.local_sdp or self._offer(call, "sendrecv")).to_bytes()
                call.pending_offer = call.local_sdp
        except RemoteProtocolError as exc:
            self._reply(ev.key, req, exc.status, exc.reason, headers=exc.headers, dialog=dialog)
            if req.method == "INVITE":
                dialog.invite_in = None
            return
        if timer is not None:
            call.timer = timer
            self._arm_session_timer(call)
        elif call.timer is not None:
            call.timer.refreshed(self.now())
            self._arm_session_timer(call)
        headers = [("Allow", ALLOW), ("Supported", ", ".join(SUPPORTED)), *timer_headers]
        self._reply(
            ev.key,
            req,
            200,
            headers=headers,
            dialog=dialog,
            body=body,
            content_type=SDP if body else None,
        )
        if audio is not None:
            self._media(call, audio)

    # ======================================================================================
    # outgoing calls
    # ======================================================================================

    def _call_failed_early(self, targets: list[str], reason: str) -> None:
        for target in targets:
            self.intercom.events.append("call_target_failed", target=target, reason=reason)
        self.intercom.call_state("idle", reason=reason)

    def _plan_actions(self, call: Call, actions: list[callplan.Action]) -> None:
        for action in actions:
            if isinstance(action, callplan.Dial):
                self._dial(call, action)
            elif isinstance(action, callplan.Cancel):
                if action.failed:
                    target = call.plan.attempts[action.index].target if call.plan else ""
                    log.info("call to %s failed: %s", target, action.reason)
                    self.intercom.events.append(
                        "call_target_failed", target=target, reason=action.reason
                    )
                self._cancel_leg(call, action.index, action.reason)
            elif isinstance(action, callplan.Finished):
                if call.plan is not None and call.plan.answered is None:
                    self._end_call(call, action.reason)
        self._arm_plan(call)

    def _arm_plan(self, call: Call) -> None:
        due = call.plan.deadline if call.plan is not None else None
        self._arm_call_timer(call, "ring", due, self._plan_fired)

    def _arm_call_timer(
        self, call: Call, name: str, due: float | None, fire: Callable[[Call, float], None]
    ) -> None:
        """(Re)schedule the call's timer `name`: `fire(call, due)` at `due`; None cancels."""
        handle = call.handles.pop(name, None)
        if handle is not None:
            handle.cancel()
        if due is not None and not call.over and self._loop is not None:
            call.handles[name] = self._loop.call_at(due, fire, call, due)

    def _plan_fired(self, call: Call, due: float) -> None:
        call.handles.pop("ring", None)
        if call.plan is not None and not call.over:
            self._plan_actions(call, call.plan.on_timer(max(self.now(), due)))

    def _dial(self, call: Call, dial: callplan.Dial) -> None:
        assert call.plan is not None and call.local_sdp is not None
        try:
            uri = self._target_uri(dial.target)
            hop, route = self._outbound_hop(uri)
        except (LocateError, RemoteProtocolError) as exc:
            reason = getattr(exc, "reason", str(exc))
            self._leg_failed(call, dial.index, dial.target, f"bad target: {reason}")
            return
        contact = self._contact(hop.host)
        request = build_request(
            "INVITE",
            uri,
            via=PLACEHOLDER_VIA,
            from_=NameAddress(self._aor(), self._get_config().device.name).with_tag(_token()),
            to=NameAddress(uri),
            call_id=f"{secrets.token_hex(10)}@porch",
            cseq=1,
            contact=contact,
            route=route,
            headers=[
                ("Allow", ALLOW),
                ("Supported", ", ".join(SUPPORTED)),
                ("User-Agent", USER_AGENT),
            ],
            body=call.local_sdp.to_bytes(),
            content_type=SDP,
        )
        leg = Leg(dial.index, dial.target, uri, request)
        call.legs[dial.index] = leg
        log.info("calling %s", uri)
        self._send_request(request, hop, _LegHandler(self, call, leg))

    def _cancel_leg(self, call: Call, index: int, reason: str) -> None:
        leg = call.legs.get(index)
        if leg is None or leg.cancelled:
            return
        leg.cancelled = True
        if leg.key is not None and not leg.done:
            log.info("cancelling %s: %s", leg.uri, reason)
            self._process(self.layer.cancel(leg.key, self.now()))

    def _leg_failed(self, call: Call, index: int, target: str, reason: str, **detail: Any) -> None:
        log.info("call to %s failed: %s", target, reason)
        self.intercom.events.append("call_target_failed", target=target, reason=reason, **detail)
        if call.early_leg == index:
            call.early_leg = None  # the next target's early media may play
        leg = call.legs.get(index)
        if leg is not None:
            leg.done = True
            for d in leg.dialogs.values():
                if d is not call.dialog:
                    d.terminate()
                    self.dialogs.remove(d)
        if call.plan is not None:
            self._plan_actions(call, call.plan.on_failed(index, reason, self.now()))

    def _leg_event(self, call: Call, leg: Leg, event: Any) -> None:
        if leg.cancelled and not isinstance(event, ResponseReceived):
            leg.done = True  # a cancelled INVITE that never got an answer: nothing to report
            return
        if isinstance(event, LocateFailed):
            self._leg_failed(call, leg.index, leg.target, f"cannot reach: {event.reason}")
        elif isinstance(event, TransactionTimeout):
            if not leg.done:
                self._leg_failed(call, leg.index, leg.target, "no answer (timeout)")
        elif isinstance(event, TransportError):
            if not leg.done:
                self._leg_failed(call, leg.index, leg.target, "cannot send the INVITE")
        elif isinstance(event, ResponseReceived):
            if event.key != leg.key:
                return
            self._leg_response(call, leg, event.response)

    def _leg_response(self, call: Call, leg: Leg, response: Response) -> None:
        status = response.status
        if status < 200:
            if status > 100:
                self._leg_provisional(call, leg, response)
            return
        if status < 300:
            self._leg_answered(call, leg, response)
            return
        if leg.done:
            return
        if status in (401, 407) and not leg.cancelled and not call.over:
            if self._retry_with_credentials(call, leg, response):
                return
            self._leg_failed(
                call,
                leg.index,
                leg.target,
                f"{status} {response.reason}: credentials refused",
                status=status,
            )
            return
        if 300 <= status < 400 and not leg.cancelled:
            contacts = [str(c.uri) for c in _contacts_by_q(response)]
            leg.done = True
            self.intercom.events.append(
                "call_redirected", target=leg.target, contacts=contacts, status=status
            )
            if call.plan is not None:
                self._plan_actions(call, call.plan.on_redirect(leg.index, contacts, self.now()))
            return
        if leg.cancelled:
            leg.done = True
            return
        self._leg_failed(
            call, leg.index, leg.target, f"{status} {response.reason}".strip(), status=status
        )

    def _retry_with_credentials(self, call: Call, leg: Leg, response: Response) -> bool:
        if leg.auth_tried:
            return False
        leg.auth_tried = True
        try:
            fields = self.digest.respond(leg.request, response)
        except AuthError as exc:
            log.warning("cannot answer the challenge from %s: %s", leg.uri, exc)
            return False
        old = leg.request
        keep = [
            (n, v)
            for n, v in old.headers.items()
            if n.lower() not in ("via", "v", "cseq", "authorization", "proxy-authorization")
        ]
        new = Request(
            "INVITE",
            old.target,
            [("Via", PLACEHOLDER_VIA), *keep, *fields],
            old.body,
        )
        new.headers.set("CSeq", f"{old.cseq.number + 1} INVITE")
        leg.request = new
        leg.key = None
        hop = self._outbound_hop(leg.uri)[0]
        self._send_request(new, hop, _LegHandler(self, call, leg))
        return True

    def _leg_dialog(self, leg: Leg, response: Response) -> Dialog | None:
        tag = response.to.tag
        if tag is None:
            return None
        dialog = leg.dialogs.get(tag)
        if dialog is None:
            tls = leg.peer is not None and leg.peer.transport == "tls"
            dialog = Dialog.uac(leg.request, response, tls=tls)
            leg.dialogs[tag] = dialog
            self.dialogs.add(dialog)
        else:
            dialog.on_response(response)
        return dialog

    def _leg_provisional(self, call: Call, leg: Leg, response: Response) -> None:
        if leg.cancelled or call.over:
            return
        dialog = self._leg_dialog(leg, response)
        if response.body and response.content_type is not None:
            if response.content_type.mime == SDP:
                leg.early_answer = response.body
                if call.early_leg is None and call.dialog is None:
                    self._early_media(call, leg)
        if (
            dialog is not None
            and "100rel" in response.require
            and "rseq" in response.headers
            and dialog.reliable_provisional(response)
        ):
            prack = dialog.create_prack(response, via=PLACEHOLDER_VIA)
            hop = next_hop(prack)
            if isinstance(hop, SipUri):
                self._send_request(prack, hop, _quiet("PRACK"))
        if call.plan is not None and response.status in (180, 183):
            was_ringing = call.plan.ringing
            call.plan.on_ringing(leg.index, self.now())
            if not was_ringing and call.plan.ringing:
                self.intercom.call_state("ringing", str(leg.uri))

    def _early_media(self, call: Call, leg: Leg) -> None:
        """RFC 3960: SDP in a 18x answers our offer for early media (the PBX's ringback,
        an announcement): play what the far end sends while it rings. The door sends
        nothing until the call is answered."""
        if call.pending_offer is None or leg.early_answer is None:
            return
        try:
            audio = process_answer(call.pending_offer, SessionDescription.parse(leg.early_answer))
        except RemoteProtocolError as exc:
            log.info("early media from %s unusable: %s", leg.uri, exc.reason)
            return
        if not audio.receive:
            return
        call.early_leg = leg.index
        log.info("early media from %s", leg.uri)
        call.media.start(replace(audio, direction="recvonly"))

    def _leg_answered(self, call: Call, leg: Leg, response: Response) -> None:
        dialog = self._leg_dialog(leg, response)
        leg.done = True
        if dialog is None:
            log.warning("2xx without To tag from %s", leg.uri)
            return
        auth = [(n, v) for n, v in leg.request.headers.items() if "authorization" in n.lower()]
        ack = dialog.create_ack(leg.request.cseq.number, via=PLACEHOLDER_VIA, headers=auth)
        self._send_ack(ack)
        plan = call.plan
        won = (
            plan is not None
            and not call.over
            and not leg.cancelled
            and plan.answered is None
            and call.dialog is None
        )
        if not won:
            log.info("late answer from %s: hanging up that leg", leg.uri)
            self._bye(dialog, "answered elsewhere")
            return
        assert plan is not None and call.pending_offer is not None
        body = response.body if response.body else leg.early_answer
        try:
            if not body:
                raise RemoteProtocolError(488, "no SDP answer")
            audio = process_answer(call.pending_offer, SessionDescription.parse(body))
        except RemoteProtocolError as exc:
            log.warning("answer from %s unusable: %s", leg.uri, exc)
            self._bye(dialog, "no usable SDP answer")
            self._plan_actions(call, plan.on_failed(leg.index, f"SDP: {exc.reason}", self.now()))
            return
        call.pending_offer = None
        call.dialog = dialog
        call.peer = str(leg.uri)
        call.peer_allow = response.allow
        try:
            call.timer = timer_from_response(response, self.now())
        except RemoteProtocolError:
            call.timer = None
        self._plan_actions(call, plan.on_answered(leg.index, self.now()))
        for other in call.legs.values():
            for tag, d in list(other.dialogs.items()):
                if d is not dialog and d.early:
                    d.terminate()
                    self.dialogs.remove(d)
                    other.dialogs.pop(tag, None)
        self._media(call, audio)
        self._connected(call)

    # ======================================================================================
    # connected calls
    # ======================================================================================

    def _connected(self, call: Call) -> None:
        call.connected = True
        if call.audio is not None:
            call.media.start(call.audio)
        self.intercom.call_state("connected", call.peer)
        max_duration = float(self._get_config().call.max_duration)
        assert self._loop is not None
        call.handles["max"] = self._loop.call_later(
            max_duration, self._hang_up_call, call, "call.max_duration reached"
        )
        self._arm_session_timer(call)

    def _media(self, call: Call, audio: AudioSession) -> None:
        first = call.audio is None
        call.audio = audio
        if not call.connected:
            return
        if first:
            call.media.start(audio)
        else:
            call.media.update(audio)

    def _arm_session_timer(self, call: Call) -> None:
        due = call.timer.deadline if call.timer is not None else None
        self._arm_call_timer(call, "session", due, self._session_timer_fired)

    def _session_timer_fired(self, call: Call, due: float) -> None:
        call.handles.pop("session", None)
        if call.timer is None or call.over or call.dialog is None:
            return
        what = call.timer.due(max(self.now(), due))
        if what == "expired":
            self._hang_up_call(call, "session timer expired (no refresh from the peer)")
        elif what == "refresh":
            self._refresh_session(call)

    def _refresh_session(self, call: Call) -> None:
        dialog = call.dialog
        assert dialog is not None and call.timer is not None
        headers = refresh_headers(call.timer)
        if "UPDATE" in call.peer_allow:
            request = dialog.create_request("UPDATE", via=PLACEHOLDER_VIA, headers=headers)
        else:
            try:
                request = dialog.create_request(
                    "INVITE",
                    via=PLACEHOLDER_VIA,
                    headers=[*headers, ("Allow", ALLOW)],
                    body=(call.local_sdp.to_bytes() if call.local_sdp else b""),
                    content_type=SDP if call.local_sdp else None,
                )
            except LocalProtocolError:  # an INVITE is in progress: try again shortly
                call.timer.refreshed(self.now() - call.timer.interval / 2 + 2.0)
                self._arm_session_timer(call)
                return
            call.pending_offer = call.local_sdp
        # Until the answer comes, do not refresh again.
        call.timer.refreshed(self.now())
        self._arm_session_timer(call)
        hop = next_hop(request)
        if isinstance(hop, SipUri):
            self._send_request(request, hop, _RefreshHandler(self, call, request))

    def _refresh_outcome(self, call: Call, request: Request, event: Any) -> None:
        dialog = call.dialog
        if dialog is None or call.over:
            return
        if isinstance(event, ResponseReceived):
            response = event.response
            if response.status < 200:
                return
            dialog.on_response(response)
            if request.method == "INVITE" and 200 <= response.status < 300:
                ack = dialog.create_ack(request.cseq.number, via=PLACEHOLDER_VIA)
                self._send_ack(ack)
                offer, call.pending_offer = call.pending_offer, None
                if offer is not None and response.body:
                    try:
                        self._media(
                            call, process_answer(offer, SessionDescription.parse(response.body))
                        )
                    except RemoteProtocolError as exc:
                        log.warning("unusable answer to our re-INVITE: %s", exc)
            if 200 <= response.status < 300:
                with contextlib.suppress(RemoteProtocolError):
                    timer = timer_from_response(response, self.now())
                    if timer is not None:
                        call.timer = timer
                self._arm_session_timer(call)
            elif response.status in (408, 481):
                self._remote_hangup(call, dialog, f"refresh answered {response.status}")
            elif response.status == 491 and call.timer is not None:
                call.timer.refreshed(self.now() - call.timer.interval / 2 + dialog.glare_delay())
                self._arm_session_timer(call)
        elif isinstance(event, TransactionTimeout | TransportError | LocateFailed):
            self._hang_up_call(call, "session refresh got no answer")

    # -- ending calls ----------------------------------------------------------------------
    def _hang_up(self, reason: str) -> None:
        call = self.call
        if call is None:
            return
        if call.connected:
            self._hang_up_call(call, reason)
        elif call.direction == "out" and call.plan is not None:
            self._plan_actions(call, call.plan.cancel(reason))
            if not call.over:
                self._end_call(call, reason)
        elif call.direction == "in" and call.server_key is not None and call.invite is not None:
            self._reply(
                call.server_key, call.invite, 480, "Temporarily Unavailable", dialog=call.dialog
            )
            self._end_call(call, reason)
        else:
            self._end_call(call, reason)

    def _hang_up_call(self, call: Call, reason: str) -> None:
        """We end an established call: BYE (after the ACK, if it has not come yet)."""
        if call.over:
            return
        dialog = call.dialog
        if dialog is not None and dialog.awaiting_ack is not None:
            self._bye_on_ack[dialog.id] = reason
            self._end_call(call, reason, keep_dialog=True)
            return
        if dialog is not None:
            self._bye(dialog, reason)
        self._end_call(call, reason)

    def _bye(self, dialog: Dialog, reason: str) -> None:
        if dialog.terminated:
            return
        try:
            text = reason.replace("\\", "/").replace('"', "'")
            bye = dialog.create_request(
                "BYE", via=PLACEHOLDER_VIA, headers=[("Reason", f'SIP;cause=200;text="{text}"')]
            )
        except LocalProtocolError:
            return
        dialog.terminate()
        self.dialogs.remove(dialog)
        hop = next_hop(bye)
        if isinstance(hop, SipUri):
            self._send_request(bye, hop, _quiet("BYE"))

    def _remote_hangup(
        self, call: Call, dialog: Dialog, reason: str = "hung up by the peer"
    ) -> None:
        if call.dialog is dialog or call.dialog is None:
            self._end_call(call, reason)

    def _end_call(self, call: Call, reason: str, *, keep_dialog: bool = False) -> None:
        if call.over:
            return
        call.over = True
        for handle in call.handles.values():
            handle.cancel()
        call.handles.clear()
        if call.plan is not None and call.plan.answered is None and not call.plan.over:
            for action in call.plan.cancel(reason):
                if isinstance(action, callplan.Cancel):
                    self._cancel_leg(call, action.index, action.reason)
        stats = call.media.close()
        if stats:
            self.intercom.events.append("call_media", peer=call.peer, **stats)
        if call.dialog is not None and not keep_dialog:
            call.dialog.terminate()
            self.dialogs.remove(call.dialog)
        if self.call is call:
            self.call = None
        if call.direction == "out":
            self._report_calling(call)  # the log shows the attempt even if nothing was sent
        self.intercom.call_state("idle", reason=reason)


# =========================================================================================
# small helpers
# =========================================================================================


class _RegisterHandler:
    def __init__(self, ua: UserAgent, action: SendRegister) -> None:
        self.ua = ua
        self.action = action

    def sent(self, key: ClientKey, request: Request, target: Target) -> None:
        self.ua._reg_targets[str(self.action.registrar)] = target

    def __call__(self, event: Any) -> None:
        self.ua._registration_outcome(self.action, event)


class _Failover:
    """RFC 3263 4.3: a request that times out, cannot be sent, or is answered 503 goes to
    the next target (a new transaction with a new branch); the handler behind sees only
    the outcome of the last try. An INVITE whose call was given up is not sent again."""

    def __init__(
        self,
        ua: UserAgent,
        request: Request,
        hop: str,
        target: Target,
        rest: list[Target],
        inner: Handler,
    ) -> None:
        self.ua = ua
        self.request = request
        self.hop = hop
        self.target = target
        self.rest = rest
        self.inner = inner
        self.moved = False

    def sent(self, key: ClientKey, request: Request, target: Target) -> None:
        sent = getattr(self.inner, "sent", None)
        if sent is not None:
            sent(key, request, target)

    def __call__(self, event: Any) -> None:
        if self.moved:
            return  # what is still coming from the target we left
        failed = isinstance(event, TransactionTimeout | TransportError) or (
            isinstance(event, ResponseReceived) and event.response.status == 503
        )
        wanted = getattr(self.inner, "wants_failover", None)
        if not failed or not self.rest or (wanted is not None and not wanted()):
            if isinstance(event, ResponseReceived) and not failed:
                self.ua._answered_at[self.hop] = self.target
            self.inner(event)
            return
        self.moved = True
        nxt = self.rest[0]
        # A copy: the transaction left behind keeps its own Via (ACKs of a resent 503).
        request = self.request.copy()
        log.info(
            "%s to %s:%s failed (%s): trying %s:%s",
            self.request.method,
            self.target.host,
            self.target.port,
            _failure(event),
            nxt.host,
            nxt.port,
        )
        self.ua._launch(request, self.rest, self.inner, self.hop)


def _failure(event: Any) -> str:
    if isinstance(event, ResponseReceived):
        return f"{event.response.status} {event.response.reason}"
    return "no answer" if isinstance(event, TransactionTimeout) else "unreachable"


class _LegHandler:
    def __init__(self, ua: UserAgent, call: Call, leg: Leg) -> None:
        self.ua = ua
        self.call = call
        self.leg = leg

    def wants_failover(self) -> bool:
        return not (self.leg.cancelled or self.leg.done or self.call.over)

    def sent(self, key: ClientKey, request: Request, target: Target) -> None:
        self.leg.key = key
        self.leg.peer = target
        if self.leg.cancelled:
            self.ua._process(self.ua.layer.cancel(key, self.ua.now()))

    def __call__(self, event: Any) -> None:
        self.ua._leg_event(self.call, self.leg, event)


class _RefreshHandler:
    def __init__(self, ua: UserAgent, call: Call, request: Request) -> None:
        self.ua = ua
        self.call = call
        self.request = request

    def __call__(self, event: Any) -> None:
        self.ua._refresh_outcome(self.call, self.request, event)


def _quiet(method: str) -> Handler:
    def handler(event: Any) -> None:
        if isinstance(event, ResponseReceived):
            if event.response.status >= 300:
                log.info("%s answered %s", method, event.response.status)
        elif isinstance(event, TransactionTimeout | TransportError | LocateFailed):
            log.info("%s got no answer", method)

    return handler


def _loose(uri: SipUri) -> SipUri:
    if uri.lr:
        return uri
    params = dict(uri.params)
    params["lr"] = None
    return uri.replace(params=params)


def _contacts_by_q(response: Response) -> list[NameAddress]:
    try:
        contacts = response.contact
    except RemoteProtocolError:
        return []
    indexed = list(enumerate(contacts))
    indexed.sort(key=lambda ic: (-(ic[1].q if ic[1].q is not None else 1.0), ic[0]))
    return [c for _, c in indexed if isinstance(c.uri, SipUri)]


def _dialog_of_call(call: Call, dialog: Dialog) -> bool:
    return any(dialog in leg.dialogs.values() for leg in call.legs.values())


def _first_line(data: bytes) -> str:
    return data.split(b"\r\n", 1)[0].decode("utf-8", "replace")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
