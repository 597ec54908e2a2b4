"""DTMF: RFC 4733 telephone-events in and out, an in-band tone detector, and
the tones porch plays to a caller. Sans-IO.

RFC 4733 receive: an event is identified by (SSRC, RTP timestamp); its first
packet produces the digit, exactly once, however many updates, end packets,
end retransmissions, duplicates or reordered stragglers follow. The end bit
closes it; if every end packet is lost a timeout does. A long event split into
segments (a new timestamp continuing the same key without a gap) stays one
digit.

In-band (ITU-T Q.24): a 10 ms Hann window every 5 ms; per window the DFT at
the eight DTMF frequencies, the strongest of each group, and its true
frequency from the phase advance between windows. A window counts when both
tones are within 2.5 % of nominal (Q.24: accept within 1.5 %, reject beyond
3.5 %), each is above -33 dBm0, the twist is within 8 dB (low group
stronger) / 4 dB (high group stronger), and the two tones carry at least 80 %
of the window's power (speech does not). Seven such windows in a row (about
40 ms of tone) make a digit; three windows without end it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

EVENTS = "0123456789*#ABCD"
LOW = (697.0, 770.0, 852.0, 941.0)
HIGH = (1209.0, 1336.0, 1477.0, 1633.0)
KEYPAD = ("123A", "456B", "789C", "*0#D")

# dBm0 reference: the largest sine G.711 carries is +3.14 dBm0 (A-law)
DBM0_PEAK = 32768 * 10 ** (-3.14 / 20)


def digit_code(digit: str) -> int:
    code = EVENTS.find(digit.upper())
    if len(digit) != 1 or code < 0:
        raise ValueError(f"not a DTMF digit: {digit!r}")
    return code


@dataclass(frozen=True)
class Digit:
    """A key press, reported once, when it is first recognised."""

    digit: str
    source: str  # "rfc4733" or "inband"
    time: float
    ssrc: int | None = None
    timestamp: int | None = None


@dataclass(frozen=True)
class DigitEnd:
    """The key was released (RFC 4733 end bit or timeout, or tone gone)."""

    digit: str
    source: str
    time: float
    duration: float  # seconds
    timed_out: bool = False


# --- RFC 4733 payload -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventPayload:
    event: int
    end: bool
    volume: int  # -dBm0, 0..63
    duration: int  # RTP timestamp units

    def pack(self) -> bytes:
        return struct.pack(
            "!BBH", self.event, (0x80 if self.end else 0) | (self.volume & 0x3F), self.duration
        )


def parse_events(payload: bytes) -> list[EventPayload]:
    """All 4-octet event blocks of a telephone-event payload (RFC 4733 2.5.1.5
    allows several: the tail of a previous event ahead of the current one)."""
    out = []
    for i in range(0, len(payload) - 3, 4):
        ev, flags, duration = struct.unpack_from("!BBH", payload, i)
        out.append(EventPayload(ev, bool(flags & 0x80), flags & 0x3F, duration))
    return out


class _Open:
    __slots__ = ("code", "duration", "ended", "last", "start")

    def __init__(self, code: int, now: float) -> None:
        self.code = code
        self.start = now
        self.last = now
        self.duration = 0
        self.ended = False


class Rfc4733Receiver:
    """Telephone-event packets in, `Digit`/`DigitEnd` out, each digit once."""

    def __init__(self, clock_rate: int = 8000, end_timeout: float = 0.5, memory: float = 8.0):
        self.clock_rate = clock_rate
        self.end_timeout = end_timeout  # no packet for this long: the end was lost
        self.memory = memory  # how long finished events are remembered
        self._events: dict[tuple[int, int], _Open] = {}
        self._newest: dict[int, int] = {}  # ssrc -> newest event timestamp

    def on_packet(
        self, ssrc: int, timestamp: int, payload: bytes, now: float
    ) -> list[Digit | DigitEnd]:
        out: list[Digit | DigitEnd] = []
        out += self.on_timer(now)
        start = timestamp
        for block in parse_events(payload):
            # several blocks: events back to back, each starting where the last ended
            if block.event < len(EVENTS):  # not a digit (flash, tones): nothing to report
                out += self._block(ssrc, start & 0xFFFFFFFF, block, now)
            start += block.duration
        return out

    def _block(self, ssrc: int, ts: int, block: EventPayload, now: float) -> list:
        key = (ssrc, ts)
        state = self._events.get(key)
        out: list[Digit | DigitEnd] = []
        if state is None:
            newest = self._newest.get(ssrc)
            if newest is not None and ((ts - newest + 2**31) % 2**32) - 2**31 < 0:
                return out  # older than an event we already have: a straggler
            if self._continues_segment(ssrc, ts, block.event):
                state = _Open(block.event, now)
                state.start = -1.0  # marks a continuation: no new digit
            else:
                state = _Open(block.event, now)
                out.append(Digit(EVENTS[block.event], "rfc4733", now, ssrc, ts))
            self._events[key] = state
            self._newest[ssrc] = ts
        state.last = now
        state.duration = max(state.duration, block.duration)
        if block.end and not state.ended:
            state.ended = True
            out.append(self._end(state, now, timed_out=False))
        return out

    def _continues_segment(self, ssrc: int, ts: int, code: int) -> bool:
        """A long event restarts with timestamp = old timestamp + old duration."""
        for (src, start), st in self._events.items():
            if src == ssrc and st.code == code:
                gap = ((ts - (start + st.duration) + 2**31) % 2**32) - 2**31
                if abs(gap) <= self.clock_rate // 20:  # within 50 ms
                    return True
        return False

    def _end(self, state: _Open, now: float, timed_out: bool) -> DigitEnd:
        return DigitEnd(
            EVENTS[state.code], "rfc4733", now, state.duration / self.clock_rate, timed_out
        )

    def on_timer(self, now: float) -> list[Digit | DigitEnd]:
        """Close events whose end never came; forget old ones."""
        out: list[Digit | DigitEnd] = []
        for key, st in list(self._events.items()):
            if not st.ended and now - st.last > self.end_timeout:
                st.ended = True
                out.append(self._end(st, now, timed_out=True))
            if st.ended and now - st.last > self.memory:
                del self._events[key]
        return out

    @property
    def next_deadline(self) -> float | None:
        open_ = [st.last + self.end_timeout for st in self._events.values() if not st.ended]
        return min(open_) if open_ else None


class Rfc4733Sender:
    """Telephone-event packets for digits, paced by `tick` every packet interval.

    A digit is sent as a marker packet, updates with growing duration, and the
    end packet three times; all carry the RTP timestamp of the event's start.
    """

    def __init__(
        self,
        clock_rate: int = 8000,
        ptime: float = 0.020,
        volume: int = 10,
        duration: float = 0.100,
        pause: float = 0.060,
    ) -> None:
        self.clock_rate = clock_rate
        self.step = round(ptime * clock_rate)
        self.volume = volume
        self.length = round(duration * clock_rate)
        self.pause_ticks = max(1, round(pause / ptime))
        self._queue: list[int] = []
        self._code: int | None = None
        self._ts = 0
        self._elapsed = 0
        self._ends_left = 0
        self._idle = 0

    def send(self, digits: str) -> None:
        self._queue += [digit_code(d) for d in digits]

    @property
    def busy(self) -> bool:
        """True while an event is being sent (audio should pause)."""
        return self._code is not None or bool(self._queue)

    def tick(self, media_timestamp: int) -> tuple[bytes, bool, int] | None:
        """(payload, marker, event timestamp) to send now, or None."""
        if self._code is None:
            if self._idle > 0:
                self._idle -= 1
                return None
            if not self._queue:
                return None
            self._code = self._queue.pop(0)
            self._ts = media_timestamp
            self._elapsed = self.step
            self._ends_left = 3
            return (
                EventPayload(self._code, False, self.volume, self._elapsed).pack(),
                True,
                self._ts,
            )
        if self._elapsed < self.length:
            self._elapsed = min(self._elapsed + self.step, self.length)
            if self._elapsed < self.length:
                payload = EventPayload(self._code, False, self.volume, self._elapsed).pack()
                return payload, False, self._ts
        payload = EventPayload(self._code, True, self.volume, self._elapsed).pack()
        ts = self._ts
        self._ends_left -= 1
        if self._ends_left == 0:
            self._code = None
            self._idle = self.pause_ticks
        return payload, False, ts


# --- tones ---------------------------------------------------------------------------


def tone(
    freqs: tuple[float, ...] | list[float],
    rate: int,
    duration: float,
    level_dbm0: float | list[float] = -10.0,
    ramp: float = 0.002,
) -> np.ndarray:
    """Sum of sines, each at its level in dBm0, with short ramps against clicks."""
    n = round(rate * duration)
    t = np.arange(n) / rate
    levels = level_dbm0 if isinstance(level_dbm0, list) else [level_dbm0] * len(freqs)
    x = sum(
        DBM0_PEAK * 10 ** (lv / 20) * np.sin(2 * np.pi * f * t)
        for f, lv in zip(freqs, levels, strict=True)
    )
    x = np.asarray(x, dtype=np.float64)
    r = min(round(rate * ramp), n // 2)
    if r:
        env = np.ones(n)
        env[:r] = np.linspace(0, 1, r)
        env[n - r :] = np.linspace(1, 0, r)
        x *= env
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def dtmf_tone(
    digit: str,
    rate: int = 8000,
    duration: float = 0.1,
    level_dbm0: float = -10.0,
    twist_db: float = 0.0,
    offset: float = 0.0,
) -> np.ndarray:
    """A DTMF digit: twist > 0 makes the low tone stronger; offset is relative (0.01 = +1 %)."""
    row, col = next(
        (r, c) for r, keys in enumerate(KEYPAD) for c, k in enumerate(keys) if k == digit
    )
    lo, hi = LOW[row] * (1 + offset), HIGH[col] * (1 + offset)
    return tone([lo, hi], rate, duration, [level_dbm0 + twist_db / 2, level_dbm0 - twist_db / 2])


def confirmation_tone(rate: int = 8000) -> np.ndarray:
    """Door opened: two rising beeps."""
    gap = np.zeros(round(rate * 0.06), dtype=np.int16)
    return np.concatenate(
        [tone([880.0], rate, 0.12, -12.0), gap, tone([1320.0], rate, 0.18, -12.0)]
    )


def error_tone(rate: int = 8000) -> np.ndarray:
    """Wrong code: three short low beeps."""
    beep = tone([400.0], rate, 0.1, -12.0)
    gap = np.zeros(round(rate * 0.08), dtype=np.int16)
    return np.concatenate([beep, gap, beep, gap, beep])


# --- in-band detection (Goertzel-style DFT at the eight frequencies) -----------------

TOLERANCE = 0.025  # between Q.24's 1.5 % accept and 3.5 % reject
MIN_LEVEL_DBM0 = -33.0
TWIST_NORMAL_DB = 8.5  # low group stronger (Q.24: accept 8 dB)
TWIST_REVERSE_DB = 4.5  # high group stronger (Q.24: accept 4 dB)
MIN_FRACTION = 0.80
ON_WINDOWS = 7
OFF_WINDOWS = 3


class ToneDetector:
    """In-band DTMF detector for 8 or 16 kHz PCM, fed in any block size."""

    def __init__(self, rate: int = 8000) -> None:
        self.rate = rate
        self.win = rate // 100  # 10 ms
        self.hop = rate // 200  # 5 ms
        self.freqs = np.array(LOW + HIGH)
        w = np.hanning(self.win + 2)[1:-1]  # no zero end points
        n = np.arange(self.win)
        self._basis = (w * np.exp(-2j * np.pi * self.freqs[:, None] * n / rate)).T  # win x 8
        self._wsum = w.sum()
        self._w2 = w * w
        self._w2sum = float(self._w2.sum())
        self._advance = 2 * np.pi * self.freqs * self.hop / rate  # nominal phase step
        self._buf = np.zeros(0)
        self._prev: np.ndarray | None = None
        self._idx: dict[int, np.ndarray] = {}
        self._min_power = (DBM0_PEAK * 10 ** (MIN_LEVEL_DBM0 / 20)) ** 2 / 2
        self._run_digit: str | None = None
        self._run = 0
        self._off = 0
        self._active: str | None = None
        self._active_since = 0.0
        self._t = 0.0  # stream time of the next window start (s)

    def process(self, pcm: np.ndarray, now: float | None = None) -> list[Digit | DigitEnd]:
        """Feed samples; returns digits recognised (and released) in them."""
        self._buf = np.concatenate((self._buf, np.asarray(pcm, dtype=np.float64)))
        count = (len(self._buf) - self.win) // self.hop + 1
        if count <= 0:
            return []
        idx = self._index(count)
        frames = self._buf[idx]
        spectra = frames @ self._basis  # count x 8 complex
        total = (frames * frames) @ self._w2 / self._w2sum
        self._buf = self._buf[count * self.hop :]
        prev = spectra[:-1]
        if self._prev is not None:
            prev = np.vstack((self._prev, prev))
        elif count > 1:
            prev = np.vstack((np.zeros((1, 8), complex), prev))
        else:
            prev = np.zeros((1, 8), complex)
        self._prev = spectra[-1]
        keys = self._classify(spectra, prev, total)
        out: list[Digit | DigitEnd] = []
        step = self.hop / self.rate
        for key in keys:
            t = self._t if now is None else now
            self._t += step
            if key is None and self._active is None and self._run_digit is None:
                continue  # the common case: nothing there, nothing going on
            out += self._track(key, t)
        return out

    def _index(self, count: int) -> np.ndarray:
        idx = self._idx.get(count)
        if idx is None:
            idx = np.arange(count)[:, None] * self.hop + np.arange(self.win)[None, :]
            self._idx[count] = idx
        return idx

    def _classify(self, x: np.ndarray, prev: np.ndarray, total: np.ndarray) -> list[str | None]:
        """The digit each window shows, or None; all windows of a block at once."""
        count = len(x)
        out: list[str | None] = [None] * count
        powers = 2 * (x.real**2 + x.imag**2) / self._wsum**2
        lo = np.argmax(powers[:, :4], axis=1)
        hi = 4 + np.argmax(powers[:, 4:], axis=1)
        rows = np.arange(count)
        p_lo, p_hi = powers[rows, lo], powers[rows, hi]
        # cheap gate first (the window loses at most ~3 dB within tolerance)
        cand = (
            (p_lo > 0.5 * self._min_power)
            & (p_hi > 0.5 * self._min_power)
            & (p_lo + p_hi > 0.5 * MIN_FRACTION * total)
            & (np.abs(prev).sum(axis=1) > 0)
        )
        if not cand.any():
            return out
        r = rows[cand]
        levels = []
        nearest = []
        for k, group in ((lo[cand], self.freqs[:4]), (hi[cand], self.freqs[4:])):
            # frequency from the phase advance since the previous window
            dphi = np.angle(x[r, k] * np.conj(prev[r, k])) - self._advance[k]
            dphi = (dphi + np.pi) % (2 * np.pi) - np.pi
            f = self.freqs[k] + dphi * self.rate / (2 * np.pi * self.hop)
            near = np.argmin(np.abs(f[:, None] - group[None, :]), axis=1)
            ok = np.abs(f / group[near] - 1) <= TOLERANCE
            # undo the Hann window's loss at this offset from the bin centre
            nu = (f - self.freqs[k]) * self.win / self.rate
            with np.errstate(divide="ignore", invalid="ignore"):
                gain = np.where(np.abs(np.abs(nu) - 1) > 1e-6, np.sinc(nu) / (1 - nu * nu), 0.5)
            level = powers[r, k] / np.maximum(gain * gain, 1e-3)
            levels.append(np.where(ok, level, 0.0))
            nearest.append(near)
        l_lo, l_hi = levels
        with np.errstate(divide="ignore"):
            twist = 10 * np.log10(np.maximum(l_lo, 1e-12) / np.maximum(l_hi, 1e-12))
        good = (
            (l_lo >= self._min_power)
            & (l_hi >= self._min_power)
            & (twist >= -TWIST_REVERSE_DB)
            & (twist <= TWIST_NORMAL_DB)
            & (l_lo + l_hi >= MIN_FRACTION * total[r])
        )
        for i, row in enumerate(r):
            if good[i]:
                out[row] = KEYPAD[nearest[0][i]][nearest[1][i]]
        return out

    def _track(self, digit: str | None, t: float) -> list[Digit | DigitEnd]:
        out: list[Digit | DigitEnd] = []
        if digit is not None and digit == self._run_digit:
            self._run += 1
        elif digit is not None:
            self._run_digit, self._run = digit, 1
        if digit is not None and digit == self._active:
            self._off = 0
        elif self._active is not None:
            self._off += 1
            if self._off >= OFF_WINDOWS:
                out.append(DigitEnd(self._active, "inband", t, t - self._active_since))
                self._active = None
        if digit is None:
            self._run_digit, self._run = None, 0
        elif self._active is None and self._run >= ON_WINDOWS:
            self._active = digit
            self._active_since = t
            self._off = 0
            out.append(Digit(digit, "inband", t))
        return out
