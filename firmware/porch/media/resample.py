"""Streaming sample-rate conversion with a proper anti-alias filter.

Used where the audio device and the codec disagree (a 16 kHz device on a G.711
call, a 48 kHz USB card, or 8 kHz speech into G.722). A rational L/M polyphase
FIR: the prototype low-pass is a Kaiser-windowed sinc designed here with numpy
(no scipy at run time), 70 dB stop band, pass band up to 0.4375 of the lower
rate and stop band from 0.5625 of it. That leaves the band that matters (up to
3.5 kHz at 8 kHz) free of aliases: what folds back lands in the transition band.
"""

from __future__ import annotations

from math import gcd

import numpy as np

STOPBAND_DB = 70.0
PASS_EDGE = 0.4375  # of the lower rate
STOP_EDGE = 0.5625


def design_lowpass(
    fs: float, cutoff: float, transition: float, atten_db: float = STOPBAND_DB, multiple: int = 1
) -> np.ndarray:
    """Kaiser-window low-pass FIR (unit DC gain), linear phase.

    The length is odd with ``(len - 1) / 2`` a multiple of `multiple`, so a
    decimator by that factor has a whole-sample delay.
    """
    a = atten_db
    if a > 50:
        beta = 0.1102 * (a - 8.7)
    elif a >= 21:
        beta = 0.5842 * (a - 21) ** 0.4 + 0.07886 * (a - 21)
    else:
        beta = 0.0
    numtaps = int(np.ceil((a - 7.95) / (2.285 * 2 * np.pi * transition / fs))) + 1
    step = 2 * multiple
    numtaps = (numtaps - 1 + step - 1) // step * step + 1
    n = np.arange(numtaps) - (numtaps - 1) / 2
    h = 2 * cutoff / fs * np.sinc(2 * cutoff / fs * n) * np.kaiser(numtaps, beta)
    return h / h.sum()


class Resampler:
    """Convert a stream of int16 (or float) blocks from one rate to another.

    Blocks may have any length; the filter state carries across calls, so a
    stream cut into 20 ms frames gives the same samples as one long block.
    `delay` is the group delay in output samples (for aligning offline runs).
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        g = gcd(in_rate, out_rate)
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.up = out_rate // g
        self.down = in_rate // g
        low = min(in_rate, out_rate)
        fs_up = in_rate * self.up
        cutoff = (PASS_EDGE + STOP_EDGE) / 2 * low
        h = design_lowpass(fs_up, cutoff, (STOP_EDGE - PASS_EDGE) * low, multiple=self.down)
        h *= self.up
        taps = -(-len(h) // self.up)  # taps per phase
        self.delay = (len(h) - 1) / 2 / self.down
        h = np.concatenate([h, np.zeros(taps * self.up - len(h))])
        # phases[p, k] = h[p + k*up]: output at upsampled position (i*up + p)
        # is sum_k phases[p, k] * x[i - k]
        self._phases = h.reshape(taps, self.up).T.copy()
        self._taps = taps
        self._hist = np.zeros(taps - 1)
        self._pos = 0  # next output position in the upsampled domain, relative to block start

    def process(self, block: np.ndarray) -> np.ndarray:
        """Resample one block; returns int16 if the input was int16."""
        if self.up == self.down:
            return block.copy()
        is_int = block.dtype == np.int16
        x = np.concatenate([self._hist, np.asarray(block, dtype=np.float64)])
        n_in = len(block)
        end = n_in * self.up
        pos = np.arange(self._pos, end, self.down)
        self._pos = int(pos[-1] + self.down - end) if len(pos) else self._pos - end
        base = pos // self.up + (self._taps - 1)  # index of x[i] in the padded buffer
        phase = pos % self.up
        idx = base[:, None] - np.arange(self._taps)[None, :]
        y = np.einsum("ij,ij->i", x[idx], self._phases[phase])
        self._hist = x[len(x) - (self._taps - 1) :] if self._taps > 1 else self._hist
        if is_int:
            return np.clip(np.rint(y), -32768, 32767).astype(np.int16)
        return y

    def reset(self) -> None:
        self._hist[:] = 0
        self._pos = 0


def resample(x: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """Whole-signal conversion, delay removed, same duration (offline tools)."""
    if in_rate == out_rate:
        return x.copy()
    r = Resampler(in_rate, out_rate)
    n_out = len(x) * out_rate // in_rate
    pad = int(np.ceil(r.delay * in_rate / out_rate)) + r._taps + 1
    y = r.process(np.concatenate([x, np.zeros(pad, dtype=x.dtype)]))
    d = round(r.delay)
    return y[d : d + n_out]
