"""The door-phone policy with a recording call plan: states, button rules, unlocks, LEDs."""

from porch.codes import CodeMatcher, Outcome
from porch.events import EventLog
from porch.intercom import DoorPolicy, Intercom


class RecordingPlan:
    """A CallPlan that records what the intercom asked of it."""

    def __init__(self):
        self.calls, self.hangups, self.feedback_tones = [], [], []
        self.figures = None

    async def start(self): ...

    async def stop(self): ...

    def place_call(self, targets, strategy, ring_timeout):
        self.calls.append((targets, strategy, ring_timeout))

    def hang_up(self, reason):
        self.hangups.append(reason)

    def feedback(self, kind):
        self.feedback_tones.append(kind)

    def media_figures(self):
        return self.figures


class Door:
    def __init__(self):
        self.pulses, self.leds = [], {}

    def pulse_relay(self, seconds):
        self.pulses.append(seconds)
        return seconds

    def set_led(self, name, mode):
        self.leds[name] = mode


def make(tmp_path, **policy):
    defaults = dict(
        targets=["sip:flat@pbx"],
        strategy="parallel",
        ring_timeout=20.0,
        button_hangup=False,
        unlock_seconds=3.0,
        info_unlock=True,
        cards=["1234"],
    )
    clock = [100.0]
    ic = Intercom(
        DoorPolicy(**{**defaults, **policy}),
        CodeMatcher(["4711"]),
        EventLog(tmp_path),
        clock=lambda: clock[0],
    )
    plan, door = RecordingPlan(), Door()
    ic.attach(door, plan)
    return ic, plan, door, clock


def types(ic):
    return [e["type"] for e in ic.events.since(0)]


def test_press_calls_press_again_cancels(tmp_path):
    ic, plan, door, _ = make(tmp_path)
    ic.on_input("button", True)
    assert plan.calls == [(["sip:flat@pbx"], "parallel", 20.0)]
    ic.call_state("calling")
    assert door.leds["led_call"] == "blink"
    ic.on_input("button", True)
    assert plan.hangups == ["button: cancelled"]


def test_long_press_cancels_a_ringing_call(tmp_path):
    ic, plan, _, _ = make(tmp_path)
    ic.on_input("button", True)
    ic.call_state("ringing", "sip:flat@pbx")
    ic.on_input("button_held", True)
    assert plan.hangups == ["button held: cancelled"]


def test_press_while_connected_is_ignored_unless_configured(tmp_path):
    ic, plan, door, _ = make(tmp_path)
    ic.call_state("connected", "sip:flat@pbx")
    assert door.leds["led_call"] == "on"
    ic.on_input("button", True)
    assert plan.hangups == [] and plan.calls == []
    ic2, plan2, _, _ = make(tmp_path / "b", button_hangup=True)
    ic2.call_state("connected", "sip:flat@pbx")
    ic2.on_input("button", True)
    assert plan2.hangups == ["button: hang up"]


def test_dtmf_code_in_an_answered_call_unlocks_with_a_confirmation_tone(tmp_path):
    ic, plan, door, clock = make(tmp_path)
    assert ic.dtmf("4", "rfc4733") is None  # not in a call: ignored
    ic.call_state("connected", "sip:flat@pbx")
    for d in "4711":
        clock[0] += 0.3
        decision = ic.dtmf(d, "rfc4733")
    assert decision.outcome is Outcome.UNLOCK
    assert door.pulses == [3.0]
    assert plan.feedback_tones == ["confirm"]
    unlock = next(e for e in ic.events.since(0) if e["type"] == "unlock")
    assert unlock["cause"] == "dtmf" and unlock["method"] == "rfc4733"


def test_wrong_codes_lock_out_and_play_error_tones(tmp_path):
    ic, plan, door, clock = make(tmp_path)
    ic.call_state("connected", "sip:flat@pbx")
    for _ in range(5):
        clock[0] += 1
        ic.dtmf("#", "info")
    assert types(ic).count("code_wrong") == 5 and "lockout" in types(ic)
    for d in "4711":
        clock[0] += 0.3
        ic.dtmf(d, "info")
    assert door.pulses == []
    assert types(ic).count("code_ignored") == 4
    assert ic.status()["lockout"] is True
    assert plan.feedback_tones == ["error"] * 9


def test_info_unlock_only_when_connected_and_enabled(tmp_path):
    ic, _, door, _ = make(tmp_path)
    assert ic.info_unlock() is False
    ic.call_state("connected", "sip:flat@pbx")
    assert ic.info_unlock() is True and door.pulses == [3.0]
    ic2, _, door2, _ = make(tmp_path / "b", info_unlock=False)
    ic2.call_state("connected", "sip:flat@pbx")
    assert ic2.info_unlock() is False and door2.pulses == []


def test_call_end_is_logged_with_duration_and_clears_the_entry(tmp_path):
    ic, _, _, clock = make(tmp_path)
    ic.call_state("calling")
    ic.call_state("connected", "sip:flat@pbx")
    ic.dtmf("4", "info")
    clock[0] += 42
    ic.call_state("idle", reason="remote BYE")
    end = next(e for e in ic.events.since(0) if e["type"] == "call_end")
    assert end["duration"] == 42.0 and end["peer"] == "sip:flat@pbx"
    assert ic.status()["peer"] is None and ic.status()["call"] == "idle"
    ic.call_state("connected", "sip:flat@pbx")
    for d in "711":  # the '4' of the last call is gone
        ic.dtmf(d, "info")
    assert "unlock" not in types(ic)


def test_registration_drives_the_ready_led(tmp_path):
    ic, _, door, _ = make(tmp_path)
    assert door.leds["led_ready"] == "on"  # peer-to-peer: ready
    ic.registration_changed("registering")
    assert door.leds["led_ready"] == "blink"
    ic.registration_changed("failed", "403 Forbidden")
    assert door.leds["led_ready"] == "fast"
    assert ic.status()["registration_reason"] == "403 Forbidden"
    ic.registration_changed("registered")
    assert door.leds["led_ready"] == "on"


def test_status_shows_the_plans_live_media_figures(tmp_path):
    ic, plan, _door, _clock = make(tmp_path)
    assert ic.status()["media"] is None
    plan.figures = {"codec": "PCMU", "packets": 50, "mos": 4.3}
    assert ic.status()["media"] == {"codec": "PCMU", "packets": 50, "mos": 4.3}
