"""The DTMF code matcher: digits in, unlock / wrong / ignored decisions out (sans-IO).

Rules (SPEC 6): the door opens as soon as the digits typed since the last
clear equal a configured code; ``*`` clears; ``#``, or a digit that makes the
entry longer than the longest code, counts one wrong code and clears. Wrong
codes are counted across sources and calls; after `lockout_attempts` in a row
every code is locked out for `lockout_seconds`. The same digit arriving by two
methods at once (RFC 4733 and SIP INFO for one key press) counts once.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

DUPLICATE_WINDOW = 0.6
"""Seconds within which the same digit from a different method is the same key press."""


class Outcome(Enum):
    PENDING = "pending"  # digit taken, entry not complete
    CLEARED = "cleared"  # '*'
    UNLOCK = "unlock"  # entry equals a code
    WRONG = "wrong"  # '#' or too long: one wrong code
    LOCKED_OUT = "locked_out"  # this wrong code started a lockout
    IGNORED_LOCKOUT = "ignored_lockout"  # digit typed during the lockout
    DUPLICATE = "duplicate"  # same key press by a second method
    NO_CODES = "no_codes"  # nothing configured: digits mean nothing
    INVALID = "invalid"  # not a DTMF symbol


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    digit: str
    source: str
    wrong_count: int
    lockout_remaining: float = 0.0
    code_index: int | None = None


DTMF_SYMBOLS = frozenset("0123456789*#ABCD")


class CodeMatcher:
    """Collects digits and decides; the caller passes the time in."""

    def __init__(
        self,
        codes: list[str],
        *,
        lockout_attempts: int = 5,
        lockout_seconds: float = 60.0,
    ) -> None:
        self.lockout_attempts = lockout_attempts
        self.lockout_seconds = lockout_seconds
        self.wrong_count = 0
        self._locked_until = 0.0
        self._entry = ""
        self._last: tuple[str, str, float] | None = None
        self.set_codes(codes)

    def set_codes(self, codes: list[str]) -> None:
        """New codes (live config change); the current entry is dropped."""
        self._codes = list(codes)
        self._longest = max((len(c) for c in codes), default=0)
        self._entry = ""

    def clear(self) -> None:
        """Start a fresh entry (a call starts or ends); the wrong count stays."""
        self._entry = ""
        self._last = None

    def locked_out(self, now: float) -> bool:
        return now < self._locked_until

    def feed(self, digit: str, source: str, now: float) -> Decision:
        digit = digit.upper()

        def decide(outcome: Outcome, **extra: object) -> Decision:
            return Decision(outcome, digit, source, self.wrong_count, **extra)  # type: ignore[arg-type]

        if digit not in DTMF_SYMBOLS:
            return decide(Outcome.INVALID)
        if self._is_duplicate(digit, source, now):
            return decide(Outcome.DUPLICATE)
        self._last = (digit, source, now)
        if not self._codes:
            return decide(Outcome.NO_CODES)
        if self.locked_out(now):
            return decide(Outcome.IGNORED_LOCKOUT, lockout_remaining=self._locked_until - now)
        if digit == "*":
            self._entry = ""
            return decide(Outcome.CLEARED)
        if digit == "#" or digit in "ABCD":
            return self._wrong(digit, source, now)
        self._entry += digit
        if self._entry in self._codes:
            index = self._codes.index(self._entry)
            self._entry = ""
            self.wrong_count = 0
            return decide(Outcome.UNLOCK, code_index=index)
        if len(self._entry) > self._longest:
            return self._wrong(digit, source, now)
        return decide(Outcome.PENDING)

    def _wrong(self, digit: str, source: str, now: float) -> Decision:
        self._entry = ""
        self.wrong_count += 1
        if self.wrong_count >= self.lockout_attempts:
            self._locked_until = now + self.lockout_seconds
            count = self.wrong_count
            self.wrong_count = 0
            return Decision(
                Outcome.LOCKED_OUT, digit, source, count, lockout_remaining=self.lockout_seconds
            )
        return Decision(Outcome.WRONG, digit, source, self.wrong_count)

    def _is_duplicate(self, digit: str, source: str, now: float) -> bool:
        if self._last is None:
            return False
        last_digit, last_source, last_time = self._last
        return digit == last_digit and source != last_source and now - last_time < DUPLICATE_WINDOW
