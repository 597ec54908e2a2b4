"""URIs: parsing, text round trips and RFC 3261 19.1.4 comparison."""

from __future__ import annotations

import pytest

from porch.sip.errors import RemoteProtocolError
from porch.sip.headers import NameAddress
from porch.sip.uri import AbsoluteUri, SipUri, TelUri, parse_uri, uri_equal

# RFC 3261 19.1.4: pairs that are equivalent ...
EQUAL = [
    ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
    ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"),
    (
        "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
        "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
    ),
    (
        "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
        "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
    ),
    ("sip:[2001:DB8::1]:5060", "sip:[2001:db8:0:0:0:0:0:1]:5060"),
    ("SIP:bob@Biloxi.COM", "sip:bob@biloxi.com"),
    ("tel:+1-201-555-0123", "tel:+12015550123"),
    ("tel:7042;phone-context=example.com", "tel:7042;Phone-Context=EXAMPLE.com"),
]
# ... and pairs that are not.
NOT_EQUAL = [
    ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
    ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
    ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off"),
    ("sip:alice@atlanta.com", "sips:alice@atlanta.com"),
    ("sip:alice@atlanta.com", "sip:alice:secret@atlanta.com"),
    ("sip:alice@atlanta.com;maddr=239.255.255.1", "sip:alice@atlanta.com"),
    ("sip:alice@atlanta.com;user=phone", "sip:alice@atlanta.com"),
    ("tel:+12015550123", "tel:+12015550124"),
    ("sip:alice@atlanta.com", "tel:+12015550123"),
]


@pytest.mark.parametrize(("a", "b"), EQUAL)
def test_equivalent(a: str, b: str) -> None:
    assert uri_equal(a, b) and uri_equal(b, a)
    assert parse_uri(a) == parse_uri(b)
    assert hash(parse_uri(a)) == hash(parse_uri(b))


@pytest.mark.parametrize(("a", "b"), NOT_EQUAL)
def test_not_equivalent(a: str, b: str) -> None:
    assert not uri_equal(a, b) and not uri_equal(b, a)
    assert parse_uri(a) != parse_uri(b)


def test_components() -> None:
    uri = parse_uri("sips:alice:pw@Example.com:5061;transport=TLS;lr;maddr=10.0.0.1?h=v&x=%20y")
    assert isinstance(uri, SipUri)
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == (
        "sips",
        "alice",
        "pw",
        "Example.com",
        5061,
    )
    assert uri.secure and uri.lr and uri.transport == "tls" and uri.maddr == "10.0.0.1"
    assert uri.headers == [("h", "v"), ("x", " y")]
    assert uri.aor == "sips:alice@Example.com"
    assert uri.hostport == "Example.com:5061"


def test_ipv6_reference() -> None:
    uri = parse_uri("sip:door@[2001:db8::10]:5070;transport=udp")
    assert isinstance(uri, SipUri)
    assert uri.host == "2001:db8::10" and uri.is_ipv6 and uri.port == 5070
    built = SipUri("2001:db8::10", "door", port=5070, params={"transport": "udp"})
    assert str(built) == "sip:door@[2001:db8::10]:5070;transport=udp"
    assert built == uri
    assert SipUri("[::1]").host == "::1"


def test_text_round_trip_keeps_the_original_spelling() -> None:
    for text in (
        "sip:%61lice@atlanta.com;Transport=TCP",
        "sip:user;par=u%40example.net@example.com",
        "SIP:Alice@EXAMPLE.com",
        "tel:+1-201-555-0123;ext=22",
        "urn:service:sos",
    ):
        assert str(parse_uri(text)) == text


def test_built_uris_escape_what_needs_it() -> None:
    uri = SipUri("example.com", "I have spaces", params={"name": "value%41"})
    assert str(uri) == "sip:I%20have%20spaces@example.com;name=value%2541"
    assert parse_uri(str(uri)) == uri
    with_nul = SipUri("example.com", "null-\x00-null")
    assert str(with_nul) == "sip:null-%00-null@example.com"
    headers = SipUri("example.com", "u", headers=[("Route", "<sip:x.example.com>")])
    assert str(headers) == "sip:u@example.com?Route=%3Csip:x.example.com%3E"
    assert parse_uri(str(headers)).headers == headers.headers  # type: ignore[attr-defined]


def test_replace_makes_a_new_uri() -> None:
    uri = SipUri("example.com", "u")
    other = uri.replace(port=5070, params={"transport": "tcp"})
    assert str(other) == "sip:u@example.com:5070;transport=tcp"
    assert str(uri) == "sip:u@example.com"


@pytest.mark.parametrize(
    "bad",
    [
        "sip:",
        "sip:user@",
        "sip:user@host:99999",
        "sip:user@host:port",
        "sip:us er@host",
        "sip:user@ho st",
        "sip:user@[zz::1]",
        "sip:user@host;;lr",
        "sip:user@host?noequals",
        "sip:user@host;a=b c",
        "sip:a@b@c",
        "sip:<x>@host",
        "tel:",
        "tel:abc xyz",
        "nocolon",
        "1abc:opaque",
        "http:with space",
        "",
    ],
)
def test_malformed_uris_raise_400(bad: str) -> None:
    with pytest.raises(RemoteProtocolError) as err:
        parse_uri(bad)
    assert err.value.status == 400
    assert not uri_equal(bad, "sip:user@host")


def test_tel_and_other_schemes() -> None:
    tel = parse_uri("tel:+1-201-555-0123;phone-context=+1")
    assert isinstance(tel, TelUri) and tel.is_global and tel.digits == "+12015550123"
    assert tel.params == {"phone-context": "+1"}
    other = parse_uri("soap.beep://192.0.2.103:3002")
    assert isinstance(other, AbsoluteUri) and other.scheme == "soap.beep"
    assert other.opaque == "//192.0.2.103:3002"


def test_name_address_sip_uri_accessor() -> None:
    assert NameAddress.parse("<sip:a@b>").sip_uri.user == "a"
    with pytest.raises(RemoteProtocolError) as err:
        NameAddress.parse("<tel:+123>").sip_uri  # noqa: B018
    assert err.value.status == 416
