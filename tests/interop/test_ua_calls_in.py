"""Calls to the door: real phones through Kamailio, SIPp directly; who is answered, who is not.

porch is registered as "door" at a module-wide Kamailio with call.auto_answer = "allowlist":
callers of the registrar's domain coming through Kamailio are answered; anyone else gets 403.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from peers import Kamailio, PeerSet, wait_until
from peers_fixtures import fixture_module_peer_set, fixture_peer_set  # noqa: F401
from porch_harness import Porch
from porch_interop import (
    FROM_DOMAIN,
    ack_non_2xx,
    audio_sdp,
    call_states,
    cancel_first_invite,
    door_uri,
    events,
    first_invite,
    fixture_idle_door,  # noqa: F401
    fixture_kam,  # noqa: F401
    fixture_run_porch,  # noqa: F401
    registered_at,
    scenario_file,
    serve_door,
    sip_address,
    sipp_call,
    status,
    uac_scenario,
    wait_call,
)

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def door(kam: Kamailio, tmp_path_factory) -> Iterator[Porch]:
    yield from serve_door(tmp_path_factory.mktemp("door"), registered_at(kam))


def test_baresip_calls_the_door_through_kamailio(kam: Kamailio, peer_set: PeerSet, idle_door):
    phone = peer_set.baresip(role="caller", user="1001", registrar=kam)
    since = phone.mark()
    phone.dial(door_uri(kam))
    s = wait_call(idle_door, "connected")
    assert s["peer"].startswith("sip:1001@127.0.0.1")
    phone.wait_event("CALL_ESTABLISHED", since=since)
    # The call's media figures are live in the status while baresip talks.
    media = wait_until(lambda: (status(idle_door)["media"] or {}).get("packets", 0) > 10, 5)
    assert media, status(idle_door)
    live = status(idle_door)["media"]
    assert live["codec"] in ("G722", "PCMU", "PCMA") and live["sent"] > 0, live
    assert 1.0 <= live["mos"] <= 4.5, live
    phone.hangup()
    wait_call(idle_door, "idle")
    assert status(idle_door)["media"] is None


def test_linphone_calls_the_door_through_kamailio(kam: Kamailio, peer_set: PeerSet, idle_door):
    phone = peer_set.linphone()
    phone.register("1002", registrar=kam)
    since = phone.mark()
    phone.dial(door_uri(kam))
    s = wait_call(idle_door, "connected")
    assert s["peer"].startswith("sip:1002@127.0.0.1")
    phone.wait_connected(since=since)
    # The door hangs up this time.
    idle_door.request("POST", "/api/hangup")
    wait_call(idle_door, "idle")
    phone.wait_output(r"Call \d+ with .* ended|Call ended", since=since)


def test_caller_not_through_the_pbx_gets_403(peer_set: PeerSet, idle_door):
    seq = idle_door.last_seq()
    result = sipp_call(peer_set, idle_door, "uac_invite_expect_reject")
    assert result.log_lines("REJECTED status=403"), result.report()
    refused = events(idle_door, "call_refused", seq)
    assert refused and "not from the registrar" in refused[-1]["reason"]
    assert status(idle_door)["call"] == "idle"


def test_caller_of_another_domain_through_the_pbx_gets_403(
    kam: Kamailio, peer_set: PeerSet, idle_door
):
    result = sipp_call(peer_set, kam, "uac_invite_expect_reject", from_host="evil.example.com")
    assert result.log_lines("REJECTED status=403"), result.report()


def test_sipp_of_the_domain_through_the_pbx_is_answered_and_busy_meanwhile(
    kam: Kamailio, peer_set: PeerSet, idle_door
):
    first = sipp_call(peer_set, kam, "uac_call", wait=False, duration_ms=3000, timeout=15)
    wait_call(idle_door, "connected")
    busy = sipp_call(peer_set, kam, "uac_invite_expect_reject")
    assert busy.log_lines("REJECTED status=486"), busy.report()
    result = first.wait(15)
    assert result.ok and result.log_lines("HUNGUP"), result.report()
    wait_call(idle_door, "idle")


def test_no_common_codec_is_488(kam: Kamailio, peer_set: PeerSet, idle_door):
    result = sipp_call(peer_set, kam, "uac_invite_expect_reject", codec="18")  # G.729 only
    assert result.log_lines("REJECTED status=488"), result.report()
    assert status(idle_door)["call"] == "idle"


def test_options_lists_what_porch_does(peer_set: PeerSet, idle_door):
    result = peer_set.sipp.run("uac_options_check", sip_address(idle_door), timeout=10)
    assert result.ok, result.report()
    line = result.log_lines("OPTIONS allow=")[0]
    for method in ("INVITE", "ACK", "CANCEL", "BYE", "INFO", "UPDATE", "PRACK", "OPTIONS"):
        assert method in line
    assert "application/dtmf-relay" in line and "100rel" in line and "timer" in line


def test_cancel_race_ends_cleanly(kam: Kamailio, peer_set: PeerSet, idle_door):
    # porch answers at once, so the CANCEL races its 200: every outcome must end cleanly.
    for cancel_ms in (0, 100):
        result = sipp_call(peer_set, kam, "uac_invite_cancel", cancel_ms=cancel_ms)
        assert result.ok, result.report()
        assert result.log_lines("OUTCOME "), result.report()
        wait_call(idle_door, "idle")


def test_reliable_provisional_when_the_caller_requires_100rel(
    kam: Kamailio, peer_set: PeerSet, idle_door
):
    result = sipp_call(peer_set, kam, "uac_100rel", duration_ms=300)
    assert result.ok, result.report()
    assert result.log_lines("RELIABLE 180 rseq=1"), result.report()


# Through Kamailio (several processes) the 487 to the INVITE may overtake the 200 to the
# CANCEL: both orders are taken.
LOG_487 = '<action><log message="INVITE 487"/></action>'
LOG_CANCEL_200 = '<action><log message="CANCEL 200"/></action>'
CANCEL_BEFORE_PRACK = uac_scenario(
    "UAC: INVITE requiring 100rel, CANCEL instead of PRACK",
    first_invite(
        FROM_DOMAIN,
        sdp=audio_sdp(1, "0 PCMU/8000"),
        headers=("Supported: 100rel", "Require: 100rel"),
    ),
    '<recv response="100" optional="true"/>',
    '<recv response="180" rrs="true"><action><log message="RINGING"/></action></recv>',
    cancel_first_invite(FROM_DOMAIN),
    '<recv response="180" optional="true"/>',
    f'<recv response="487" optional="true" next="invite_first">{LOG_487}</recv>',
    f'<recv response="200">{LOG_CANCEL_200}</recv>',
    '<recv response="180" optional="true"/>',
    f'<recv response="487">{LOG_487}</recv>',
    ack_non_2xx(FROM_DOMAIN),
    '<nop next="done"/>',
    '<label id="invite_first"/>',
    ack_non_2xx(FROM_DOMAIN),
    '<recv response="180" optional="true"/>',
    f'<recv response="200">{LOG_CANCEL_200}</recv>',
    '<label id="done"/>',
    '<timewait milliseconds="300"/>',
    globals_="from_host",
)


def test_cancel_while_the_answer_waits_for_prack(
    kam: Kamailio, peer_set: PeerSet, idle_door, tmp_path
):
    """porch answers a 100rel caller only after the PRACK: a CANCEL in that window is
    taken (200 to the CANCEL, 487 to the INVITE) and the door goes back to idle."""
    seq = idle_door.last_seq()
    scenario = scenario_file(tmp_path, "uac_cancel_before_prack", CANCEL_BEFORE_PRACK)
    result = sipp_call(peer_set, kam, scenario)
    assert result.ok, result.report()
    assert result.log_lines("INVITE 487"), result.report()
    wait_call(idle_door, "idle")
    states = call_states(idle_door, seq)
    assert states == ["ringing"], states
    assert events(idle_door, "call_end", seq)[-1]["reason"] == "cancelled by the caller"


def raw_exchange(address: tuple[str, int], data: bytes, timeout: float = 2.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(timeout)
        s.sendto(data, address)
        try:
            return s.recvfrom(65535)[0]
        except TimeoutError:
            return None


def request(method: str, *, drop: str = "", extra: str = "", body: str = "") -> bytes:
    lines = [
        f"{method} sip:door@127.0.0.1 SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:9;rport;branch=z9hG4bK{time.monotonic_ns()}",
        "From: <sip:x@127.0.0.1>;tag=1",
        "To: <sip:door@127.0.0.1>",
        f"Call-ID: {time.monotonic_ns()}@test",
        f"CSeq: 1 {method}",
        "Max-Forwards: 70",
    ]
    lines = [ln for ln in lines if not (drop and ln.startswith(drop))]
    if extra:
        lines.append(extra)
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


@pytest.mark.parametrize(
    "data,status",
    [
        (request("OPTIONS", drop="Call-ID"), 400),
        (request("OPTIONS", drop="From"), 400),
        (request("INVITE", extra="CSeq: 2 INVITE"), 400),
        (request("INFO", extra="Content-Type: application/dtmf-relay", body="Signal=1"), 481),
        (request("OPTIONS", extra="Require: foo-ext"), 420),
        (request("SUBSCRIBE"), 501),
        (request("OPTIONS").replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1), 505),
        (request("INVITE", extra="Content-Type: text/html", body="<p>"), 415),
        (request("OPTIONS").replace(b"sip:door@127.0.0.1", b"http://door", 1), 416),
    ],
    ids=[
        "no-call-id",
        "no-from",
        "two-cseq",
        "info-no-dialog",
        "require",
        "subscribe",
        "version",
        "invite-html",
        "http-uri",
    ],
)
def test_bad_requests_are_answered_and_nothing_escapes(idle_door, data, status):
    reply = raw_exchange(sip_address(idle_door), data)
    assert reply is not None and reply.startswith(f"SIP/2.0 {status} ".encode()), reply


def test_garbage_is_dropped_and_the_door_keeps_working(peer_set: PeerSet, idle_door):
    for junk in (b"\x00\x01garbage", b"HELLO\r\n\r\n", b"SIP/2.0 200 OK\r\n\r\n", b"\r\n\r\n"):
        assert raw_exchange(sip_address(idle_door), junk, timeout=0.3) is None
    result = peer_set.sipp.run("uac_options_check", sip_address(idle_door), timeout=10)
    assert result.ok, result.report()
    assert "Traceback" not in idle_door.log()


def test_peer_to_peer_door_answers_direct_calls(peer_set: PeerSet, run_porch):
    porch = run_porch({})
    assert status(porch)["registration"] == "disabled"
    result = sipp_call(peer_set, porch, "uac_call", duration_ms=500)
    assert result.ok and result.log_lines("HUNGUP"), result.report()
    answer = next(m for m in result.received("SIP/2.0 200") if "INVITE\r\n" in m)
    assert "Contact: <sip:door@127.0.0.1:" in answer
    assert "m=audio " in answer and "a=rtpmap:0 PCMU/8000" in answer
    assert porch.stop()[0] == 0
