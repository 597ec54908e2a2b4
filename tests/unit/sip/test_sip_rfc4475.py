"""RFC 4475 torture messages: what the parser produces, or which status a UAS answers.

A UAS here means: parse_datagram(), then validate_request() with the methods and option
tags a door phone implements. These tests never send anything: the same messages go to the
running firmware over UDP, inside a loopback-only network namespace, in
tests/system/test_torture_udp.py.
"""

from __future__ import annotations

import pytest
from sip_rfc4475_messages import (
    LONG_BRANCH,
    LONG_CALL_ID,
    LONG_DISPLAY,
    LONG_HPARAM_NAME,
    LONG_HPARAM_VALUE,
    LONG_TAG,
    LONG_UNKNOWN_NAME,
    LONG_UNKNOWN_VALUE,
    LONG_URI_PARAMS,
    LONG_USER,
    LONG_VALUELESS,
    MESSAGES,
    MPART01_DER,
    UNREASON_PHRASE,
)

from porch.sip.auth import DigestServer
from porch.sip.errors import RemoteProtocolError
from porch.sip.message import (
    Request,
    Response,
    StreamParser,
    make_response,
    parse_datagram,
    validate_request,
    validate_response,
)
from porch.sip.sdp import SessionDescription
from porch.sip.uri import AbsoluteUri, SipUri, uri_equal

UA_METHODS = {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO", "REGISTER", "MESSAGE"}


def request(name: str) -> Request:
    msg = parse_datagram(MESSAGES[name])
    assert isinstance(msg, Request)
    return msg


def uas_status(name: str, **kwargs) -> int:
    """The status a UAS answers: 200 when the request passes, else the error's status."""
    try:
        req = parse_datagram(MESSAGES[name])
        assert isinstance(req, Request)
        validate_request(req, **kwargs)
    except RemoteProtocolError as exc:
        return exc.status
    return 200


# -- 3.1.1 valid messages: every one parses and passes validation -----------------------

VALID_REQUESTS = [
    "wsinv",
    "esc01",
    "escnull",
    "lwsdisp",
    "longreq",
    "dblreq",
    "semiuri",
    "transports",
    "mpart01",
]


@pytest.mark.parametrize("name", VALID_REQUESTS)
def test_valid_requests_are_accepted(name: str) -> None:
    assert uas_status(name, methods=UA_METHODS) == 200
    # and they survive a serialise/parse round trip with the same headers and body
    msg = request(name)
    again = parse_datagram(msg.to_bytes())
    assert again == msg


def test_wsinv_short_tortuous_invite() -> None:
    msg = request("wsinv")
    assert msg.method == "INVITE"
    uri = msg.uri
    assert isinstance(uri, SipUri)
    assert (uri.user, uri.host, uri.port, uri.params) == (
        "vivekg",
        "chair-dnrc.example.com",
        None,
        {"unknownparam": None},
    )
    assert msg.to.uri == SipUri("chair-dnrc.example.com", "vivekg")
    assert msg.to.tag == "1918181833n"
    assert msg.from_.display_name == 'J Rosenberg \\"'
    assert msg.from_.tag == "98asjd8"
    assert msg.max_forwards == 68
    assert msg.call_id == "wsinv.ndaksdj@192.0.2.1"
    assert (msg.cseq.number, msg.cseq.method) == (9, "INVITE")
    vias = msg.via
    assert [(v.transport, v.host, v.branch) for v in vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert msg.headers.get("subject") == ""
    assert msg.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert msg.headers.get("unknownheaderwithunusualvalue") == ";;,,;;,;"
    assert msg.content_type == "application/sdp"
    route = msg.route
    assert len(route) == 1 and route[0].uri.lr
    assert route[0].uri.params == {"lr": None, "unknownwith": "value", "unknown-no-value": None}
    (contact,) = msg.contact
    assert contact.display_name == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert contact.q == pytest.approx(0.33)
    assert len(msg.body) == 150
    sdp = SessionDescription.parse(msg.body)
    assert [m.kind for m in sdp.media] == ["audio", "video"]


def test_intmeth_wide_range_of_characters() -> None:
    msg = request("intmeth")
    method = "!interesting-Method0123456789_*+`.%indeed'~"
    assert msg.method == method
    assert msg.cseq.method == method and msg.cseq.number == 139122385
    uri = msg.uri
    assert isinstance(uri, SipUri)
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert uri.host == "example.com"
    assert msg.via[0].branch == "z9hG4bK-.!%66*_+`'~"
    assert msg.to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert msg.from_.display_name == "token1~` token2'+_ token3*%!.-"
    assert msg.from_.param("fromParam''~+*_!.-%") == "работающий"
    assert msg.from_.tag == "_token~1'+`*%!-."
    assert msg.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert msg.max_forwards == 255
    assert msg.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"
    # An unknown method: a UAS answers 501 (and lists what it supports in Allow).
    with pytest.raises(RemoteProtocolError) as err:
        validate_request(msg, methods=UA_METHODS)
    assert err.value.status == 501
    assert dict(err.value.headers)["Allow"].split(", ") == sorted(UA_METHODS)
    assert uas_status("intmeth") == 200  # a proxy-like validation without a method list
    assert parse_datagram(msg.to_bytes()) == msg


def test_esc01_escapes_are_the_characters_they_encode() -> None:
    msg = request("esc01")
    assert msg.uri.user == "sips:user@example.com"  # type: ignore[attr-defined]
    assert msg.uri.host == "example.net"  # type: ignore[attr-defined]
    assert msg.to.uri == SipUri("example.com", "user")
    assert msg.from_.uri.user == "I have spaces"  # type: ignore[attr-defined]
    contact = msg.contact[0].uri
    assert isinstance(contact, SipUri)
    assert contact.user == "caller"
    # %-decoding happens once: n%61me=v%61lue%25%34%31 is name=value%41, not valueA.
    assert contact.params == {"lr": None, "name": "value%41"}
    assert uri_equal(contact, "sip:caller@host5.example.net;lr;name=value%2541")
    assert not uri_equal(contact, "sip:caller@host5.example.net;lr;name=valueA")
    assert msg.call_id == "esc01.239409asdfakjkn23onasd0-3234"  # compact 'i'
    assert msg.content_type == "application/sdp"  # compact 'C'


def test_escnull_keeps_nulls_in_user_parts() -> None:
    msg = request("escnull")
    assert msg.to.uri.user == "null-\x00-null"  # type: ignore[attr-defined]
    users = [c.uri.user for c in msg.contact]  # type: ignore[attr-defined]
    assert users == ["\x00", "\x00\x00"]
    assert msg.contact[0].uri != msg.contact[1].uri  # two distinct contacts
    assert msg.body == b""  # "L:0"


def test_esc02_percent_is_not_an_escape_outside_uris() -> None:
    msg = request("esc02")
    assert msg.method == "RE%47IST%45R" and msg.method != "REGISTER"
    assert msg.to.display_name == "%Z%45"
    assert msg.from_.display_name == "%Z%45"
    assert msg.via[0].branch == "z9hG4bK209%fzsnel234"
    assert [c.uri.host for c in msg.contact] == [  # type: ignore[attr-defined]
        "host1.example.com",
        "host3.example.com",
    ]
    assert msg.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"
    assert uas_status("esc02", methods=UA_METHODS) == 501


def test_lwsdisp_display_name_without_space() -> None:
    msg = request("lwsdisp")
    assert msg.from_.display_name == "caller"
    assert msg.from_.uri == SipUri("example.com", "caller")
    assert msg.from_.tag == "323"


def test_longreq_long_values() -> None:
    msg = request("longreq")
    to = msg.to
    assert to.display_name == LONG_DISPLAY
    assert to.uri.port == 6000  # type: ignore[attr-defined]
    # parameter names compare case-insensitively, so they are kept in lower case
    assert to.uri.params == {k.lower(): v for k, v in LONG_URI_PARAMS.items()}  # type: ignore[attr-defined]
    assert msg.from_.uri.user == LONG_USER  # type: ignore[attr-defined]
    assert msg.from_.tag == LONG_TAG
    assert msg.from_.params[LONG_HPARAM_NAME.lower()] == LONG_HPARAM_VALUE
    assert msg.from_.params[LONG_VALUELESS.lower()] is None
    assert msg.call_id == LONG_CALL_ID
    assert msg.headers.get(LONG_UNKNOWN_NAME) == LONG_UNKNOWN_VALUE
    vias = msg.via
    assert len(vias) == 34
    assert [v.host for v in vias[:33]] == [f"sip{n}.example.com" for n in range(33, 0, -1)]
    assert vias[33].received == "192.0.2.5"
    assert vias[33].branch == LONG_BRANCH
    assert msg.contact[0].uri.user == LONG_USER  # type: ignore[attr-defined]


def test_dblreq_trailing_octets_are_ignored() -> None:
    msg = request("dblreq")
    assert msg.method == "REGISTER"
    assert msg.body == b""
    assert msg.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"  # compact 'I'
    assert b"INVITE" not in msg.to_bytes()
    (contact,) = msg.contact
    assert contact.uri == SipUri("host.example.com", "j.user")


def test_semiuri_user_part_with_semicolon() -> None:
    msg = request("semiuri")
    assert msg.uri.user == "user;par=u@example.net"  # type: ignore[attr-defined]
    assert msg.uri.params == {}  # type: ignore[attr-defined]
    assert [a.mime for a in msg.accept] == [
        "application/sdp",
        "application/pkcs7-mime",
        "multipart/mixed",
        "multipart/signed",
        "message/sip",
        "message/sipfrag",
    ]


def test_transports_unknown_transport() -> None:
    msg = request("transports")
    assert [v.transport for v in msg.via] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    assert msg.call_id == "transports.kijh4akdnaqjkwendsasfdj"


def test_mpart01_binary_body_framed_by_content_length() -> None:
    msg = request("mpart01")
    assert len(msg.body) == 553
    assert MPART01_DER in msg.body and b"\x00" in msg.body
    assert msg.content_type is not None
    assert msg.content_type.mime == "multipart/mixed"
    assert msg.content_type.params == {"boundary": "7a9cbec02ceef655"}
    assert msg.via[0].has_rport and msg.via[0].rport is None
    assert msg.via[0].port == 5070
    assert msg.route[0].uri == SipUri("127.0.0.1", port=5080)
    # With application/sdp the only type we read, a UAS answers 415 to this body.
    assert uas_status("mpart01", methods=UA_METHODS, accept=["application/sdp"]) == 415


def test_unreason_utf8_reason_phrase() -> None:
    msg = parse_datagram(MESSAGES["unreason"])
    assert isinstance(msg, Response)
    assert msg.status == 200
    assert msg.reason == UNREASON_PHRASE
    validate_response(msg)
    assert parse_datagram(msg.to_bytes()) == msg


def test_noreason_empty_reason_phrase() -> None:
    msg = parse_datagram(MESSAGES["noreason"])
    assert isinstance(msg, Response)
    assert (msg.status, msg.reason) == (100, "")
    validate_response(msg)


# -- 3.1.2 invalid messages -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("badinv01", 400),  # ;;,;,, in Via, ;;;; in Contact
        ("scalar02", 400),  # CSeq > 2**32-1, Max-Forwards > 255
        ("quotbal", 400),  # unterminated quoted string
        ("ltgtruri", 400),  # <sip:...> as Request-URI
        ("lwsruri", 400),  # LWS inside the Request-URI
        ("escruri", 400),  # headers in the Request-URI
        ("regbadct", 400),  # addr-spec with ? outside <>
        ("badaspec", 400),  # spaces inside <>
        ("baddn", 400),  # unquoted display name with a comma
        ("badvers", 505),  # SIP/7.0
        ("mismatch01", 400),  # CSeq method differs
    ],
)
def test_invalid_requests_get_the_right_status(name: str, status: int) -> None:
    assert uas_status(name, methods=UA_METHODS) == status
    # ... and the error carries the request, so the answer can be built and sent
    with pytest.raises(RemoteProtocolError) as err:
        validate_request(request(name), methods=UA_METHODS)
    answer = make_response(err.value.message, err.value.status, to_tag="x1")
    assert answer.status == status
    assert answer.headers.get("call-id") == request(name).headers.get("call-id")


def test_mismatch02_unknown_method_is_501() -> None:
    assert uas_status("mismatch02", methods=UA_METHODS) == 501
    # without a method list the CSeq mismatch is what shows
    assert uas_status("mismatch02") == 400


def test_clerr_content_length_larger_than_datagram() -> None:
    with pytest.raises(RemoteProtocolError) as err:
        parse_datagram(MESSAGES["clerr"])
    assert err.value.status == 400
    partial = err.value.message
    assert isinstance(partial, Request)  # enough to answer 400
    assert make_response(partial, 400).headers.get("CSeq") == "8 INVITE"
    # on a stream the parser simply waits for the rest
    parser = StreamParser()
    assert parser.feed(MESSAGES["clerr"]) == []
    assert parser.buffered == len(MESSAGES["clerr"])


def test_ncl_negative_content_length() -> None:
    with pytest.raises(RemoteProtocolError) as err:
        parse_datagram(MESSAGES["ncl"])
    assert err.value.status == 400
    assert isinstance(err.value.message, Request)
    parser = StreamParser()
    with pytest.raises(RemoteProtocolError):
        parser.feed(MESSAGES["ncl"])
    with pytest.raises(RemoteProtocolError):  # the stream stays broken: close it
        parser.feed(b"OPTIONS sip:a@b SIP/2.0\r\n")


def test_scalar02_details() -> None:
    msg = request("scalar02")
    with pytest.raises(RemoteProtocolError):
        msg.cseq  # noqa: B018
    with pytest.raises(RemoteProtocolError):
        msg.max_forwards  # noqa: B018
    assert msg.expires == 2**32 - 1  # absurd expiry clamped, as the RFC allows
    assert msg.contact[0].expires == 2**32 - 1


def test_scalarlg_response_is_discarded() -> None:
    msg = parse_datagram(MESSAGES["scalarlg"])
    assert isinstance(msg, Response) and msg.status == 503
    with pytest.raises(RemoteProtocolError):
        validate_response(msg)


def test_lwsstart_and_trws_liberal_but_never_forwarded() -> None:
    # RFC 4475 allows liberal parsing here; what we send never has the extra SP.
    for name, target in (
        ("lwsstart", "sip:user@example.com"),
        ("trws", "sip:remote-target@example.com"),
    ):
        msg = request(name)
        assert msg.target == target
        assert msg.version == "SIP/2.0"
        assert uas_status(name, methods=UA_METHODS) == 200
        start = msg.to_bytes().split(b"\r\n", 1)[0]
        assert start == f"{msg.method} {target} SIP/2.0".encode()


def test_baddate_is_accepted_because_date_is_not_used() -> None:
    msg = request("baddate")
    assert uas_status("baddate", methods=UA_METHODS) == 200
    assert msg.headers.get("Date") == "Fri, 01 Jan 2010 16:00:00 EST"


def test_bigcode_response_is_rejected() -> None:
    with pytest.raises(RemoteProtocolError):
        parse_datagram(MESSAGES["bigcode"])


# -- 3.2 transaction layer ---------------------------------------------------------------


def test_badbranch_bare_magic_cookie_parses() -> None:
    msg = request("badbranch")
    assert msg.via[0].branch == "z9hG4bK"
    assert uas_status("badbranch", methods=UA_METHODS) == 200


# -- 3.3 application layer ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("insuf", 400),  # no To, From, Call-ID, Max-Forwards
        ("unkscm", 416),  # nobodyKnowsThisScheme:
        ("novelsc", 416),  # soap.beep://
        ("multi01", 400),  # several CSeq, Call-ID, To, From, Max-Forwards
        ("zeromf", 200),  # Max-Forwards 0: a UAS answers normally
        ("unksm2", 200),  # odd schemes in To/From/Contact are fine
        ("cparam01", 200),
        ("cparam02", 200),
        ("regescrt", 200),
        ("inv2543", 200),
        ("regaut01", 200),  # the parser accepts it; auth answers 401 (below)
    ],
)
def test_application_layer_status(name: str, status: int) -> None:
    assert uas_status(name, methods=UA_METHODS, accept=["application/sdp"]) == status


def test_bext01_require_gets_420_with_unsupported() -> None:
    with pytest.raises(RemoteProtocolError) as err:
        validate_request(request("bext01"), methods=UA_METHODS, supported={"replaces"})
    assert err.value.status == 420
    assert dict(err.value.headers)["Unsupported"] == (
        "nothingSupportsThis, nothingSupportsThisEither"
    )
    answer = make_response(err.value.message, 420, headers=err.value.headers, to_tag="t")
    assert answer.unsupported == {"nothingSupportsThis", "nothingSupportsThisEither"}
    # Proxy-Require is for proxies; a UAS does not look at it
    assert request("bext01").proxy_require == {
        "noProxiesSupportThis",
        "norDoAnyProxiesSupportThis",
    }


def test_invut_unknown_content_type_gets_415_with_accept() -> None:
    with pytest.raises(RemoteProtocolError) as err:
        validate_request(request("invut"), methods=UA_METHODS, accept=["application/sdp"])
    assert err.value.status == 415
    assert dict(err.value.headers)["Accept"] == "application/sdp"


def test_regaut01_unknown_auth_scheme_is_challenged() -> None:
    server = DigestServer("example.com", {"j.user": "pw"}, nonce=lambda: "n0nce")
    msg = request("regaut01")
    result = server.verify(msg, now=0.0)
    assert not result.ok
    answer = server.check(msg, now=0.0, to_tag="t1")
    assert answer is not None and answer.status == 401
    assert answer.headers.get("WWW-Authenticate", "").startswith("Digest ")


def test_mcl01_conflicting_content_lengths() -> None:
    with pytest.raises(RemoteProtocolError) as err:
        parse_datagram(MESSAGES["mcl01"])
    assert err.value.status == 400
    assert isinstance(err.value.message, Request)


def test_bcast_response_with_two_vias_is_discarded() -> None:
    msg = parse_datagram(MESSAGES["bcast"])
    assert isinstance(msg, Response)
    assert msg.via[1].host == "255.255.255.255"
    with pytest.raises(RemoteProtocolError):
        validate_response(msg)


def test_zeromf_max_forwards_zero() -> None:
    assert request("zeromf").max_forwards == 0


def test_unksm2_unknown_schemes_in_headers() -> None:
    msg = request("unksm2")
    assert isinstance(msg.to.uri, AbsoluteUri) and msg.to.uri.scheme == "isbn"
    assert str(msg.to.uri) == "isbn:2983792873"
    assert msg.from_.uri.scheme == "http" and msg.from_.tag == "3234233"
    assert msg.contact[0].uri.scheme == "name"
    with pytest.raises(RemoteProtocolError) as err:
        msg.to.sip_uri  # noqa: B018
    assert err.value.status == 416


def test_cparam01_and_cparam02_param_placement() -> None:
    (c1,) = request("cparam01").contact
    assert c1.params == {"unknownparam": None}
    assert c1.uri.params == {}  # type: ignore[attr-defined]
    (c2,) = request("cparam02").contact
    assert c2.params == {}
    assert c2.uri.params == {"unknownparam": None}  # type: ignore[attr-defined]


def test_regescrt_escaped_header_in_contact() -> None:
    (contact,) = request("regescrt").contact
    uri = contact.uri
    assert isinstance(uri, SipUri)
    assert uri.headers == [("Route", "<sip:sip.example.com>")]


def test_sdp01_unacceptable_accept_gets_406() -> None:
    assert uas_status("sdp01", methods=UA_METHODS, answer_type="application/sdp") == 406
    assert uas_status("wsinv", methods=UA_METHODS, answer_type="application/sdp") == 200


# -- 3.4 backward compatibility -----------------------------------------------------------


def test_inv2543_rfc2543_invite() -> None:
    msg = request("inv2543")
    assert msg.via[0].branch is None
    assert msg.from_.tag is None
    assert msg.max_forwards is None
    assert "content-length" not in parse_datagram(MESSAGES["inv2543"]).headers
    assert msg.body.startswith(b"v=0\r\n") and msg.body.endswith(b"RTP/AVP 0\r\n")
    assert msg.record_route[0].uri.maddr == "ss1.example.com"  # type: ignore[attr-defined]
    # addr-spec form: ;user=phone belongs to the To header, not to the URI
    assert msg.to.params == {"user": "phone"}
    assert msg.from_.uri.params == {"user": "phone"}  # type: ignore[attr-defined]
    sdp = SessionDescription.parse(msg.body)
    assert sdp.media[0].formats == ["0"]
    # our answer carries a To tag and a Content-Length
    answer = make_response(msg, 200, to_tag="abc")
    assert answer.to.tag == "abc"
    assert answer.headers.get("Content-Length") == "0"


def test_every_message_parses_or_fails_cleanly() -> None:
    """No torture message makes anything but RemoteProtocolError escape."""
    for data in MESSAGES.values():
        try:
            msg = parse_datagram(data)
        except RemoteProtocolError:
            continue
        try:
            if isinstance(msg, Request):
                validate_request(msg, methods=UA_METHODS, accept=["application/sdp"])
            else:
                validate_response(msg)
        except RemoteProtocolError:
            pass
