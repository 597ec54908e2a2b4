"""The parser's fast paths against its general ones.

The common layouts (CRLF header sections with `Name: value` lines, one-pattern Via,
name-addr and SIP URI readers, the SDP session/media splits, the rtpmap cache) exist for
speed only. Wherever one of them accepts an input, the general reader must produce exactly
the same thing; where the general reader refuses it, so must the message as a whole.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sip_rfc4475_messages import MESSAGES

from porch.bench.sip import INVITE, SDP
from porch.sip import sdp as sdp_module
from porch.sip.errors import RemoteProtocolError
from porch.sip.headers import NameAddress, Via, name_addr_fast, via_fast
from porch.sip.message import (
    DEFAULT_LIMITS,
    Request,
    _content_length,
    _head_general,
    _split_fields,
    _split_fields_exact,
    _split_fields_slow,
    parse_datagram,
)
from porch.sip.sdp import STATIC_PAYLOADS, Codec, SessionDescription
from porch.sip.uri import SipUri, _sip_fast, parse_uri

FIXTURES = Path(__file__).parent / "fixtures"
SIP_SEEDS = (
    list(MESSAGES.values()) + [p.read_bytes() for p in sorted(FIXTURES.glob("*.sip"))] + [INVITE]
)

PROFILE = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
LONG = settings(PROFILE, max_examples=20000)


def outcome(fn, *args):
    """('ok', value) or ('error', status): what a caller of fn would see."""
    try:
        return "ok", fn(*args)
    except RemoteProtocolError as exc:
        return "error", exc.status


# -- whole datagrams ----------------------------------------------------------------------

MUTATIONS = [b": ", b":", b":  ", b" :", b" \r\n", b"\t", b"\r\n ", b"\r\n\t", b"\r\n", b"\n",
             b"\r", b"\r\n\r\n", b" ", b",", b";", b'"', b"<", b">", b"\x00", b"\xff", b"v:",
             b"Via: ", b"l: 5", b"Content-Length: 3", b"CONTENT-LENGTH:",
             b"99999999999"]  # fmt: skip


@st.composite
def mutated_messages(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SIP_SEEDS)))
    for _ in range(draw(st.integers(0, 5))):
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        kind = draw(st.integers(0, 2))
        if kind == 0:
            del data[pos : pos + draw(st.integers(1, 8))]
        elif kind == 1:
            data[pos:pos] = draw(st.sampled_from(MUTATIONS))
        else:
            end = pos + draw(st.integers(1, 30))
            data[pos:pos] = data[pos:end]
    return bytes(data)


def reference_datagram(data: bytes) -> Request:
    """parse_datagram as it reads a message without its CRLF fast path."""
    limits = DEFAULT_LIMITS
    if len(data) > limits.max_message_size:
        raise RemoteProtocolError(513, "Message Too Large")
    if data[:1] in (b"\r", b"\n"):
        data = data.lstrip(b"\r\n")
    msg, _, body_start = _head_general(data, limits)
    length = _content_length(msg.headers, limits, msg)
    if length is None:
        msg.body = data[body_start:]
    else:
        msg.body = data[body_start : body_start + length]
        if len(msg.body) < length:
            raise RemoteProtocolError(400, "body shorter than Content-Length")
    return msg


def check_datagram(data: bytes) -> None:
    fast = outcome(parse_datagram, data)
    slow = outcome(reference_datagram, data)
    assert fast[0] == slow[0], (data, fast, slow)
    if fast[0] == "error":
        assert fast[1] == slow[1], data
    else:
        assert type(fast[1]) is type(slow[1])
        assert fast[1] == slow[1], data
        check_header_split(data)
        check_typed_reads(fast[1])


def check_header_split(data: bytes) -> None:
    """Each field splitter agrees with the slow one whenever it accepts the lines."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return
    text = data[:end].decode("utf-8", "surrogateescape")
    lines = text.split("\r\n")[1:]
    slow = outcome(_split_fields_slow, lines)
    for fast in (_split_fields_exact(lines, text), _split_fields(lines)):
        if fast is not None:
            assert slow == ("ok", fast), lines


def check_typed_reads(msg) -> None:
    """The accessors' shortcuts (one Via, one Contact) read what the general way reads."""
    for name, read, parse in (("via", "via", Via.parse), ("contact", "contact", NameAddress.parse)):
        got = outcome(getattr, msg, read)

        def general(name=name, parse=parse):
            values = msg.headers.values(name)
            if "" in values:
                raise RemoteProtocolError(400, "empty item")
            return [parse(v) for v in values]

        msg.headers.typed.clear()
        assert got == outcome(general), (name, msg.headers.getall(name))


def test_seeds_agree() -> None:
    for data in SIP_SEEDS:
        check_datagram(data)
        check_datagram(data.replace(b"\r\n", b"\n"))


@PROFILE
@given(mutated_messages())
def test_mutated_messages_agree(data: bytes) -> None:
    check_datagram(data)


@pytest.mark.fuzz
@LONG
@given(mutated_messages())
def test_mutated_messages_agree_long(data: bytes) -> None:
    check_datagram(data)


# -- header values ------------------------------------------------------------------------

VIA_PIECES = ["SIP/2.0/UDP", "SIP/2.0/udp", "SIP/2.0/TLS", "sip/2.0/tcp", "SIP / 2.0 / UDP",
              "SIP/2.0/", " ", "  ", "\t", "host.example.com", "192.0.2.1", "h", "-bad", "[::1]",
              "[2001:db8::1]", ":5060", ":", ":99999", ":050", ";branch=z9hG4bK1", ";rport",
              ";rport=4000", ";received=192.0.2.9", ";received=[::2]", ";BRANCH=Ab", ";x=\"q r\"",
              "; x = y", ";", "=", ",", ";ttl=1;maddr=224.0.0.1", "é", "\x00"]  # fmt: skip
ADDR_PIECES = ['"Disp"', '"a\\"b"', '""', '"Flat 3"', "Name", "Two Words", " ", "\t", "<", ">",
               "<sip:a@b>", "sip:a@b", "<sips:x@y:5061;transport=tls>", "<tel:+1234>", ";tag=1",
               ";TAG=Ab", ";q=0.5", ";expires=60", ";+sip.instance=\"<urn:x>\"", ";", "=", ",",
               "?", "<sip:a b>", '"', "%41", "<>", ";lr"]  # fmt: skip
URI_PIECES = ["sip:", "sips:", "SIP:", "user", "u.s-e_r!", ":pw", ":", "@", "host.example.com",
              "192.0.2.1", "h", "-h", "[::1]", "[x]", ":5060", ":65536", ";transport=udp", ";lr",
              ";TRANSPORT=TCP", ";maddr=[::1]", ";x", "=", ";;", "?h=v", "&", "%41", "%4", " ",
              "\x00", "é", ",", "<", ">"]  # fmt: skip


def joined(pieces: list[str]) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(pieces), min_size=1, max_size=8).map("".join)


# Parameters as item lists: their order is what serialisation writes back.
def via_fields(via: Via) -> tuple:
    return (via.protocol, via.transport, via.host, via.port, list(via.params.items()))


def addr_fields(addr: NameAddress) -> tuple:
    return (addr.display_name, addr._uri_text, list(addr.params.items()))


def uri_fields(uri: SipUri) -> tuple:
    return (uri.scheme, uri.user, uri.password, uri.host, uri.port, list(uri.params.items()),
            list(uri.headers), str(uri))  # fmt: skip


def same(fast, general, fields, text: str) -> None:
    """A fast reader may decline (None); if it accepts, it must read what the general one reads."""
    got = outcome(fast, text)
    if got == ("ok", None):
        return
    want = outcome(general, text)
    assert got[0] == want[0], (text, got, want)
    if got[0] == "ok":
        assert fields(got[1]) == fields(want[1]), text
    else:
        assert got[1] == want[1], text


@PROFILE
@given(joined(VIA_PIECES))
def test_via_fast_path_agrees(text: str) -> None:
    same(via_fast, Via._parse_general, via_fields, text)


@PROFILE
@given(joined(ADDR_PIECES))
def test_name_addr_fast_path_agrees(text: str) -> None:
    same(name_addr_fast, NameAddress._parse_general, addr_fields, text)


@PROFILE
@given(joined(URI_PIECES))
def test_sip_uri_fast_path_agrees(text: str) -> None:
    if text.startswith("sip:"):
        same(lambda t: _sip_fast(t, 4, "sip"),
             lambda t: SipUri._parse_general(t, 4, "sip"), uri_fields, text)  # fmt: skip
    # and parse_uri (which tries the fast reader first) agrees with SipUri.parse / others
    got = outcome(parse_uri, text)
    if got[0] == "ok" and isinstance(got[1], SipUri):
        colon = text.find(":")
        general = outcome(SipUri._parse_general, text, colon + 1, text[:colon].lower())
        assert general[0] == "ok" and uri_fields(general[1]) == uri_fields(got[1]), text


# -- SDP ----------------------------------------------------------------------------------

SDP_SEEDS = [SDP.decode()] + [
    SessionDescription.parse(parse_datagram(p.read_bytes()).body).to_bytes().decode()
    for p in sorted(FIXTURES.glob("*.sip"))
]
SDP_LINES = ["v=0", "o=- 1 1 IN IP4 192.0.2.1", "o=- 1 x IN IP4 h", "s=-", "s=", "i=info",
             "c=IN IP4 192.0.2.7", "c=IN IP4 0.0.0.0", "c=IN IP4", "b=AS:64", "t=0 0",
             "t=1 2", "a=sendonly", "a=recvonly", "a=inactive", "a=rtcp:7001",
             "a=rtpmap:96 opus/48000/2", "a=rtpmap:0 PCMU/8000", "a=rtpmap:0 G722/8000",
             "a=rtpmap:97 telephone-event/8000", "a=rtpmap:98 x", "a=rtpmap:+9 G722/8000",
             "a=fmtp:97 0-15", "a=fmtp:0 x=1", "a=rtpmap:9", "a=rtpmap:96 opus/x",
             "a=rtpmap:0 PCMU/8000/1", "a=fmtp:96", "a=rtpmap:96  G722/8000", "a=ptime:30",
             "a=", "m=audio 5004 RTP/AVP 0 96",
             "m=video 0 RTP/AVP 31", "m=audio 70000 RTP/AVP 0", "m=audio 5/2 RTP/AVP 0 +9 97",
             "m=audio", "", "x=1", "k=prompt", "a=rtpmap:8"]  # fmt: skip


@st.composite
def mutated_sdp(draw) -> str:
    lines = draw(st.sampled_from(SDP_SEEDS)).split("\r\n")
    for _ in range(draw(st.integers(0, 4))):
        pos = draw(st.integers(0, len(lines)))
        kind = draw(st.integers(0, 3))
        if kind == 0 and pos < len(lines):
            del lines[pos]
        elif kind == 1:
            lines.insert(pos, draw(st.sampled_from(SDP_LINES)))
        elif kind == 2 and pos < len(lines):
            lines.insert(pos, lines[pos])
        elif kind == 3 and pos < len(lines):
            line = lines[pos]
            cut = draw(st.integers(0, len(line)))
            lines[pos] = line[:cut] + draw(st.sampled_from([" ", "\r", "\n", "", "\t", "/"]))
    end = draw(st.sampled_from(["\r\n", "\n", "\r\n\r\n", "", "\r"]))
    sep = draw(st.sampled_from(["\r\n"] * 4 + ["\n"]))
    return sep.join(lines) + end


def sdp_fields(sdp: SessionDescription) -> tuple:
    media = [
        (m.kind, m.port, m.port_count, m.proto, m.formats, m.connection, m.bandwidths, m.other,
         m.codecs(), m.direction, sdp.direction_of(m), sdp.connection_of(m), m.ptime, m.rtcp)
        for m in sdp.media
    ]  # fmt: skip
    origin = outcome(lambda: sdp.origin)
    return (str(sdp), sdp.name, sdp.connection, sdp.times, sdp.direction, origin, media)


def reference_codecs(media) -> list[Codec]:
    """codecs() the plain way: read every rtpmap/fmtp line, fill in static payload types."""
    maps: dict[str, str] = {}
    fmtps: dict[str, str] = {}
    for key, value in media._attribute_items():
        if key == "rtpmap" and value:
            pt, _, spec = value.partition(" ")
            maps[pt] = spec
        elif key == "fmtp" and value:
            pt, _, params = value.partition(" ")
            fmtps[pt] = params.strip()
    out = []
    for pt in media.formats:
        if not pt.isdigit():
            continue
        try:
            if pt in maps:
                parts = maps[pt].strip().split("/")
                channels = int(parts[2]) if len(parts) > 2 else 1
                out.append(Codec(parts[0], int(parts[1]), int(pt), channels, fmtps.get(pt)))
            elif pt in STATIC_PAYLOADS:
                name, rate, channels = STATIC_PAYLOADS[pt]
                out.append(Codec(name, rate, int(pt), channels, fmtps.get(pt)))
        except (ValueError, IndexError):
            continue
    return out


def check_sdp(text: str) -> None:
    fast = outcome(SessionDescription.parse, text)
    general = outcome(SessionDescription._parse_general, text)
    assert fast[0] == general[0], (text, fast, general)
    if fast[0] == "error":
        assert fast[1] == general[1]
        return
    assert sdp_fields(fast[1]) == sdp_fields(general[1]), text
    # codecs() through the rtpmap cache, cold and warm, and through (name, value) pairs
    for media in fast[1].media:
        warm = media.codecs()
        assert warm == reference_codecs(media), text
        saved = dict(sdp_module._FORMAT_LINES)
        sdp_module._FORMAT_LINES.clear()
        try:
            assert media.codecs() == warm
        finally:
            sdp_module._FORMAT_LINES.update(saved)
        media.attributes  # noqa: B018 - turns the raw a= lines into pairs
        assert media.codecs() == warm, text


def test_sdp_seeds_agree() -> None:
    for text in SDP_SEEDS:
        check_sdp(text)
        check_sdp(text.replace("\r\n", "\n"))


@PROFILE
@given(mutated_sdp())
def test_mutated_sdp_agrees(text: str) -> None:
    check_sdp(text)


@pytest.mark.fuzz
@LONG
@given(mutated_sdp())
def test_mutated_sdp_agrees_long(text: str) -> None:
    check_sdp(text)
