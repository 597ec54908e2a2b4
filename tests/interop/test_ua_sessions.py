"""Inside a call: hold and resume (re-INVITE, UPDATE), codec change, session timers asked
for by the caller, and whole calls surviving lost datagrams.

A peer-to-peer porch (no registrar: it answers direct calls) serves the module. Loss is
made by `LossyRelay`, a UDP relay between SIPp and porch that drops the first copies of
chosen messages, so every retransmission path is taken, deterministically.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from peers import PeerSet, free_port, wait_until
from peers_fixtures import fixture_peer_set  # noqa: F401
from porch_harness import Porch
from porch_interop import (
    FROM_LOCAL,
    RECV_ANSWER,
    audio_sdp,
    call_states,
    events,
    first_invite,
    fixture_idle_door,  # noqa: F401
    fixture_run_porch,  # noqa: F401
    in_dialog,
    press,
    scenario_file,
    serve_door,
    sip_address,
    sipp_call,
    uac_scenario,
    wait_call,
)

pytestmark = pytest.mark.interop

CODEC_CHANGE_UAC = uac_scenario(
    "UAC: call with PCMU, then re-INVITE offering PCMA only",
    first_invite(FROM_LOCAL, sdp=audio_sdp(1, "0 PCMU/8000")),
    RECV_ANSWER,
    in_dialog("ACK", 1, FROM_LOCAL),
    '<pause milliseconds="300"/>',
    in_dialog("INVITE", 2, FROM_LOCAL, sdp=audio_sdp(2, "8 PCMA/8000")),
    '<recv response="100" optional="true"/>',
    """<recv response="200">
    <action>
      <ereg regexp="m=audio [0-9]+ RTP/AVP ([0-9]+)" search_in="body" check_it="true"
            assign_to="m_x,pt"/>
      <log message="REOFFER answer pt=[$pt]"/>
    </action>
  </recv>""",
    in_dialog("ACK", 2, FROM_LOCAL),
    '<pause milliseconds="300"/>',
    in_dialog("BYE", 3, FROM_LOCAL),
    '<recv response="200"/>',
    '<Reference variables="m_x"/>',
)

LATE_OFFER_UAC = uac_scenario(
    "UAC: INVITE without SDP, answer in the ACK",
    first_invite(FROM_LOCAL),
    '<recv response="100" optional="true"/>',
    '<recv response="180" optional="true"/>',
    """<recv response="200" rrs="true">
    <action>
      <ereg regexp="a=rtpmap:8 PCMA/8000" search_in="body" check_it="true" assign_to="offer"/>
      <log message="OFFER in 200 has [$offer]"/>
    </action>
  </recv>""",
    in_dialog("ACK", 1, FROM_LOCAL, sdp=audio_sdp(1, "8 PCMA/8000")),
    '<pause milliseconds="500"/>',
    in_dialog("BYE", 2, FROM_LOCAL),
    '<recv response="200"/>',
)


@pytest.fixture(scope="module")
def door(tmp_path_factory) -> Iterator[Porch]:
    """A peer-to-peer door (no registrar) for the module."""
    yield from serve_door(tmp_path_factory.mktemp("door"), {})


@pytest.mark.parametrize(
    "scenario,hold_dir,answer",
    [
        ("uac_reinvite_hold", "sendonly", "recvonly"),
        ("uac_reinvite_hold", "inactive", "inactive"),
        ("uac_update_hold", "sendonly", "recvonly"),
    ],
)
def test_caller_holds_and_resumes(peer_set: PeerSet, idle_door, scenario, hold_dir, answer):
    result = sipp_call(
        peer_set, idle_door, scenario, hold_dir=hold_dir, duration_ms=500, timeout=15
    )
    assert result.ok, result.report()
    assert result.log_lines(f"HOLD answer={answer}"), result.report()
    assert result.log_lines("RESUME answer=sendrecv"), result.report()
    assert result.log_lines("HUNGUP")


def test_reoffer_changes_the_codec(peer_set: PeerSet, idle_door, tmp_path):
    seq = idle_door.last_seq()
    scenario = scenario_file(tmp_path, "uac_codec_change", CODEC_CHANGE_UAC)
    result = sipp_call(peer_set, idle_door, scenario, timeout=15)
    assert result.ok, result.report()
    assert result.log_lines("REOFFER answer pt=8"), result.report()
    media = wait_until(lambda: events(idle_door, "call_media", seq), 5)
    assert media and media[-1]["codec"] == "PCMA", media


def test_invite_without_sdp_gets_an_offer_and_the_ack_answers(
    peer_set: PeerSet, idle_door, tmp_path
):
    seq = idle_door.last_seq()
    scenario = scenario_file(tmp_path, "uac_late_offer", LATE_OFFER_UAC)
    result = sipp_call(peer_set, idle_door, scenario, timeout=15)
    assert result.ok, result.report()
    assert result.log_lines("OFFER in 200 has a=rtpmap:8 PCMA/8000"), result.report()
    media = wait_until(lambda: events(idle_door, "call_media", seq), 5)
    # porch offered its codecs (G.722 first); the answer in the ACK chose PCMA
    assert media and media[-1]["codec"] == "PCMA" and media[-1]["sent"] > 5, media


def test_session_timer_asked_by_the_caller(peer_set: PeerSet, idle_door):
    result = sipp_call(
        peer_set, idle_door, "uac_session_timer", se_value=120, duration_ms=300, timeout=15
    )
    assert result.ok, result.report()
    lines = [ln.replace("= ", "=") for ln in result.log.splitlines()]
    assert any(ln.startswith("ANSWERED session-expires=120;refresher=uac") for ln in lines), lines
    assert any(ln.startswith("REFRESH UPDATE session-expires=120") for ln in lines), lines
    assert any(ln.startswith("REFRESH INVITE session-expires=120") for ln in lines), lines


def test_too_short_session_interval_is_422(peer_set: PeerSet, idle_door):
    result = sipp_call(peer_set, idle_door, "uac_session_timer", se_value=30)
    assert not result.ok
    assert any(m.startswith("SIP/2.0 422 ") for m in result.received("SIP/2.0")), result.report()
    assert "Min-SE: 90" in result.received("SIP/2.0 422")[0]


# --------------------------------------------------------------------------- loss


class LossyRelay:
    """UDP relay between porch and one peer that drops the first copies of chosen messages.

    Datagrams from porch go to `peer` (learnt from the first datagram of anyone else when
    not given); all others go to porch, with `;rport` added to their top Via so that porch's
    answers come back through the relay too. `drop` maps a message kind ("INVITE", "ACK",
    "200 INVITE", "180 INVITE" ...) to how many of its first copies are lost.
    """

    def __init__(
        self, porch: tuple[str, int], drop: dict[str, int], peer: tuple[str, int] | None = None
    ):
        self.porch = porch
        self.peer = peer
        self.drop = dict(drop)
        self.dropped: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.address = self.sock.getsockname()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def kind(data: bytes) -> str:
        first, _, rest = data.partition(b"\r\n")
        words = first.decode(errors="replace").split()
        if not words:
            return ""
        if words[0] != "SIP/2.0":
            return words[0]
        cseq = next((ln for ln in rest.split(b"\r\n") if ln.lower().startswith(b"cseq:")), b"")
        return f"{words[1]} {cseq.decode(errors='replace').split()[-1]}"

    @staticmethod
    def with_rport(data: bytes) -> bytes:
        head, sep, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        for i, line in enumerate(lines):
            if line.lower().startswith(b"via:") and b"rport" not in line:
                lines[i] = line + b";rport"
                break
        return b"\r\n".join(lines) + sep + body

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if addr == self.porch:
                dest = self.peer
            else:
                self.peer = self.peer or addr
                dest = self.porch
                if not data.startswith(b"SIP/2.0"):
                    data = self.with_rport(data)
            kind = self.kind(data)
            if self.drop.get(kind, 0) > 0:
                self.drop[kind] -= 1
                self.dropped.append(kind)
                continue
            if dest is not None:
                self.sock.sendto(data, dest)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def test_incoming_call_survives_lost_datagrams(peer_set: PeerSet, idle_door):
    """The first INVITE, 200, ACK, BYE and BYE's 200 are all lost once: SIPp's and porch's
    retransmissions (2xx until ACK, responses to retransmitted requests) carry the call."""
    seq = idle_door.last_seq()
    drop = {"INVITE": 1, "200 INVITE": 1, "ACK": 1, "BYE": 1, "200 BYE": 1}
    relay = LossyRelay(sip_address(idle_door), drop)
    try:
        result = sipp_call(
            peer_set,
            idle_door,
            "uac_call",
            duration_ms=300,
            timeout=20,
            extra=("-rsa", f"127.0.0.1:{relay.address[1]}"),
        )
    finally:
        relay.close()
    assert result.ok and result.log_lines("HUNGUP"), result.report()
    assert sorted(relay.dropped) == sorted(drop), relay.dropped
    assert len(result.sent("INVITE")) == 2 and len(result.sent("BYE")) >= 2
    assert call_states(idle_door, seq) == ["connected"]
    wait_call(idle_door, "idle", 5)


def test_outgoing_call_survives_lost_datagrams(peer_set: PeerSet, run_porch):
    """porch's INVITE and the callee's 180 and 200 are lost once: porch's timer A resends
    the INVITE, the callee resends its 200, and the call is set up and ended normally."""
    phone = peer_set.sipp.start("uas_answer", variables={"ring_ms": 200}, timeout=20)
    sip_port = free_port()
    drop = {"INVITE": 1, "180 INVITE": 1, "200 INVITE": 1}
    relay = LossyRelay(("127.0.0.1", sip_port), drop, peer=phone.address)
    try:
        porch = run_porch(
            {
                "sip": {"listen": f"127.0.0.1:{sip_port}"},
                "call": {"targets": [f"sip:flat@127.0.0.1:{relay.address[1]}"]},
            }
        )
        press(porch)
        wait_call(porch, "connected")
        porch.request("POST", "/api/hangup")
        result = phone.wait(10)
        assert result.ok and result.log_lines("BYE received"), result.report()
        assert sorted(relay.dropped) == sorted(drop), relay.dropped
        assert len(result.received("INVITE")) == 1  # the first copy never arrived
        assert porch.stop()[0] == 0
    finally:
        relay.close()
