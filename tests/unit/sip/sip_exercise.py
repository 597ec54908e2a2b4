"""Drive every part of the SIP core with one input; shared by the property tests and the fuzzer.

The contract under test: bad input raises RemoteProtocolError and nothing else, and whatever
parses can be answered and serialised without error.
"""

from __future__ import annotations

from porch.sip.auth import parse_challenge, parse_credentials
from porch.sip.errors import RemoteProtocolError
from porch.sip.message import (
    Request,
    StreamParser,
    make_response,
    parse_datagram,
    validate_request,
    validate_response,
)
from porch.sip.sdp import SessionDescription, answer
from porch.sip.uri import parse_uri

UA_METHODS = {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO", "REGISTER", "MESSAGE"}

_ACCESSORS = (
    "via",
    "from_",
    "to",
    "call_id",
    "cseq",
    "contact",
    "route",
    "record_route",
    "content_type",
    "max_forwards",
    "expires",
    "require",
    "proxy_require",
    "supported",
    "unsupported",
    "allow",
    "accept",
    "user_agent",
)


def _quietly(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except RemoteProtocolError:
        return None


def _read_addresses(addresses) -> None:
    for addr in addresses or ():
        _quietly(lambda a=addr: (a.uri, a.tag, a.expires, a.q, str(a), a.param("x")))


def exercise_message(data: bytes) -> None:
    msg = _quietly(parse_datagram, data)
    if msg is None:
        return
    for name in _ACCESSORS:
        value = _quietly(getattr, msg, name)
        if name in ("contact", "route", "record_route"):
            _read_addresses(value)
        elif name in ("from_", "to") and value is not None:
            _read_addresses([value])
        elif name == "via" and value:
            for via in value:
                (via.branch, via.rport, via.received, via.sent_by, str(via))
    for value in msg.headers.getall("www-authenticate") + msg.headers.getall("authorization"):
        _quietly(parse_challenge, value)
        _quietly(parse_credentials, value)
    if isinstance(msg, Request):
        _quietly(lambda: msg.uri)
        _quietly(
            validate_request,
            msg,
            methods=UA_METHODS,
            supported={"replaces"},
            accept=["application/sdp"],
            answer_type="application/sdp",
        )
        reply = make_response(msg, 400, to_tag="fz")
        again = parse_datagram(reply.to_bytes())  # what we send must always parse
        assert again.status == 400  # type: ignore[union-attr]
    else:
        _quietly(validate_response, msg)
    wire = msg.to_bytes()
    parse_datagram(wire)  # a parsed message re-serialises to something parseable
    if msg.body:
        exercise_sdp(msg.body)


def exercise_sdp(data: bytes) -> None:
    sdp = _quietly(SessionDescription.parse, data)
    if sdp is None:
        return
    sdp.to_bytes()
    for media in sdp.media:
        (media.codecs(), media.direction, media.ptime, media.maxptime, media.rtcp)
    result = _quietly(answer, sdp, host="192.0.2.10", port=40000, session_id=1, session_version=1)
    if result is not None:
        SessionDescription.parse(result[0].to_bytes())


def exercise_stream(data: bytes) -> None:
    parser = StreamParser()
    half = len(data) // 2
    for chunk in (data[:half], data[half:]):
        if _quietly(parser.feed, chunk) is None:
            break


def exercise_uri(data: bytes) -> None:
    text = data.decode("utf-8", "surrogateescape")
    uri = _quietly(parse_uri, text)
    if uri is not None:
        again = parse_uri(str(uri))
        assert again == uri or type(again) is type(uri)


def exercise(data: bytes) -> None:
    exercise_message(data)
    exercise_sdp(data)
    exercise_stream(data)
    exercise_uri(data[:200])
