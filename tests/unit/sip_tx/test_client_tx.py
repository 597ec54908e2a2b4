"""Client transactions (RFC 3261 17.1) with the timers fed explicitly."""

from __future__ import annotations

import pytest

from porch.sip.errors import LocalProtocolError
from porch.sip.transaction import (
    CancelNow,
    ClientTransaction,
    ResponseReceived,
    State,
    TransactionTerminated,
    TransactionTimeout,
    TransportError,
)

from .conftest import invite, of_type, reply, sends


def run_timers(tx, until):
    """Fire timers up to `until`; return [(time, actions)]."""
    log = []
    while tx.deadline is not None and tx.deadline <= until:
        t = tx.deadline
        log.append((t, tx.on_timer(t)))
    return log


def test_invite_over_udp_timer_a_doubles_until_timer_b():
    req = invite()
    tx = ClientTransaction(req, "peer", reliable=False)
    first = tx.start(0.0)
    assert [s.data for s in sends(first)] == [req.to_bytes()]
    assert tx.state is State.CALLING and tx.deadline == 0.5
    log = run_timers(tx, 100)
    resend_times = [t for t, out in log if sends(out)]
    # A: T1, then doubling with no cap (17.1.1.2): 7 transmissions in 64*T1.
    assert resend_times == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert all(s.data == req.to_bytes() for _, out in log for s in sends(out))
    t, out = log[-1]
    assert t == 32.0
    assert of_type(out, TransactionTimeout) == [TransactionTimeout(tx.key, "INVITE", "B")]
    assert of_type(out, TransactionTerminated)
    assert tx.state is State.TERMINATED and tx.deadline is None
    assert tx.retransmissions == 6


def test_invite_over_tcp_never_retransmits():
    tx = ClientTransaction(invite(), "peer", reliable=True)
    tx.start(0.0)
    assert tx.armed() == {"B": 32.0}
    log = run_timers(tx, 100)
    assert [t for t, _ in log] == [32.0]
    assert not sends(log[0][1])
    assert tx.terminated


def test_provisional_stops_retransmission_and_final_acks():
    req = invite(extra=[("Route", "<sip:proxy.example.com;lr>")])
    tx = ClientTransaction(req, "peer", reliable=False)
    tx.start(0.0)
    tx.on_timer(0.5)
    out = tx.on_response(reply(req, 180), 0.7)
    assert of_type(out, ResponseReceived)[0].response.status == 180
    assert tx.state is State.PROCEEDING and tx.deadline is None  # A and B stopped
    resp = reply(req, 486)
    out = tx.on_response(resp, 5.0)
    assert [a.response.status for a in of_type(out, ResponseReceived)] == [486]
    (ack_send,) = sends(out)
    ack = ack_send.message
    # 17.1.1.3: same Request-URI, Call-ID, From, CSeq number, top Via; To from the response.
    assert ack.method == "ACK" and ack.target == req.target
    assert ack.call_id == req.call_id and str(ack.cseq) == "1 ACK"
    assert ack.headers.values("via") == [req.headers.values("via")[0]]
    assert ack.from_.tag == "ftag1" and ack.to.tag == "utag1"
    assert ack.headers.getall("route") == ["<sip:proxy.example.com;lr>"]
    assert ack.body == b""
    assert tx.state is State.COMPLETED and tx.armed() == {"D": 37.0}
    # A retransmitted final is ACKed again (the same bytes) and not passed up again.
    again = tx.on_response(resp, 6.0)
    assert [s.data for s in sends(again)] == [ack_send.data]
    assert not of_type(again, ResponseReceived)
    assert tx.on_response(reply(req, 180), 6.5) == []
    out = tx.on_timer(37.0)
    assert of_type(out, TransactionTerminated) and tx.terminated


def test_non_2xx_over_tcp_terminates_at_once():
    req = invite()
    tx = ClientTransaction(req, "peer", reliable=True)
    tx.start(0.0)
    out = tx.on_response(reply(req, 404), 1.0)
    assert len(sends(out)) == 1  # the ACK
    assert of_type(out, TransactionTerminated) and tx.terminated  # D = 0


def test_2xx_goes_to_accepted_and_passes_forked_and_repeated_2xx():
    req = invite()
    tx = ClientTransaction(req, "peer", reliable=False)
    tx.start(0.0)
    out = tx.on_response(reply(req, 200, to_tag="a"), 1.0)
    assert of_type(out, ResponseReceived) == [ResponseReceived(tx.key, out[0].response, False)]
    assert not sends(out)  # the ACK for a 2xx is the TU's
    assert tx.state is State.ACCEPTED and tx.armed() == {"M": 33.0}
    fork = tx.on_response(reply(req, 200, to_tag="b"), 2.0)
    assert [(e.response.to.tag, e.retransmission) for e in of_type(fork, ResponseReceived)] == [
        ("b", False)
    ]
    again = tx.on_response(reply(req, 200, to_tag="a"), 3.0)
    assert [e.retransmission for e in of_type(again, ResponseReceived)] == [True]
    assert tx.on_response(reply(req, 486), 3.5) == []
    out = tx.on_timer(33.0)
    assert of_type(out, TransactionTerminated)


def test_non_invite_timer_e_caps_at_t2_and_f_times_out():
    req = invite(method="OPTIONS")
    tx = ClientTransaction(req, "peer", reliable=False)
    tx.start(0.0)
    log = run_timers(tx, 100)
    times = [t for t, out in log if sends(out)]
    assert times == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    t, out = log[-1]
    assert t == 32.0 and of_type(out, TransactionTimeout)[0].timer == "F"


def test_non_invite_proceeding_retransmits_every_t2_then_k():
    req = invite(method="REGISTER")
    tx = ClientTransaction(req, "peer", reliable=False)
    tx.start(0.0)
    tx.on_timer(0.5)
    out = tx.on_response(reply(req, 100), 0.6)
    assert of_type(out, ResponseReceived) and tx.state is State.PROCEEDING
    log = run_timers(tx, 10.0)
    assert [t for t, out in log if sends(out)] == [1.5, 5.5, 9.5]
    out = tx.on_response(reply(req, 200), 10.0)
    assert of_type(out, ResponseReceived)[0].response.status == 200
    assert tx.state is State.COMPLETED and tx.armed() == {"K": 15.0}
    assert tx.on_response(reply(req, 200), 11.0) == []  # absorbed
    assert of_type(tx.on_timer(15.0), TransactionTerminated)


def test_non_invite_over_tcp_terminates_on_final():
    req = invite(method="BYE", to_tag="x")
    tx = ClientTransaction(req, "peer", reliable=True)
    tx.start(0.0)
    assert tx.armed() == {"F": 32.0}
    out = tx.on_response(reply(req, 200, to_tag="x"), 0.1)
    assert of_type(out, TransactionTerminated) and tx.terminated


def test_transport_error_informs_the_tu():
    tx = ClientTransaction(invite(), "peer", reliable=True)
    tx.start(0.0)
    out = tx.on_transport_error(0.1)
    assert of_type(out, TransportError) == [TransportError(tx.key, "INVITE")]
    assert tx.terminated


def test_cancel_waits_for_a_provisional_then_guards_with_64_t1():
    req = invite()
    tx = ClientTransaction(req, "peer", reliable=False)
    tx.start(0.0)
    assert tx.cancel(0.1) == []  # 9.1: no CANCEL before a provisional response
    out = tx.on_response(reply(req, 180), 0.2)
    assert of_type(out, CancelNow) == [CancelNow(tx.key)]
    assert tx.armed() == {"CANCEL": 32.2}
    assert tx.cancel(0.3) == []  # only one CANCEL
    out = tx.on_timer(32.2)
    assert of_type(out, TransactionTimeout)[0].timer == "CANCEL"
    assert tx.terminated


def test_cancel_after_the_final_is_a_no_op_and_non_invite_cannot_be_cancelled():
    req = invite()
    tx = ClientTransaction(req, "peer", reliable=True)
    tx.start(0.0)
    tx.on_response(reply(req, 200), 1.0)
    assert tx.cancel(1.1) == []
    opt = ClientTransaction(invite(method="OPTIONS"), "peer")
    opt.start(0.0)
    with pytest.raises(LocalProtocolError):
        opt.cancel(0.1)


def test_misuse_is_refused():
    with pytest.raises(LocalProtocolError):
        ClientTransaction(invite(method="ACK"), "peer")
    tx = ClientTransaction(invite(), "peer")
    with pytest.raises(LocalProtocolError):
        tx.on_response(reply(invite(), 180), 0.0)  # not started
    tx.start(0.0)
    with pytest.raises(LocalProtocolError):
        tx.start(0.0)
    with pytest.raises(LocalProtocolError):
        ClientTransaction(invite(branch="old-style"), "peer")  # not an RFC 3261 branch
