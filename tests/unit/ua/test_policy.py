"""Who may call the door: call.auto_answer, call.allow, the registrar's domain and address."""

from porch.sip.policy import CallerPolicy, caller_text
from porch.sip.uri import parse_uri

PBX = ("10.0.0.2", 5060)
ELSEWHERE = ("10.0.0.66", 5060)


def uri(text: str):
    return parse_uri(text)


def registered(auto_answer: str = "allowlist", allow: tuple[str, ...] = ()) -> CallerPolicy:
    return CallerPolicy(auto_answer, allow, "pbx.example.com", True, frozenset({PBX}))


def test_off_refuses_everyone_even_the_allow_list():
    policy = registered("off", ("sip:*@pbx.example.com",))
    verdict = policy.check(uri("sip:101@pbx.example.com"), PBX)
    assert not verdict.allowed and verdict.status == 403
    assert "off" in verdict.reason


def test_allowlist_takes_the_registrars_domain_through_the_pbx_only():
    policy = registered()
    assert policy.check(uri("sip:101@pbx.example.com"), PBX).allowed
    assert policy.check(uri("sip:101@PBX.Example.COM:5060"), PBX).allowed
    direct = policy.check(uri("sip:101@pbx.example.com"), ELSEWHERE)
    assert not direct.allowed and "10.0.0.66:5060" in direct.reason
    assert not policy.check(uri("sip:101@other.example.com"), PBX).allowed


def test_allow_pattern_lets_a_caller_in_from_anywhere():
    policy = registered(allow=("sip:*@intercom.example.com",))
    assert policy.check(uri("sip:lobby@intercom.example.com"), ELSEWHERE).allowed
    assert not policy.check(uri("sip:lobby@evil.example.com"), ELSEWHERE).allowed


def test_all_still_needs_the_pbx_when_registered():
    policy = registered("all")
    assert policy.check(uri("sip:anyone@carrier.example.net"), PBX).allowed
    assert not policy.check(uri("sip:anyone@carrier.example.net"), ELSEWHERE).allowed
    assert not policy.check(uri("sip:anyone@carrier.example.net"), None).allowed


def test_peer_to_peer_all_takes_anyone_allowlist_only_patterns():
    anyone = CallerPolicy("all")
    assert anyone.check(uri("sip:x@192.0.2.7:5090"), ("192.0.2.7", 5090)).allowed
    listed = CallerPolicy("allowlist", ("sip:flat*@192.0.2.7",))
    assert listed.check(uri("sip:flat12@192.0.2.7:5090"), ("192.0.2.7", 5090)).allowed
    assert not listed.check(uri("sip:other@192.0.2.7"), ("192.0.2.7", 5090)).allowed


def test_pattern_port_must_match_and_parameters_are_ignored():
    policy = CallerPolicy("allowlist", ("sip:*@10.0.0.9:5070",))
    assert policy.check(uri("sip:a@10.0.0.9:5070;transport=tcp"), None).allowed
    assert not policy.check(uri("sip:a@10.0.0.9:5080"), None).allowed
    assert caller_text(uri("sip:a@10.0.0.9:5070;transport=tcp")) == "sip:a@10.0.0.9:5070"
    assert caller_text(uri("sips:a@[2001:db8::1]")) == "sips:a@[2001:db8::1]"


def test_with_trusted_replaces_the_pbx_addresses():
    policy = CallerPolicy("allowlist", (), "pbx.example.com", True).with_trusted([PBX])
    assert policy.check(uri("sip:1@pbx.example.com"), PBX).allowed
