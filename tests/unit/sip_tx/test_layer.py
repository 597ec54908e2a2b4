"""TransactionLayer: matching (17.1.3, 17.2.3), the UAS-core duties it takes on, and whole
exchanges between two layers over a lossy virtual UDP link."""

from __future__ import annotations

import pytest

from porch.sip.errors import LocalProtocolError
from porch.sip.message import build_request, make_response
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
    server_key,
)

from .conftest import Network, invite, of_type, reply, sends, wire


@pytest.fixture
def layer(tokens):
    return TransactionLayer(token=tokens)


def uac_request(method="INVITE", **kw):
    """A request as our UA builds it: Via without branch (the layer adds one)."""
    return build_request(
        method,
        "sip:bob@10.0.0.2",
        via="SIP/2.0/UDP 10.0.0.1:5060;rport",
        from_="<sip:door@example.com>;tag=f1",
        to="<sip:bob@example.com>",
        call_id=kw.pop("call_id", "c1"),
        cseq=kw.pop("cseq", 1),
        contact="<sip:door@10.0.0.1>",
        **kw,
    )


# -- client side ----------------------------------------------------------------------------


def test_send_request_adds_a_branch_and_routes_responses_by_branch_and_method(layer):
    key, out = layer.send_request(uac_request(), "pbx", reliable=False, now=0.0)
    assert key == ClientKey("z9hG4bKt0001", "INVITE")
    (sent,) = sends(out)
    assert sent.peer == "pbx"
    assert sent.message.top_via.branch == "z9hG4bKt0001"
    assert sent.message.top_via.has_rport
    assert layer.next_deadline == 0.5
    # A response with the same branch but another CSeq method is not ours (17.1.3).
    other = wire(make_response(sent.message, 200, to_tag="x"))
    other.headers.set("CSeq", "1 CANCEL")
    other = wire(other)
    assert of_type(layer.on_message(other, "pbx", reliable=False, now=0.1), StrayResponse)
    out = layer.on_message(reply(sent.message, 180), "pbx", reliable=False, now=0.2)
    assert [e.key for e in of_type(out, ResponseReceived)] == [key]


def test_cancel_is_deferred_until_a_provisional_and_built_per_9_1(layer):
    req = uac_request(route=["<sip:proxy.example.com;lr>"])
    key, out = layer.send_request(req, "pbx", reliable=False, now=0.0)
    invite_sent = sends(out)[0].message
    assert layer.cancel(key, 0.1) == []
    out = layer.on_message(reply(invite_sent, 180), "pbx", reliable=False, now=0.3)
    (cancel_send,) = sends(out)
    cancel = cancel_send.message
    assert cancel.method == "CANCEL" and cancel.target == invite_sent.target
    assert cancel.headers.values("via") == invite_sent.headers.values("via")[:1]
    assert str(cancel.cseq) == "1 CANCEL" and cancel.call_id == invite_sent.call_id
    assert cancel.headers.get("from") == invite_sent.headers.get("from")
    assert cancel.headers.get("to") == invite_sent.headers.get("to")
    assert cancel.headers.getall("route") == ["<sip:proxy.example.com;lr>"]
    ckey = ClientKey(invite_sent.top_via.branch, "CANCEL")
    assert ckey in layer.clients
    # The 200 to the CANCEL and the 487 to the INVITE go to their own transactions.
    out = layer.on_message(reply(cancel, 200), "pbx", reliable=False, now=0.4)
    assert [e.key for e in of_type(out, ResponseReceived)] == [ckey]
    out = layer.on_message(reply(invite_sent, 487), "pbx", reliable=False, now=0.5)
    assert [e.key for e in of_type(out, ResponseReceived)] == [key]
    assert sends(out)[0].message.method == "ACK"
    assert layer.cancel(ClientKey("z9hG4bKgone", "INVITE"), 1.0) == []


def test_ack_for_2xx_is_resent_for_each_retransmitted_2xx(layer):
    key, out = layer.send_request(uac_request(), "pbx", reliable=False, now=0.0)
    inv = sends(out)[0].message
    ok = reply(inv, 200, to_tag="bob")
    out = layer.on_message(ok, "pbx", reliable=False, now=0.1)
    assert of_type(out, ResponseReceived)[0].retransmission is False
    ack = build_request(
        "ACK", "sip:bob@10.0.0.2", via="SIP/2.0/UDP 10.0.0.1:5060;rport",
        from_="<sip:door@example.com>;tag=f1", to="<sip:bob@example.com>;tag=bob",
        call_id="c1", cseq=1,
    )  # fmt: skip
    (ack_sent,) = layer.send_ack(ack, "bob-contact", now=0.2)
    assert ack_sent.message.top_via.branch.startswith("z9hG4bK")
    assert ack_sent.message.top_via.branch != inv.top_via.branch  # a transaction of its own
    # Retransmitted 2xx while the INVITE transaction is in Accepted: same ACK, TU not bothered.
    out = layer.on_message(ok, "pbx", reliable=False, now=0.6)
    assert out == [ack_sent]
    # ... and after Timer M removed the transaction, still answered from the cache.
    layer.on_timer(32.2)
    assert key not in layer.clients
    assert layer.on_message(ok, "pbx", reliable=False, now=32.3) == [ack_sent]
    # A 2xx from another fork is news for the TU.
    assert of_type(
        layer.on_message(reply(inv, 200, to_tag="carol"), "pbx", reliable=False, now=32.4),
        StrayResponse,
    )


# -- server side ----------------------------------------------------------------------------


def test_new_request_creates_a_server_transaction_and_retransmissions_match_it(layer):
    req = invite()
    out = layer.on_message(req, "src", reliable=False, now=0.0)
    (ev,) = of_type(out, RequestReceived)
    assert ev.key == ServerKey("z9hG4bKinv1", "10.0.0.1:5060", "INVITE")
    assert layer.on_message(req, "src", reliable=False, now=0.1) == []  # nothing sent yet
    out = layer.on_timer(0.2)
    assert [s.message.status for s in sends(out)] == [100]
    # Same branch from another sent-by is another transaction (17.2.3); with the same
    # From tag, Call-ID and CSeq it would be a merged request (tested below).
    other = invite(sent_by="10.0.0.9:5060", call_id="another")
    assert of_type(layer.on_message(other, "src2", reliable=False, now=0.3), RequestReceived)


def test_2xx_is_retransmitted_t1_doubling_to_t2_until_the_ack(layer):
    req = invite()
    (ev,) = of_type(layer.on_message(req, "src", reliable=False, now=0.0), RequestReceived)
    ok = wire(make_response(req, 200, to_tag="me", headers=[("Contact", "<sip:door@10.0.0.2>")]))
    (first,) = sends(layer.send_response(ev.key, ok, 1.0))
    times = []
    while layer.next_deadline is not None and layer.next_deadline < 14:
        t = layer.next_deadline
        out = layer.on_timer(t)
        for s in sends(out):
            assert s.data == first.data
            times.append(t)
    assert times == [1.5, 2.5, 4.5, 8.5, 12.5]
    ack = invite(method="ACK", branch="z9hG4bKack1", to_tag="me")
    out = layer.on_message(ack, "src", reliable=False, now=13.0)
    assert of_type(out, AckReceived) == [AckReceived(None, ack, "src")]
    assert layer.on_timer(17.0) == []  # nothing more
    assert layer.stats.retransmitted_responses == 5


def test_2xx_over_tcp_is_still_retransmitted(tokens):
    # 13.3.1.4: end to end, whatever our own transport (a later hop may be UDP).
    layer = TransactionLayer(token=tokens)
    req = invite()
    (ev,) = of_type(layer.on_message(req, "src", reliable=True, now=0.0), RequestReceived)
    layer.send_response(ev.key, reply(req, 200, to_tag="me"), 0.0)
    assert layer.next_deadline == 0.5
    assert sends(layer.on_timer(0.5))


def test_no_ack_for_64_t1_gives_ack_timeout(layer):
    req = invite()
    (ev,) = of_type(layer.on_message(req, "src", reliable=False, now=0.0), RequestReceived)
    ok = reply(req, 200, to_tag="me")
    layer.send_response(ev.key, ok, 0.0)
    timeouts = []
    while layer.next_deadline is not None:
        t = layer.next_deadline
        for a in of_type(layer.on_timer(t), AckTimeout):
            timeouts.append((t, a))
    assert [(t, a.key, a.response.status) for t, a in timeouts] == [(32.0, ev.key, 200)]


def test_ack_for_non_2xx_stays_in_the_transaction(layer):
    req = invite()
    (ev,) = of_type(layer.on_message(req, "src", reliable=False, now=0.0), RequestReceived)
    layer.send_response(ev.key, reply(req, 486, to_tag="me"), 0.1)
    ack = invite(method="ACK", to_tag="me")  # same branch as the INVITE
    assert layer.on_message(ack, "src", reliable=False, now=0.2) == []
    assert layer.servers[ev.key].state == "confirmed"


def test_cancel_gets_200_and_the_invite_487(layer):
    req = invite()
    (ev,) = of_type(layer.on_message(req, "src", reliable=False, now=0.0), RequestReceived)
    layer.send_response(ev.key, reply(req, 180, to_tag="me"), 0.1)
    cancel = invite(method="CANCEL")
    out = layer.on_message(cancel, "src", reliable=False, now=0.5)
    statuses = [(s.message.status, s.message.cseq.method) for s in sends(out)]
    assert statuses == [(200, "CANCEL"), (487, "INVITE")]
    # 9.2: the same To tag as the INVITE's responses.
    assert {s.message.to.tag for s in sends(out)} == {"me"}
    assert of_type(out, CancelReceived) == [CancelReceived(ev.key, cancel, True)]
    assert not of_type(out, RequestReceived)
    # The CANCEL retransmission is answered by its own transaction.
    again = layer.on_message(cancel, "src", reliable=False, now=0.6)
    assert [s.message.status for s in sends(again)] == [200]
    with pytest.raises(LocalProtocolError):
        layer.send_response(ev.key, reply(req, 200, to_tag="me"), 0.7)  # too late


def test_cancel_after_the_answer_or_for_nothing(layer):
    req = invite()
    (ev,) = of_type(layer.on_message(req, "src", reliable=False, now=0.0), RequestReceived)
    layer.send_response(ev.key, reply(req, 200, to_tag="me"), 0.1)
    out = layer.on_message(invite(method="CANCEL"), "src", reliable=False, now=0.2)
    assert [s.message.status for s in sends(out)] == [200]
    assert not of_type(out, CancelReceived)
    out = layer.on_message(invite(method="CANCEL", branch="z9hG4bKnone"), "src",
                           reliable=False, now=0.3)  # fmt: skip
    assert [s.message.status for s in sends(out)] == [481]


def test_merged_request_gets_482(layer):
    first = invite(branch="z9hG4bKpath1")
    assert of_type(layer.on_message(first, "a", reliable=False, now=0.0), RequestReceived)
    merged = invite(branch="z9hG4bKpath2", sent_by="10.9.9.9:5060")
    out = layer.on_message(merged, "b", reliable=False, now=0.1)
    assert [s.message.status for s in sends(out)] == [482]
    assert of_type(out, MergedRequest) and not of_type(out, RequestReceived)
    assert layer.stats.merged == 1
    # Its retransmission is answered by its transaction, not treated as merged again.
    assert [s.message.status for s in sends(layer.on_message(merged, "b", reliable=False,
                                                             now=0.2))] == [482]  # fmt: skip
    # A request with a To tag is never checked (it is in a dialog).
    tagged = invite(branch="z9hG4bKpath3", method="INFO", to_tag="x")
    assert of_type(layer.on_message(tagged, "a", reliable=False, now=0.3), RequestReceived)


def test_rfc_2543_requests_match_without_a_cookie(layer):
    old = invite(branch="")  # no branch at all
    out = layer.on_message(old, "src", reliable=False, now=0.0)
    (ev,) = of_type(out, RequestReceived)
    assert ev.key.branch.startswith("2543|")
    assert layer.on_message(old, "src", reliable=False, now=0.1) == []
    layer.send_response(ev.key, reply(old, 404, to_tag="me"), 0.2)
    ack = invite(branch="", method="ACK", to_tag="me")
    assert server_key(ack) == ev.key
    assert layer.on_message(ack, "src", reliable=False, now=0.3) == []
    assert layer.servers[ev.key].state == "confirmed"


def test_reliable_provisional_is_retransmitted_until_prack(layer):
    req = invite(extra=[("Supported", "100rel")])
    (ev,) = of_type(layer.on_message(req, "src", reliable=False, now=0.0), RequestReceived)
    rel = reply(req, 183, to_tag="me", headers=[("Require", "100rel"), ("RSeq", "7")])
    (first,) = sends(layer.send_response(ev.key, rel, 0.0))
    times = []
    while layer.next_deadline is not None and layer.next_deadline < 5:
        t = layer.next_deadline
        times += [t for s in sends(layer.on_timer(t)) if s.data == first.data]
    assert times == [0.5, 1.5, 3.5]
    prack = invite(method="PRACK", branch="z9hG4bKpr", to_tag="me", cseq=2,
                   extra=[("RAck", "7 1 INVITE")])  # fmt: skip
    out = layer.on_message(prack, "src", reliable=False, now=4.0)
    assert of_type(out, RequestReceived)  # the TU answers the PRACK itself
    later = []
    while (t := layer.next_deadline) is not None and t <= 40:
        later += layer.on_timer(t)
    assert not [s for s in sends(later) if s.data == first.data]
    assert not of_type(later, PrackTimeout)


def test_reliable_provisional_without_prack_times_out(layer):
    req = invite(extra=[("Supported", "100rel")])
    (ev,) = of_type(layer.on_message(req, "src", reliable=False, now=0.0), RequestReceived)
    rel = reply(req, 180, to_tag="me", headers=[("Require", "100rel"), ("RSeq", "1")])
    layer.send_response(ev.key, rel, 0.0)
    found = []
    while (t := layer.next_deadline) is not None and t <= 40:
        found += [(t, a) for a in of_type(layer.on_timer(t), PrackTimeout)]
    assert [(t, a.key) for t, a in found] == [(32.0, ev.key)]


def test_next_deadline_follows_moved_and_stopped_timers(layer):
    keys = []
    for i in range(50):
        _key, out = layer.send_request(uac_request(call_id=f"c{i}"), "pbx", reliable=False,
                                      now=float(i))  # fmt: skip
        keys.append(sends(out)[0].message)
    assert layer.next_deadline == 0.5
    for req in keys[:49]:  # all but the last get a 180: their A and B stop
        layer.on_message(reply(req, 180), "pbx", reliable=False, now=49.0)
    assert layer.next_deadline == 49.5  # the last one's timer A
    layer.on_message(reply(keys[49], 486), "pbx", reliable=False, now=49.1)
    assert layer.next_deadline == 49.1 + 32  # its timer D
    layer.on_timer(81.1)
    assert layer.next_deadline is None and len(layer.clients) == 49


def test_timeouts_and_termination_clean_up(layer):
    key, _ = layer.send_request(uac_request("OPTIONS"), "pbx", reliable=False, now=0.0)
    events = []
    while (t := layer.next_deadline) is not None:
        events += layer.on_timer(t)
    assert of_type(events, TransactionTimeout) == [TransactionTimeout(key, "OPTIONS", "F")]
    assert of_type(events, TransactionTerminated) == [TransactionTerminated(key)]
    assert not layer.clients


def test_malformed_messages_never_escape(layer):
    bad = invite()
    bad.headers.set("CSeq", "one INVITE")
    out = layer.on_message(bad, "src", reliable=False, now=0.0)
    assert of_type(out, Malformed)
    assert [s.message.status for s in sends(out)] == [400]
    resp = reply(invite(), 200)
    resp.headers.remove("Via")
    assert of_type(layer.on_message(resp, "src", reliable=False, now=0.0), Malformed)
    assert not sends(layer.on_message(resp, "src", reliable=False, now=0.0))


def test_transport_error_for_unknown_key_is_harmless(layer):
    assert layer.transport_error(ClientKey("z9hG4bKx", "INVITE"), 0.0) == []
    with pytest.raises(LocalProtocolError):
        layer.send_response(ServerKey("z9hG4bKx", "h", "INVITE"), reply(invite(), 200), 0.0)


# -- two layers over a lossy link --------------------------------------------------------------


def _uas(answer: int = 200):
    """A TU for side b: answers every INVITE `answer` after 1 s, BYE/INFO with 200."""
    pending = []

    def hook(side, ev):
        if side != "b" or not isinstance(ev, RequestReceived):
            return []
        if ev.request.method == "INVITE":
            pending.append(ev)
            return []
        return [("respond", ev.key, reply(ev.request, 200, to_tag="bob"))]

    return hook, pending


def test_call_setup_survives_loss_of_the_first_invite_200_and_ack(tokens):
    net = Network(TransactionLayer(token=tokens), TransactionLayer(token=tokens))
    lost = {"INVITE": 1, "200": 1, "ACK": 1}

    def dropper(msg):
        name = getattr(msg, "method", None) or str(getattr(msg, "status", ""))
        if lost.get(name, 0) > 0:
            lost[name] -= 1
            return True
        return False

    net.dropper = dropper
    key, out = net.a.send_request(uac_request(), "b", reliable=False, now=0.0)
    net.emit("a", out)
    net.run(2.0)
    (incoming,) = of_type(net.events["b"], RequestReceived)  # retransmission got through
    ok = reply(incoming.request, 200, to_tag="bob")
    net.emit("b", net.b.send_response(incoming.key, ok, net.now))
    net.run(3.0)
    answered = [e for e in of_type(net.events["a"], ResponseReceived) if e.response.status == 200]
    assert answered and answered[0].key == key  # the first 200 was lost, a retransmission came
    ack = build_request(
        "ACK", "sip:bob@10.0.0.2", via="SIP/2.0/UDP 10.0.0.1:5060;rport",
        from_="<sip:door@example.com>;tag=f1", to="<sip:bob@example.com>;tag=bob",
        call_id="c1", cseq=1,
    )  # fmt: skip
    net.emit("a", net.a.send_ack(ack, "b", now=net.now))  # this ACK is lost
    net.run(40.0)
    # The UAS kept retransmitting its 2xx, the UAC re-ACKed from its cache, the UAS got an ACK.
    assert len(of_type(net.events["b"], AckReceived)) >= 1
    assert not of_type(net.events["b"], AckTimeout)
    assert not of_type(net.events["a"], TransactionTimeout)
    assert len([e for e in of_type(net.events["a"], ResponseReceived)
                if e.response.status == 200]) == 1  # fmt: skip
    assert not net.a.clients and not net.b.servers  # everything ended
    log = [line for _, _, line in net.wire_log]
    assert log.count("INVITE sip:bob@10.0.0.2 SIP/2.0 (lost)") == 1
    assert "SIP/2.0 100 Trying" in log


def test_non_invite_under_heavy_loss_either_completes_or_times_out(tokens):
    net = Network(TransactionLayer(token=tokens), TransactionLayer(token=tokens))
    counter = {"n": 0}

    def every_other(msg):
        counter["n"] += 1
        return counter["n"] % 2 == 1  # half of all datagrams vanish

    net.dropper = every_other

    def hook(side, ev):
        if side == "b" and isinstance(ev, RequestReceived):
            return net.b.send_response(ev.key, reply(ev.request, 200, to_tag="x"), net.now)
        return []

    key, out = net.a.send_request(uac_request("OPTIONS"), "b", reliable=False, now=0.0)
    net.emit("a", out)
    net.run(60.0, hook=hook)
    finals = [e for e in of_type(net.events["a"], ResponseReceived) if e.key == key]
    timeouts = of_type(net.events["a"], TransactionTimeout)
    assert len(finals) + len(timeouts) == 1
    assert len(of_type(net.events["b"], RequestReceived)) == 1  # retransmissions absorbed
    assert not net.a.clients and not net.b.servers


def test_send_is_the_only_thing_the_edge_has_to_perform(layer):
    _, out = layer.send_request(uac_request(), "pbx", reliable=False, now=0.0)
    assert all(isinstance(a, Send) for a in out)
    assert isinstance(out[0].data, bytes) and out[0].data.startswith(b"INVITE ")


# -- Hypothesis: random traffic never escapes and never leaks transactions ----------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from porch.sip.transaction import State  # noqa: E402

_op = st.one_of(
    st.tuples(st.just("send"), st.sampled_from(["INVITE", "OPTIONS", "BYE"]), st.integers(0, 3)),
    st.tuples(st.just("respond"), st.sampled_from([100, 180, 200, 486]), st.integers(0, 9)),
    st.tuples(
        st.just("incoming"),
        st.sampled_from(["INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "PRACK"]),
        st.integers(0, 9),
    ),
    st.tuples(st.just("answer"), st.sampled_from([180, 183, 200, 486, 603]), st.integers(0, 9)),
    st.tuples(st.just("cancel"), st.just(0), st.integers(0, 9)),
    st.tuples(st.just("error"), st.just(0), st.integers(0, 9)),
    st.tuples(st.just("time"), st.just(0), st.integers(0, 40)),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(_op, max_size=40), reliable=st.booleans())
def test_random_traffic_is_contained_and_everything_ends(ops, reliable):
    random_traffic(ops, reliable)


@pytest.mark.fuzz
@settings(max_examples=20000, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=st.lists(_op, max_size=80), reliable=st.booleans())
def test_random_traffic_long_run(ops, reliable):
    random_traffic(ops, reliable)


def random_traffic(ops, reliable):
    counter = iter(range(10**6))
    layer = TransactionLayer(token=lambda: f"h{next(counter)}")
    now = 0.0
    sent_requests = []
    for kind, a, b in ops:
        if kind == "send":
            _, out = layer.send_request(
                uac_request(a, call_id=f"c{b}", cseq=len(sent_requests) + 1),
                "far", reliable=reliable, now=now,
            )  # fmt: skip
            sent_requests += [s.message for s in sends(out)]
        elif kind == "respond" and sent_requests:
            req = sent_requests[b % len(sent_requests)]
            if req.method != "ACK":
                layer.on_message(reply(req, a, to_tag=f"u{b % 2}"), "far",
                                 reliable=reliable, now=now)  # fmt: skip
        elif kind == "incoming":
            req = invite(method=a, branch=f"z9hG4bKb{b % 4}", call_id=f"in{b % 3}",
                         to_tag="x" if a in ("BYE", "PRACK") else None,
                         extra=[("RAck", "1 1 INVITE")] if a == "PRACK" else None)  # fmt: skip
            layer.on_message(req, "far", reliable=reliable, now=now)
        elif kind == "answer" and layer.servers:
            key = sorted(layer.servers)[b % len(layer.servers)]
            tx = layer.servers[key]
            resp = reply(tx.request, a if tx.request.method == "INVITE" else 200, to_tag="me")
            try:
                layer.send_response(key, resp, now)
            except LocalProtocolError:
                assert tx.final_sent
        elif kind == "cancel" and (
            invites := sorted(k for k in layer.clients if k.method == "INVITE")
        ):
            layer.cancel(invites[b % len(invites)], now)
        elif kind == "error" and layer.clients:
            layer.transport_error(sorted(layer.clients)[b % len(layer.clients)], now)
        elif kind == "time":
            now += b
            layer.on_timer(now)
    # The TU answers whatever is still waiting, then time passes: nothing may linger.
    for key, tx in list(layer.servers.items()):
        if tx.state is State.PROCEEDING or tx.state is State.TRYING:
            layer.send_response(key, reply(tx.request, 486 if tx.kind == "invite-server"
                                           else 200, to_tag="me"), now)  # fmt: skip
    for key in list(layer.clients):
        if key.method == "INVITE":
            layer.cancel(key, now)  # the TU gives up ringing; the CANCEL guard ends it
    for _ in range(200):
        t = layer.next_deadline
        if t is None:
            break
        now = max(now, t)
        layer.on_timer(now)
    assert layer.next_deadline is None
    assert not layer.clients and not layer.servers
    assert not layer._merged and not layer._retransmit
