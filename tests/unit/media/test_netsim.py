"""`porch tools netsim`: the offline receive path, its network model, and one PESQ check."""

from __future__ import annotations

import json

import numpy as np
import pytest

from porch.cli import main
from porch.media.codecs import get_codec
from porch.media.netsim import (
    Impairment,
    arrivals,
    loss_pattern,
    read_trace,
    read_wav,
    simulate,
    write_wav,
)


def runs(lost: np.ndarray) -> list[int]:
    out, n = [], 0
    for v in lost:
        if v:
            n += 1
        elif n:
            out.append(n)
            n = 0
    return out + ([n] if n else [])


def test_random_and_bursty_loss_rates():
    rng = np.random.default_rng(1)
    lost = loss_pattern(50000, 0.05, None, rng)
    assert lost.mean() == pytest.approx(0.05, abs=0.005)
    assert np.mean(runs(lost)) == pytest.approx(1 / 0.95, abs=0.05)
    bursty = loss_pattern(50000, 0.03, 3.0, rng)
    assert bursty.mean() == pytest.approx(0.03, abs=0.006)
    assert np.mean(runs(bursty)) == pytest.approx(3.0, abs=0.3)


def test_jitter_reorders_and_stays_in_range():
    t = arrivals(2000, Impairment(jitter_ms=40, seed=3))
    delay = t - np.arange(2000) * 0.02
    assert delay.min() >= 0 and delay.max() <= 0.040
    assert np.percentile(delay, 97) == pytest.approx(0.0388, abs=0.002)
    assert np.sum(np.diff(t) < 0) > 100  # packets overtake each other
    # the loss pattern does not depend on the jitter setting
    a = np.isnan(arrivals(500, Impairment(jitter_ms=0, loss=0.1, seed=9)))
    b = np.isnan(arrivals(500, Impairment(jitter_ms=40, loss=0.1, seed=9)))
    assert np.array_equal(a, b)


def test_trace_replay(tmp_path):
    trace = tmp_path / "trace.txt"
    trace.write_text("# offsets in ms\n5\n12.5\n-\n30\nlost\n0\n")
    offsets = read_trace(trace)
    assert len(offsets) == 6 and np.isnan(offsets[2]) and np.isnan(offsets[4])
    t = arrivals(12, Impairment(trace=offsets))
    assert np.isnan(t).sum() == 4  # the trace repeats
    assert t[1] == pytest.approx(0.02 + 0.0125)


def tone_wav(path, rate: int, seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    x = (5000 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 0.5 * t) > -0.5)).astype(np.int16)
    write_wav(path, x, rate)
    return x


def test_cli_writes_aligned_output_and_one_json_line(tmp_path, capsys):
    src, dst = tmp_path / "in.wav", tmp_path / "out.wav"
    x = tone_wav(src, 8000)
    assert main(["tools", "netsim", "--in", str(src), "--out", str(dst), "--codec", "PCMU"]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("packets", "lost", "late", "concealed", "delay_mean_ms", "delay_p95_ms"):
        assert key in stats
    assert stats["packets"] == 100 and stats["lost"] == 0 and stats["concealed"] == 0
    y, rate = read_wav(dst)
    assert rate == 8000 and len(y) == len(x)
    codec = get_codec("PCMU")
    want = codec.decoder().decode(codec.encoder().encode(x))
    same = np.mean(y == want)
    assert same > 0.95  # identical except where the start-up delay was shed in silence


def test_cli_with_every_option(tmp_path, capsys):
    src, dst, trace = tmp_path / "in.wav", tmp_path / "out.wav", tmp_path / "t.txt"
    tone_wav(src, 16000)
    trace.write_text("0\n3\n-\n")
    args = ["tools", "netsim", "--in", str(src), "--out", str(dst), "--codec", "G722"]
    args += [
        "--jitter-ms",
        "30",
        "--loss",
        "5%",
        "--burst",
        "2",
        "--seed",
        "4",
        "--trace",
        str(trace),
    ]
    assert main(args) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["lost"] >= 100 // 3  # the trace alone loses every third packet
    assert stats["concealed"] >= stats["lost"]
    y, rate = read_wav(dst)
    assert rate == 16000 and len(y) == 32000


def test_cli_refuses_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not a wav")
    assert main(["tools", "netsim", "--in", str(bad), "--out", str(tmp_path / "o.wav")]) == 2
    with pytest.raises(SystemExit):
        main(["tools", "netsim", "--in", str(bad), "--out", "o.wav", "--loss", "3"])


def test_cli_takes_any_rate_and_writes_it_back(tmp_path, capsys):
    """espeak-ng writes 22050 Hz: OUT keeps IN's rate and length."""
    src, dst = tmp_path / "in.wav", tmp_path / "out.wav"
    x = tone_wav(src, 22050, seconds=1.0)
    assert main(["tools", "netsim", "--in", str(src), "--out", str(dst), "--codec", "PCMA"]) == 0
    y, rate = read_wav(dst)
    assert rate == 22050 and len(y) == len(x)
    mid = slice(3000, 19000)
    assert np.corrcoef(x[mid], y[mid])[0, 1] > 0.95
    slow = tmp_path / "slow.wav"
    tone_wav(slow, 4000, seconds=0.5)
    assert main(["tools", "netsim", "--in", str(slow), "--out", str(dst)]) == 2
    assert "sample rate 4000 Hz" in capsys.readouterr().err


def test_rate_conversion_both_ways():
    t = np.arange(8000) / 8000
    x = (6000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    y = simulate(x, 8000, "G722").out  # 8 kHz speech through a 16 kHz codec
    assert len(y) == len(x)
    mid = slice(1000, 7000)
    assert np.corrcoef(x[mid], y[mid])[0, 1] > 0.99


def test_concealment_beats_repeat_last_frame_in_pesq(speech_short):
    pesq = pytest.importorskip("pesq").pesq
    x, rate = read_wav(speech_short[8000])
    scores = {}
    for concealer in ("plc", "repeat"):
        vals = []
        for seed in (1, 2):
            y = simulate(x, rate, "PCMU", Impairment(loss=0.05, seed=seed), concealer).out
            vals.append(pesq(rate, x, y, "nb"))
        scores[concealer] = np.mean(vals)
    assert scores["plc"] > scores["repeat"] + 0.1
