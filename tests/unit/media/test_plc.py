"""Loss concealment: continuity, fade and mute, the join, bridging from both sides."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from porch.media.plc import CONCEALERS, AppendixI, Concealer, RepeatLast, ZeroFill, find_pitch, lpc


def voiced(rate: int, seconds: float, f0: float = 130.0) -> np.ndarray:
    """A vowel-like signal: harmonics of f0 with falling amplitude."""
    t = np.arange(int(rate * seconds)) / rate
    x = sum(np.sin(2 * np.pi * k * f0 * t + k) / k for k in range(1, 12) if k * f0 < rate / 2)
    return (6000 * x / np.max(np.abs(x))).astype(np.int16)


@pytest.mark.parametrize("rate", [8000, 16000])
def test_pitch_and_lpc_on_a_vowel(rate):
    x = voiced(rate, 0.1, f0=125.0).astype(float)
    assert find_pitch(x, rate // 200, 3 * rate // 200, rate // 50) == rate // 125
    a = lpc(x[-rate // 40 :], 10, rate)
    assert a[0] == 1.0 and np.all(np.isfinite(a))
    # the predictor removes most of the signal
    res = np.convolve(x[-rate // 40 :], a)[10 : rate // 40]
    assert np.sum(res**2) < 0.1 * np.sum(x[-rate // 40 + 10 :] ** 2)


@pytest.mark.parametrize("rate", [8000, 16000])
def test_concealment_continues_the_waveform(rate):
    n = rate // 50
    x = voiced(rate, 0.5)
    c = Concealer(rate)
    for i in range(10):
        assert np.array_equal(c.good(x[i * n : (i + 1) * n]), x[i * n : (i + 1) * n])
    out = c.lost(n).astype(float)
    truth = x[10 * n : 11 * n].astype(float)
    # no step at the start: the first concealed samples follow the real ones
    assert abs(out[0] - truth[0]) < 0.1 * np.abs(truth).max()
    # a steady vowel is predicted well for the first 5 ms
    head = slice(0, rate // 200)
    assert np.sum((out[head] - truth[head]) ** 2) < 0.05 * np.sum(truth[head] ** 2)
    assert c.in_gap and c.concealed_samples == n


def test_fade_and_mute():
    rate, n = 8000, 160
    x = voiced(rate, 0.5)
    c = Concealer(rate)
    for i in range(10):
        c.good(x[i * n : (i + 1) * n])
    gaps = [c.lost(n).astype(float) for _ in range(6)]
    rms = [np.sqrt(np.mean(g**2)) for g in gaps]
    assert all(a > b for a, b in itertools.pairwise(rms[:5]))  # keeps falling
    assert rms[4] < 0.1 * rms[0]  # 80..100 ms into the gap: nothing left
    assert rms[5] == 0.0


def test_join_is_smooth_when_audio_returns():
    rate, n = 8000, 160
    x = voiced(rate, 0.5)
    c = Concealer(rate)
    for i in range(10):
        c.good(x[i * n : (i + 1) * n])
    c.lost(n)
    nxt = x[11 * n : 12 * n]
    out = c.good(nxt)
    assert not c.in_gap
    # the start is cross-faded (not equal to the frame), the rest untouched
    assert not np.array_equal(out[:10], nxt[:10])
    assert np.array_equal(out[rate // 100 :], nxt[rate // 100 :])


def test_bridging_with_the_next_frame_beats_extrapolation():
    rate, n = 8000, 160
    x = voiced(rate, 0.5, f0=118.0)
    errs = []
    for bridge in (False, True):
        c = Concealer(rate)
        for i in range(10):
            c.good(x[i * n : (i + 1) * n])
        future = x[11 * n : 12 * n]
        out = c.lost(n, future if bridge else None).astype(float)
        truth = x[10 * n : 11 * n].astype(float)
        errs.append(np.sum((out - truth) ** 2))
        joined = c.good(future)
        if bridge:
            assert np.array_equal(joined, future)  # nothing to cross-fade
    assert errs[1] < 0.5 * errs[0]


def test_peek_is_the_continuation_and_does_not_consume():
    rate, n = 16000, 320
    x = voiced(rate, 0.3)
    c = Concealer(rate)
    for i in range(5):
        c.good(x[i * n : (i + 1) * n])
    first = c.lost(n)
    ahead = c.peek(22)
    second = c.lost(n)
    assert np.array_equal(ahead, second[:22]) or np.abs(ahead - second[:22]).max() <= 1
    assert len(first) == n


def test_baselines_and_reference():
    n = 160
    frame = np.arange(n, dtype=np.int16)
    z = ZeroFill()
    z.good(frame)
    assert not z.lost(n).any()
    r = RepeatLast()
    r.good(frame)
    assert np.array_equal(r.lost(n), frame) and np.array_equal(r.lost(80), frame[:80])
    a = AppendixI(8000)
    x = voiced(8000, 0.3)
    outs = [a.good(x[i * n : (i + 1) * n]) for i in range(5)]
    assert a.delay == 30 and np.array_equal(np.concatenate(outs)[30:], x[: 5 * n - 30])
    assert np.abs(a.lost(n)).max() > 1000
    assert set(CONCEALERS) == {"plc", "appendix1", "zero", "repeat"}


def _primed(rate: int, x: np.ndarray, frames: int = 10) -> Concealer:
    n = rate // 50
    c = Concealer(rate)
    for i in range(frames):
        c.good(x[i * n : (i + 1) * n])
    return c


def test_extension_previews_the_concealment_without_using_it_up():
    rate, n = 16000, 320
    x = voiced(rate, 0.5)
    c = _primed(rate, x)
    ahead = c.extension(n + 22)
    assert not c.in_gap
    out = c.lost(n)
    assert np.array_equal(ahead[:n], out)
    assert np.array_equal(ahead[n:], c.peek(22))


def test_bridge_to_a_guessed_frame_fades_its_tail_into_the_real_one():
    """A stateful decoder can only guess the frame after a gap: the bridge aims at the
    guess, reaches `tail` samples into the frame and is faded out there."""
    rate, n, tail = 16000, 320, 64
    x = voiced(rate, 0.5, f0=118.0)
    truth = x[10 * n : 11 * n].astype(float)
    nxt = x[11 * n : 12 * n]
    guess = (nxt * 0.9).astype(np.int16)  # the right shape at the wrong level
    one_sided = _primed(rate, x)
    plain = one_sided.lost(n).astype(float)
    c = _primed(rate, x)
    out = c.lost(n, guess, tail=tail).astype(float)
    assert np.sum((out - truth) ** 2) < 0.7 * np.sum((plain - truth) ** 2)
    assert not np.array_equal(c.peek(22), one_sided.peek(22))  # what follows is the tail
    joined = c.good(nxt)
    assert not np.array_equal(joined[:tail], nxt[:tail])
    assert np.array_equal(joined[tail:], nxt[tail:])
    step = abs(float(joined[0]) - out[-1])
    assert step < 0.2 * np.abs(truth).max()  # no click where the frame starts
