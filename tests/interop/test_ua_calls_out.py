"""The call button: porch dials real phones (baresip through Kamailio, SIPp directly).

Call states come from /api/status and /api/events; what the far end saw comes from its own
logs (baresip events, SIPp <log> lines and message traces).
"""

from __future__ import annotations

import re
import socket
import time

import pytest
from peers import Kamailio, PeerSet, wait_until
from peers_fixtures import fixture_module_peer_set, fixture_peer_set  # noqa: F401
from porch_harness import Porch
from porch_interop import (
    call_states,
    events,
    fixture_kam,  # noqa: F401
    fixture_run_porch,  # noqa: F401
    outputs,
    press,
    registered_at,
    scenario_file,
    status,
    wait_call,
    wait_registration,
)

from porch.media.rtp import RtpSender

pytestmark = pytest.mark.interop

REDIRECT_UAS = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="UAS that redirects">
  <Global variables="target"/>
  <recv request="INVITE"/>
  <send>
    <![CDATA[
      SIP/2.0 302 Moved Temporarily
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <[$target]>
      Content-Length: 0
    ]]>
  </send>
  <recv request="ACK"><action><log message="REDIRECTED to [$target]"/></action></recv>
</scenario>
"""


def early_response(status: str) -> str:
    """A response of the ringing phone to the door's INVITE (headers kept on arrival)."""
    return f"""
  <send>
    <![CDATA[
      SIP/2.0 {status}
      Via:[$via]
      From: [$door]
      To: [$phone];tag=[pid]SIPpTag01[call_number]
      Call-ID: [call_id]
      CSeq:[$cseq]
      Contact: <sip:phone@[local_ip]:[local_port]>
      Content-Length: 0
    ]]>
  </send>"""


def early_info(cseq: int, content_type: str, body: str, label: str) -> str:
    """An INFO from the ringing phone in its early dialog; the door must answer 403."""
    return f"""
  <send retrans="500">
    <![CDATA[
      INFO [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: [$phone];tag=[pid]SIPpTag01[call_number]
      To: [$door]
      Call-ID: [call_id]
      CSeq: {cseq} INFO
      Max-Forwards: 70
      Content-Type: {content_type}
      Content-Length: [len]

      {body}
    ]]>
  </send>
  <recv response="403"><action><log message="INFO {label} status=403"/></action></recv>"""


# A phone that, while ringing (early dialog), sends INFO `unlock` and a DTMF digit to the
# door, then declines the call. The INVITE's headers are kept for the final answer.
EARLY_INFO_UAS = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="UAS sends INFO in the early dialog">
  <recv request="INVITE" crlf="true" rrs="true">
    <action>
      <ereg regexp="[^\\r\\n]*" search_in="hdr" header="Via:" check_it="true" assign_to="via"/>
      <ereg regexp="[^\\r\\n]*" search_in="hdr" header="From:" check_it="true" assign_to="door"/>
      <ereg regexp="[^\\r\\n]*" search_in="hdr" header="To:" check_it="true" assign_to="phone"/>
      <ereg regexp="[^\\r\\n]*" search_in="hdr" header="CSeq:" check_it="true" assign_to="cseq"/>
    </action>
  </recv>{early_response("180 Ringing")}
  <pause milliseconds="200"/>{early_info(1, "text/plain", "unlock", "unlock")}\
{early_info(2, "application/dtmf-relay", "Signal=1", "dtmf")}{early_response("603 Decline")}
  <recv request="ACK"/>
</scenario>
"""


# A phone whose PBX plays ringback as early media: 183 with SDP pointing at the test's own
# media socket (variable media_port), 1.5 s of ringing, then 200 (no RTP after that).
EARLY_MEDIA_UAS = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="UAS with early media">
  <Global variables="media_port"/>
  <recv request="INVITE" crlf="true">
    <action>
      <ereg regexp="m=audio ([0-9]+)" search_in="body" check_it="true" assign_to="m,port"/>
      <log message="OFFER port=[$port]"/>
    </action>
  </recv>
  <send>
    <![CDATA[
      SIP/2.0 183 Session Progress
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:phone@[local_ip]:[local_port]>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=pbx 1 1 IN IP4 127.0.0.1
      s=-
      c=IN IP4 127.0.0.1
      t=0 0
      m=audio [$media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
      a=sendonly
    ]]>
  </send>
  <pause milliseconds="1500"/>
  <send retrans="500">
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:phone@[local_ip]:[local_port]>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=phone 1 1 IN IP4 127.0.0.1
      s=-
      c=IN IP4 127.0.0.1
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
    ]]>
  </send>
  <recv request="ACK"/>
  <recv request="BYE"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0
    ]]>
  </send>
  <Reference variables="m"/>
</scenario>
"""


def challenge(cseq: str) -> str:
    """A 401 to the door's INVITE, then its ACK."""
    return f"""
  <send>
    <![CDATA[
      SIP/2.0 401 Unauthorized
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      CSeq: {cseq} INVITE
      WWW-Authenticate: Digest realm="flat.test", nonce="n[clock_tick]", algorithm=MD5, qop="auth"
      Content-Length: 0
    ]]>
  </send>
  <recv request="ACK"/>"""


# A phone that refuses the door's credentials: the INVITE is challenged, the retry with
# credentials is challenged again; a third INVITE in the next 2 s would fail the scenario.
CHALLENGE_TWICE_UAS = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="UAS that refuses the credentials">
  <recv request="INVITE"/>{challenge("1")}
  <recv request="INVITE">
    <action>
      <ereg regexp="username=.door." search_in="hdr" header="Authorization:" check_it="true"
            assign_to="creds"/>
      <log message="RETRY with credentials"/>
    </action>
  </recv>{challenge("2")}
  <pause milliseconds="2000"/>
  <Reference variables="creds"/>
</scenario>
"""


def dial_from_door(run_porch, *targets: str, **call) -> Porch:
    """A porch that calls `targets` (call section `call`), its button just pressed."""
    porch = run_porch({"call": {"targets": list(targets), **call}})
    press(porch)
    return porch


def test_button_calls_baresip_through_kamailio(kam: Kamailio, peer_set: PeerSet, run_porch):
    phone = peer_set.baresip(role="callee", user="1001", registrar=kam)
    porch = run_porch(registered_at(kam, call={"targets": ["1001"]}))
    wait_registration(porch, "registered")
    since = phone.mark()
    press(porch)
    s = wait_call(porch, "connected")
    assert s["peer"] == "sip:1001@127.0.0.1"
    assert call_states(porch)[0] == "calling"
    assert outputs(porch)["led_call_mode"] == "on"
    phone.wait_event("CALL_ESTABLISHED", since=since)
    # Kamailio answers the first INVITE with 407 (door is a subscriber): being connected
    # shows porch retried with credentials. Now the far end hangs up: back to idle.
    phone.hangup()
    wait_call(porch, "idle")
    assert events(porch, "call_end")[-1]["reason"] == "hung up by the peer"
    # Second call, this time porch hangs up (API), the phone sees the BYE.
    since = phone.mark()
    press(porch)
    wait_call(porch, "connected")
    phone.wait_event("CALL_ESTABLISHED", since=since)
    assert porch.request("POST", "/api/hangup")[0] in (200, 204)
    wait_call(porch, "idle")
    phone.wait_event("CALL_CLOSED", since=since)
    assert porch.stop()[0] == 0


def test_busy_target_then_next_answers_and_hangs_up(peer_set: PeerSet, run_porch):
    busy = peer_set.sipp.start("uas_reject", variables={"code": 486}, timeout=20)
    answering = peer_set.sipp.start(
        "uas_answer_hangup", variables={"ring_ms": 200}, duration_ms=500, timeout=20
    )
    porch = dial_from_door(run_porch, busy.uri("flat1"), answering.uri("flat2"))
    wait_call(porch, "connected")
    wait_call(porch, "idle")  # the far end hangs up after 500 ms
    assert busy.wait(10).ok and answering.wait(10).ok
    failed = events(porch, "call_target_failed")
    assert failed[0]["target"] == busy.uri("flat1") and failed[0]["status"] == 486
    assert call_states(porch) == ["calling", "ringing", "connected"]
    assert events(porch, "call_end")[-1]["reason"] == "hung up by the peer"
    invite = answering.wait().received("INVITE")[0]
    assert "m=audio" in invite and "telephone-event/8000" in invite
    assert '\r\nFrom: "Door" <sip:door@127.0.0.1:' in invite


def test_ring_timeout_cancels(peer_set: PeerSet, run_porch):
    phone = peer_set.sipp.start("uas_ring_cancel", timeout=20)
    porch = dial_from_door(run_porch, phone.uri("flat"), ring_timeout=5)
    wait_call(porch, "ringing")
    wait_call(porch, "idle", timeout=10)
    result = phone.wait(10)
    assert result.ok, result.report()
    assert result.log_lines("TERMINATED 487"), result.report()
    failed = events(porch, "call_target_failed")
    assert failed and failed[-1]["reason"] == "no answer (call.ring_timeout)"


def test_parallel_first_answer_wins_the_other_is_cancelled(peer_set: PeerSet, run_porch):
    slow = peer_set.sipp.start("uas_ring_cancel", timeout=20)
    quick = peer_set.sipp.start("uas_answer", variables={"ring_ms": 300}, timeout=20)
    porch = dial_from_door(run_porch, slow.uri("flat1"), quick.uri("flat2"), strategy="parallel")
    s = wait_call(porch, "connected")
    assert s["peer"] == quick.uri("flat2")
    slow_result = slow.wait(10)
    assert slow_result.ok and slow_result.log_lines("CANCEL received"), slow_result.report()
    porch.request("POST", "/api/hangup")
    quick_result = quick.wait(10)
    assert quick_result.ok and quick_result.log_lines("BYE received"), quick_result.report()


def test_parallel_second_answer_crossing_the_cancel_is_acked_and_hung_up(
    peer_set: PeerSet, run_porch
):
    """Both phones answer: the first 200 wins; the other phone's 200 crosses porch's CANCEL
    and is ACKed and ended with BYE at once, while the winning call goes on."""
    late = peer_set.sipp.start("uas_cancel_race", timeout=20)
    quick = peer_set.sipp.start("uas_answer", variables={"ring_ms": 300}, timeout=20)
    porch = dial_from_door(run_porch, late.uri("flat1"), quick.uri("flat2"), strategy="parallel")
    s = wait_call(porch, "connected")
    assert s["peer"] == quick.uri("flat2")
    late_result = late.wait(10)
    assert late_result.ok, late_result.report()
    assert late_result.log_lines("ACK after race") and late_result.log_lines("BYE received")
    assert status(porch)["call"] == "connected" and status(porch)["peer"] == quick.uri("flat2")
    porch.request("POST", "/api/hangup")
    quick_result = quick.wait(10)
    assert quick_result.ok and quick_result.log_lines("BYE received"), quick_result.report()


def test_button_again_while_ringing_cancels_and_a_crossing_200_is_hung_up(
    peer_set: PeerSet, run_porch
):
    phone = peer_set.sipp.start("uas_cancel_race", timeout=20)
    porch = dial_from_door(run_porch, phone.uri("flat"))
    wait_call(porch, "ringing")
    press(porch)  # second press: cancel
    wait_call(porch, "idle")
    result = phone.wait(10)
    # The phone answered as the CANCEL crossed: porch ACKs that 200 and sends BYE at once.
    assert result.ok, result.report()
    assert result.log_lines("ACK after race") and result.log_lines("BYE received")
    assert "connected" not in call_states(porch)


def test_redirect_is_followed(peer_set: PeerSet, run_porch, tmp_path):
    final = peer_set.sipp.start("uas_answer", timeout=20)
    scenario = scenario_file(tmp_path, "uas_redirect", REDIRECT_UAS)
    mover = peer_set.sipp.start(scenario, variables={"target": final.uri("moved")}, timeout=20)
    porch = dial_from_door(run_porch, mover.uri("flat"))
    s = wait_call(porch, "connected")
    assert s["peer"] == final.uri("moved")
    assert mover.wait(10).log_lines("REDIRECTED")
    redirected = events(porch, "call_redirected")
    assert redirected and redirected[0]["contacts"] == [final.uri("moved")]
    porch.request("POST", "/api/hangup")
    assert final.wait(10).log_lines("BYE received")


def test_reliable_ringing_is_pracked(peer_set: PeerSet, run_porch):
    phone = peer_set.sipp.start("uas_100rel", variables={"ring_ms": 200}, timeout=20)
    porch = dial_from_door(run_porch, phone.uri("flat"))
    wait_call(porch, "connected")
    porch.request("POST", "/api/hangup")
    result = phone.wait(10)
    assert result.ok, result.report()
    rack = result.log_lines("PRACK rack=")[0].removeprefix("PRACK rack=")
    assert rack.split() == ["1", "1", "INVITE"], result.report()
    assert "100rel" in result.log_lines("INVITE 100rel=")[0]


def test_far_end_hold_and_resume_by_reinvite(peer_set: PeerSet, run_porch):
    phone = peer_set.sipp.start("uas_hold_reinvite", duration_ms=300, timeout=20)
    porch = dial_from_door(run_porch, phone.uri("flat"))
    wait_call(porch, "connected")
    result = phone.wait(15)
    assert result.ok, result.report()
    assert result.log_lines("HOLD answer=recvonly") and result.log_lines("RESUME answer=sendrecv")
    wait_call(porch, "idle")


def test_session_timer_porch_refreshes_when_asked(peer_set: PeerSet, run_porch):
    # The callee makes porch the refresher with a short interval: porch must refresh.
    phone = peer_set.sipp.start(
        "uas_session_timer", variables={"refresher": "uac", "se_value": 4}, timeout=20
    )
    porch = dial_from_door(run_porch, phone.uri("flat"))
    wait_call(porch, "connected")
    refreshed = "UPDATE session-expires=4;refresher=uac"
    assert wait_until(lambda: refreshed in phone_log(phone).replace("= ", "="), 8)
    porch.request("POST", "/api/hangup")
    result = phone.wait(10)
    assert result.ok, result.report()


def phone_log(sipp) -> str:
    path = sipp.rundir / "log.log"
    return path.read_text() if path.exists() else ""


def test_max_duration_hangs_up(peer_set: PeerSet, run_porch):
    phone = peer_set.sipp.start("uas_answer", timeout=30)
    porch = dial_from_door(run_porch, phone.uri("flat"), max_duration=10)
    wait_call(porch, "connected")
    wait_call(porch, "idle", timeout=15)
    assert events(porch, "call_end")[-1]["reason"] == "call.max_duration reached"
    assert phone.wait(10).log_lines("BYE received")


def test_info_in_a_call_not_yet_answered_is_refused(peer_set: PeerSet, run_porch, tmp_path):
    """INFO unlock and DTMF INFO count only in an answered call: while the phone rings they
    are refused with 403 and the door stays shut."""
    scenario = scenario_file(tmp_path, "uas_early_info", EARLY_INFO_UAS)
    phone = peer_set.sipp.start(scenario, timeout=20)
    porch = run_porch({"call": {"targets": [phone.uri("flat")]}, "door": {"dtmf_codes": ["1"]}})
    press(porch)
    result = phone.wait(10)
    assert result.ok, result.report()
    assert result.log_lines("INFO unlock status=403"), result.report()
    assert result.log_lines("INFO dtmf status=403"), result.report()
    wait_call(porch, "idle")
    assert not events(porch, "unlock")
    assert outputs(porch)["relay"] is False


def test_early_media_is_played_while_the_phone_rings(peer_set: PeerSet, run_porch, tmp_path):
    """183 with SDP: porch plays what the PBX sends (ringback) before the answer, and
    sends nothing itself until then."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ringback:
        ringback.bind(("127.0.0.1", 0))
        ringback.setblocking(False)
        scenario = scenario_file(tmp_path, "uas_early_media", EARLY_MEDIA_UAS)
        phone = peer_set.sipp.start(
            scenario, variables={"media_port": ringback.getsockname()[1]}, timeout=20
        )
        porch = run_porch({"call": {"targets": [phone.uri("flat")]}})
        seq = porch.last_seq()
        press(porch)
        sipp_log = phone.rundir / "log.log"

        def offered() -> list[str]:
            text = sipp_log.read_text() if sipp_log.exists() else ""
            return re.findall(r"OFFER port=(\d+)", text)

        offer = wait_until(offered, 5)
        assert offer, phone.stop().report()
        sender, sent, heard_from_door = RtpSender(), 0, 0
        start = time.monotonic()
        for i in range(40):  # 0.8 s of ringback in real time, well before the 200
            time.sleep(max(0.0, start + 0.02 * i - time.monotonic()))
            packet = sender.packet(bytes([0xFF]) * 160, 0, advance=160)
            ringback.sendto(packet, ("127.0.0.1", int(offer[0])))
            sent += 1
            try:
                while ringback.recv(2048):
                    heard_from_door += 1
            except BlockingIOError:
                pass
        assert status(porch)["call"] == "ringing"
        wait_call(porch, "connected")
        porch.request("POST", "/api/hangup")
        assert phone.wait(10).ok
    media = wait_until(lambda: events(porch, "call_media", seq), 5)
    assert media and media[-1]["packets"] >= sent - 2, media  # the ringback was taken
    assert heard_from_door == 0  # and the door said nothing before the answer


def test_credentials_refused_twice_are_not_tried_a_third_time(
    peer_set: PeerSet, run_porch, tmp_path
):
    scenario = scenario_file(tmp_path, "uas_challenge_twice", CHALLENGE_TWICE_UAS)
    phone = peer_set.sipp.start(scenario, timeout=20)
    porch = run_porch(
        {
            "sip": {"username": "door", "password": "doorpass"},
            "call": {"targets": [phone.uri("flat")]},
        }
    )
    press(porch)
    failed = wait_until(lambda: events(porch, "call_target_failed"), 10)
    assert failed and failed[-1]["reason"] == "401 Unauthorized: credentials refused", failed
    result = phone.wait(10)
    assert result.ok, result.report()
    assert result.log_lines("RETRY with credentials")
    wait_call(porch, "idle")
