"""Which targets to ring, when, and when to give up (SPEC 6 `call.strategy`), sans-IO.

A button press rings `call.targets` one after another ("sequential") or all at once
("parallel", first answer wins). `TargetPlan` decides only that: it is told what happened
to each attempt (ringing, answered, failed, redirected) and the time, and answers with
actions for the user agent: `Dial` an attempt, `Cancel` one, or `Finished` when the call
is over without an answer. `call.ring_timeout` counts from each attempt's first INVITE; a
3xx turns into new attempts for the contacts it names (at most `max_redirects` in all).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from porch.sip.errors import LocalProtocolError

__all__ = ["Attempt", "AttemptState", "Cancel", "Dial", "Finished", "TargetPlan"]


class AttemptState(StrEnum):
    PENDING = "pending"  # not dialled yet
    TRYING = "trying"  # INVITE sent
    RINGING = "ringing"  # 180/183 seen
    ANSWERED = "answered"
    FAILED = "failed"  # final failure, timeout, ring timeout
    CANCELLED = "cancelled"  # we gave up on it (other answered, hang-up)


ACTIVE = (AttemptState.TRYING, AttemptState.RINGING)


@dataclass
class Attempt:
    index: int
    target: str
    state: AttemptState = AttemptState.PENDING
    started: float | None = None
    reason: str = ""
    redirected_from: int | None = None


@dataclass(frozen=True)
class Dial:
    """Send an INVITE for attempt `index` to `target`."""

    index: int
    target: str


@dataclass(frozen=True)
class Cancel:
    """Stop ringing attempt `index` (CANCEL, or ACK+BYE if its 2xx still comes). `failed`:
    the attempt counts as failed (its ring timeout), not merely made moot."""

    index: int
    reason: str
    failed: bool = False


@dataclass(frozen=True)
class Finished:
    """Nobody answered: the call is over. `reason` sums up why."""

    reason: str


Action = Dial | Cancel | Finished


@dataclass
class TargetPlan:
    targets: list[str]
    strategy: str = "sequential"
    ring_timeout: float = 30.0
    max_redirects: int = 5
    attempts: list[Attempt] = field(default_factory=list)
    answered: int | None = None
    over: bool = False
    redirects: int = 0
    queue: list[int] = field(default_factory=list)  # pending attempts, next first

    def __post_init__(self) -> None:
        if self.strategy not in ("sequential", "parallel"):
            raise LocalProtocolError(f"unknown strategy {self.strategy!r}")
        if not self.attempts:
            self.attempts = [Attempt(i, t) for i, t in enumerate(self.targets)]
            self.queue = list(range(len(self.attempts)))

    # -- queries ------------------------------------------------------------------------
    @property
    def active(self) -> list[Attempt]:
        return [a for a in self.attempts if a.state in ACTIVE]

    @property
    def ringing(self) -> bool:
        return any(a.state is AttemptState.RINGING for a in self.attempts)

    @property
    def deadline(self) -> float | None:
        """The next ring timeout (None when nothing is ringing or the call is decided)."""
        if self.over or self.answered is not None:
            return None
        times = [a.started + self.ring_timeout for a in self.active if a.started is not None]
        return min(times) if times else None

    # -- inputs -------------------------------------------------------------------------
    def start(self, now: float) -> list[Action]:
        if self.attempts and any(a.state is not AttemptState.PENDING for a in self.attempts):
            raise LocalProtocolError("the plan has already started")
        return self._next(now)

    def on_ringing(self, index: int, now: float) -> list[Action]:
        a = self.attempts[index]
        if a.state is AttemptState.TRYING and not self._decided:
            a.state = AttemptState.RINGING
        return []

    def on_answered(self, index: int, now: float) -> list[Action]:
        """A 2xx for attempt `index`. The first one wins; the UA hangs up on later ones
        (it sees `answered` is another attempt)."""
        a = self.attempts[index]
        if self._decided or a.state not in ACTIVE:
            return []
        a.state = AttemptState.ANSWERED
        self.answered = index
        return self._cancel_active("answered elsewhere")

    def on_failed(self, index: int, reason: str, now: float) -> list[Action]:
        a = self.attempts[index]
        if a.state not in ACTIVE:
            return []
        a.state = AttemptState.FAILED
        a.reason = reason
        if self._decided:
            return []
        return self._next(now)

    def on_redirect(self, index: int, contacts: list[str], now: float) -> list[Action]:
        """A 3xx: try the contacts (in the order given) in place of attempt `index`."""
        a = self.attempts[index]
        if a.state not in ACTIVE:
            return []
        a.state = AttemptState.FAILED
        a.reason = "redirected"
        if self._decided:
            return []
        room = max(0, self.max_redirects - self.redirects)
        known = {x.target for x in self.attempts}
        fresh = [c for c in dict.fromkeys(contacts) if c not in known][:room]
        if not fresh and contacts:
            a.reason = "redirected, but to nothing new (or too many redirects)"
        self.redirects += len(fresh)
        # Indices stay stable (the UA keys its calls by them); the new attempts go to the
        # front of the queue, so sequential order is kept.
        new = []
        for contact in fresh:
            self.attempts.append(Attempt(len(self.attempts), contact, redirected_from=index))
            new.append(len(self.attempts) - 1)
        self.queue[:0] = new
        return self._next(now)

    def on_timer(self, now: float) -> list[Action]:
        out: list[Action] = []
        if self._decided:
            return out
        for a in self.active:
            if a.started is not None and now >= a.started + self.ring_timeout:
                a.state = AttemptState.FAILED
                a.reason = "no answer (call.ring_timeout)"
                out.append(Cancel(a.index, a.reason, failed=True))
        if out:
            out += self._next(now)
        return out

    def cancel(self, reason: str) -> list[Action]:
        """Hang up before anyone answered: cancel what rings, dial nothing more."""
        if self._decided:
            return []
        out = self._cancel_active(reason)
        for i in self.queue:
            self.attempts[i].state = AttemptState.CANCELLED
            self.attempts[i].reason = reason
        self.queue.clear()
        self.over = True
        return [*out, Finished(reason)]

    # -- internals ----------------------------------------------------------------------
    @property
    def _decided(self) -> bool:
        return self.over or self.answered is not None

    def _cancel_active(self, reason: str) -> list[Action]:
        out: list[Action] = []
        for a in self.active:
            a.state = AttemptState.CANCELLED
            a.reason = reason
            out.append(Cancel(a.index, reason))
        return out

    def _next(self, now: float) -> list[Action]:
        """Dial what the strategy allows next; Finished once nothing is left."""
        out: list[Action] = []
        if self.strategy == "parallel":
            take = len(self.queue)
        else:
            take = 0 if self.active else min(1, len(self.queue))
        chosen = [self.attempts[i] for i in self.queue[:take]]
        del self.queue[:take]
        for a in chosen:
            a.state = AttemptState.TRYING
            a.started = now
            out.append(Dial(a.index, a.target))
        if not self.active and not out:
            self.over = True
            out.append(Finished(self._summary()))
        return out

    def _summary(self) -> str:
        reasons = [a.reason for a in self.attempts if a.reason and a.reason != "redirected"]
        if not reasons:
            return "no targets"
        if len(set(reasons)) == 1:
            return reasons[0]
        return "; ".join(f"{a.target}: {a.reason}" for a in self.attempts if a.reason)
