"""Door behaviour of the running firmware: exit button, API unlock, cards, inputs, calls."""

import time

import pytest
from porch_harness import high_periods

from porch.drivers.gpio import RELAY_CAP_MARGIN


@pytest.mark.porch_config({"door": {"unlock_seconds": 1.0, "cards": ["04A1B2C3"]}})
def test_exit_button_and_api_unlock_pulse_the_relay_for_unlock_seconds(porch):
    porch.setup()
    assert porch.request("GET", "/api/sim/outputs")[1]["relay"] is False
    porch.request("POST", "/api/sim/input", {"name": "exit_button", "value": True})
    porch.request("POST", "/api/sim/input", {"name": "exit_button", "value": False})
    porch.wait_event("unlock", cause="exit_button")
    assert porch.request("GET", "/api/sim/outputs")[1]["relay"] is True
    assert porch.request("GET", "/api/status")[1]["door"] == "unlocked"
    time.sleep(1.4)
    assert porch.request("GET", "/api/sim/outputs")[1]["relay"] is False
    porch.wait_event("relock")
    status, _body, _ = porch.request("POST", "/api/door/unlock")
    assert status == 200
    porch.wait_event("unlock", cause="api")
    time.sleep(1.4)
    code, _ = porch.stop()
    assert code == 0
    periods = high_periods(porch.sim_pins()["relay_states"])
    assert len(periods) == 2
    for period in periods:
        assert period == pytest.approx(1.0, abs=0.1)


@pytest.mark.porch_config({"door": {"unlock_seconds": 1.0}})
def test_second_unlock_extends_the_pulse_but_never_beyond_the_cap(porch):
    porch.setup()
    porch.request("POST", "/api/door/unlock")
    time.sleep(0.4)
    porch.request("POST", "/api/door/unlock")  # extends to 1.4 s after the first
    time.sleep(0.8)
    assert porch.request("GET", "/api/sim/outputs")[1]["relay"] is True  # 1.2 s: extended
    porch.request("POST", "/api/door/unlock")  # would run to 2.2 s; the cap is 1.5 s
    time.sleep(1.3)
    code, _ = porch.stop()
    assert code == 0
    periods = high_periods(porch.sim_pins()["relay_states"])
    assert len(periods) == 1
    assert 1.3 <= periods[0] <= 1.0 + RELAY_CAP_MARGIN + 0.05


@pytest.mark.porch_config({"door": {"cards": ["04A1B2C3"]}})
def test_cards_tamper_and_door_contact_are_logged(porch):
    porch.setup()
    _, body, _ = porch.request("POST", "/api/sim/card", {"id": "04A1B2C3"})
    assert body["accepted"] is True
    porch.wait_event("unlock", cause="card", card="04A1B2C3")
    _, body, _ = porch.request("POST", "/api/sim/card", {"id": "DEADBEEF"})
    assert body["accepted"] is False
    porch.wait_event("card_denied", card="DEADBEEF")
    porch.request("POST", "/api/sim/input", {"name": "tamper", "value": True})
    porch.wait_event("tamper", active=True)
    assert porch.request("GET", "/api/status")[1]["tamper"] is True
    porch.request("POST", "/api/sim/input", {"name": "door_contact", "value": True})
    porch.wait_event("door", open=True)
    outputs = porch.request("GET", "/api/sim/outputs")[1]
    assert outputs["door_contact_input"] is True and outputs["tamper_input"] is True


def test_button_without_targets_logs_why_no_call(porch):
    porch.setup()
    porch.request("POST", "/api/sim/button")
    porch.wait_event("call_failed", reason="no call.targets configured")
    assert porch.request("GET", "/api/status")[1]["call"] == "idle"
    status, _body, _ = porch.request("POST", "/api/call")
    assert status == 409


@pytest.mark.porch_config({"call": {"targets": ["sip:flat@127.0.0.1:5999"], "ring_timeout": 5}})
def test_button_with_targets_reports_each_target(porch):
    porch.setup()
    porch.request("POST", "/api/sim/button")
    porch.wait_event("call_request", source="button")
    # Nobody listens there: the INVITE goes unanswered until call.ring_timeout.
    porch.wait_event("call_target_failed", target="sip:flat@127.0.0.1:5999", timeout=10)
    porch.wait_event("call_end")
    assert porch.request("GET", "/api/status")[1]["call"] == "idle"


def test_sim_endpoints_drive_leds(porch):
    porch.setup()
    outputs = porch.request("GET", "/api/sim/outputs")[1]
    # peer-to-peer (no registrar): ready LED steady on, call LED off
    assert outputs["led_ready_mode"] == "on" and outputs["led_ready"] is True
    assert outputs["led_call_mode"] == "off"
    porch.request("POST", "/api/door/unlock")
    assert porch.request("GET", "/api/sim/outputs")[1]["led_call_mode"] == "fast"


def test_serial_reader_cards_and_keypad_codes(tmp_path):
    import os
    import tty

    from porch_harness import start_porch

    master, slave = os.openpty()
    tty.setraw(slave)
    porch = start_porch(
        tmp_path,
        {
            "serial": {"reader": os.ttyname(slave)},
            "door": {"cards": ["0F00A1B2C3"], "dtmf_codes": ["2580"], "unlock_seconds": 0.5},
        },
    )
    try:
        porch.setup()
        raw = bytes.fromhex("0F00A1B2C3")
        checksum = 0
        for b in raw:
            checksum ^= b
        os.write(master, b"\x020F00A1B2C3" + f"{checksum:02X}".encode() + b"\x03")
        porch.wait_event("unlock", cause="card", card="0F00A1B2C3")
        os.write(master, b"11112222\r\n")
        porch.wait_event("card_denied", card="11112222")
        os.write(master, b"2580")  # keypad keys, no line end
        porch.wait_event("unlock", cause="keypad", method="keypad")
        status = porch.request("GET", "/api/status")[1]
        assert status["reader"]["connected"] is True
        # the six packages of the mission (and aiohttp) were imported at start, with versions
        six = {"gpiozero", "pyalsaaudio", "numpy", "webrtcvad-wheels", "pyserial", "systemd-python"}
        assert six | {"aiohttp"} <= status["components"].keys(), status["components"]
        assert all(status["components"][name] != "unknown" for name in six)
        log = porch.request("GET", "/api/events?since=0")[1]["events"]
        assert not [e for e in log if e["type"] == "error" and e.get("part") in six], log
    finally:
        code, _ = porch.stop()
        os.close(master)
        os.close(slave)
    assert code == 0
