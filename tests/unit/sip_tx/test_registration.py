"""Registration flows against a registrar built on auth.py's digest server side."""

from __future__ import annotations

import itertools
import random

import pytest

from porch.sip.auth import DigestServer
from porch.sip.headers import NameAddress, Via
from porch.sip.message import Request, Response, make_response
from porch.sip.registration import (
    FailReason,
    PublicAddress,
    Registration,
    RegistrationConfig,
    RegState,
    RetryPolicy,
    SendRegister,
    StatusChanged,
    Stopped,
    refresh_delay,
)
from porch.sip.transaction import (
    RequestReceived,
    ResponseReceived,
    TransactionLayer,
    TransactionTimeout,
)
from porch.sip.uri import SipUri, parse_uri

from .conftest import Network, of_type, wire

MAIN = parse_uri("sip:pbx.example.com")
BACKUP = parse_uri("sip:pbx2.example.com:5070;transport=tcp")
CONTACT = NameAddress("sip:door@192.168.1.20:5060")


class Registrar:
    """A small sans-IO registrar: digest auth, Min-Expires, bindings, optional NAT view."""

    def __init__(self, password="secret", *, min_expires=None, nonce_lifetime=3600.0,
                 nat=None, status=None):  # fmt: skip
        counter = itertools.count(1)
        self.password = password
        self.nonce_lifetime = nonce_lifetime
        self._nonce = lambda: f"n{next(counter)}"
        self.auth = self._server()
        self.min_expires = min_expires
        self.nat = nat  # (host, port) we "see" the client at
        self.status = status  # answer everything with this status (403, 503 ...)
        self.bindings: dict[str, float] = {}  # contact URI -> expiry time
        self.requests: list[Request] = []
        self.responses: list[Response] = []
        self.headers: list[tuple[str, str]] = []

    def _server(self):
        return DigestServer("example.com", {"door": self.password}, nonce=self._nonce,
                            nonce_lifetime=self.nonce_lifetime)  # fmt: skip

    def restart(self):
        """Forget every nonce (a restarted registrar): old credentials get a plain 401."""
        self.auth = self._server()

    def handle(self, request: Request, now: float) -> Response:
        response = self._handle(request, now)
        self.responses.append(response)
        return response

    def _handle(self, request: Request, now: float) -> Response:
        self.requests.append(request)
        if self.nat is not None:
            via = request.top_via.with_params(received=self.nat[0], rport=str(self.nat[1]))
            fields = request.headers.items()
            fields[[n.lower() for n, _ in fields].index("via")] = ("Via", str(via))
            request = Request(request.method, request.target, fields, request.body)
        if self.status is not None:
            return wire(make_response(request, self.status, to_tag="r", headers=self.headers))
        challenge = self.auth.check(request, now, to_tag="r")
        if challenge is not None:
            return wire(challenge)
        expires = int(request.headers.get("expires") or 3600)
        if self.min_expires and 0 < expires < self.min_expires:
            return wire(
                make_response(
                    request, 423, to_tag="r", headers=[("Min-Expires", str(self.min_expires))]
                )
            )
        for c in request.contact:
            e = c.expires if c.expires is not None else expires
            if e == 0:
                self.bindings.pop(str(c.uri), None)
            else:
                self.bindings[str(c.uri)] = now + e
        contacts = [f"<{uri}>;expires={int(t - now)}" for uri, t in self.bindings.items()]
        return wire(
            make_response(request, 200, to_tag="r", headers=[("Contact", c) for c in contacts])
        )


class Harness:
    """Drives a Registration against registrars by host, with a virtual clock.

    A registrar that is None is down: the transaction times out after 64*T1 = 32 s.
    A host in `no_dns` fails name resolution at once.
    """

    def __init__(self, reg: Registration, registrars: dict[str, Registrar | None]):
        self.reg = reg
        self.registrars = registrars
        self.no_dns: set[str] = set()
        self.now = 0.0
        self.sent: list[SendRegister] = []
        self.events: list = []
        self.timeouts: list[tuple[float, Request]] = []

    def pump(self, actions):
        for a in actions:
            if not isinstance(a, SendRegister):
                self.events.append(a)
                continue
            self.sent.append(a)
            host = a.registrar.host
            if host in self.no_dns:
                self.pump(self.reg.on_dns_failure(a.request, self.now, f"{host}: NXDOMAIN"))
                continue
            registrar = self.registrars.get(host)
            if registrar is None:
                self.timeouts.append((self.now + 32.0, a.request))
                continue
            self.pump(self.reg.on_response(registrar.handle(a.request, self.now), self.now))

    def advance(self, until: float):
        while True:
            times = [t for t, _ in self.timeouts]
            if self.reg.deadline is not None:
                times.append(self.reg.deadline)
            if not times or min(times) > until:
                break
            self.now = min(times)
            due = [x for x in self.timeouts if x[0] <= self.now]
            if due:
                self.timeouts.remove(due[0])
                self.pump(self.reg.on_timeout(due[0][1], self.now))
            else:
                self.pump(self.reg.on_timer(self.now))
        self.now = until

    def statuses(self):
        return [(e.state, e.reason) for e in self.events if isinstance(e, StatusChanged)]


def make(password="secret", *, backup=None, expires=600, seed=7, policy=None, via=None):
    config = RegistrationConfig(
        aor=SipUri("example.com", "door"),
        registrar=MAIN,
        backup=backup,
        contact=CONTACT,
        via=via or Via("UDP", "192.168.1.20", 5060, {"rport": None}),
        username="door",
        password=password,
        expires=expires,
        headers=(("User-Agent", "porch"),),
        policy=policy or RetryPolicy(),
    )
    return Registration(config, rng=random.Random(seed))


def test_refresh_delay():
    assert refresh_delay(600) == 540
    assert refresh_delay(3600) == 3240  # 90 % at the latest
    assert refresh_delay(120) == 60
    assert refresh_delay(60) == 30  # short intervals: half-time
    assert refresh_delay(3000) == 2700


def test_register_with_digest_then_refresh_without_a_new_challenge():
    registrar = Registrar()
    h = Harness(make(), {"pbx.example.com": registrar})
    h.pump(h.reg.start(0.0))
    first, second = h.sent
    req = first.request
    # RFC 3261 10.2: Request-URI is the domain, To/From the AOR, our Contact, Expires.
    assert req.target == "sip:pbx.example.com" and req.method == "REGISTER"
    assert str(req.to.uri) == "sip:door@example.com" and req.from_.tag
    assert req.headers.get("expires") == "600" and req.contact[0].uri == CONTACT.uri
    assert "authorization" not in req.headers and req.headers.get("user-agent") == "porch"
    assert "branch" not in req.top_via.params  # the transaction layer adds it
    auth = second.request
    assert auth.call_id == req.call_id and auth.cseq.number == req.cseq.number + 1
    assert "authorization" in auth.headers
    assert h.reg.state is RegState.REGISTERED and h.reg.granted == 600
    assert h.statuses() == [(RegState.REGISTERING, None), (RegState.REGISTERED, None)]
    assert h.events[-1].expires == 600 and h.events[-1].registrar == MAIN
    assert h.reg.deadline == 540.0
    assert list(registrar.bindings) == ["sip:door@192.168.1.20:5060"]
    h.advance(541)
    refresh = h.sent[2].request
    assert len(h.sent) == 3  # credentials re-used: no 401 round trip
    assert refresh.call_id == req.call_id and refresh.cseq.number == auth.cseq.number + 1
    assert "nc=00000002" in refresh.headers.get("authorization")
    assert h.reg.state is RegState.REGISTERED and h.reg.deadline == 540 + 540
    assert len(h.statuses()) == 2  # a refresh changes nothing visible


def test_stale_nonce_is_not_a_failure():
    registrar = Registrar(nonce_lifetime=100)
    h = Harness(make(), {"pbx.example.com": registrar})
    h.pump(h.reg.start(0.0))
    h.advance(600)
    # refresh at 540 with the old nonce -> 401 stale=true -> answered -> 200
    assert len(h.sent) == 4
    stale = [r for r in registrar.responses if r.status == 401][-1]
    assert "stale=true" in stale.headers.get("www-authenticate")
    assert "stale" not in h.sent[2].request.headers.get("authorization")
    assert h.reg.state is RegState.REGISTERED and h.statuses()[-1][0] is RegState.REGISTERED
    assert RegState.FAILED not in [s for s, _ in h.statuses()]


def test_forgotten_nonce_without_stale_is_answered_once_more():
    registrar = Registrar()
    h = Harness(make(), {"pbx.example.com": registrar})
    h.pump(h.reg.start(0.0))
    registrar.restart()  # now our cached nonce is unknown: plain 401, no stale=true
    h.advance(541)
    assert h.reg.state is RegState.REGISTERED
    assert len(h.sent) == 4


def test_wrong_password_fails_with_auth_reason_and_retries_later():
    registrar = Registrar(password="other")
    h = Harness(make(), {"pbx.example.com": registrar})
    h.pump(h.reg.start(0.0))
    assert len(h.sent) == 2  # one answer to the challenge, then we stop
    assert h.reg.state is RegState.FAILED and h.reg.reason is FailReason.AUTH
    assert "401" in h.reg.detail
    assert h.statuses()[-1] == (RegState.FAILED, FailReason.AUTH)
    assert 2.0 <= h.reg.deadline <= 4.0  # first backoff: base 4 s with 50-100 % jitter
    registrar.password = "secret"
    registrar.restart()
    h.advance(5)
    assert h.reg.state is RegState.REGISTERED


@pytest.mark.parametrize(
    ("status", "reason"),
    [(403, FailReason.FORBIDDEN), (404, FailReason.NOT_FOUND), (480, FailReason.REJECTED)],
)
def test_final_errors_are_told_apart(status, reason):
    h = Harness(make(), {"pbx.example.com": Registrar(status=status)})
    h.pump(h.reg.start(0.0))
    assert (h.reg.state, h.reg.reason) == (RegState.FAILED, reason)
    assert str(status) in h.reg.detail


def test_timeout_and_dns_failure_reasons():
    h = Harness(make(), {"pbx.example.com": None})
    h.pump(h.reg.start(0.0))
    h.advance(33)
    assert (h.reg.state, h.reg.reason) == (RegState.FAILED, FailReason.TIMEOUT)
    h2 = Harness(make(), {})
    h2.no_dns.add("pbx.example.com")
    h2.pump(h2.reg.start(0.0))
    assert (h2.reg.state, h2.reg.reason) == (RegState.FAILED, FailReason.DNS)
    assert "NXDOMAIN" in h2.reg.detail


def test_backoff_is_capped_exponential_with_jitter():
    policy = RetryPolicy(base=4.0, cap=60.0)
    h = Harness(make(policy=policy), {})
    h.no_dns.add("pbx.example.com")
    h.pump(h.reg.start(0.0))
    attempts = [0.0]
    while len(attempts) < 10:
        h.advance(h.reg.deadline)
        attempts.append(h.now)
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    for n, gap in enumerate(gaps, start=1):
        ceiling = min(60.0, 4.0 * 2 ** (n - 1))
        assert ceiling * 0.5 <= gap <= ceiling, (n, gap)
    assert len(set(gaps)) == len(gaps)  # jittered
    assert max(gaps) <= 60.0
    # The same seed gives the same schedule (random is injected).
    h2 = Harness(make(policy=policy), {})
    h2.no_dns.add("pbx.example.com")
    h2.pump(h2.reg.start(0.0))
    assert h2.reg.deadline == pytest.approx(attempts[1])


def test_503_retry_after_is_honoured():
    registrar = Registrar(status=503)
    registrar.headers = [("Retry-After", "120")]
    h = Harness(make(), {"pbx.example.com": registrar})
    h.pump(h.reg.start(0.0))
    assert h.reg.reason is FailReason.REJECTED and h.reg.deadline == 120.0


def test_423_follows_min_expires():
    registrar = Registrar(min_expires=1800)
    h = Harness(make(expires=600), {"pbx.example.com": registrar})
    h.pump(h.reg.start(0.0))
    assert [s.request.headers.get("expires") for s in h.sent] == ["600", "600", "1800"]
    assert h.reg.state is RegState.REGISTERED and h.reg.granted == 1800
    assert h.reg.deadline == refresh_delay(1800)
    h.advance(refresh_delay(1800) + 1)
    assert h.sent[-1].request.headers.get("expires") == "1800"  # remembered for refreshes


def test_423_without_min_expires_fails():
    registrar = Registrar(status=423)
    h = Harness(make(), {"pbx.example.com": registrar})
    h.pump(h.reg.start(0.0))
    assert (h.reg.state, h.reg.reason) == (RegState.FAILED, FailReason.INTERVAL)


def test_failover_to_backup_and_back_to_main():
    backup = Registrar()
    main = Registrar()
    registrars = {"pbx.example.com": None, "pbx2.example.com": backup}
    policy = RetryPolicy(failover_after=2, return_after=300)
    h = Harness(make(backup=BACKUP, policy=policy), registrars)
    h.pump(h.reg.start(0.0))
    h.advance(100)
    hosts = [s.registrar.host for s in h.sent]
    assert hosts[:2] == ["pbx.example.com", "pbx.example.com"]
    assert h.reg.state is RegState.REGISTERED and h.reg.on_backup
    assert h.reg.registrar == BACKUP
    backup_req = next(s.request for s in h.sent if s.registrar == BACKUP)
    assert backup_req.target == "sip:pbx2.example.com:5070;transport=tcp"
    assert list(backup.bindings)
    # The main registrar is still down at the first probe: stay on the backup.
    h.advance(400)
    assert h.reg.on_backup and h.reg.state is RegState.REGISTERED
    registrars["pbx.example.com"] = main
    h.advance(1000)
    assert not h.reg.on_backup and h.reg.registrar == MAIN
    assert list(main.bindings) == ["sip:door@192.168.1.20:5060"]
    assert backup.bindings == {}  # de-registered from the backup (Expires: 0)
    assert any(s.purpose == "unregister" and s.registrar == BACKUP for s in h.sent)
    regs = [e.registrar for e in h.events if isinstance(e, StatusChanged)
            and e.state is RegState.REGISTERED]  # fmt: skip
    assert regs == [BACKUP, MAIN]


def test_failover_while_the_main_binding_is_held_says_registered_at_the_backup_only_after_2xx():
    main = Registrar()
    registrars = {"pbx.example.com": main, "pbx2.example.com": None}
    reg = make(backup=BACKUP, expires=3600, policy=RetryPolicy(failover_after=2))
    h = Harness(reg, registrars)
    h.pump(h.reg.start(0.0))
    registrars["pbx.example.com"] = None  # main goes away while our 3600 s binding holds
    # The refresh at 3240 times out at 3272, the retry a few seconds later times out too:
    # the REGISTER goes to the backup, which is down as well for now.
    h.advance(3320)
    assert any(s.registrar == BACKUP for s in h.sent)
    assert h.reg.state is RegState.REGISTERED  # the main binding presumably still holds
    shown = [e for e in h.events if isinstance(e, StatusChanged)]
    assert [(e.state, e.registrar, e.backup) for e in shown] == [
        (RegState.REGISTERING, MAIN, False),
        (RegState.REGISTERED, MAIN, False),
    ]
    h.advance(3345)  # that REGISTER timed out: failed there, and said so
    assert [(e.state, e.registrar, e.backup) for e in h.events[len(shown) :]] == [
        (RegState.FAILED, BACKUP, True)
    ]
    backup = Registrar()
    registrars["pbx2.example.com"] = backup
    h.advance(3500)
    assert list(backup.bindings) == ["sip:door@192.168.1.20:5060"]
    last = h.events[-1]
    assert (last.state, last.registrar, last.backup) == (RegState.REGISTERED, BACKUP, True)
    assert [e.state for e in h.events].count(RegState.REGISTERED) == 2  # main, then backup


def test_refresh_failure_keeps_registered_until_the_binding_lapses():
    registrar = Registrar()
    registrars = {"pbx.example.com": registrar}
    h = Harness(make(), registrars)
    h.pump(h.reg.start(0.0))
    registrars["pbx.example.com"] = None  # the PBX goes away
    h.advance(599)
    assert h.reg.state is RegState.REGISTERED  # refresh at 540 timed out at 572, retrying
    h.advance(601)
    assert (h.reg.state, h.reg.reason) == (RegState.FAILED, FailReason.TIMEOUT)
    assert "expired" in h.reg.detail
    registrars["pbx.example.com"] = registrar  # back: the next retry registers again
    h.advance(1000)
    assert h.reg.state is RegState.REGISTERED


def test_deregister_on_shutdown():
    registrar = Registrar()
    h = Harness(make(), {"pbx.example.com": registrar})
    h.pump(h.reg.start(0.0))
    registrar.restart()  # so that the de-register is challenged once more
    h.pump(h.reg.stop(10.0))
    unreg = [s for s in h.sent if s.purpose == "unregister"]
    assert [s.request.headers.get("expires") for s in unreg] == ["0", "0"]
    assert unreg[0].request.contact[0].uri == CONTACT.uri
    assert registrar.bindings == {}
    assert isinstance(h.events[-1], Stopped)
    assert h.reg.state is RegState.DISABLED and h.reg.deadline is None


def test_shutdown_when_not_registered_is_immediate_and_timeouts_still_end_it():
    h = Harness(make(), {"pbx.example.com": None})
    h.pump(h.reg.stop(0.0))
    assert isinstance(h.events[-1], Stopped) and not h.sent
    h = Harness(make(), {"pbx.example.com": Registrar()})
    h.pump(h.reg.start(0.0))
    h.registrars["pbx.example.com"] = None
    h.pump(h.reg.stop(5.0))
    h.advance(40)
    assert isinstance(h.events[-1], Stopped)


def test_public_address_change_and_new_contact():
    registrar = Registrar(nat=("203.0.113.5", 40000))
    h = Harness(make(), {"pbx.example.com": registrar})
    h.pump(h.reg.start(0.0))
    found = of_type(h.events, PublicAddress)
    assert found == [PublicAddress("203.0.113.5", 40000, "UDP")]
    h.advance(541)
    assert len(of_type(h.events, PublicAddress)) == 1  # reported once, not on every refresh
    new = NameAddress("sip:door@203.0.113.5:40000")
    h.pump(h.reg.update_contact(new, h.now))
    change = h.sent[-1]
    assert change.purpose == "contact-change"
    contacts = [str(c) for c in change.request.contact]
    assert contacts == ["<sip:door@203.0.113.5:40000>", "<sip:door@192.168.1.20:5060>;expires=0"]
    assert list(registrar.bindings) == ["sip:door@203.0.113.5:40000"]
    assert h.reg.state is RegState.REGISTERED
    h.advance(h.reg.deadline + 1)
    assert [str(c) for c in h.sent[-1].request.contact] == ["<sip:door@203.0.113.5:40000>"]


def test_no_public_address_event_without_nat():
    registrar = Registrar(nat=("192.168.1.20", 5060))
    h = Harness(make(), {"pbx.example.com": registrar})
    h.pump(h.reg.start(0.0))
    assert not of_type(h.events, PublicAddress)


def test_responses_that_are_not_ours_are_ignored():
    reg = make()
    (_, send) = reg.start(0.0)
    other = wire(make_response(send.request, 200, to_tag="x"))
    other.headers.set("Call-ID", "someone-else")
    assert reg.on_response(wire(other), 1.0) == []
    assert reg.on_response(wire(make_response(send.request, 100)), 1.0) == []
    assert reg.matches(send.request) and reg.state is RegState.REGISTERING


def test_through_the_transaction_layer_over_a_lossy_link(tokens):
    """Registration -> client transaction -> lossy UDP -> server transaction -> registrar."""
    registrar = Registrar()
    net = Network(TransactionLayer(token=tokens), TransactionLayer(token=tokens))
    reg = make()
    lost = itertools.count()
    net.dropper = lambda msg: next(lost) in (0, 2)  # first REGISTER and first 200 vanish
    pending = {}

    def run_reg(actions):
        out = []
        for a in actions:
            if isinstance(a, SendRegister):
                key, sent = net.a.send_request(a.request, "b", reliable=False, now=net.now)
                pending[key] = a.request
                out += sent
        return out

    def hook(side, ev):
        if side == "b" and isinstance(ev, RequestReceived):
            resp = registrar.handle(ev.request, net.now)
            return net.b.send_response(ev.key, resp, net.now)
        if side == "a" and isinstance(ev, ResponseReceived):
            return run_reg(reg.on_response(ev.response, net.now))
        if side == "a" and isinstance(ev, TransactionTimeout):
            return run_reg(reg.on_timeout(pending[ev.key], net.now))
        return []

    net.emit("a", run_reg(reg.start(0.0)))
    net.run(30.0, hook=hook)
    assert reg.state is RegState.REGISTERED
    lines = [line for _, _, line in net.wire_log]
    assert "REGISTER sip:pbx.example.com SIP/2.0 (lost)" in lines
    assert len(registrar.bindings) == 1
