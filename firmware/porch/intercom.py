"""The door-phone policy: call states, what the button does, who may unlock, LEDs.

Drivers, the SIP user agent and the web API all talk to the door through this
one object. The SIP side sits behind the small `CallPlan` interface so that the
policy here does not know how a call is placed, only what happened to it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from porch.codes import CodeMatcher, Decision, Outcome
from porch.events import EventLog

log = logging.getLogger(__name__)

CallState = Literal["idle", "calling", "ringing", "connected"]
Registration = Literal["disabled", "registering", "registered", "failed"]
CALL_STATES: tuple[CallState, ...] = ("idle", "calling", "ringing", "connected")


class DoorOutputs(Protocol):
    """What the intercom needs from the hardware (drivers.gpio.DoorIO)."""

    def pulse_relay(self, seconds: float) -> float: ...

    def set_led(self, name: str, mode: Any) -> None: ...


class CallPlan(Protocol):
    """How calls are placed and ended; the SIP user agent implements it.

    The plan reports back through the `Intercom` methods `call_state`,
    `registration_changed`, `dtmf` and `info_unlock`.
    """

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def place_call(self, targets: list[str], strategy: str, ring_timeout: float) -> None: ...

    def hang_up(self, reason: str) -> None: ...

    def feedback(self, kind: Literal["confirm", "error"]) -> None: ...

    def media_figures(self) -> dict[str, Any] | None: ...


@dataclass
class DoorPolicy:
    """The parts of the config the intercom applies live."""

    targets: list[str]
    strategy: str
    ring_timeout: float
    button_hangup: bool
    unlock_seconds: float
    info_unlock: bool
    cards: list[str]


class Intercom:
    """Idle / calling / ringing / connected, unlocks and the LEDs that show them."""

    def __init__(
        self,
        policy: DoorPolicy,
        matcher: CodeMatcher,
        events: EventLog,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.matcher = matcher
        self.events = events
        self._clock = clock
        self.door: DoorOutputs | None = None
        self.plan: CallPlan | None = None
        self.call: CallState = "idle"
        self.peer: str | None = None
        self.registration: Registration = "disabled"
        self.registration_reason = ""
        self.door_unlocked = False
        self.door_open: bool | None = None
        self.tampered = False
        self._call_started = 0.0
        self._listeners: list[Callable[[], None]] = []

    # wiring ---------------------------------------------------------------

    def attach(self, door: DoorOutputs | None, plan: CallPlan | None) -> None:
        self.door = door
        self.plan = plan
        self._update_leds()

    def on_change(self, listener: Callable[[], None]) -> None:
        """Called after any status change (systemd STATUS=, web page)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        self._update_leds()
        for listener in self._listeners:
            listener()

    def status(self) -> dict[str, Any]:
        return {
            "registration": self.registration,
            "registration_reason": self.registration_reason,
            "call": self.call,
            "door": "unlocked" if self.door_unlocked else "locked",
            "door_open": self.door_open,
            "tamper": self.tampered,
            "peer": self.peer,
            "lockout": self.matcher.locked_out(self._clock()),
            "media": self.plan.media_figures() if self.plan is not None else None,
        }

    # inputs ---------------------------------------------------------------

    def on_input(self, name: str, active: bool) -> None:
        """A GPIO input changed (delivered on the loop by the driver)."""
        if name == "button" and active:
            self.button_pressed()
        elif name == "button_held":
            self.button_held()
        elif name == "exit_button" and active:
            self.unlock("exit_button")
        elif name == "door_contact":
            self.door_open = active
            self.events.append("door", open=active)
            self._changed()
        elif name == "tamper":
            if active != self.tampered:
                self.tampered = active
                self.events.append("tamper", active=active)
                if active:
                    log.warning("tamper switch triggered")
                self._changed()

    def button_pressed(self, source: str = "button") -> None:
        """Call when idle; cancel when calling; per config while connected."""
        if self.call == "idle":
            self.start_call(source)
        elif self.call in ("calling", "ringing"):
            self.hang_up(f"{source}: cancelled")
        elif self.policy.button_hangup:
            self.hang_up(f"{source}: hang up")
        else:
            log.info("call button ignored while connected")

    def button_held(self) -> None:
        if self.call in ("calling", "ringing"):
            self.hang_up("button held: cancelled")

    def start_call(self, source: str) -> bool:
        if self.call != "idle":
            return False
        targets = list(self.policy.targets)
        self.events.append("call_request", source=source, targets=targets)
        if not targets:
            self.events.append("call_failed", reason="no call.targets configured")
            log.warning("call requested but call.targets is empty")
            return False
        if self.plan is None:
            self.events.append("call_failed", reason="no call plan")
            return False
        self.plan.place_call(targets, self.policy.strategy, self.policy.ring_timeout)
        return True

    def hang_up(self, reason: str) -> bool:
        if self.call == "idle" or self.plan is None:
            return False
        self.plan.hang_up(reason)
        return True

    # reports from the call plan -------------------------------------------

    def call_state(self, state: CallState, peer: str | None = None, reason: str = "") -> None:
        if state == self.call and peer == self.peer:
            return
        previous = self.call
        self.call = state
        if state == "idle":
            duration = self._clock() - self._call_started if previous == "connected" else 0.0
            self.events.append(
                "call_end", peer=self.peer, reason=reason, duration=round(duration, 1)
            )
            self.peer = None
            self.matcher.clear()
        else:
            if previous == "idle":
                self.matcher.clear()
            if state == "connected":
                self._call_started = self._clock()
            self.peer = peer if peer is not None else self.peer
            self.events.append("call", state=state, peer=self.peer)
        self._changed()

    def registration_changed(self, state: Registration, reason: str = "") -> None:
        if state == self.registration and reason == self.registration_reason:
            return
        self.registration = state
        self.registration_reason = reason
        self.events.append("registration", state=state, reason=reason)
        self._changed()

    def dtmf(self, digit: str, source: str) -> Decision | None:
        """A digit from an answered call (RFC 4733, SIP INFO or in-band)."""
        if self.call != "connected":
            log.info("DTMF %r from %s ignored: no answered call", digit, source)
            return None
        return self._code_digit(digit, source, "dtmf")

    def keypad(self, key: str) -> Decision:
        """A key from the door's keypad (serial reader): the same codes and lockout."""
        return self._code_digit(key, "keypad", "keypad")

    def _code_digit(self, digit: str, method: str, cause: str) -> Decision:
        decision = self.matcher.feed(digit, method, self._clock())
        outcome = decision.outcome
        if outcome is Outcome.UNLOCK:
            self.unlock(cause, method=method, peer=self.peer)
            self._feedback("confirm")
        elif outcome in (Outcome.WRONG, Outcome.LOCKED_OUT):
            self.events.append(
                "code_wrong", method=method, peer=self.peer, count=decision.wrong_count
            )
            if outcome is Outcome.LOCKED_OUT:
                self.events.append("lockout", seconds=self.matcher.lockout_seconds, peer=self.peer)
                log.warning("codes locked out for %.0f s", self.matcher.lockout_seconds)
                self._changed()
            self._feedback("error")
        elif outcome is Outcome.IGNORED_LOCKOUT:
            self.events.append(
                "code_ignored",
                method=method,
                peer=self.peer,
                lockout_remaining=round(decision.lockout_remaining, 1),
            )
            self._feedback("error")
        return decision

    def info_unlock(self) -> bool:
        """A SIP INFO `unlock` inside the answered dialog: True if the door opened."""
        if self.call != "connected" or not self.policy.info_unlock:
            self.events.append("unlock_refused", cause="sip_info", peer=self.peer)
            return False
        self.unlock("sip_info", peer=self.peer)
        self._feedback("confirm")
        return True

    def card(self, card_id: str) -> bool:
        """A card read by the serial reader."""
        if card_id in self.policy.cards:
            self.unlock("card", card=card_id)
            return True
        self.events.append("card_denied", card=card_id)
        return False

    # the door -------------------------------------------------------------

    def unlock(self, cause: str, **detail: Any) -> float:
        """Pulse the relay for door.unlock_seconds and log why. Returns the seconds open."""
        if self.door is None:
            self.events.append("unlock_failed", cause=cause, reason="no door hardware", **detail)
            return 0.0
        seconds = self.door.pulse_relay(self.policy.unlock_seconds)
        self.events.append("unlock", cause=cause, seconds=round(seconds, 2), **detail)
        log.info("door unlocked by %s for %.1f s", cause, seconds)
        return seconds

    def relay_changed(self, active: bool) -> None:
        self.door_unlocked = active
        if not active:
            self.events.append("relock")
        self._changed()

    def _feedback(self, kind: Literal["confirm", "error"]) -> None:
        if self.plan is not None and self.call == "connected":
            self.plan.feedback(kind)

    def _update_leds(self) -> None:
        if self.door is None:
            return
        ready = {"registered": "on", "disabled": "on", "registering": "blink", "failed": "fast"}
        self.door.set_led("led_ready", ready[self.registration])
        if self.door_unlocked:
            call_led = "fast"
        elif self.call == "connected":
            call_led = "on"
        elif self.call in ("calling", "ringing"):
            call_led = "blink"
        else:
            call_led = "off"
        self.door.set_led("led_call", call_led)
