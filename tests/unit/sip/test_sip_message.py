"""Message parsing, framing, building and the header collection."""

from __future__ import annotations

from pathlib import Path

import pytest

from porch.sip.errors import LocalProtocolError, RemoteProtocolError
from porch.sip.headers import COMPACT_FORMS, NameAddress, Via, address, split_list
from porch.sip.message import (
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
    validate_request,
    validate_response,
)
from porch.sip.uri import SipUri

FIXTURES = Path(__file__).parent / "fixtures"
BARESIP = (FIXTURES / "baresip-1.0.0-invite.sip").read_bytes()
LINPHONE = (FIXTURES / "linphonec-5.1.65-invite.sip").read_bytes()
PBX = (FIXTURES / "pbx-asterisk-style-invite.sip").read_bytes()

OPTIONS = (
    b"OPTIONS sip:door@127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1;rport\r\n"
    b"From: <sip:a@127.0.0.1>;tag=f1\r\n"
    b"To: <sip:door@127.0.0.1>\r\n"
    b"Call-ID: c1@127.0.0.1\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Max-Forwards: 70\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_real_invites_parse_and_serialise_byte_exact() -> None:
    for data in (BARESIP, LINPHONE, PBX):
        msg = parse_datagram(data)
        assert isinstance(msg, Request) and msg.method == "INVITE"
        validate_request(msg, methods={"INVITE"}, accept=["application/sdp"])
        assert parse_datagram(msg.to_bytes()) == msg
    for data in (BARESIP, LINPHONE):  # the PBX pads Content-Length; we do not
        assert parse_datagram(data).to_bytes() == data
        assert bytes(parse_datagram(data)) == data


def test_baresip_invite_fields() -> None:
    msg = parse_datagram(BARESIP)
    assert msg.top_via.branch == "z9hG4bKdcebfcaad516eccf"
    assert msg.top_via.has_rport and msg.top_via.rport is None
    assert msg.top_via.sent_by == "127.0.0.1:5180"
    assert msg.from_.tag == "f2f5b38194bcf88d" and msg.to.tag is None
    assert msg.cseq.number == 16787
    assert msg.allow == {
        "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "NOTIFY", "SUBSCRIBE", "INFO", "MESSAGE",
        "REFER",
    }  # fmt: skip
    assert msg.supported == {"gruu"}
    assert msg.user_agent == "baresip v1.0.0 (x86_64/linux)"
    assert msg.contact[0].uri == SipUri("127.0.0.1", "1001-0x55c777a10460", port=5180)


def test_linphone_contact_instance_param_is_unquoted_by_param() -> None:
    msg = parse_datagram(LINPHONE)
    (contact,) = msg.contact
    assert contact.param("+sip.instance") == "<urn:uuid:ba3173c8-9e12-00d3-9397-3c0534475806>"
    assert contact.params["+sip.instance"].startswith('"')  # raw form kept
    assert msg.to.uri == SipUri("127.0.0.1", "door")  # addr-spec form


def test_padded_content_length_is_read() -> None:
    msg = parse_datagram(PBX)
    assert msg.headers.get("Content-Length") == "469"
    assert len(msg.body) == 469
    assert msg.headers.get("P-Asserted-Identity") == '"Flat 12" <sip:1012@192.0.2.2>'


@pytest.mark.parametrize(("short", "long"), sorted(COMPACT_FORMS.items()))
def test_compact_forms(short: str, long: str) -> None:
    headers = Headers([(short, "x")])
    assert headers.get(long) == "x"
    assert headers.get(long.upper()) == "x"
    assert headers.get(short.upper()) == "x"


def test_lf_only_line_ends_are_tolerated() -> None:
    msg = parse_datagram(OPTIONS.replace(b"\r\n", b"\n"))
    assert msg.call_id == "c1@127.0.0.1"
    assert msg.to_bytes() == OPTIONS


def test_mixed_line_ends_and_bare_cr() -> None:
    mixed = OPTIONS.replace(b"CSeq: 1 OPTIONS\r\n", b"CSeq: 1 OPTIONS\n")
    assert parse_datagram(mixed).cseq.number == 1
    with pytest.raises(RemoteProtocolError) as err:
        parse_datagram(OPTIONS.replace(b"CSeq: 1 OPTIONS", b"CSeq: 1\rOPTIONS"))
    assert err.value.status == 400


def test_folded_lines_and_spaces_before_colon() -> None:
    data = OPTIONS.replace(b"Max-Forwards: 70", b"Max-Forwards  :\r\n   70").replace(
        b"Call-ID: c1", b"Call-ID:\r\n\tc1"
    )
    msg = parse_datagram(data)
    assert msg.max_forwards == 70
    assert msg.call_id == "c1@127.0.0.1"


def test_values_are_stripped() -> None:
    msg = parse_datagram(OPTIONS.replace(b"Content-Length: 0", b"Content-Length:    0   "))
    assert msg.headers.get("content-length") == "0"


def test_comma_splitting_outside_quotes_and_angle_brackets() -> None:
    value = '"Doe, John" <sip:j,r@a;x=1>;q=0.5, <sip:k@b>, sip:l@c'
    assert split_list(value) == ['"Doe, John" <sip:j,r@a;x=1>;q=0.5', "<sip:k@b>", "sip:l@c"]
    data = OPTIONS.replace(b"Max-Forwards: 70", b"Contact: " + value.encode())
    msg = parse_datagram(data)
    contacts = msg.contact
    assert [c.display_name for c in contacts] == ["Doe, John", None, None]
    assert contacts[0].q == 0.5
    assert [str(c.uri) for c in contacts] == ["sip:j,r@a;x=1", "sip:k@b", "sip:l@c"]
    assert contacts[0].uri.user == "j,r"  # type: ignore[attr-defined]


def test_several_via_lines_and_values_keep_order() -> None:
    data = OPTIONS.replace(
        b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1;rport\r\n",
        b"Via: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/TCP b;branch=z9hG4bK2\r\n"
        b"v: SIP/2.0/TLS [2001:db8::1]:5061;branch=z9hG4bK3;received=192.0.2.1;rport=4000\r\n",
    )
    vias = parse_datagram(data).via
    assert [(v.transport, v.host, v.port) for v in vias] == [
        ("UDP", "a", None),
        ("TCP", "b", None),
        ("TLS", "[2001:db8::1]", 5061),
    ]
    assert vias[2].received == "192.0.2.1" and vias[2].rport == 4000


def test_every_www_authenticate_is_kept() -> None:
    resp = parse_datagram(
        b"SIP/2.0 401 Unauthorized\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>;tag=2\r\nCall-ID: x\r\nCSeq: 1 REGISTER\r\n"
        b'WWW-Authenticate: Digest realm="r", nonce="n1", algorithm=SHA-256, qop="auth"\r\n'
        b'WWW-Authenticate: Digest realm="r", nonce="n1", algorithm=MD5, qop="auth,auth-int"\r\n'
        b"Content-Length: 0\r\n\r\n"
    )
    values = resp.headers.getall("www-authenticate")
    assert len(values) == 2
    assert resp.headers.values("WWW-Authenticate") == values  # not split at commas
    assert resp.reason == "Unauthorized"


def test_header_errors() -> None:
    for bad in (
        OPTIONS.replace(b"Max-Forwards: 70", b"Max-Forwards 70"),  # no colon
        OPTIONS.replace(b"Max-Forwards: 70", b"Max Forwards: 70"),  # space in name
        OPTIONS.replace(b"Via:", b" Via:"),  # continuation of the start line
        b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n",  # no blank line
        b"HELLO\r\n\r\n",  # not a request line
        b"SIP/2.0 99 Too Low\r\n\r\n",
        b"SIP/2.0 700 Too High\r\n\r\n",
        b"OPTIONS sip:a@b HTTP/1.1\r\n\r\n",
    ):
        with pytest.raises(RemoteProtocolError) as err:
            parse_datagram(bad)
        assert err.value.status == 400


def test_limits() -> None:
    small = Limits(max_message_size=200, max_headers=5, max_line_length=40, max_body_size=10)
    with pytest.raises(RemoteProtocolError) as err:
        parse_datagram(OPTIONS + b"x" * 200, small)
    assert err.value.status == 513
    many = OPTIONS.replace(b"Max-Forwards: 70\r\n", b"X-A: 1\r\n" * 3)
    with pytest.raises(RemoteProtocolError) as err:
        parse_datagram(many, Limits(max_headers=8))
    assert err.value.status == 513
    assert parse_datagram(many, Limits(max_headers=9)).headers.count("x-a") == 3
    with pytest.raises(RemoteProtocolError) as err:
        parse_datagram(OPTIONS, Limits(max_line_length=40))
    assert err.value.status == 513
    body = OPTIONS.replace(b"Content-Length: 0\r\n\r\n", b"Content-Length: 11\r\n\r\nhello world")
    with pytest.raises(RemoteProtocolError) as err:
        parse_datagram(body, Limits(max_body_size=10))
    assert err.value.status == 413
    assert parse_datagram(body).body == b"hello world"


def test_body_framing_on_udp() -> None:
    extra = OPTIONS.replace(b"Content-Length: 0", b"Content-Length: 3") + b"abcdef"
    assert parse_datagram(extra).body == b"abc"
    no_length = OPTIONS.replace(b"Content-Length: 0\r\n", b"") + b"rest"
    assert parse_datagram(no_length).body == b"rest"
    short = OPTIONS.replace(b"Content-Length: 0", b"Content-Length: 30") + b"abc"
    with pytest.raises(RemoteProtocolError):
        parse_datagram(short)


def test_leading_crlf_and_keepalives() -> None:
    assert parse_datagram(b"\r\n\r\n" + OPTIONS).method == "OPTIONS"
    assert is_keepalive(b"\r\n\r\n") and is_keepalive(b"\r\n") and is_keepalive(b"")
    assert not is_keepalive(OPTIONS)


def test_stream_parser_frames_messages() -> None:
    invite = BARESIP
    parser = StreamParser()
    stream = invite + b"\r\n\r\n" + OPTIONS + b"\r\n"
    events = []
    for i in range(len(stream)):  # one byte at a time: partial data always waits
        events += parser.feed(stream[i : i + 1])
    messages = [e for e in events if not isinstance(e, KeepAlive)]
    assert [m.method for m in messages] == ["INVITE", "OPTIONS"]
    assert messages[0].body == parse_datagram(invite).body
    assert any(isinstance(e, KeepAlive) for e in events)
    assert parser.buffered == 0
    # whole chunks: a ping between two messages is reported as such
    parser = StreamParser()
    events = parser.feed(OPTIONS + b"\r\n\r\n" + OPTIONS)
    assert [type(e).__name__ for e in events] == ["Request", "KeepAlive", "Request"]
    assert events[1] == KeepAlive(ping=True)
    assert parser.feed(b"\r\n") == [KeepAlive(ping=False)]


def test_stream_parser_needs_content_length_and_stays_broken() -> None:
    parser = StreamParser()
    with pytest.raises(RemoteProtocolError) as err:
        parser.feed(OPTIONS.replace(b"Content-Length: 0\r\n", b""))
    assert err.value.status == 400
    with pytest.raises(RemoteProtocolError):
        parser.feed(OPTIONS)


def test_stream_parser_header_flood() -> None:
    parser = StreamParser(Limits(max_message_size=1000))
    with pytest.raises(RemoteProtocolError) as err:
        parser.feed(b"OPTIONS sip:a@b SIP/2.0\r\n" + b"X: y\r\n" * 300)
    assert err.value.status == 513


def test_make_response_copies_per_rfc3261_8_2_6() -> None:
    data = OPTIONS.replace(
        b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1;rport\r\n",
        b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1;rport\r\n"
        b"Via: SIP/2.0/TCP proxy.example.com;branch=z9hG4bK0\r\n",
    ).replace(b"Max-Forwards: 70", b"Max-Forwards: 70\r\nTimestamp: 54")
    req = parse_datagram(data)
    ok = make_response(req, 200, to_tag="abc", headers=[("Allow", "INVITE, ACK")])
    assert isinstance(ok, Response) and ok.reason == "OK"
    assert ok.headers.getall("via") == req.headers.getall("via")
    assert ok.from_ == req.from_
    assert ok.to.tag == "abc" and ok.to.uri == req.to.uri
    assert ok.call_id == req.call_id and ok.cseq == req.cseq
    assert ok.headers.get("Allow") == "INVITE, ACK"
    assert "timestamp" not in ok.headers
    trying = make_response(req, 100, to_tag="abc")
    assert trying.to.tag is None  # no tag on 100
    assert trying.headers.get("Timestamp") == "54"
    # a To that already has a tag keeps it
    in_dialog = parse_datagram(data.replace(b"To: <sip:door@127.0.0.1>", b"To: <sip:d@h>;tag=old"))
    assert make_response(in_dialog, 200, to_tag="new").to.tag == "old"
    body = make_response(req, 200, body=b"v=0\r\n", content_type="application/sdp")
    assert body.headers.get("Content-Length") == "5"
    again = parse_datagram(body.to_bytes())
    assert again == body and again.content_type == "application/sdp"
    assert make_response(req, 486).reason == "Busy Here"
    assert make_response(req, 299, "Custom").reason == "Custom"


def test_build_request_and_serialise() -> None:
    via = Via("UDP", "192.0.2.10", 5060, {"branch": "z9hG4bKabc", "rport": None})
    req = build_request(
        "INVITE",
        SipUri("192.0.2.20", "flat1"),
        via=via,
        from_=address("sip:door@192.0.2.10", "Front Door", tag="t1"),
        to=address("sip:flat1@192.0.2.20"),
        call_id="abc@192.0.2.10",
        cseq=1,
        contact=address(SipUri("192.0.2.10", "door", port=5060)),
        headers=[("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO")],
        body=b"v=0\r\n",
        content_type="application/sdp",
    )
    data = req.to_bytes()
    assert data.startswith(b"INVITE sip:flat1@192.0.2.20 SIP/2.0\r\n")
    assert b'From: "Front Door" <sip:door@192.0.2.10>;tag=t1\r\n' in data
    assert b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKabc;rport\r\n" in data
    assert data.endswith(b"Content-Length: 5\r\n\r\nv=0\r\n")
    back = parse_datagram(data)
    assert back == req
    validate_request(back, methods={"INVITE"}, accept=["application/sdp"])
    assert [name for name, _ in back.headers][:7] == [
        "Via", "Max-Forwards", "From", "To", "Call-ID", "CSeq", "Contact",
    ]  # fmt: skip


def test_headers_api_and_cache_invalidation() -> None:
    req = parse_datagram(OPTIONS)
    assert req.cseq.number == 1
    req.headers.set("CSeq", "2 OPTIONS")
    assert req.cseq.number == 2  # typed cache dropped on change
    req.headers.insert("Via", "SIP/2.0/UDP top;branch=z9hG4bKtop")
    assert req.top_via.host == "top" and len(req.via) == 2
    req.headers.add("X-Custom", "1")
    req.headers.add("x-custom", "2")
    assert req.headers.getall("X-CUSTOM") == ["1", "2"]
    assert req.headers.count("x-custom") == 2
    req.headers.set("X-Custom", "3")
    assert req.headers.getall("x-custom") == ["3"]
    req.headers.remove("x-custom")
    assert "x-custom" not in req.headers
    assert req.headers.get("x-custom", "none") == "none"
    with pytest.raises(LocalProtocolError):
        req.headers.add("Bad Name", "x")
    with pytest.raises(LocalProtocolError):
        req.headers.add("X", "line\r\nInjected: yes")
    copy = req.copy()
    copy.headers.set("Call-ID", "other")
    assert req.call_id == "c1@127.0.0.1" and copy.call_id == "other"


def test_content_length_follows_the_body() -> None:
    req = parse_datagram(OPTIONS)
    req.body = b"hello"
    assert b"Content-Length: 5\r\n\r\nhello" in req.to_bytes()
    assert parse_datagram(req.to_bytes()).body == b"hello"


def test_validate_response_accepts_a_normal_answer() -> None:
    req = parse_datagram(OPTIONS)
    resp = parse_datagram(make_response(req, 200, to_tag="x").to_bytes())
    validate_response(resp)


def test_missing_and_duplicated_mandatory_headers() -> None:
    for name in (b"From", b"To", b"Call-ID", b"CSeq", b"Via"):
        lines = [line for line in OPTIONS.split(b"\r\n") if not line.startswith(name + b":")]
        req = parse_datagram(b"\r\n".join(lines))
        with pytest.raises(RemoteProtocolError) as err:
            validate_request(req)
        assert err.value.status == 400, name


def test_name_address_building_and_quoting() -> None:
    addr = address("sip:alice@example.com", 'Alice "A" \\ B', tag="x")
    text = str(addr)
    assert text == '"Alice \\"A\\" \\\\ B" <sip:alice@example.com>;tag=x'
    again = NameAddress.parse(text)
    assert again == addr and again.display_name == 'Alice "A" \\ B'
    assert str(address("sip:a@b", "Plain Name")) == '"Plain Name" <sip:a@b>'
    assert addr.with_tag("y").tag == "y" and addr.tag == "x"
    with pytest.raises(RemoteProtocolError):
        address("not a uri")


def test_via_with_params() -> None:
    via = Via.parse("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;rport")
    filled = via.with_params(received="192.0.2.7", rport="40000")
    assert filled.rport == 40000 and filled.received == "192.0.2.7"
    assert str(filled) == "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;rport=40000;received=192.0.2.7"
    assert Via.parse(str(filled)) == filled
