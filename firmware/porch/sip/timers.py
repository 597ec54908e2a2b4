"""SIP timer values (RFC 3261 section 17 and table 4; RFC 6026 timers L and M).

Everything derives from T1, T2 and T4 so that tests (and a slow or satellite link) can scale
the whole set by changing those three. Retransmission timers (A, E, G) exist only on
unreliable transports; the "wait out retransmissions" timers (D, I, J, K) are zero on
reliable ones, which the transaction code treats as "fire at once".
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_TIMERS", "RETRANSMIT_TIMERS", "Timers"]

# Timers that only run when the transport may lose messages.
RETRANSMIT_TIMERS = frozenset({"A", "E", "G"})


@dataclass(frozen=True)
class Timers:
    """T1/T2/T4 plus the 100 Trying delay; the lettered timers are derived."""

    t1: float = 0.5  # RTT estimate
    t2: float = 4.0  # cap of non-INVITE request and INVITE response retransmit intervals
    t4: float = 5.0  # how long a message can stay in the network
    # An INVITE server transaction sends 100 Trying itself if the TU has not answered
    # within this time (RFC 3261 17.2.1). None: never (the TU promises to answer at once).
    trying: float | None = 0.2
    # RFC 3261 17.1.1.2: timer D is "at least 32 s" on unreliable transports.
    d_minimum: float = 32.0

    def __post_init__(self) -> None:
        if not 0 < self.t1 <= self.t2:
            raise ValueError("need 0 < T1 <= T2")
        if self.t4 < 0:
            raise ValueError("T4 must not be negative")

    # -- the lettered timers ------------------------------------------------------------
    @property
    def timeout(self) -> float:
        """64*T1: B, F, H, J (unreliable), L, M and the 2xx give-up time."""
        return 64 * self.t1

    def initial(self, name: str, reliable: bool) -> float | None:
        """First duration of timer `name`, or None when it is not started at all.

        0.0 means "fire immediately" (D, I, J, K on a reliable transport).
        """
        if name in RETRANSMIT_TIMERS:
            return None if reliable else self.t1
        if name in ("B", "F", "H", "L", "M", "CANCEL"):
            return self.timeout
        if name == "D":
            return 0.0 if reliable else max(self.d_minimum, self.timeout)
        if name in ("I", "K"):
            return 0.0 if reliable else self.t4
        if name == "J":
            return 0.0 if reliable else self.timeout
        if name == "TRYING":
            return self.trying
        raise KeyError(f"no such timer: {name}")

    def next_interval(self, name: str, previous: float) -> float:
        """The interval after `previous` for a retransmission timer.

        A (INVITE requests) doubles without a cap (RFC 3261 17.1.1.2: B stops it after
        seven transmissions); E and G double up to T2.
        """
        if name == "A":
            return 2 * previous
        if name in ("E", "G"):
            return min(2 * previous, self.t2)
        raise KeyError(f"not a retransmission timer: {name}")

    def retransmit_2xx(self, previous: float | None) -> float:
        """Interval of the UAS core's 2xx retransmissions (RFC 3261 13.3.1.4): T1, doubling
        to T2."""
        return self.t1 if previous is None else min(2 * previous, self.t2)


DEFAULT_TIMERS = Timers()
