"""Opening the door from a call: DTMF codes by SIP INFO (SIPp, linphonec), INFO `unlock`,
wrong codes and the lockout; all visible in /api/sim/outputs and /api/events.

One registered porch (code 2580, relay pulse 3 s, lockout after 5 wrong codes for 5 s)
behind one Kamailio serves the module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from peers import Kamailio, PeerSet, SippResult, wait_until
from peers_fixtures import fixture_module_peer_set, fixture_peer_set  # noqa: F401
from porch_harness import Porch
from porch_interop import (
    door_uri,
    events,
    fixture_kam,  # noqa: F401
    keep_idle,
    outputs,
    registered_at,
    serve_door,
    sipp_call,
    status,
    wait_call,
)

pytestmark = pytest.mark.interop

CODE = "2580"


@pytest.fixture(scope="module")
def door(kam: Kamailio, tmp_path_factory) -> Iterator[Porch]:
    codes = {"dtmf_codes": [CODE], "unlock_seconds": 3, "lockout_seconds": 5}
    yield from serve_door(tmp_path_factory.mktemp("door"), registered_at(kam, door=codes))


@pytest.fixture
def idle_door(door: Porch) -> Iterator[Porch]:
    """The door idle, out of any lockout, and shut, at the start of each test."""
    assert wait_until(lambda: not status(door)["lockout"], 10), status(door)
    assert wait_until(lambda: not outputs(door)["relay"], 5)
    yield from keep_idle(door)


def call_door(peer_set: PeerSet, kam: Kamailio, scenario: str, **variables) -> SippResult:
    """A caller of the PBX's domain calls the door and sends what `scenario` sends."""
    return sipp_call(peer_set, kam, scenario, duration_ms=200, timeout=20, **variables)


@pytest.mark.parametrize("info_type", ["relay", "dtmf"])
def test_code_by_sip_info_opens_the_door(kam, peer_set, idle_door, info_type):
    seq = idle_door.last_seq()
    result = call_door(peer_set, kam, "uac_invite_info_dtmf", digits=CODE, info_type=info_type)
    assert result.ok, result.report()
    assert result.log_lines("INFO digit=") == [f"INFO digit={d} status=200" for d in CODE]
    unlocks = events(idle_door, "unlock", seq)
    assert len(unlocks) == 1 and unlocks[0]["cause"] == "dtmf" and unlocks[0]["method"] == "info"
    assert unlocks[0]["peer"] == "sip:sipp@127.0.0.1"
    assert outputs(idle_door)["relay"] is True  # the pulse lasts 3 s


def test_info_unlock_and_its_refusal_when_switched_off(kam, peer_set, idle_door):
    seq = idle_door.last_seq()
    result = call_door(peer_set, kam, "uac_invite_info_unlock")
    assert result.log_lines("INFO unlock status=200"), result.report()
    assert [e["cause"] for e in events(idle_door, "unlock", seq)] == ["sip_info"]
    assert outputs(idle_door)["relay"] is True
    assert wait_until(lambda: not outputs(idle_door)["relay"], 5)
    # door.info_unlock = false, applied live through the API: 403, the door stays shut.
    doc = idle_door.request("GET", "/api/config")[1]
    doc["door"]["info_unlock"] = False
    assert idle_door.request("PUT", "/api/config", doc)[0] == 200
    try:
        seq = idle_door.last_seq()
        result = call_door(peer_set, kam, "uac_invite_info_unlock")
        assert result.log_lines("INFO unlock status=403"), result.report()
        assert events(idle_door, "unlock_refused", seq)
        assert not events(idle_door, "unlock", seq)
    finally:
        doc["door"]["info_unlock"] = True
        assert idle_door.request("PUT", "/api/config", doc)[0] == 200


def test_five_wrong_codes_lock_out_then_right_code_is_ignored(kam, peer_set, idle_door):
    seq = idle_door.last_seq()
    result = call_door(peer_set, kam, "uac_invite_info_dtmf", digits="1#1#1#1#1#" + CODE)
    assert result.ok, result.report()
    # every well-formed DTMF INFO in the answered call gets 200, even during the lockout
    assert all(x.endswith("status=200") for x in result.log_lines("INFO digit="))
    assert len(events(idle_door, "code_wrong", seq)) == 5
    assert events(idle_door, "lockout", seq)
    assert len(events(idle_door, "code_ignored", seq)) == len(CODE)
    assert not events(idle_door, "unlock", seq)
    assert status(idle_door)["lockout"] is True


def phone_types_the_code(
    door: Porch, kam: Kamailio, phone, answered: Callable[[int], object], method: str
) -> int:
    """`phone`, registered at the PBX, calls the door and types the code once `answered`
    (given the phone's log mark) says so: the door opens, by `method`; the phone hangs up.
    The event log's last seq before the call."""
    seq = door.last_seq()
    since = phone.mark()
    phone.dial(door_uri(kam))
    answered(since)
    wait_call(door, "connected")
    phone.send_dtmf(CODE)
    unlocked = wait_until(lambda: events(door, "unlock", seq), 10)
    assert unlocked and unlocked[0]["method"] == method, door.log()[-2000:]
    assert outputs(door)["relay"] is True
    phone.hangup()
    wait_call(door, "idle")
    return seq


def test_linphone_types_the_code_with_sip_info(kam, peer_set, idle_door):
    phone = peer_set.linphone(use_info=True, use_rfc2833=False)
    phone.register("1002", registrar=kam)
    phone_types_the_code(
        idle_door, kam, phone, lambda since: phone.wait_connected(since=since), "info"
    )


def test_baresip_types_the_code_as_rfc4733_events(kam, peer_set, idle_door):
    """baresip 1.0.0 sends DTMF only as RFC 4733 telephone-events: they come through porch's
    media session; the call's RTP figures land in the event log at the end."""
    phone = peer_set.baresip(role="caller", user="1001", registrar=kam)
    seq = phone_types_the_code(
        idle_door,
        kam,
        phone,
        lambda since: phone.wait_event("CALL_ESTABLISHED", since=since),
        "rfc4733",
    )
    media = wait_until(lambda: events(idle_door, "call_media", seq), 5)
    assert media and media[-1]["codec"] in ("PCMU", "PCMA"), media
    assert media[-1]["packets"] > 10 and media[-1]["sent"] > 10, media
