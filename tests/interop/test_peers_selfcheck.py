"""The interop harness works: the real peers talk to each other (no porch involved).

If these fail, porch's interop tests cannot be trusted either way; look here first.
"""

from __future__ import annotations

import pytest
from peers import Kamailio, PeerSet, sip_options
from peers_fixtures import (  # noqa: F401
    fixture_module_kamailio,
    fixture_module_peer_set,
    fixture_peer_set,
)

pytestmark = pytest.mark.interop


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_sipp_registers_with_digest(module_kamailio: Kamailio, peer_set: PeerSet, transport):
    kam = module_kamailio
    user = {"udp": "1001", "tcp": "1002", "tls": "1003"}[transport]
    result = peer_set.sipp.run(
        "uac_register_auth",
        kam.address(transport),
        transport=transport,
        service=user,
        auth=(user, Kamailio.USERS[user]),
        tls_context=kam.pki.client_context(),
        timeout=15,
    )
    assert result.ok, result.report()
    assert [m.split("\r\n", 1)[0] for m in result.received("SIP/2.0")] == [
        "SIP/2.0 401 Unauthorized",
        "SIP/2.0 200 OK",
    ], result.report()
    assert result.sent("REGISTER")[1].count("Authorization: Digest") == 1
    contact = kam.wait_registered(user, timeout=5, transport=transport)
    assert contact["Socket"] == f"{transport}:127.0.0.1:{kam.port(transport)}"


def test_kamailio_refuses_a_wrong_password(module_kamailio: Kamailio, peer_set: PeerSet):
    result = peer_set.sipp.run(
        "uac_register_auth",
        module_kamailio.address("udp"),
        service="door2",
        auth=("door2", "not-the-password"),
        timeout=10,
    )
    assert result.returncode == 1, result.report()
    assert not module_kamailio.registered("door2")


def test_kamailio_tls_listener_verifies_against_the_test_ca(module_kamailio: Kamailio):
    kam = module_kamailio
    ctx = kam.pki.client_context()  # trusts only the run-time CA; checks IP 127.0.0.1
    assert sip_options(kam.port("tls"), "tls", tls_context=ctx) == 200


def test_baresip_registers_to_kamailio(module_kamailio: Kamailio, peer_set: PeerSet):
    phone = peer_set.baresip(role="caller", user="1001", registrar=module_kamailio)
    contact = module_kamailio.wait_registered("1001", timeout=5, contains=f":{phone.sip_port}")
    assert contact["Socket"] == f"udp:127.0.0.1:{module_kamailio.port('udp')}"
    assert "baresip" in contact["User-Agent"]


def test_sipp_info_call_reaches_baresip_through_kamailio(
    module_kamailio: Kamailio, peer_set: PeerSet
):
    kam = module_kamailio
    callee = peer_set.baresip(role="callee", user="door", registrar=kam)
    kam.wait_registered("door", timeout=5)
    since = callee.mark()
    result = peer_set.sipp.run(
        "uac_invite_info_dtmf",
        kam.address("udp"),
        service="door",
        variables={"digits": "1#"},
        duration_ms=200,
        timeout=20,
    )
    assert result.ok, result.report()
    assert result.log_lines("INFO digit=") == [
        "INFO digit=1 status=200",
        "INFO digit=# status=200",
    ], result.report()
    # the call went through the proxy: Kamailio's Record-Route came back on the 200
    answer = next(m for m in result.received("SIP/2.0 200") if " INVITE\r\n" in m)
    assert f"Record-Route: <sip:127.0.0.1:{kam.port('udp')};lr" in answer, answer
    callee.wait_event("CALL_ESTABLISHED", timeout=5, since=since)
    callee.wait_event("CALL_DTMF_START", timeout=5, since=since, param="1")
    callee.wait_event("CALL_DTMF_START", timeout=5, since=since, param="#")
    callee.wait_event("CALL_CLOSED", timeout=5, since=since)


def test_linphone_sends_sip_info_dtmf_to_baresip(module_kamailio: Kamailio, peer_set: PeerSet):
    kam = module_kamailio
    callee = peer_set.baresip(role="callee", user="door2", registrar=kam)
    phone = peer_set.linphone(use_info=True, use_rfc2833=False)
    phone.register("1002", registrar=kam)
    kam.wait_registered("1002", timeout=5, contains=f":{phone.sip_port}")
    since = callee.mark()
    phone.dial(f"sip:door2@127.0.0.1:{kam.port('udp')}")
    callee.wait_event("CALL_ESTABLISHED", timeout=10, since=since)
    phone.wait_connected()
    phone.send_dtmf("7")
    callee.wait_event("CALL_DTMF_START", timeout=5, since=since, param="7")
    phone.hangup()
    callee.wait_event("CALL_CLOSED", timeout=5, since=since)


# SIPp scenario against SIPp scenario: each file of tests/interop/peers/sipp loads and the
# pairs agree on the message flow (what porch's tests will rely on).
PAIRS = [
    (
        "uas_answer",
        {"ring_ms": 200},
        "uac_invite_info_dtmf",
        {"digits": "12"},
        ["INFO digit=1 status=200", "INFO digit=2 status=200"],
    ),
    ("uas_answer", {}, "uac_invite_info_unlock", {}, ["INFO unlock status=200"]),
    ("uas_answer", {}, "uac_reinvite_hold", {}, ["HOLD answer=recvonly", "RESUME answer=sendrecv"]),
    (
        "uas_answer",
        {},
        "uac_update_hold",
        {"hold_dir": "inactive"},
        ["HOLD answer=inactive", "RESUME answer=sendrecv"],
    ),
    (
        "uas_session_timer",
        {"refresher": "uac"},
        "uac_session_timer",
        {},
        ["REFRESH UPDATE session-expires= 90;refresher=uac"],
    ),
    ("uas_100rel", {}, "uac_100rel", {}, ["RELIABLE 180 rseq=1"]),
    ("uas_ring_cancel", {}, "uac_invite_cancel", {"cancel_ms": 200}, ["OUTCOME cancelled"]),
    ("uas_cancel_race", {}, "uac_invite_cancel", {}, ["OUTCOME answered-after-cancel"]),
    ("uas_reject", {"code": 486}, "uac_invite_expect_reject", {}, ["REJECTED status=486"]),
    ("uas_hold_reinvite", {}, "uac_call_wait_bye", {}, ["BYE received"]),
    ("uas_options", {}, "uac_options_check", {}, ["OPTIONS allow= INVITE"]),
]


@pytest.mark.parametrize(
    "uas,uas_vars,uac,uac_vars,expected", PAIRS, ids=[f"{p[2]}-{p[0]}" for p in PAIRS]
)
def test_sipp_scenario_pairs(peer_set: PeerSet, uas, uas_vars, uac, uac_vars, expected):
    server = peer_set.sipp.start(uas, variables=uas_vars, duration_ms=200, timeout=15)
    client = peer_set.sipp.run(
        uac, server.address, service="door", variables=uac_vars, duration_ms=200, timeout=15
    )
    server_result = server.wait(15)
    assert client.ok, client.report()
    assert server_result.ok, server_result.report()
    for line in expected:
        assert any(x.startswith(line) for x in client.log.splitlines()), client.report()
