"""Dialogs (RFC 3261 12): creation on both sides, route sets, CSeq rules, target refresh,
in-dialog requests and responses, glare, PRACK numbering."""

from __future__ import annotations

import random

import pytest

from porch.sip.dialog import Dialog, DialogId, Dialogs, DialogState, Role, next_hop
from porch.sip.errors import LocalProtocolError, RemoteProtocolError
from porch.sip.message import build_request

from .conftest import reply, wire

VIA = "SIP/2.0/UDP 10.0.0.1:5060;rport"


def our_invite(**kw):
    return wire(
        build_request(
            "INVITE",
            kw.pop("uri", "sip:bob@example.com"),
            via=VIA + ";branch=z9hG4bKa",
            from_='"Door" <sip:door@example.com>;tag=door1',
            to="<sip:bob@example.com>",
            call_id="call-A",
            cseq=kw.pop("cseq", 10),
            contact="<sip:door@10.0.0.1:5060>",
            **kw,
        )
    )


def their_invite(**kw):
    return wire(
        build_request(
            "INVITE",
            "sip:door@10.0.0.1:5060",
            via="SIP/2.0/UDP 10.0.0.7:5060;branch=z9hG4bKb",
            from_="<sip:alice@example.com>;tag=al1",
            to="<sip:door@example.com>",
            call_id="call-B",
            cseq=kw.pop("cseq", 100),
            contact=kw.pop("contact", "<sip:alice@10.0.0.7:5060>"),
            **kw,
        )
    )


RR = [("Record-Route", "<sip:p1.example.com;lr>"), ("Record-Route", "<sip:p2.example.com;lr>")]


def test_uac_dialog_from_2xx():
    inv = our_invite()
    ok = reply(inv, 200, to_tag="bob1", headers=[*RR, ("Contact", "<sip:bob@10.0.0.9:5062>")])
    d = Dialog.uac(inv, ok)
    assert d.role is Role.UAC and d.state is DialogState.CONFIRMED
    assert d.id == DialogId("call-A", "door1", "bob1") == DialogId.of_response(ok)
    # 12.1.2: the route set is the Record-Route of the response in reverse order.
    assert [str(r.uri) for r in d.route_set] == ["sip:p2.example.com;lr", "sip:p1.example.com;lr"]
    assert str(d.remote_target) == "sip:bob@10.0.0.9:5062"
    assert (d.local_cseq, d.remote_cseq) == (10, None)
    assert d.secure is False
    bye = d.create_request("BYE", via=VIA)
    assert bye.target == "sip:bob@10.0.0.9:5062"  # loose routing: Request-URI = target
    assert bye.headers.getall("route") == ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]
    assert str(bye.cseq) == "11 BYE"
    assert bye.from_.tag == "door1" and bye.to.tag == "bob1"
    assert bye.from_.display_name == "Door" and bye.call_id == "call-A"
    assert "contact" not in bye.headers  # BYE is no target refresh
    assert str(next_hop(bye)) == "sip:p2.example.com;lr"


def test_ack_for_2xx_uses_the_invite_cseq_and_does_not_count():
    inv = our_invite()
    d = Dialog.uac(inv, reply(inv, 200, to_tag="bob1", headers=[("Contact", "<sip:b@h>")]))
    ack = d.create_ack(10, via=VIA, body=b"v=0\r\n", content_type="application/sdp")
    assert str(ack.cseq) == "10 ACK" and ack.target == "sip:b@h" and ack.body == b"v=0\r\n"
    assert d.create_request("INFO", via=VIA).cseq.number == 11
    with pytest.raises(LocalProtocolError):
        d.create_request("ACK", via=VIA)
    with pytest.raises(LocalProtocolError):
        d.create_request("CANCEL", via=VIA)


def test_strict_router_becomes_the_request_uri():
    inv = our_invite()
    ok = reply(inv, 200, to_tag="t", headers=[
        ("Record-Route", "<sip:strict.example.com;method=INVITE>"),
        ("Contact", "<sip:bob@10.0.0.9>"),
    ])  # fmt: skip
    d = Dialog.uac(inv, ok)
    req = d.create_request("INFO", via=VIA)
    # 12.2.1.1: first route (minus parameters not allowed there) as Request-URI, the remote
    # target appended as the last Route.
    assert req.target == "sip:strict.example.com"
    assert req.headers.getall("route") == ["<sip:bob@10.0.0.9>"]
    assert str(next_hop(req)) == "sip:strict.example.com"


def test_no_route_set_sends_to_the_target():
    inv = our_invite()
    d = Dialog.uac(inv, reply(inv, 200, to_tag="t", headers=[("Contact", "<sip:b@10.1.1.1>")]))
    req = d.create_request("INFO", via=VIA)
    assert "route" not in req.headers and str(next_hop(req)) == "sip:b@10.1.1.1"


def test_early_dialog_confirmed_by_2xx_recomputes_route_set():
    inv = our_invite()
    ringing = reply(inv, 180, to_tag="bob1", headers=[
        ("Record-Route", "<sip:old.example.com;lr>"), ("Contact", "<sip:bob@early>"),
    ])  # fmt: skip
    d = Dialog.uac(inv, ringing)
    assert d.early and d.invite_out is not None
    with pytest.raises(LocalProtocolError):
        d.create_request("INVITE", via=VIA)  # no re-INVITE in an early dialog
    upd = d.create_request("UPDATE", via=VIA)  # UPDATE is fine (RFC 3311)
    assert upd.headers.get("contact") == "<sip:door@10.0.0.1:5060>"
    ok = reply(inv, 200, to_tag="bob1", headers=[*RR, ("Contact", "<sip:bob@final>")])
    d.on_response(ok)
    assert d.confirmed and d.invite_out is None
    assert [str(r.uri.host) for r in d.route_set] == ["p2.example.com", "p1.example.com"]
    assert str(d.remote_target) == "sip:bob@final"


def test_early_dialog_ends_with_a_non_2xx():
    inv = our_invite()
    d = Dialog.uac(inv, reply(inv, 183, to_tag="b", headers=[("Contact", "<sip:b@h>")]))
    d.on_response(reply(inv, 486, to_tag="b"))
    assert d.terminated
    with pytest.raises(LocalProtocolError):
        d.create_request("BYE", via=VIA)


def test_uas_dialog_route_set_in_order_and_response_headers():
    inv = their_invite(headers=RR)
    d = Dialog.uas(inv, local_tag="me1", local_contact="<sip:door@10.0.0.1:5060>")
    assert d.role is Role.UAS and d.early
    assert d.id == DialogId("call-B", "me1", "al1")
    assert [r.uri.host for r in d.route_set] == ["p1.example.com", "p2.example.com"]
    assert (d.local_cseq, d.remote_cseq) == (None, 100)
    ringing = d.create_response(inv, 180)
    assert ringing.to.tag == "me1"
    assert ringing.headers.get("contact") == "<sip:door@10.0.0.1:5060>"
    assert ringing.headers.getall("record-route") == [v for _, v in RR]  # 12.1.1
    assert d.early
    ok = d.create_response(inv, 200, body=b"v=0\r\n", content_type="application/sdp")
    assert d.confirmed and d.invite_in is None
    assert ok.headers.getall("record-route") == [v for _, v in RR]
    bye = d.create_request("BYE", via=VIA)
    assert str(bye.cseq) == "1 BYE"  # our CSeq space starts fresh
    assert bye.target == "sip:alice@10.0.0.7:5060"
    assert bye.headers.getall("route") == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    assert bye.from_.tag == "me1" and bye.to.tag == "al1"


def test_uas_rejects_the_initial_invite():
    inv = their_invite()
    d = Dialog.uas(inv, local_tag="me")
    busy = d.create_response(inv, 486)
    assert busy.to.tag == "me" and "contact" not in busy.headers
    assert d.terminated


def test_uas_needs_a_contact():
    inv = their_invite(contact=None)
    with pytest.raises(RemoteProtocolError) as exc:
        Dialog.uas(inv, local_tag="me")
    assert exc.value.status == 400


def _confirmed_uas():
    inv = their_invite()
    d = Dialog.uas(inv, local_tag="me", local_contact="<sip:door@10.0.0.1>",
                   rng=random.Random(3))  # fmt: skip
    d.create_response(inv, 200)
    return d


def _in_dialog(method, cseq, **kw):
    return wire(
        build_request(
            method,
            "sip:door@10.0.0.1:5060",
            via="SIP/2.0/UDP 10.0.0.7:5060;branch=z9hG4bK" + method + str(cseq),
            from_="<sip:alice@example.com>;tag=al1",
            to="<sip:door@example.com>;tag=me",
            call_id="call-B",
            cseq=cseq,
            **kw,
        )
    )


def test_cseq_order_is_enforced_with_500():
    d = _confirmed_uas()
    d.on_request(_in_dialog("INFO", 101))
    assert d.remote_cseq == 101
    with pytest.raises(RemoteProtocolError) as exc:
        d.on_request(_in_dialog("INFO", 99))
    assert exc.value.status == 500
    assert d.remote_cseq == 101  # unchanged by the refused request
    assert d.awaiting_ack == 100  # our 2xx to their INVITE is not ACKed yet
    d.on_request(_in_dialog("ACK", 100))  # ACK carries its INVITE's (older) number
    assert d.awaiting_ack is None
    d.on_request(_in_dialog("INFO", 250))  # gaps are fine
    assert d.remote_cseq == 250


def test_target_refresh_by_reinvite_and_update():
    d = _confirmed_uas()
    d.on_request(_in_dialog("UPDATE", 101, contact="<sip:alice@10.9.9.9:5070>"))
    assert str(d.remote_target) == "sip:alice@10.9.9.9:5070"
    d.on_request(_in_dialog("INFO", 102, contact="<sip:ignored@1.1.1.1>"))
    assert str(d.remote_target) == "sip:alice@10.9.9.9:5070"  # INFO refreshes nothing
    reinv = _in_dialog("INVITE", 103, contact="<sip:alice@10.8.8.8>")
    d.on_request(reinv)
    assert str(d.remote_target) == "sip:alice@10.8.8.8"
    ok = d.create_response(reinv, 200)
    assert ok.headers.get("contact") == "<sip:door@10.0.0.1>"
    assert "record-route" not in ok.headers  # only for the dialog-creating request
    # As UAC: a 2xx to our re-INVITE refreshes the target too.
    ours = d.create_request("INVITE", via=VIA)
    d.on_response(reply(ours, 200, to_tag=None, headers=[("Contact", "<sip:alice@new>")]))
    assert str(d.remote_target) == "sip:alice@new" and d.invite_out is None


def test_glare_491_and_500_with_retry_after():
    d = _confirmed_uas()
    ours = d.create_request("INVITE", via=VIA)
    assert ours.headers.get("contact") == "<sip:door@10.0.0.1>"
    with pytest.raises(RemoteProtocolError) as exc:
        d.on_request(_in_dialog("INVITE", 101))
    assert exc.value.status == 491  # 14.2: ours is in progress
    d.on_response(reply(ours, 491, to_tag=None))
    assert d.invite_out is None and d.confirmed  # a 491 does not end the dialog
    assert 0 <= d.glare_delay() <= 2.0  # the UAS of the dialog waits 0-2 s (14.1)
    d.on_request(_in_dialog("INVITE", 102))
    with pytest.raises(RemoteProtocolError) as exc:
        d.on_request(_in_dialog("INVITE", 103))
    assert exc.value.status == 500
    assert 0 <= int(dict(exc.value.headers)["Retry-After"]) <= 10


def test_bye_ends_the_dialog_and_later_requests_get_481():
    d = _confirmed_uas()
    d.on_request(_in_dialog("BYE", 101))
    assert d.terminated
    with pytest.raises(RemoteProtocolError) as exc:
        d.on_request(_in_dialog("INFO", 102))
    assert exc.value.status == 481


def test_481_or_408_to_our_request_ends_the_dialog():
    d = _confirmed_uas()
    info = d.create_request("INFO", via=VIA)
    d.on_response(reply(info, 481, to_tag=None))
    assert d.terminated


def test_prack_and_rseq_ordering():
    inv = our_invite(headers=[("Supported", "100rel")])
    rel = reply(inv, 183, to_tag="b", headers=[
        ("Require", "100rel"), ("RSeq", "55"), ("Contact", "<sip:b@h>"),
    ])  # fmt: skip
    d = Dialog.uac(inv, rel)
    assert d.reliable_provisional(rel) is True
    assert d.reliable_provisional(rel) is False  # retransmission
    prack = d.create_prack(rel, via=VIA)
    assert prack.headers.get("rack") == "55 10 INVITE"
    assert str(prack.cseq) == "11 PRACK"
    gap = reply(inv, 180, to_tag="b", headers=[("Require", "100rel"), ("RSeq", "57")])
    assert d.reliable_provisional(gap) is False  # 56 is missing
    nxt = reply(inv, 180, to_tag="b", headers=[("Require", "100rel"), ("RSeq", "56")])
    assert d.reliable_provisional(nxt) is True
    uas = Dialog.uas(their_invite(), local_tag="me")
    assert [uas.next_rseq(), uas.next_rseq()] == [1, 2]


def test_secure_flag_needs_sips_and_tls():
    inv = our_invite(uri="sips:bob@example.com")
    ok = reply(inv, 200, to_tag="b", headers=[("Contact", "<sips:b@h>")])
    assert Dialog.uac(inv, ok, tls=True).secure
    assert not Dialog.uac(inv, ok, tls=False).secure
    assert not Dialog.uac(our_invite(), ok, tls=True).secure


def test_a_uac_and_a_uas_dialog_agree():
    """Requests built by one side are accepted by the other, in both directions."""
    inv = our_invite()
    uas = Dialog.uas(inv, local_tag="bobtag", local_contact="<sip:bob@10.0.0.9>")
    ok = wire(uas.create_response(inv, 200))
    uac = Dialog.uac(inv, ok)
    reg = Dialogs()
    reg.add(uac)
    for method in ("INFO", "UPDATE", "BYE"):
        req = wire(uac.create_request(method, via=VIA + ";branch=z9hG4bK" + method))
        assert DialogId.of_request(req) == uas.id
        uas.on_request(req)
    assert uas.terminated
    back = wire(_reverse(uas))
    assert reg.for_request(back) is uac


def _reverse(uas):
    # A request from the (terminated) UAS side, built by hand with its identifiers.
    return build_request(
        "INFO", "sip:door@10.0.0.1:5060", via="SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKr",
        from_=str(uas.local_uri.with_tag(uas.local_tag)),
        to=str(uas.remote_uri.with_tag(uas.remote_tag)), call_id=uas.call_id, cseq=5,
    )  # fmt: skip


def test_dialogs_registry():
    inv = our_invite()
    a = Dialog.uac(inv, reply(inv, 180, to_tag="x", headers=[("Contact", "<sip:x@h>")]))
    b = Dialog.uac(inv, reply(inv, 180, to_tag="y", headers=[("Contact", "<sip:y@h>")]))
    reg = Dialogs()
    reg.add(a)
    reg.add(b)
    assert len(reg) == 2
    assert {d.remote_tag for d in reg.of_call("call-A", "door1")} == {"x", "y"}
    assert reg.for_response(reply(inv, 200, to_tag="y")) is b
    assert reg.for_response(reply(inv, 200, to_tag="z")) is None
    a.terminate()
    assert reg.purge() == [a] and list(reg) == [b]
