"""Server transactions (RFC 3261 17.2, RFC 6026) with the timers fed explicitly."""

from __future__ import annotations

import pytest

from porch.sip.errors import LocalProtocolError
from porch.sip.timers import Timers
from porch.sip.transaction import (
    AckReceived,
    RequestReceived,
    ServerTransaction,
    State,
    TransactionTerminated,
    TransactionTimeout,
    TransportError,
)

from .conftest import invite, of_type, reply, sends


def started(method="INVITE", reliable=False, timers=None):
    req = invite(method=method)
    kw = {"timers": timers} if timers else {}
    tx = ServerTransaction(req, "src", reliable=reliable, **kw)
    out = tx.start(0.0)
    return req, tx, out


def test_invite_is_passed_up_and_100_trying_follows_after_200_ms():
    req, tx, out = started()
    assert of_type(out, RequestReceived) == [RequestReceived(tx.key, req, "src")]
    assert not sends(out)
    assert tx.deadline == 0.2
    (trying,) = sends(tx.on_timer(0.2))
    assert trying.message.status == 100 and trying.peer == "src"
    assert trying.message.to.tag is None  # 17.2.1: no To tag on 100
    assert tx.state is State.PROCEEDING and tx.deadline is None
    # A retransmitted INVITE gets the last provisional again.
    assert [s.data for s in sends(tx.on_request(req, 0.5))] == [trying.data]


def test_no_100_trying_when_the_tu_answers_in_time():
    req, tx, _ = started()
    out = tx.send_response(reply(req, 180), 0.05)
    assert [s.message.status for s in sends(out)] == [180]
    assert tx.deadline is None  # the 100 Trying timer is gone
    assert tx.local_tag == "utag1"


def test_trying_none_means_never():
    _req, tx, _ = started(timers=Timers(trying=None))
    assert tx.deadline is None


def test_non_2xx_final_over_udp_g_h_and_ack_then_i():
    req, tx, _ = started()
    final = reply(req, 486)
    (sent,) = sends(tx.send_response(final, 1.0))
    assert tx.state is State.COMPLETED and tx.armed() == {"G": 1.5, "H": 33.0}
    times = []
    while tx.deadline is not None and tx.deadline < 12:
        t = tx.deadline
        out = tx.on_timer(t)
        assert [s.data for s in sends(out)] == [sent.data]
        times.append(t)
    # G: T1, doubling up to T2 (17.2.1).
    assert times == [1.5, 2.5, 4.5, 8.5]
    assert tx.deadline == 12.5
    assert [s.data for s in sends(tx.on_request(req, 12.0))] == [sent.data]
    out = tx.on_request(invite(method="ACK", to_tag="utag1"), 12.1)
    assert out == [] and tx.state is State.CONFIRMED
    assert tx.armed() == {"I": 17.1}  # T4
    assert tx.on_request(invite(method="ACK", to_tag="utag1"), 13) == []  # absorbed
    assert tx.on_request(req, 13) == []
    assert of_type(tx.on_timer(17.1), TransactionTerminated)


def test_timer_h_without_ack_informs_the_tu():
    req, tx, _ = started()
    tx.send_response(reply(req, 603), 0.0)
    out = []
    while tx.deadline is not None:
        out = tx.on_timer(tx.deadline)
    assert of_type(out, TransactionTimeout) == [TransactionTimeout(tx.key, "INVITE", "H")]
    assert tx.terminated


def test_non_2xx_over_tcp_has_no_g_and_ack_ends_at_once():
    req, tx, _ = started(reliable=True)
    tx.send_response(reply(req, 486), 0.0)
    assert tx.armed() == {"H": 32.0}
    out = tx.on_request(invite(method="ACK", to_tag="utag1"), 0.1)
    assert of_type(out, TransactionTerminated) and tx.terminated  # I = 0


def test_2xx_enters_accepted_and_absorbs_invite_retransmissions():
    req, tx, _ = started()
    ok = reply(req, 200)
    (sent,) = sends(tx.send_response(ok, 0.1))
    assert tx.state is State.ACCEPTED and tx.armed() == {"L": 32.1}
    # RFC 6026: a retransmitted INVITE neither reaches the TU nor triggers a resend here
    # (the UAS core retransmits the 2xx on its own schedule).
    assert tx.on_request(req, 0.6) == []
    assert [s.data for s in sends(tx.send_response(ok, 0.6))] == [sent.data]
    ack = invite(method="ACK", to_tag="utag1")
    assert of_type(tx.on_request(ack, 0.7), AckReceived) == [AckReceived(tx.key, ack, "src")]
    with pytest.raises(LocalProtocolError):
        tx.send_response(reply(req, 486), 0.8)
    assert of_type(tx.on_timer(32.1), TransactionTerminated)
    with pytest.raises(LocalProtocolError):
        tx.send_response(ok, 40)


def test_transport_error():
    req, tx, _ = started()
    tx.send_response(reply(req, 180), 0)
    out = tx.on_transport_error(0.1)
    assert of_type(out, TransportError) and tx.terminated


def test_non_invite_trying_discards_retransmissions_then_j():
    req, tx, out = started(method="INFO")
    assert of_type(out, RequestReceived) and tx.deadline is None  # no 100 for non-INVITE
    assert tx.state is State.TRYING
    assert tx.on_request(req, 0.5) == []
    (prov,) = sends(tx.send_response(reply(req, 100), 0.6))
    assert tx.state is State.PROCEEDING
    assert [s.data for s in sends(tx.on_request(req, 0.7))] == [prov.data]
    (final,) = sends(tx.send_response(reply(req, 200), 1.0))
    assert tx.state is State.COMPLETED and tx.armed() == {"J": 33.0}
    assert [s.data for s in sends(tx.on_request(req, 2))] == [final.data]
    with pytest.raises(LocalProtocolError):
        tx.send_response(reply(req, 500), 3)
    assert of_type(tx.on_timer(33.0), TransactionTerminated)


def test_non_invite_over_tcp_ends_with_the_final():
    req, tx, _ = started(method="BYE", reliable=True)
    out = tx.send_response(reply(req, 200), 0.1)
    assert len(sends(out)) == 1 and of_type(out, TransactionTerminated)


def test_response_must_belong_to_the_request():
    _req, tx, _ = started(method="INFO")
    with pytest.raises(LocalProtocolError):
        tx.send_response(reply(invite(), 200), 0.1)
