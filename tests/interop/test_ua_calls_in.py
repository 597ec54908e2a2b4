"""Calls to the door: real phones through Kamailio, SIPp directly; who is answered, who is not.

porch is registered as "door" at a module-wide Kamailio with call.auto_answer = "allowlist":
callers of the registrar's domain coming through Kamailio are answered; anyone else gets 403.
"""

from __future__ import annotations

import socket
import time

import pytest
from peers import Kamailio, PeerSet, free_port, wait_until
from peers_fixtures import fixture_module_peer_set, fixture_peer_set  # noqa: F401
from porch_harness import Porch, start_porch

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def kam(module_peer_set: PeerSet) -> Kamailio:
    return module_peer_set.kamailio(tls=False)


@pytest.fixture(scope="module")
def door(kam: Kamailio, tmp_path_factory) -> Porch:
    """One registered porch for the module (a door station is one long-running process)."""
    folder = tmp_path_factory.mktemp("door")
    sip_port = free_port()
    porch = start_porch(
        folder,
        {
            "sip": {
                "registrar": kam.uri("udp"),
                "username": "door",
                "password": "doorpass",
                "listen": f"127.0.0.1:{sip_port}",
            },
            "call": {"auto_answer": "allowlist"},
        },
    )
    porch.extra["sip_port"] = sip_port
    porch.setup()
    assert wait_until(lambda: status(porch)["registration"] == "registered", 10), porch.log()
    yield porch
    if porch.proc.poll() is None:
        code, _ = porch.stop()
        assert code == 0


@pytest.fixture
def idle_door(door: Porch) -> Porch:
    """The shared door, idle at the start and at the end of each test."""
    assert wait_until(lambda: status(door)["call"] == "idle", 10), status(door)
    yield door
    if status(door)["call"] != "idle":
        door.request("POST", "/api/hangup")
        assert wait_until(lambda: status(door)["call"] == "idle", 10)


def status(porch: Porch) -> dict:
    return porch.request("GET", "/api/status")[1]


def events(porch: Porch, kind: str, since: int = 0) -> list[dict]:
    body = porch.request("GET", f"/api/events?since={since}&limit=1000")[1]
    return [e for e in body["events"] if e["type"] == kind]


def wait_call(porch: Porch, state: str, timeout: float = 10.0) -> dict:
    found = wait_until(lambda: (s := status(porch))["call"] == state and s, timeout)
    assert found, f"call never became {state!r}: {status(porch)}\n{porch.log()[-3000:]}"
    return found


def door_address(porch: Porch) -> tuple[str, int]:
    return ("127.0.0.1", porch.extra["sip_port"])


def test_baresip_calls_the_door_through_kamailio(kam: Kamailio, peer_set: PeerSet, idle_door):
    phone = peer_set.baresip(role="caller", user="1001", registrar=kam)
    since = phone.mark()
    phone.dial(f"sip:door@127.0.0.1:{kam.port('udp')}")
    s = wait_call(idle_door, "connected")
    assert s["peer"].startswith("sip:1001@127.0.0.1")
    phone.wait_event("CALL_ESTABLISHED", since=since)
    phone.hangup()
    wait_call(idle_door, "idle")


def test_linphone_calls_the_door_through_kamailio(kam: Kamailio, peer_set: PeerSet, idle_door):
    phone = peer_set.linphone()
    phone.register("1002", registrar=kam)
    since = phone.mark()
    phone.dial(f"sip:door@127.0.0.1:{kam.port('udp')}")
    s = wait_call(idle_door, "connected")
    assert s["peer"].startswith("sip:1002@127.0.0.1")
    phone.wait_connected(since=since)
    # The door hangs up this time.
    idle_door.request("POST", "/api/hangup")
    wait_call(idle_door, "idle")
    phone.wait_output(r"Call \d+ with .* ended|Call ended", since=since)


def test_caller_not_through_the_pbx_gets_403(peer_set: PeerSet, idle_door):
    seq = idle_door.last_seq()
    result = peer_set.sipp.run(
        "uac_invite_expect_reject", door_address(idle_door), service="door", timeout=10
    )
    assert result.log_lines("REJECTED status=403"), result.report()
    refused = events(idle_door, "call_refused", seq)
    assert refused and "not from the registrar" in refused[-1]["reason"]
    assert status(idle_door)["call"] == "idle"


def test_caller_of_another_domain_through_the_pbx_gets_403(
    kam: Kamailio, peer_set: PeerSet, idle_door
):
    result = peer_set.sipp.run(
        "uac_invite_expect_reject",
        kam.address("udp"),
        service="door",
        variables={"from_host": "evil.example.com"},
        timeout=10,
    )
    assert result.log_lines("REJECTED status=403"), result.report()


def test_sipp_of_the_domain_through_the_pbx_is_answered_and_busy_meanwhile(
    kam: Kamailio, peer_set: PeerSet, idle_door
):
    first = peer_set.sipp.start(
        "uac_call",
        kam.address("udp"),
        service="door",
        variables={"from_host": "127.0.0.1"},
        duration_ms=3000,
        timeout=15,
    )
    wait_call(idle_door, "connected")
    busy = peer_set.sipp.run(
        "uac_invite_expect_reject",
        kam.address("udp"),
        service="door",
        variables={"from_host": "127.0.0.1"},
        timeout=10,
    )
    assert busy.log_lines("REJECTED status=486"), busy.report()
    result = first.wait(15)
    assert result.ok and result.log_lines("HUNGUP"), result.report()
    wait_call(idle_door, "idle")


def test_no_common_codec_is_488(kam: Kamailio, peer_set: PeerSet, idle_door):
    result = peer_set.sipp.run(
        "uac_invite_expect_reject",
        kam.address("udp"),
        service="door",
        variables={"from_host": "127.0.0.1", "codec": "18"},  # G.729 only
        timeout=10,
    )
    assert result.log_lines("REJECTED status=488"), result.report()
    assert status(idle_door)["call"] == "idle"


def test_options_lists_what_porch_does(peer_set: PeerSet, idle_door):
    result = peer_set.sipp.run("uac_options_check", door_address(idle_door), timeout=10)
    assert result.ok, result.report()
    line = result.log_lines("OPTIONS allow=")[0]
    for method in ("INVITE", "ACK", "CANCEL", "BYE", "INFO", "UPDATE", "PRACK", "OPTIONS"):
        assert method in line
    assert "application/dtmf-relay" in line and "100rel" in line and "timer" in line


def test_cancel_race_ends_cleanly(kam: Kamailio, peer_set: PeerSet, idle_door):
    # porch answers at once, so the CANCEL races its 200: every outcome must end cleanly.
    for cancel_ms in (0, 100):
        result = peer_set.sipp.run(
            "uac_invite_cancel",
            kam.address("udp"),
            service="door",
            variables={"from_host": "127.0.0.1", "cancel_ms": cancel_ms},
            timeout=10,
        )
        assert result.ok, result.report()
        assert result.log_lines("OUTCOME "), result.report()
        wait_call(idle_door, "idle")


def test_reliable_provisional_when_the_caller_requires_100rel(
    kam: Kamailio, peer_set: PeerSet, idle_door
):
    result = peer_set.sipp.run(
        "uac_100rel",
        kam.address("udp"),
        service="door",
        variables={"from_host": "127.0.0.1"},
        duration_ms=300,
        timeout=10,
    )
    assert result.ok, result.report()
    assert result.log_lines("RELIABLE 180 rseq=1"), result.report()


CANCEL_BEFORE_PRACK = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="UAC: INVITE requiring 100rel, CANCEL instead of PRACK">
  <send retrans="500">
    <![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "sipp" <sip:sipp@127.0.0.1>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:sipp@[local_ip]:[local_port]>
      Max-Forwards: 70
      Supported: 100rel
      Require: 100rel
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=sipp 1 1 IN IP4 [local_ip]
      s=-
      c=IN IP4 [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" rrs="true"><action><log message="RINGING"/></action></recv>
  <send>
    <![CDATA[
      CANCEL sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      [last_Via:]
      From: "sipp" <sip:sipp@127.0.0.1>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 CANCEL
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <recv response="180" optional="true"/>
  <recv response="200"><action><log message="CANCEL 200"/></action></recv>
  <recv response="180" optional="true"/>
  <recv response="487"><action><log message="INVITE 487"/></action></recv>
  <send>
    <![CDATA[
      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-2]
      From: "sipp" <sip:sipp@127.0.0.1>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <timewait milliseconds="300"/>
</scenario>
"""


def test_cancel_while_the_answer_waits_for_prack(
    kam: Kamailio, peer_set: PeerSet, idle_door, tmp_path
):
    """porch answers a 100rel caller only after the PRACK: a CANCEL in that window is
    taken (200 to the CANCEL, 487 to the INVITE) and the door goes back to idle."""
    seq = idle_door.last_seq()
    scenario = tmp_path / "uac_cancel_before_prack.xml"
    scenario.write_text(CANCEL_BEFORE_PRACK)
    result = peer_set.sipp.run(scenario, kam.address("udp"), service="door", timeout=10)
    assert result.ok, result.report()
    assert result.log_lines("INVITE 487"), result.report()
    wait_call(idle_door, "idle")
    states = [e["state"] for e in events(idle_door, "call", seq)]
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
    reply = raw_exchange(door_address(idle_door), data)
    assert reply is not None and reply.startswith(f"SIP/2.0 {status} ".encode()), reply


def test_garbage_is_dropped_and_the_door_keeps_working(peer_set: PeerSet, idle_door):
    for junk in (b"\x00\x01garbage", b"HELLO\r\n\r\n", b"SIP/2.0 200 OK\r\n\r\n", b"\r\n\r\n"):
        assert raw_exchange(door_address(idle_door), junk, timeout=0.3) is None
    result = peer_set.sipp.run("uac_options_check", door_address(idle_door), timeout=10)
    assert result.ok, result.report()
    assert "Traceback" not in idle_door.log()


def test_peer_to_peer_door_answers_direct_calls(peer_set: PeerSet, tmp_path):
    sip_port = free_port()
    porch = start_porch(tmp_path, {"sip": {"listen": f"127.0.0.1:{sip_port}"}})
    porch.setup()
    try:
        assert status(porch)["registration"] == "disabled"
        result = peer_set.sipp.run(
            "uac_call", ("127.0.0.1", sip_port), service="door", duration_ms=500, timeout=10
        )
        assert result.ok and result.log_lines("HUNGUP"), result.report()
        answer = next(m for m in result.received("SIP/2.0 200") if "INVITE\r\n" in m)
        assert "Contact: <sip:door@127.0.0.1:" in answer
        assert "m=audio " in answer and "a=rtpmap:0 PCMU/8000" in answer
    finally:
        assert porch.stop()[0] == 0
