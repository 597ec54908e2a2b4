"""Door hardware through gpiozero: call button, relay, LEDs, door contact, exit button, tamper.

gpiozero calls back on its own threads (edge detection, hold timers). Those
threads never touch loop objects: every input event is handed to the asyncio
loop with ``call_soon_threadsafe``.

The relay is the one output that can hurt: a door left unlocked. It starts
off, is forced off on close, and every pulse has two ends: the normal end on
the event loop, and a hard cap (unlock_seconds + 0.5 s) on a thread timer of
its own, so a stalled loop still cannot keep the door open.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from gpiozero import LED, Button, Device, DigitalOutputDevice
from gpiozero.pins.mock import MockFactory

log = logging.getLogger(__name__)

RELAY_CAP_MARGIN = 0.5
DEBOUNCE_SECONDS = 0.03
INPUT_NAMES = ("button", "exit_button", "door_contact", "tamper")
LED_NAMES = ("led_ready", "led_call")
LedMode = Literal["off", "on", "blink", "fast"]
BLINK_PERIODS = {"blink": (0.5, 0.5), "fast": (0.1, 0.1)}


@dataclass(frozen=True)
class Pins:
    """BCM pin numbers and electrical options for one board."""

    button: int
    relay: int
    led_ready: int | None
    led_call: int | None
    door_contact: int | None
    exit_button: int | None
    tamper: int | None
    relay_active_high: bool = True
    inputs_pull_up: bool = True
    button_hold_seconds: float = 2.0


InputHandler = Callable[[str, bool], None]
"""Called on the loop with (input name, active); 'button_held' for a long press."""


def make_pin_factory(sim: bool) -> Any:
    """MockFactory in simulation; otherwise gpiozero's own choice (lgpio on a Pi)."""
    if sim:
        return MockFactory()
    return None


class RelayGuard:
    """The relay with a pulse that extends but never outlives its hard cap."""

    def __init__(
        self,
        device: DigitalOutputDevice,
        loop: asyncio.AbstractEventLoop,
        on_change: Callable[[bool], None],
    ) -> None:
        self._device = device
        self._loop = loop
        self._on_change = on_change
        self._lock = threading.Lock()
        self._off_handle: asyncio.TimerHandle | None = None
        self._cap_timer: threading.Timer | None = None
        self._on_since: float | None = None
        self._cap_deadline = 0.0
        self._device.off()

    @property
    def active(self) -> bool:
        return bool(self._device.value)

    def pulse(self, seconds: float) -> float:
        """Open for `seconds` from now, capped at first-on + seconds + margin.

        Returns the seconds until the relay will drop.
        """
        now = time.monotonic()
        with self._lock:
            if self._on_since is None:
                self._on_since = now
                self._cap_deadline = now + seconds + RELAY_CAP_MARGIN
                self._device.on()  # first: the door opens without waiting for a thread start
                try:
                    self._cap_timer = threading.Timer(seconds + RELAY_CAP_MARGIN, self._cap_expired)
                    self._cap_timer.daemon = True
                    self._cap_timer.start()
                except BaseException:
                    # no hard cap, no pulse: a door must never stay open unguarded
                    self._device.off()
                    self._on_since = None
                    self._cap_timer = None
                    raise
                changed = True
            else:
                changed = False
            end = min(now + seconds, self._cap_deadline)
        if self._off_handle is not None:
            self._off_handle.cancel()
        self._off_handle = self._loop.call_later(max(0.0, end - now), self.release)
        if changed:
            self._on_change(True)
        return end - now

    def release(self) -> None:
        """Relay off now (pulse end, shutdown, or a config change)."""
        if self._off_handle is not None:
            self._off_handle.cancel()
            self._off_handle = None
        if self._drop():
            self._on_change(False)

    def _drop(self) -> bool:
        with self._lock:
            was_on = self._on_since is not None
            self._device.off()
            self._on_since = None
            if self._cap_timer is not None:
                self._cap_timer.cancel()
                self._cap_timer = None
        return was_on

    def _cap_expired(self) -> None:
        # Runs on the timer thread: drop the relay here, tell the loop after.
        if self._drop():
            log.error("relay hard cap reached: forced off outside the event loop")
            try:
                self._loop.call_soon_threadsafe(self._cap_reported)
            except RuntimeError:
                pass  # loop already closed; the relay is off, which is what matters

    def _cap_reported(self) -> None:
        if self._off_handle is not None:
            self._off_handle.cancel()
            self._off_handle = None
        self._on_change(False)

    def close(self) -> None:
        self.release()
        self._device.close()


class DoorIO:
    """All door-side GPIO of one board, events delivered on the asyncio loop."""

    def __init__(
        self,
        pins: Pins,
        loop: asyncio.AbstractEventLoop,
        on_input: InputHandler,
        *,
        sim: bool,
        on_relay: Callable[[bool], None] = lambda active: None,
    ) -> None:
        self.pins = pins
        self.sim = sim
        self._loop = loop
        self._on_input = on_input
        self._factory = make_pin_factory(sim)
        factory_kw: dict[str, Any] = {"pin_factory": self._factory} if sim else {}
        pull_up = pins.inputs_pull_up
        self._inputs: dict[str, Button] = {}
        self._led_modes: dict[str, LedMode] = dict.fromkeys(LED_NAMES, "off")
        self._leds: dict[str, LED] = {}
        self._closed = False
        self._delivered: dict[str, bool] = {}  # debounce: last state handed on, per input
        self._quiet_until: dict[str, float] = {}
        self._settle_checks: dict[str, asyncio.TimerHandle] = {}
        try:
            relay = DigitalOutputDevice(
                pins.relay, active_high=pins.relay_active_high, initial_value=False, **factory_kw
            )
            self.relay = RelayGuard(relay, loop, on_relay)
            for name in LED_NAMES:
                if getattr(pins, name) is not None:  # None: not fitted on this door
                    self._leds[name] = LED(getattr(pins, name), initial_value=False, **factory_kw)
            for name in INPUT_NAMES:
                if getattr(pins, name) is None:
                    continue
                button = Button(
                    getattr(pins, name),
                    pull_up=pull_up,
                    bounce_time=DEBOUNCE_SECONDS,
                    hold_time=pins.button_hold_seconds,
                    **factory_kw,
                )
                button.when_pressed = self._threadsafe(name, True)
                button.when_released = self._threadsafe(name, False)
                if name == "button":
                    button.when_held = self._threadsafe("button_held", True)
                self._inputs[name] = button
        except Exception:
            self.close()
            raise

    def _threadsafe(self, name: str, active: bool) -> Callable[[], None]:
        handle = self._on_input if name == "button_held" else self._edge

        def deliver() -> None:
            if self._closed:
                return
            try:
                self._loop.call_soon_threadsafe(handle, name, active)
            except RuntimeError:
                pass  # the loop is gone: we are shutting down

        return deliver

    # Contacts chatter for a few ms. Not every pin factory debounces (MockFactory, some
    # native ones), so the loop side does too: the first edge goes through at once (no
    # added latency), edges in the next DEBOUNCE_SECONDS are ignored, and when that quiet
    # time ends the pin's settled state is delivered if it differs from the last one.

    def _edge(self, name: str, active: bool) -> None:
        if self._closed:
            return
        now = self._loop.time()
        if now < self._quiet_until.get(name, 0.0):
            if name not in self._settle_checks:
                self._settle_checks[name] = self._loop.call_at(
                    self._quiet_until[name], self._settle, name
                )
            return
        self._deliver(name, active, now)

    def _settle(self, name: str) -> None:
        self._settle_checks.pop(name, None)
        device = self._inputs.get(name)
        if self._closed or device is None:
            return
        self._deliver(name, bool(device.is_pressed), self._loop.time())

    def _deliver(self, name: str, active: bool, now: float) -> None:
        if self._delivered.get(name) == active:
            return
        self._delivered[name] = active
        self._quiet_until[name] = now + DEBOUNCE_SECONDS
        self._on_input(name, active)

    # outputs -------------------------------------------------------------

    def pulse_relay(self, seconds: float) -> float:
        return self.relay.pulse(seconds)

    def set_led(self, name: str, mode: LedMode) -> None:
        if self._led_modes.get(name) == mode:
            return
        self._led_modes[name] = mode
        led = self._leds.get(name)
        if led is None:
            return
        if mode == "on":
            led.on()
        elif mode == "off":
            led.off()
        else:
            on_time, off_time = BLINK_PERIODS[mode]
            led.blink(on_time=on_time, off_time=off_time, background=True)

    def input_active(self, name: str) -> bool:
        device = self._inputs.get(name)
        return bool(device is not None and device.is_pressed)

    def outputs(self) -> dict[str, Any]:
        """Current outputs (true = active) and the LED modes, for status and the sim API."""
        out: dict[str, Any] = {"relay": self.relay.active}
        for name in LED_NAMES:
            led = self._leds.get(name)
            out[name] = bool(led is not None and led.value)
            out[f"{name}_mode"] = self._led_modes[name]
        for name in INPUT_NAMES:
            out[f"{name}_input"] = self.input_active(name)
        return out

    # simulation ----------------------------------------------------------

    def sim_drive(self, name: str, active: bool) -> None:
        """Drive a mocked input pin the way the wiring would (sim only)."""
        if not self.sim:
            raise RuntimeError("inputs can only be driven in simulation")
        if name not in INPUT_NAMES:
            raise KeyError(name)
        if getattr(self.pins, name) is None:
            raise LookupError(f"{name} is not wired on this board (gpio.{name} = -1)")
        pin = self._factory.pin(getattr(self.pins, name))
        # Pulled-up inputs are active low: a press shorts the pin to ground.
        level_high = active != self.pins.inputs_pull_up
        if level_high:
            pin.drive_high()
        else:
            pin.drive_low()

    def sim_pin(self, name: str) -> Any:
        """The MockPin behind an input or output (sim only), for its state history."""
        if not self.sim:
            raise RuntimeError("no mock pins outside simulation")
        return self._factory.pin(getattr(self.pins, name))

    def close(self) -> None:
        """Relay off first, then release every pin."""
        self._closed = True
        for check in self._settle_checks.values():
            check.cancel()
        self._settle_checks.clear()
        relay = getattr(self, "relay", None)
        if relay is not None:
            relay.close()
        for device in [*self._inputs.values(), *self._leds.values()]:
            try:
                device.close()
            except Exception as exc:  # closing must reach every device
                log.warning("gpio: closing %s failed: %s", device, exc)
        self._inputs.clear()
        self._leds.clear()
        if self._factory is not None:
            self._factory.close()


def reset_default_factory() -> None:
    """Forget gpiozero's global pin factory (tests create several boards)."""
    Device.pin_factory = None
