"""Registration with a SIP registrar (RFC 3261 section 10), sans-IO.

`Registration` keeps one account registered: it builds REGISTER requests (digest answers
from auth.py, credentials re-used on refreshes so they cost one round trip), refreshes at a
safe margin before the binding lapses, follows 423 Interval Too Brief, backs off after
failures (capped exponential with jitter, random injectable), fails over to a backup
registrar and probes the main one again later, de-registers on shutdown, and watches the
Via of responses for the address a NAT gave us (RFC 3581), reporting a change so that the
UA can register a new Contact.

It never sends anything itself: `start`, `on_response`, `on_timer`, ... return actions,
`SendRegister` among them, which the UA hands to the transaction layer; it reports the
outcome of that transaction back (`on_response`, `on_timeout`, `on_transport_error`, and
`on_dns_failure` when the edge could not resolve the registrar). Time is always passed in.

State for /api/status and the LEDs: `state` (disabled / registering / registered / failed)
and, when failed, `reason` (a FailReason: wrong password vs forbidden vs timeout vs DNS ...)
with a human `detail`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from porch.sip.auth import AuthenticationFailed, AuthError, DigestClient
from porch.sip.errors import LocalProtocolError, RemoteProtocolError
from porch.sip.headers import NameAddress, Via
from porch.sip.message import Request, Response, build_request
from porch.sip.uri import SipUri

__all__ = [
    "Binding",
    "FailReason",
    "PublicAddress",
    "RegState",
    "Registration",
    "RegistrationConfig",
    "RetryPolicy",
    "SendRegister",
    "StatusChanged",
    "Stopped",
    "refresh_delay",
]


class RegState(StrEnum):
    DISABLED = "disabled"
    REGISTERING = "registering"
    REGISTERED = "registered"
    FAILED = "failed"


class FailReason(StrEnum):
    AUTH = "auth"  # credentials refused (401/407 again): wrong username or password
    AUTH_SCHEME = "auth-scheme"  # a challenge we cannot answer
    FORBIDDEN = "forbidden"  # 403
    NOT_FOUND = "not-found"  # 404: unknown user or domain
    INTERVAL = "interval"  # 423 without a usable Min-Expires
    REJECTED = "rejected"  # any other final response
    TIMEOUT = "timeout"  # no answer (timer F)
    TRANSPORT = "transport"  # could not send (connection refused, TLS ...)
    DNS = "dns"  # the edge could not resolve the registrar

    @property
    def text(self) -> str:
        return _REASON_TEXT[self]


_REASON_TEXT = {
    FailReason.AUTH: "authentication failed: wrong username or password",
    FailReason.AUTH_SCHEME: "registrar asks for an authentication scheme we do not support",
    FailReason.FORBIDDEN: "registrar refused the account (403 Forbidden)",
    FailReason.NOT_FOUND: "registrar does not know the account or domain (404)",
    FailReason.INTERVAL: "registrar refused the registration interval (423)",
    FailReason.REJECTED: "registrar rejected the registration",
    FailReason.TIMEOUT: "no answer from the registrar",
    FailReason.TRANSPORT: "cannot reach the registrar",
    FailReason.DNS: "cannot resolve the registrar's name",
}

# Failures after which the binding we still hold is presumably still there: keep showing
# "registered" until it lapses while retrying.
_SOFT = frozenset({FailReason.TIMEOUT, FailReason.TRANSPORT, FailReason.DNS, FailReason.REJECTED})


# ---------------------------------------------------------------------------------------
# Inputs and outputs
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. Defaults suit a door station: quick first retries, 5 min cap."""

    base: float = 4.0  # first retry after base * U(0.5, 1.0) seconds
    cap: float = 300.0  # never wait longer than this between attempts
    failover_after: int = 2  # consecutive failures before trying the other registrar
    return_after: float = 300.0  # on the backup: probe the main registrar this often
    max_auth_rounds: int = 3  # challenges answered per attempt (stale nonces included)
    max_interval_rounds: int = 2  # 423 answers followed per attempt
    max_expires: int = 86400  # refuse a Min-Expires above this (423 loop guard)


@dataclass(frozen=True)
class RegistrationConfig:
    """What to register where. `via` is our Via without branch (the transaction layer adds
    it), or a function giving it for a registrar (the transport may differ per registrar)."""

    aor: SipUri  # sip:user@domain
    registrar: SipUri
    contact: NameAddress
    via: Via | str | Callable[[SipUri], Via | str]
    username: str = ""  # auth username; defaults to the AOR user
    password: str = ""
    backup: SipUri | None = None
    expires: int = 600
    display_name: str | None = None
    headers: tuple[tuple[str, str], ...] = ()  # User-Agent, Supported, Allow ...
    policy: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(frozen=True)
class SendRegister:
    """Send `request` in a new non-INVITE client transaction towards `registrar` (the edge
    resolves it per RFC 3263, or uses the outbound proxy). Report its outcome back."""

    request: Request
    registrar: SipUri
    purpose: str  # "register", "refresh", "probe", "unregister", "contact-change"


@dataclass(frozen=True)
class StatusChanged:
    """The state as /api/status shows it, and the registrar it is about: the one that
    answered (or failed to), which is not always the one the next REGISTER goes to."""

    state: RegState
    registrar: SipUri
    reason: FailReason | None = None
    detail: str = ""
    expires: int | None = None  # granted interval, when registered
    backup: bool = False  # `registrar` is sip.backup_registrar


@dataclass(frozen=True)
class PublicAddress:
    """Responses say we are seen as host:port, which is not what our Contact says: the UA
    should build a new Contact and call `update_contact`."""

    host: str
    port: int
    transport: str


@dataclass(frozen=True)
class Stopped:
    """Shutdown is complete: every binding was removed or its removal failed."""


Action = SendRegister | StatusChanged | PublicAddress | Stopped


def refresh_delay(expires: float) -> float:
    """When to refresh a binding granted for `expires` seconds.

    A minute before expiry leaves room for one whole transaction timeout (64*T1 = 32 s)
    and a retry; short intervals refresh at half-time; long ones at 90 % at the latest, so a
    one-hour binding is not left until its last minute.
    """
    return max(expires / 2, min(expires - 60, expires * 0.9))


# ---------------------------------------------------------------------------------------
# One registrar
# ---------------------------------------------------------------------------------------


@dataclass
class Binding:
    """Our relation with one registrar: its own Call-ID and CSeq (RFC 3261 10.2 wants both
    kept across refreshes) and its own digest state."""

    registrar: SipUri
    call_id: str
    from_tag: str
    auth: DigestClient
    cseq: int = 0
    outstanding: Request | None = None
    purpose: str = ""
    expires_at: float | None = None  # when the registrar forgets us
    auth_rounds: int = 0
    interval_rounds: int = 0
    requested: int = 0  # the Expires of the outstanding request


def _request_uri(registrar: SipUri) -> SipUri:
    """RFC 3261 10.2: the registrar's domain, no user part (port and transport kept)."""
    return registrar.replace(user=None, password=None, headers=[])


def _default_port(transport: str) -> int:
    return 5061 if transport.upper() in ("TLS", "WSS") else 5060


class Registration:
    """The registration state machine for one account.

    ```
    reg = Registration(config, rng=random.Random(1))
    out = reg.start(now)                  # [StatusChanged(registering), SendRegister(...)]
    out = reg.on_response(resp, now)      # 401 -> SendRegister with credentials; 200 ->
                                          # StatusChanged(registered); refresh at reg.deadline
    out = reg.on_timer(now)               # refresh / retry / probe of the main registrar
    out = reg.stop(now)                   # SendRegister(Expires: 0) ... later Stopped()
    ```
    """

    def __init__(
        self,
        config: RegistrationConfig,
        *,
        rng: random.Random | None = None,
        digest: Callable[[str, str], DigestClient] | None = None,
    ) -> None:
        self.config = config
        self.policy = config.policy
        self._rng = rng or random.Random()
        make_digest = digest or (lambda user, password: DigestClient(user, password))
        username = config.username or config.aor.user or ""
        self.contact = config.contact
        self._old_contact: NameAddress | None = None
        self.main = self._binding(config.registrar, make_digest(username, config.password))
        self.backup = (
            self._binding(config.backup, make_digest(username, config.password))
            if config.backup is not None
            else None
        )
        self.active = self.main
        self._shown = self.main  # the binding the reported state is about
        self.state = RegState.DISABLED
        self.reason: FailReason | None = None
        self.detail = ""
        self.last_error: tuple[FailReason, str] | None = None
        self.granted: int | None = None
        self.failures = 0  # consecutive, on the active registrar
        self.stopping = False
        self.public: tuple[str, int] | None = None  # last address responses reported
        self._refresh_at: float | None = None
        self._retry_at: float | None = None
        self._probe_at: float | None = None
        self._expiry_at: float | None = None
        self._contact_changed = False

    def _token(self) -> str:
        return f"{self._rng.getrandbits(64):016x}"

    def _binding(self, registrar: SipUri, auth: DigestClient) -> Binding:
        return Binding(registrar, self._token(), self._token()[:10], auth)

    # -- status ---------------------------------------------------------------------------
    @property
    def registrar(self) -> SipUri:
        return self.active.registrar

    @property
    def on_backup(self) -> bool:
        return self.backup is not None and self.active is self.backup

    @property
    def deadline(self) -> float | None:
        times = [
            t
            for t in (self._refresh_at, self._retry_at, self._probe_at, self._expiry_at)
            if t is not None
        ]
        return min(times) if times else None

    def _set(
        self,
        state: RegState,
        reason: FailReason | None = None,
        detail: str = "",
        *,
        about: Binding | None = None,
        force: bool = False,
    ) -> list[Action]:
        """Report `state` of the binding `about` (default: the active one)."""
        about = about or self.active
        changed = about is not self._shown or (state, reason, detail) != (
            self.state,
            self.reason,
            self.detail,
        )
        self.state, self.reason, self.detail, self._shown = state, reason, detail, about
        if not (changed or force):
            return []
        return [
            StatusChanged(
                state,
                about.registrar,
                reason,
                detail,
                self.granted if state is RegState.REGISTERED else None,
                backup=about is self.backup,
            )
        ]

    # -- inputs ---------------------------------------------------------------------------
    def start(self, now: float) -> list[Action]:
        """Register (again) from scratch with the main registrar."""
        if self.stopping:
            raise LocalProtocolError("registration is shutting down")
        self.active = self.main
        self.failures = 0
        out = self._set(RegState.REGISTERING)
        return out + self._send(self.active, "register", now)

    def stop(self, now: float) -> list[Action]:
        """De-register every binding we hold (Expires: 0); `Stopped` when all are done."""
        self.stopping = True
        self._refresh_at = self._retry_at = self._probe_at = self._expiry_at = None
        out: list[Action] = []
        for b in self._bindings():
            held = b.expires_at is not None and b.expires_at > now
            if held or b.outstanding is not None:
                out += self._send(b, "unregister", now)
        if not out:
            out += self._set(RegState.DISABLED)
            out.append(Stopped())
        return out

    def update_contact(self, contact: NameAddress, now: float) -> list[Action]:
        """Register `contact` instead of the current one (e.g. a new public address); the old
        one is removed in the same REGISTER (expires=0)."""
        if str(contact) == str(self.contact):
            return []
        if self._old_contact is None:
            self._old_contact = self.contact
        self.contact = contact
        if self.stopping or self.state is RegState.DISABLED:
            return []
        if self.active.outstanding is not None:
            self._contact_changed = True  # sent once the current REGISTER completes
            return []
        return self._send(self.active, "contact-change", now)

    def on_dns_failure(self, request: Request, now: float, detail: str = "") -> list[Action]:
        return self._on_failure(request, FailReason.DNS, detail, now)

    def on_timeout(self, request: Request, now: float) -> list[Action]:
        return self._on_failure(request, FailReason.TIMEOUT, "", now)

    def on_transport_error(self, request: Request, now: float, detail: str = "") -> list[Action]:
        return self._on_failure(request, FailReason.TRANSPORT, detail, now)

    def matches(self, message: Request | Response) -> bool:
        """Is `message` (a response, or our request) one of our outstanding REGISTERs?"""
        return self._find(message) is not None

    def on_response(self, response: Response, now: float) -> list[Action]:
        b = self._find(response)
        if b is None or response.status < 200:
            return []
        request = b.outstanding
        assert request is not None
        purpose = b.purpose
        b.outstanding = None
        out: list[Action] = []
        if purpose != "unregister":
            out += self._learn_address(response)
        status = response.status
        if status in (401, 407):
            return out + self._on_challenge(b, request, response, now)
        if status == 423:
            return out + self._on_interval(b, request, response, now)
        b.auth_rounds = b.interval_rounds = 0
        if 200 <= status < 300:
            return out + self._on_success(b, response, now)
        reason = {403: FailReason.FORBIDDEN, 404: FailReason.NOT_FOUND}.get(
            status, FailReason.REJECTED
        )
        detail = f"{status} {response.reason}".strip()
        retry_after = _retry_after(response)
        return out + self._fail(b, purpose, reason, detail, now, retry_after)

    def on_timer(self, now: float) -> list[Action]:
        out: list[Action] = []
        if self._expiry_at is not None and self._expiry_at <= now:
            self._expiry_at = None
            if self.state is RegState.REGISTERED:
                reason, detail = self.last_error or (FailReason.TIMEOUT, "")
                detail = f"registration expired ({detail})"
                out += self._set(RegState.FAILED, reason, detail, about=self._shown)
        if self._probe_at is not None and self._probe_at <= now:
            self._probe_at = None
            if self.on_backup and self.main.outstanding is None:
                out += self._send(self.main, "probe", now)
        if self._refresh_at is not None and self._refresh_at <= now:
            self._refresh_at = None
            if self.active.outstanding is None:
                out += self._send(self.active, "refresh", now)
        if self._retry_at is not None and self._retry_at <= now:
            self._retry_at = None
            if self.active.outstanding is None:
                out += self._send(self.active, "register", now)
        return out

    # -- internals ------------------------------------------------------------------------
    def _bindings(self) -> list[Binding]:
        return [self.main] if self.backup is None else [self.main, self.backup]

    def _find(self, message: Request | Response) -> Binding | None:
        try:
            call_id = message.call_id
            cseq = message.cseq
        except RemoteProtocolError:
            return None
        for b in self._bindings():
            req = b.outstanding
            if (
                req is not None
                and b.call_id == call_id
                and cseq.method == "REGISTER"
                and cseq.number == b.cseq
            ):
                return b
        return None

    def _via(self, registrar: SipUri) -> Via | str:
        via = self.config.via
        return via(registrar) if callable(via) else via

    def _build(self, b: Binding, expires: int, contacts: list[str]) -> Request:
        b.cseq += 1
        aor = NameAddress(self.config.aor, self.config.display_name)
        request = build_request(
            "REGISTER",
            _request_uri(b.registrar),
            via=self._via(b.registrar),
            from_=aor.with_tag(b.from_tag),
            to=NameAddress(self.config.aor, self.config.display_name),
            call_id=b.call_id,
            cseq=b.cseq,
            contact=contacts,
            headers=[("Expires", str(expires)), *self.config.headers],
        )
        # Answer the last challenge of this registrar at once (nc counts up), so a refresh
        # does not need a 401 round trip.
        for name, value in b.auth.authorize(request):
            request.headers.add(name, value)
        return request

    def _send(self, b: Binding, purpose: str, now: float) -> list[Action]:
        if purpose == "unregister":
            expires = 0
        else:
            expires = b.requested if b.interval_rounds else self.config.expires
        contacts = [str(self.contact)]
        if purpose == "unregister":
            if self._old_contact is not None:
                contacts.append(str(self._old_contact))
        elif self._old_contact is not None:
            contacts.append(str(self._old_contact.with_params(expires="0")))
        b.requested = expires
        b.purpose = purpose
        request = self._build(b, expires, contacts)
        b.outstanding = request
        return [SendRegister(request, b.registrar, purpose)]

    def _resend(self, b: Binding, request: Request, extra: Iterable[tuple[str, str]]) -> Request:
        """The same REGISTER again with a new CSeq (and fresh credentials)."""
        b.cseq += 1
        fields = [
            (n, v)
            for n, v in request.headers.items()
            if n.lower() not in ("authorization", "proxy-authorization", "cseq", "via", "v")
        ]
        fields.insert(0, ("Via", str(self._via(b.registrar))))
        fields.append(("CSeq", f"{b.cseq} REGISTER"))
        new = Request("REGISTER", request.target, fields, request.body)
        for name, value in extra:
            new.headers.add(name, value)
        b.outstanding = new
        return new

    def _on_challenge(
        self, b: Binding, request: Request, response: Response, now: float
    ) -> list[Action]:
        b.auth_rounds += 1
        if b.auth_rounds > self.policy.max_auth_rounds:
            b.auth_rounds = 0
            detail = f"{response.status} {response.reason}: too many challenges"
            return self._fail(b, b.purpose, FailReason.AUTH, detail, now, None)
        answered = request
        if b.auth_rounds == 1:
            # Credentials we sent unasked (the last challenge, re-used) are not a password
            # check: some registrars answer an expired nonce without stale=true.
            answered = _without_credentials(request)
        try:
            fields = b.auth.respond(answered, response)
        except AuthenticationFailed:
            b.auth_rounds = 0
            detail = f"{response.status} {response.reason}: credentials refused"
            return self._fail(b, b.purpose, FailReason.AUTH, detail, now, None)
        except AuthError as exc:
            b.auth_rounds = 0
            return self._fail(b, b.purpose, FailReason.AUTH_SCHEME, str(exc), now, None)
        # The answer covers method, URI and body, which the resent request keeps; only
        # CSeq and Via change, and digest does not sign them.
        new = self._resend(b, request, fields)
        return [SendRegister(new, b.registrar, b.purpose)]

    def _on_interval(
        self, b: Binding, request: Request, response: Response, now: float
    ) -> list[Action]:
        b.interval_rounds += 1
        text = (response.headers.get("min-expires") or "").strip()
        minimum = int(text) if text.isdigit() else None
        if (
            minimum is None
            or minimum <= b.requested
            or minimum > self.policy.max_expires
            or b.interval_rounds > self.policy.max_interval_rounds
            or b.purpose == "unregister"
        ):
            b.interval_rounds = 0
            detail = f"423 Interval Too Brief (Min-Expires: {text or 'missing'})"
            return self._fail(b, b.purpose, FailReason.INTERVAL, detail, now, None)
        b.requested = minimum
        fields = [
            (n, v)
            for n, v in request.headers.items()
            if n.lower() not in ("expires", "authorization", "proxy-authorization")
        ]
        fields.append(("Expires", str(minimum)))
        base = Request("REGISTER", request.target, fields, request.body)
        new = self._resend(b, base, [])
        for name, value in b.auth.authorize(new):
            new.headers.add(name, value)
        return [SendRegister(new, b.registrar, b.purpose)]

    def _on_success(self, b: Binding, response: Response, now: float) -> list[Action]:
        purpose = b.purpose
        if purpose == "unregister":
            b.expires_at = None
            return self._maybe_stopped()
        granted = self._granted(b, response)
        b.expires_at = now + granted
        b.interval_rounds = 0
        out: list[Action] = []
        if purpose == "probe":
            # The main registrar is back: move there and remove the backup binding.
            backup = self.active
            self.active = self.main
            if backup is not self.main:
                out += self._send(backup, "unregister", now)
            self._probe_at = None
        if self._old_contact is not None and purpose in ("contact-change", "register", "refresh"):
            self._old_contact = None
        self.failures = 0
        self.last_error = None
        self.granted = granted
        self._retry_at = None
        self._refresh_at = now + refresh_delay(granted)
        self._expiry_at = b.expires_at
        if self.on_backup and self._probe_at is None:
            self._probe_at = now + self.policy.return_after
        force = purpose in ("register", "probe")
        out = self._set(RegState.REGISTERED, about=b, force=force) + out
        if self._contact_changed:
            self._contact_changed = False
            out += self._send(self.active, "contact-change", now)
        return out

    def _granted(self, b: Binding, response: Response) -> int:
        """The interval the registrar granted our Contact (its expires parameter in the 200,
        else the Expires header, else what we asked for)."""
        ours = self.contact.uri
        try:
            for c in response.contact:
                if c.uri == ours and c.expires is not None:
                    return max(c.expires, 1)
            expires = response.expires
        except RemoteProtocolError:
            expires = None
        if expires:
            return expires
        return b.requested or self.config.expires

    def _on_failure(
        self, request: Request, reason: FailReason, detail: str, now: float
    ) -> list[Action]:
        b = self._find(request)
        if b is None:
            return []
        b.outstanding = None
        b.auth_rounds = b.interval_rounds = 0
        return self._fail(b, b.purpose, reason, detail or reason.text, now, None)

    def _fail(
        self,
        b: Binding,
        purpose: str,
        reason: FailReason,
        detail: str,
        now: float,
        retry_after: float | None,
    ) -> list[Action]:
        if purpose == "unregister":
            b.expires_at = None
            return self._maybe_stopped()
        if purpose == "probe":
            self._probe_at = now + self.policy.return_after  # stay on the backup
            return []
        out: list[Action] = []
        self.failures += 1
        still_held = b.expires_at is not None and b.expires_at > now
        self.last_error = (reason, detail)
        if still_held and reason in _SOFT:
            pass  # the registrar presumably still has us: say so until the binding lapses
        else:
            b.expires_at = None
            self._expiry_at = None
            self._refresh_at = None
            out += self._set(RegState.FAILED, reason, detail, about=b)
        other = self._other(b)
        if other is not None and self.failures >= self.policy.failover_after:
            # The status stays about `b` (still registered there, or failed there) until
            # `other` answers: "registered" at the backup only once it accepted us.
            self.active = other
            self.failures = 0
            self._retry_at = now
            self._probe_at = None
            return out
        delay = retry_after if retry_after is not None else self._backoff()
        self._retry_at = now + delay
        return out

    def _other(self, b: Binding) -> Binding | None:
        if self.backup is None:
            return None
        return self.backup if b is self.main else self.main

    def _backoff(self) -> float:
        """Capped exponential with 50-100 % jitter, like RFC 5626 4.5."""
        n = max(self.failures, 1)
        ceiling = min(self.policy.cap, self.policy.base * 2 ** (n - 1))
        return ceiling * self._rng.uniform(0.5, 1.0)

    def _maybe_stopped(self) -> list[Action]:
        if not self.stopping:
            return []
        if any(b.outstanding is not None for b in self._bindings()):
            return []
        return [*self._set(RegState.DISABLED), Stopped()]

    def _learn_address(self, response: Response) -> list[Action]:
        """RFC 3581: the registrar's view of our address, from received/rport."""
        try:
            via = response.top_via
        except RemoteProtocolError:
            return []
        if via.received is None and via.rport is None:
            return []
        host = (via.received or via.host).strip("[]")
        port = via.rport or via.port or _default_port(via.transport)
        seen = (host, port)
        if seen == self.public:
            return []
        self.public = seen
        uri = self.contact.uri
        if isinstance(uri, SipUri):
            ours = (uri.host, uri.port or _default_port(uri.transport or via.transport))
            if ours == seen:
                return []
        return [PublicAddress(host, port, via.transport)]


def _without_credentials(request: Request) -> Request:
    fields = [
        (n, v)
        for n, v in request.headers.items()
        if n.lower() not in ("authorization", "proxy-authorization")
    ]
    return Request(request.method, request.target, fields, request.body)


def _retry_after(response: Response) -> float | None:
    value = (response.headers.get("retry-after") or "").split(";")[0].split("(")[0].strip()
    return float(value) if value.isdigit() else None
