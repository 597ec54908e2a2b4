"""Door hardware through gpiozero's MockFactory: relay pulses and caps, inputs on the loop."""

import asyncio
import threading
import time

import pytest
from porch_harness import high_periods

from porch.drivers.gpio import RELAY_CAP_MARGIN, DoorIO, Pins

PINS = Pins(
    button=17,
    relay=27,
    led_ready=22,
    led_call=23,
    door_contact=24,
    exit_button=25,
    tamper=5,
    button_hold_seconds=0.5,
)


def run(coro):
    return asyncio.run(coro)


def make(loop, events=None, relay_events=None) -> DoorIO:
    events = events if events is not None else []
    return DoorIO(
        PINS,
        loop,
        lambda name, active: events.append((name, active, threading.get_ident())),
        sim=True,
        on_relay=(relay_events.append if relay_events is not None else lambda a: None),
    )


def test_relay_starts_off_and_pulses_for_the_given_time():
    async def main():
        door = make(asyncio.get_running_loop())
        relay_pin = door.sim_pin("relay")
        assert relay_pin.state is False
        door.pulse_relay(0.4)
        assert door.relay.active
        await asyncio.sleep(0.7)
        assert not door.relay.active
        periods = high_periods(relay_pin.states)
        door.close()
        return periods

    periods = run(main())
    assert len(periods) == 1
    assert periods[0] == pytest.approx(0.4, abs=0.1)


def test_second_pulse_extends_but_never_beyond_the_cap():
    async def main():
        relay_events = []
        door = make(asyncio.get_running_loop(), relay_events=relay_events)
        door.pulse_relay(0.4)
        await asyncio.sleep(0.2)
        door.pulse_relay(0.4)  # would end at 0.6, within the cap of 0.9: extended
        await asyncio.sleep(0.3)
        assert door.relay.active  # 0.5 s in: still open thanks to the extension
        door.pulse_relay(0.4)  # would end at 0.9 ... cap is first-on + 0.4 + 0.5 = 0.9
        await asyncio.sleep(0.3)
        door.pulse_relay(0.4)  # would end at 1.2: capped at 0.9
        await asyncio.sleep(0.6)
        periods = high_periods(door.sim_pin("relay").states)
        door.close()
        return periods, relay_events

    periods, relay_events = run(main())
    assert len(periods) == 1
    assert periods[0] <= 0.4 + RELAY_CAP_MARGIN + 0.05
    assert periods[0] >= 0.8
    assert relay_events == [True, False]


def test_hard_cap_holds_even_when_the_loop_is_stuck():
    async def main():
        door = make(asyncio.get_running_loop())
        door.pulse_relay(0.2)
        time.sleep(1.2)  # the loop cannot run its own off timer now
        still_on = door.relay.active
        periods = high_periods(door.sim_pin("relay").states)
        door.close()
        return still_on, periods

    still_on, periods = run(main())
    assert not still_on
    assert len(periods) == 1 and periods[0] <= 0.2 + RELAY_CAP_MARGIN + 0.1


def test_inputs_arrive_on_the_loop_thread():
    async def main():
        events = []
        door = make(asyncio.get_running_loop(), events)
        loop_thread = threading.get_ident()

        # drive the pin from another thread, as gpiozero's edge thread would
        def press():
            door.sim_drive("exit_button", True)
            time.sleep(0.05)
            door.sim_drive("exit_button", False)

        await asyncio.to_thread(press)
        await asyncio.sleep(0.05)
        door.sim_drive("door_contact", True)
        await asyncio.sleep(0.05)
        door.close()
        return events, loop_thread

    events, loop_thread = run(main())
    names = [(n, a) for n, a, _ in events]
    assert ("exit_button", True) in names and ("exit_button", False) in names
    assert ("door_contact", True) in names
    assert all(thread == loop_thread for _, _, thread in events)


def test_long_press_reports_button_held():
    async def main():
        events = []
        door = make(asyncio.get_running_loop(), events)
        door.sim_drive("button", True)
        await asyncio.sleep(0.8)
        door.sim_drive("button", False)
        await asyncio.sleep(0.05)
        door.close()
        return [(n, a) for n, a, _ in events]

    names = run(main())
    assert names[0] == ("button", True)
    assert ("button_held", True) in names


def test_close_forces_relay_off():
    async def main():
        door = make(asyncio.get_running_loop())
        pin = door.sim_pin("relay")
        door.pulse_relay(5)
        door.close()
        return pin.state

    assert run(main()) is False


def test_active_low_relay_board():
    async def main():
        pins = Pins(**{**PINS.__dict__, "relay_active_high": False})
        door = DoorIO(pins, asyncio.get_running_loop(), lambda n, a: None, sim=True)
        pin = door.sim_pin("relay")
        idle_level = pin.state
        door.pulse_relay(1)
        on_level = pin.state
        door.close()
        return idle_level, on_level

    idle_level, on_level = run(main())
    assert idle_level is True and on_level is False  # active low: off means high


def test_unfitted_inputs_and_leds_are_skipped():
    async def main():
        pins = Pins(**{**PINS.__dict__, "tamper": None, "led_call": None})
        door = DoorIO(pins, asyncio.get_running_loop(), lambda n, a: None, sim=True)
        door.set_led("led_call", "on")  # nothing fitted: nothing to drive, no error
        outputs = door.outputs()
        with pytest.raises(LookupError):
            door.sim_drive("tamper", True)
        door.close()
        return outputs

    outputs = run(main())
    assert outputs["tamper_input"] is False and outputs["led_call"] is False


def test_relay_drops_when_its_cap_timer_cannot_start(monkeypatch):
    import porch.drivers.gpio as gpio

    class NoThreads:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("can't start new thread")

    async def main():
        door = make(asyncio.get_running_loop())
        monkeypatch.setattr(gpio.threading, "Timer", NoThreads)
        with pytest.raises(RuntimeError):
            door.pulse_relay(1.0)
        state = door.relay.active, door.sim_pin("relay").state
        door.close()
        return state

    assert run(main()) == (False, False)


def test_contact_bounce_gives_one_press():
    """A push button's contacts chatter for a few ms: one press reaches the door, not three."""

    async def main():
        events = []
        door = make(asyncio.get_running_loop(), events)

        def chatter():
            for state in (True, False, True, False, True):  # within about 5 ms
                door.sim_drive("exit_button", state)
                time.sleep(0.001)

        await asyncio.to_thread(chatter)
        await asyncio.sleep(0.1)
        door.sim_drive("exit_button", False)
        await asyncio.sleep(0.1)
        door.close()
        return [(n, a) for n, a, _ in events if n == "exit_button"]

    assert run(main()) == [("exit_button", True), ("exit_button", False)]
