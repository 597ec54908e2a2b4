"""Hypothesis properties: round trips, and robustness against random and mutated input."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sip_exercise import exercise
from sip_rfc4475_messages import MESSAGES

from porch.sip.message import Request, Response, StreamParser, parse_datagram
from porch.sip.uri import SipUri, TelUri, parse_uri

FIXTURES = Path(__file__).parent / "fixtures"
SEEDS = list(MESSAGES.values()) + [p.read_bytes() for p in sorted(FIXTURES.glob("*.sip"))]

PROFILE = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
tokens = st.text(TOKEN_CHARS, min_size=1, max_size=16)
# Any text but CR/LF and lone surrogates; the parser strips SP/HT around values.
free_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=40
)
values = free_text.map(lambda s: s.strip(" \t"))
header_names = tokens.filter(lambda n: n.lower() not in ("content-length", "l"))
hostnames = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9\-]{0,8}(\.[A-Za-z0-9][A-Za-z0-9\-]{0,8}){0,3}",
                          fullmatch=True)  # fmt: skip
ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
ipv6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
params = st.dictionaries(
    tokens.map(str.lower), st.one_of(st.none(), free_text.filter(bool)), max_size=4
)
userinfo = st.one_of(
    st.tuples(st.none(), st.none()),
    st.tuples(free_text.filter(bool), st.one_of(st.none(), free_text)),
)
sip_uris = st.builds(
    lambda info, **kw: SipUri(user=info[0], password=info[1], **kw),
    userinfo,
    host=st.one_of(hostnames, ipv4, ipv6),
    scheme=st.sampled_from(["sip", "sips"]),
    port=st.one_of(st.none(), st.integers(0, 65535)),
    params=params,
    headers=st.lists(st.tuples(free_text.filter(bool), free_text), max_size=3),
)
tel_uris = st.builds(
    TelUri,
    number=st.from_regex(r"\+?[0-9][0-9\-.()]{0,14}", fullmatch=True),
    params=params,
)


@PROFILE
@given(sip_uris)
def test_sip_uri_round_trip(uri: SipUri) -> None:
    text = str(uri)
    again = parse_uri(text)
    assert isinstance(again, SipUri)
    assert again == uri
    assert (again.scheme, again.user, again.password, again.port) == (
        uri.scheme,
        uri.user,
        uri.password,
        uri.port,
    )
    assert again.host == uri.host and again.params == uri.params
    assert again.headers == uri.headers
    assert str(again) == text


@PROFILE
@given(tel_uris)
def test_tel_uri_round_trip(uri: TelUri) -> None:
    again = parse_uri(str(uri))
    assert isinstance(again, TelUri)
    assert again == uri and again.number == uri.number and again.params == uri.params


fields = st.lists(st.tuples(header_names, values), max_size=12)
bodies = st.binary(max_size=300)


@st.composite
def messages(draw) -> Request | Response:
    if draw(st.booleans()):
        uri = draw(st.one_of(sip_uris, tel_uris))
        return Request(draw(tokens), uri, draw(fields), draw(bodies))
    reason = draw(st.text(st.characters(blacklist_categories=("Cs",),
                                        blacklist_characters="\r\n"), max_size=20))  # fmt: skip
    return Response(draw(st.integers(100, 699)), reason, draw(fields), draw(bodies))


@PROFILE
@given(messages(), st.lists(st.integers(1, 60), max_size=8))
def test_message_round_trip(msg: Request | Response, cuts: list[int]) -> None:
    wire = msg.to_bytes()
    assert parse_datagram(wire) == msg
    # the same bytes on a stream, in arbitrary pieces, give the same message
    parser = StreamParser()
    out = []
    pos = 0
    for size in [*cuts, len(wire)]:
        out += parser.feed(wire[pos : pos + size])
        pos += size
    assert out == [msg]


@PROFILE
@given(st.binary(max_size=600))
def test_random_bytes_only_raise_remote_protocol_error(data: bytes) -> None:
    exercise(data)


MUTATION_TOKENS = [b":", b";", b",", b'"', b"<", b">", b"\r\n", b"\r\n ", b" ", b"%", b"\x00",
                   b"\xff", b"=", b"/", b"[", b"]", b"@", b"\\", b"\r\n\r\n", b"99999999999",
                   b"-1", b"\t", b"sip:", b"SIP/2.0"]  # fmt: skip


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        kind = draw(st.integers(0, 3))
        if kind == 0:
            data[pos] = draw(st.integers(0, 255))
        elif kind == 1:
            del data[pos : pos + draw(st.integers(1, 20))]
        elif kind == 2:
            data[pos:pos] = draw(st.sampled_from(MUTATION_TOKENS))
        else:
            end = pos + draw(st.integers(1, 40))
            data[pos:pos] = data[pos:end]  # duplicate a slice
    return bytes(data)


@PROFILE
@given(mutated())
def test_mutated_real_messages_only_raise_remote_protocol_error(data: bytes) -> None:
    exercise(data)


def test_every_seed_is_exercised_cleanly() -> None:
    for data in SEEDS:
        exercise(data)
