"""SDP parsing and the RFC 3264 offer/answer for real phones' offers."""

from __future__ import annotations

from pathlib import Path

import pytest

from porch.sip.errors import LocalProtocolError, RemoteProtocolError
from porch.sip.message import make_response, parse_datagram
from porch.sip.sdp import (
    SdpError,
    SdpNegotiationError,
    SessionDescription,
    answer,
    build_offer,
    process_answer,
)

FIXTURES = Path(__file__).parent / "fixtures"


def offer_from(name: str) -> SessionDescription:
    msg = parse_datagram((FIXTURES / name).read_bytes())
    return SessionDescription.parse(msg.body)


def answer_for(offer: SessionDescription, **kwargs):
    params = {"host": "192.0.2.10", "port": 40000, "session_id": 77, "session_version": 1}
    params.update(kwargs)
    return answer(offer, **params)


def text(sdp: SessionDescription) -> list[str]:
    return sdp.to_bytes().decode().split("\r\n")


def test_baresip_offer_gets_g722() -> None:
    offer = offer_from("baresip-1.0.0-invite.sip")
    sdp, session = answer_for(offer)
    assert session.codec.name == "G722" and session.codec.pt == 9
    assert session.telephone_event is not None and session.telephone_event.pt == 101
    assert session.telephone_event.fmtp == "0-15"
    assert (session.remote_host, session.remote_port) == ("127.0.0.1", 40362)
    assert (session.remote_rtcp_host, session.remote_rtcp_port) == ("127.0.0.1", 40363)
    assert session.direction == "sendrecv" and session.send and session.receive
    assert not session.hold and session.ptime == 20
    assert text(sdp) == [
        "v=0",
        "o=porch 77 1 IN IP4 192.0.2.10",
        "s=porch",
        "c=IN IP4 192.0.2.10",
        "t=0 0",
        "m=audio 40000 RTP/AVP 9 101",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-15",
        "a=ptime:20",
        "a=sendrecv",
        "",
    ]


def test_linphone_offer_without_g722_gets_pcmu() -> None:
    offer = offer_from("linphonec-5.1.65-invite.sip")
    assert [c.name for c in offer.media[0].codecs()] == [
        "opus", "speex", "speex", "PCMU", "PCMA", "G729",
        "telephone-event", "telephone-event", "telephone-event",
    ]  # fmt: skip
    sdp, session = answer_for(offer)
    assert session.codec.name == "PCMU" and session.codec.pt == 0
    # telephone-event at the codec's clock (8000), not the 48000 or 16000 ones
    assert session.telephone_event is not None and session.telephone_event.pt == 101
    assert sdp.media[0].formats == ["0", "101"]
    assert offer.attributes[0] == (
        "rtcp-xr",
        "rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics",
    )


def test_pbx_offer_with_video_declines_video() -> None:
    offer = offer_from("pbx-asterisk-style-invite.sip")
    sdp, session = answer_for(offer, codecs=["G722", "PCMU", "PCMA"])
    assert session.codec.name == "G722" and session.media_index == 0
    assert [(m.kind, m.port) for m in sdp.media] == [("audio", 40000), ("video", 0)]
    assert sdp.media[1].formats == ["99", "100"]  # a declined stream repeats the formats
    assert offer.media[0].maxptime == 150
    # our preference order decides, not the offer's
    _, session = answer_for(offer, codecs=["PCMA", "PCMU"])
    assert session.codec.name == "PCMA" and session.codec.pt == 8
    # and the answer goes back over the wire in a 200
    invite = parse_datagram((FIXTURES / "pbx-asterisk-style-invite.sip").read_bytes())
    ok = make_response(invite, 200, to_tag="d1", body=sdp.to_bytes(),
                       content_type="application/sdp")  # fmt: skip
    again = SessionDescription.parse(parse_datagram(ok.to_bytes()).body)
    assert again.to_bytes() == sdp.to_bytes()


def test_no_common_codec_is_488() -> None:
    offer = SessionDescription.parse(
        "v=0\r\no=- 1 1 IN IP4 192.0.2.5\r\ns=-\r\nc=IN IP4 192.0.2.5\r\nt=0 0\r\n"
        "m=audio 5004 RTP/AVP 96 18\r\na=rtpmap:96 opus/48000/2\r\na=rtpmap:18 G729/8000\r\n"
        "m=video 5006 RTP/AVP 97\r\na=rtpmap:97 H264/90000\r\n"
    )
    with pytest.raises(SdpNegotiationError) as err:
        answer_for(offer)
    assert err.value.status == 488
    assert isinstance(err.value, RemoteProtocolError)
    assert dict(err.value.headers)["Warning"].startswith("305 ")
    # the same offer with a codec list that matches nothing at all
    with pytest.raises(SdpNegotiationError):
        answer_for(offer_from("linphonec-5.1.65-invite.sip"), codecs=["G722"])


HOLD_OFFERS = {
    "sendonly": ("a=sendonly\r\n", "c=IN IP4 192.0.2.5", "recvonly", True),
    "inactive": ("a=inactive\r\n", "c=IN IP4 192.0.2.5", "inactive", True),
    "recvonly": ("a=recvonly\r\n", "c=IN IP4 192.0.2.5", "sendonly", False),
    "rfc2543": ("", "c=IN IP4 0.0.0.0", "recvonly", True),
    "resume": ("a=sendrecv\r\n", "c=IN IP4 192.0.2.5", "sendrecv", False),
}


@pytest.mark.parametrize("case", sorted(HOLD_OFFERS))
def test_hold_and_direction(case: str) -> None:
    attr, conn, ours, hold = HOLD_OFFERS[case]
    offer = SessionDescription.parse(
        f"v=0\r\no=- 1 2 IN IP4 192.0.2.5\r\ns=-\r\n{conn}\r\nt=0 0\r\n"
        f"m=audio 5004 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n{attr}"
    )
    sdp, session = answer_for(offer)
    assert session.direction == ours
    assert session.hold is hold
    assert sdp.media[0].direction == ours
    assert session.send == (ours in ("sendrecv", "sendonly"))


def test_session_level_direction_and_media_connection() -> None:
    offer = SessionDescription.parse(
        "v=0\r\no=- 1 2 IN IP4 192.0.2.5\r\ns=-\r\nc=IN IP4 192.0.2.5\r\nt=0 0\r\n"
        "a=sendonly\r\n"
        "m=audio 5004 RTP/AVP 8\r\nc=IN IP4 192.0.2.99\r\na=rtcp:6000 IN IP4 192.0.2.100\r\n"
        "a=ptime:30\r\n"
    )
    _, session = answer_for(offer)
    assert session.direction == "recvonly" and session.hold
    assert session.remote_host == "192.0.2.99"  # media-level c= wins
    assert (session.remote_rtcp_host, session.remote_rtcp_port) == ("192.0.2.100", 6000)
    assert session.ptime == 30
    assert session.telephone_event is None  # not offered, not answered


def test_we_can_ask_for_our_own_direction() -> None:
    offer = offer_from("baresip-1.0.0-invite.sip")
    sdp, session = answer_for(offer, direction="sendonly", rtcp_port=40001)
    assert session.direction == "sendonly"
    assert sdp.media[0].attribute("rtcp") == "40001"


def test_second_audio_stream_and_srtp_are_declined() -> None:
    offer = SessionDescription.parse(
        "v=0\r\no=- 1 2 IN IP4 192.0.2.5\r\ns=-\r\nc=IN IP4 192.0.2.5\r\nt=0 0\r\n"
        "m=audio 5000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:abc\r\n"
        "m=audio 5002 RTP/AVP 0\r\n"
        "m=audio 5004 RTP/AVP 8\r\n"
        "m=application 5006 UDP/BFCP *\r\n"
    )
    sdp, session = answer_for(offer)
    assert session.media_index == 1 and session.remote_port == 5002
    assert [m.port for m in sdp.media] == [0, 40000, 0, 0]
    assert sdp.media[3].formats == ["*"]


def test_dynamic_payload_numbers_are_kept_from_the_offer() -> None:
    offer = SessionDescription.parse(
        "v=0\r\no=- 1 2 IN IP4 192.0.2.5\r\ns=-\r\nc=IN IP4 192.0.2.5\r\nt=0 0\r\n"
        "m=audio 5004 RTP/AVP 96 97\r\na=rtpmap:96 G722/8000\r\n"
        "a=rtpmap:97 telephone-event/8000\r\na=fmtp:97 0-11\r\n"
    )
    sdp, session = answer_for(offer)
    assert (session.codec.pt, session.telephone_event.pt) == (96, 97)  # type: ignore[union-attr]
    assert sdp.media[0].formats == ["96", "97"]
    assert sdp.media[0].fmtps == {"97": "0-11"}


def test_build_offer_and_process_answer() -> None:
    offer = build_offer(host="192.0.2.10", port=40000, session_id=5, session_version=1)
    assert text(offer)[5:] == [
        "m=audio 40000 RTP/AVP 9 0 8 101",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=ptime:20",
        "a=sendrecv",
        "",
    ]
    # a phone answers our offer with PCMA only
    reply = SessionDescription.parse(
        "v=0\r\no=phone 9 9 IN IP4 192.0.2.30\r\ns=-\r\nc=IN IP4 192.0.2.30\r\nt=0 0\r\n"
        "m=audio 7078 RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\n"
    )
    session = process_answer(offer, reply)
    assert (session.codec.name, session.codec.pt) == ("PCMA", 8)
    assert session.telephone_event is not None and session.telephone_event.pt == 101
    assert (session.remote_host, session.remote_port) == ("192.0.2.30", 7078)
    # our own answer round-trips through answer() into the same session
    our_answer, theirs = answer(
        offer, host="192.0.2.40", port=9000, session_id=1, session_version=1
    )
    assert theirs.codec.name == "G722"
    assert process_answer(offer, our_answer).codec.name == "G722"


def test_process_answer_failures() -> None:
    offer = build_offer(host="192.0.2.10", port=40000, session_id=5, session_version=1)
    refused = SessionDescription.parse(
        "v=0\r\no=p 1 1 IN IP4 192.0.2.30\r\ns=-\r\nc=IN IP4 192.0.2.30\r\nt=0 0\r\n"
        "m=audio 0 RTP/AVP 0\r\n"
    )
    with pytest.raises(SdpNegotiationError):
        process_answer(offer, refused)
    wrong_codec = SessionDescription.parse(
        "v=0\r\no=p 1 1 IN IP4 192.0.2.30\r\ns=-\r\nc=IN IP4 192.0.2.30\r\nt=0 0\r\n"
        "m=audio 7000 RTP/AVP 18\r\n"
    )
    with pytest.raises(SdpNegotiationError):
        process_answer(offer, wrong_codec)
    two_lines = SessionDescription.parse(
        "v=0\r\no=p 1 1 IN IP4 192.0.2.30\r\ns=-\r\nc=IN IP4 192.0.2.30\r\nt=0 0\r\n"
        "m=audio 7000 RTP/AVP 0\r\nm=video 0 RTP/AVP 31\r\n"
    )
    with pytest.raises(SdpError):
        process_answer(offer, two_lines)


def test_build_offer_refuses_unknown_codecs() -> None:
    with pytest.raises(LocalProtocolError):
        build_offer(host="h", port=1, session_id=1, session_version=1, codecs=["opus"])


def test_parse_keeps_what_it_does_not_model() -> None:
    raw = (
        "v=0\r\no=alice 2890844526 2890844527 IN IP4 host.example.com\r\ns=Call\r\n"
        "i=A call\r\nu=http://example.com/x\r\ne=alice@example.com\r\np=+1 617 555-6011\r\n"
        "c=IN IP4 192.0.2.1\r\nb=AS:64\r\nt=2873397496 2873404696\r\nr=7d 1h 0 25h\r\n"
        "z=2882844526 -1h\r\nk=prompt\r\na=recvonly\r\n"
        "m=audio 49170/2 RTP/AVP 0\r\ni=voice\r\nc=IN IP4 224.2.17.12/127\r\nb=AS:32\r\n"
        "k=prompt\r\na=rtpmap:0 PCMU/8000\r\n"
    )
    sdp = SessionDescription.parse(raw)
    assert sdp.to_bytes().decode() == raw
    assert sdp.origin.session_version == 2890844527
    media = sdp.media[0]
    assert (media.port, media.port_count) == (49170, 2)
    assert media.connection is not None and media.connection.host == "224.2.17.12"
    assert sdp.direction_of(media) == "recvonly"
    # LF-only SDP is accepted and written back with CRLF
    assert SessionDescription.parse(raw.replace("\r\n", "\n")).to_bytes() == raw.encode()


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "v=1\r\n",
        "o=- 1 1 IN IP4 h\r\n",
        "v=0\r\ns=-\r\n",  # no o=
        "v=0\r\no=- 1 1 IN IP4\r\n",
        "v=0\r\no=- 1 x IN IP4 h\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\nm=audio\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\nm=audio 70000 RTP/AVP 0\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\nm=audio x RTP/AVP 0\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\nc=IN IP4\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\nnonsense\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\nm=audio 1 RTP/AVP 0\r\nt=0 0\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\nv=0\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\ns=\rx\r\n",
    ],
)
def test_malformed_sdp_is_a_400(bad: str) -> None:
    with pytest.raises(SdpError) as err:
        SessionDescription.parse(bad)
    assert err.value.status == 400


def test_missing_connection_is_reported() -> None:
    offer = SessionDescription.parse(
        "v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n"
    )
    with pytest.raises(SdpError):
        answer_for(offer)


def test_blank_rtcp_attribute_is_ignored() -> None:
    offer = SessionDescription.parse(
        "v=0\r\no=- 1 1 IN IP4 192.0.2.5\r\ns=-\r\nc=IN IP4 192.0.2.5\r\nt=0 0\r\n"
        "m=audio 5004 RTP/AVP 0\r\na=rtcp: \r\n"
    )
    assert offer.media[0].rtcp is None
    _, session = answer_for(offer)
    assert session.remote_rtcp_port == 5005  # RTP port + 1, as without a=rtcp
