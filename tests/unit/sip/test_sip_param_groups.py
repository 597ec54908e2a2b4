"""The fast readers' own groups for the usual first parameter (Via ;branch and ;rport,
name-addr ;tag, SIP URI ;transport) against the general readers, parameter order included.

Parameters serialise in the order of the dict, so the fast readers must not only read the
same parameters as the general ones but insert them in the same order (a repeated name keeps
its first place and takes the last value).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_sip_fast_paths import ADDR_PIECES, URI_PIECES, VIA_PIECES, same

from porch.sip.headers import NameAddress, Via, name_addr_fast, via_fast
from porch.sip.uri import SipUri, _sip_fast

PROFILE = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

PARAM_PIECES = [";branch=z9hG4bK1", ";branch=", ";branch", ";Branch=x", ";rport", ";rport=5",
                ";rportx", ";tag=a", ";tag=", ";tag", ";TAG=b", ";tagx=1", ";transport=udp",
                ";transport=", ";transport", ";Transport=TCP", ";lr", ";x=y", ";x", "=", ";",
                "%41", '"q"']  # fmt: skip


def joined(head: st.SearchStrategy[str], pieces: list[str]) -> st.SearchStrategy[str]:
    tail = st.lists(st.sampled_from(pieces), max_size=6).map("".join)
    return st.tuples(head, tail).map("".join)


def via_fields(via: Via) -> tuple:
    return (via.protocol, via.transport, via.host, via.port, list(via.params.items()), str(via))


def addr_fields(addr: NameAddress) -> tuple:
    return (addr.display_name, addr._uri_text, list(addr.params.items()), str(addr))


def uri_fields(uri: SipUri) -> tuple:
    return (uri.user, uri.password, uri.host, uri.port, list(uri.params.items()), uri.headers)


VIA_HEADS = st.sampled_from(["SIP/2.0/UDP 192.0.2.2:5060", "SIP/2.0/TCP h", "SIP/2.0/UDP h "])
ADDR_HEADS = st.sampled_from(['"Flat 3" <sip:1003@pbx.example.com>', "<sip:a@b>", "<sip:a@b> "])
URI_HEADS = st.sampled_from(["sip:1003@192.0.2.20:5060", "sip:h", "sip:a@h:1"])


@PROFILE
@given(joined(VIA_HEADS, PARAM_PIECES + VIA_PIECES))
def test_via_param_groups(text: str) -> None:
    same(via_fast, Via._parse_general, via_fields, text)


@PROFILE
@given(joined(ADDR_HEADS, PARAM_PIECES + ADDR_PIECES))
def test_name_addr_param_groups(text: str) -> None:
    same(name_addr_fast, NameAddress._parse_general, addr_fields, text)


@PROFILE
@given(joined(URI_HEADS, PARAM_PIECES + URI_PIECES))
def test_uri_param_groups(text: str) -> None:
    same(
        lambda t: _sip_fast(t, 4, "sip"),
        lambda t: SipUri._parse_general(t, 4, "sip"),
        uri_fields,
        text,
    )


def test_examples_in_order() -> None:
    via = via_fast("SIP/2.0/UDP h;branch=z9hG4bK1;rport;received=192.0.2.1;branch=z9hG4bK2")
    assert via is not None
    assert list(via.params.items()) == [
        ("branch", "z9hG4bK2"),
        ("rport", None),
        ("received", "192.0.2.1"),
    ]
    via = via_fast("SIP/2.0/UDP h;branch=b;rport=5060")
    assert via is not None and list(via.params.items()) == [("branch", "b"), ("rport", "5060")]
    addr = name_addr_fast("<sip:a@b>;tag=1;expires=60;TAG=2")
    assert addr is not None and list(addr.params.items()) == [("tag", "2"), ("expires", "60")]
    uri = _sip_fast("sip:a@h;transport=udp;lr;Transport=tcp", 4, "sip")
    assert uri is not None and list(uri.params.items()) == [("transport", "tcp"), ("lr", None)]
