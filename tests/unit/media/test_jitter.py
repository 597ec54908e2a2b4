"""The jitter buffer and receive chain: packets in with arrival times, PCM out on the clock."""

from __future__ import annotations

import numpy as np
import pytest

from porch.media.codecs import get_codec
from porch.media.jitter import Receiver
from porch.media.rtp import PT_CN, RtpPacket

RATE = 8000
N = 160  # 20 ms


def speechlike(frames: int, period: int = 25) -> np.ndarray:
    """A 200 Hz buzz with an amplitude wobble, silent for the last 5 of every `period` frames."""
    t = np.arange(frames * N) / RATE
    x = 6000 * np.sin(2 * np.pi * 200 * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))
    x[(np.arange(len(x)) // N) % period >= period - 5] = 0
    return x.astype(np.int16)


def packets(x: np.ndarray, ssrc: int = 0x1234, ts0: int = 1000, seq0: int = 0) -> list[RtpPacket]:
    enc = get_codec("PCMU").encoder()
    return [
        RtpPacket(
            0,
            (seq0 + i) & 0xFFFF,
            (ts0 + i * N) & 0xFFFFFFFF,
            ssrc,
            enc.encode(x[i * N : (i + 1) * N]),
        )
        for i in range(len(x) // N)
    ]


def run(
    rx: Receiver,
    arrivals: list[tuple[float, RtpPacket]],
    until: float,
    tick: float = 0.01,
    start: float = 0.0,
) -> np.ndarray:
    """Deliver packets at their arrival times and pull every `tick` until `until`."""
    arrivals = sorted(arrivals, key=lambda a: a[0])
    out, k, t = [], 0, start
    while t < until:
        while k < len(arrivals) and arrivals[k][0] <= t:
            rx.put(arrivals[k][1], arrivals[k][0])
            k += 1
        out.append(rx.pull(t, round(tick * RATE)))
        t += tick
    return np.concatenate(out)


def media_frames(rx: Receiver, kind: str = "audio") -> list[int]:
    return [m // N for k, m, n, _ in rx.trace if k == kind and n == N]


def test_clean_stream_plays_every_frame_bit_exact():
    x = speechlike(100)
    pk = packets(x)
    rx = Receiver(get_codec("PCMU"), trace=True)
    y = run(rx, [(0.02 * i + 0.005, p) for i, p in enumerate(pk)], 2.3)
    assert rx.stats.lost == 0 and rx.stats.late == 0 and rx.stats.packets == 100
    dec = get_codec("PCMU").decoder()
    want = np.concatenate([dec.decode(p.payload) for p in pk])
    start = next(i for i, (k, *_r) in enumerate(rx.trace) if k == "audio")
    offset = sum(n for _k, _m, n, _t in rx.trace[:start])
    got = y[offset : offset + len(want)]
    # identical, except where the buffer shrank its start-up delay inside a silent stretch
    dropped = rx.stats.dropped_samples
    assert dropped <= 5 * N
    assert np.count_nonzero(np.trim_zeros(want)[: len(got) - dropped] != 0) > 0
    audio = [e for e in rx.trace if e[0] == "audio"]
    assert sum(e[2] for e in audio) == 100 * N - dropped
    assert got[:N].tolist() == want[:N].tolist()  # the first frame as sent


def test_reordered_and_duplicated_packets_all_play_once():
    x = speechlike(60)
    pk = packets(x)
    arrivals = []
    for i, p in enumerate(pk):
        t = 0.02 * i + (0.025 if i % 4 == 1 else 0.0)  # every 4th-plus-1 overtaken by the next
        arrivals.append((t, p))
        if i % 7 == 3:
            arrivals.append((t + 0.003, p))  # duplicate
    rx = Receiver(get_codec("PCMU"), trace=True)
    run(rx, arrivals, 1.6)
    assert rx.stats.duplicates == len([i for i in range(60) if i % 7 == 3])
    assert rx.stats.lost == 0 and rx.stats.late == 0
    played = media_frames(rx) + media_frames(rx, "noise")
    base = 1000 // N
    assert sorted(set(played)) == [base + i for i in range(60)]


def test_a_single_loss_is_concealed_and_does_not_stall():
    x = speechlike(50)
    pk = packets(x)
    rx = Receiver(get_codec("PCMU"), trace=True)
    y = run(rx, [(0.02 * i, p) for i, p in enumerate(pk) if i != 20], 1.3)
    assert rx.stats.lost == 1 and rx.stats.late == 0
    # (after the last packet the stream just stops: that is concealed, but not loss)
    conceal = [e for e in rx.trace if e[0] == "conceal" and e[1] < 1000 + 50 * N]
    assert len(conceal) == 1 and conceal[0][1] // N == 1000 // N + 20
    assert len(media_frames(rx)) >= 45  # everything after the gap still plays
    assert np.abs(y).max() > 1000


def test_a_late_packet_is_counted_and_dropped():
    x = speechlike(40)
    pk = packets(x)
    arrivals = [(0.02 * i, p) for i, p in enumerate(pk)]
    arrivals[15] = (0.02 * 15 + 0.5, pk[15])  # half a second late
    rx = Receiver(get_codec("PCMU"), trace=True)
    run(rx, arrivals, 1.2)
    assert rx.stats.late == 1
    assert rx.stats.lost == 0  # it did arrive: late, not lost
    assert any(e[0] == "conceal" and e[1] // N == 1000 // N + 15 for e in rx.trace)


def test_delay_grows_under_jitter_and_shrinks_when_it_stops():
    rng = np.random.default_rng(5)
    frames = 1000  # 20 s: 8 s calm, 6 s of 0..60 ms jitter, 6 s calm again
    pk = packets(speechlike(frames))
    jitter = np.zeros(frames)
    jitter[400:700] = rng.uniform(0, 0.060, 300)
    arrivals = [(0.02 * i + jitter[i], p) for i, p in enumerate(pk)]
    rx = Receiver(get_codec("PCMU"), trace=True)
    run(rx, arrivals[:550], 11.0)
    late_while_adapting = rx.stats.late
    run(rx, arrivals[550:], 20.5, start=11.0)
    delays = np.array(rx.stats.delays)  # one per played frame, in order
    calm, rough, after = delays[300:390], delays[560:690], delays[-80:]
    assert calm.mean() < 0.015
    assert rough.mean() > 0.045  # about the 97th percentile of 0..60 ms
    assert rough.mean() < 0.060 + 0.010
    assert after.mean() < 0.015  # back down once the jitter is gone
    assert late_while_adapting <= 25  # the onset costs a few, while the estimate catches up
    assert rx.stats.late - late_while_adapting <= 4  # then under 3 % of the next 150
    shrink = [e for e in rx.trace if e[0] == "audio" and e[2] < N]
    assert shrink, "the delay must have been shed by dropping samples"


def test_burst_loss_is_concealed_then_playback_resumes():
    pk = packets(speechlike(60))
    rx = Receiver(get_codec("PCMU"), trace=True)
    y = run(rx, [(0.02 * i, p) for i, p in enumerate(pk) if not 20 <= i < 26], 1.5)
    assert rx.stats.lost == 6 and rx.stats.loss_runs == 1
    # concealment is muted by 80 ms: the middle of a 120 ms hole is silent
    conceal = [e for e in rx.trace if e[0] == "conceal"]
    pos = {id(e): sum(n for _k, _m, n, _t in rx.trace[: rx.trace.index(e)]) for e in conceal}
    last = conceal[-2]
    assert np.abs(y[pos[id(last)] : pos[id(last)] + N]).max() < 50
    assert len(media_frames(rx)) >= 50


def test_ssrc_change_resets_the_stream():
    a = packets(speechlike(30), ssrc=1, ts0=1000, seq0=10)
    b = packets(speechlike(30), ssrc=2, ts0=987654, seq0=60000)
    arrivals = [(0.02 * i, p) for i, p in enumerate(a)]
    arrivals += [(0.6 + 0.02 * i, p) for i, p in enumerate(b)]
    rx = Receiver(get_codec("PCMU"), trace=True)
    run(rx, arrivals, 1.4)
    assert rx.stats.resets == 1 and rx.ssrc == 2
    assert rx.stats.frames >= 55 and rx.stats.late == 0


def test_timestamp_jump_reanchors_the_timeline():
    pk = packets(speechlike(60))
    for p in pk[30:]:
        p.timestamp = (p.timestamp + 8000 * 3600) & 0xFFFFFFFF  # the sender's clock leaps an hour
    rx = Receiver(get_codec("PCMU"), trace=True)
    run(rx, [(0.02 * i, p) for i, p in enumerate(pk)], 1.4)
    assert rx.stats.resets == 1
    assert rx.stats.frames >= 55 and rx.stats.lost <= 1


def test_comfort_noise_fills_silence_then_talkspurt_resumes():
    x = speechlike(60, period=1000)
    pk = packets(x)
    cn = RtpPacket(PT_CN, 20, 1000 + 20 * N, 0x1234, bytes([40]))  # -40 dBov
    arrivals = [(0.02 * i, p) for i, p in enumerate(pk[:20])]
    arrivals.append((0.4, cn))
    # 20 frames of silence suppression, then speech resumes with the marker bit set
    for j, p in enumerate(pk[40:]):
        p.sequence = 21 + j
        p.marker = j == 0
        p.timestamp += 37  # the talkspurt need not start on the old frame grid
        arrivals.append((0.8 + 0.02 * j, p))
    rx = Receiver(get_codec("PCMU"), trace=True)
    y = run(rx, arrivals, 1.5)
    noise = [e for e in rx.trace if e[0] == "noise"]
    assert len(noise) >= 15
    i = rx.trace.index(noise[5])
    start = sum(n for _k, _m, n, _t in rx.trace[:i])
    seg = y[start : start + N].astype(float)
    level = 20 * np.log10(np.sqrt(np.mean(seg**2)) / 32767)
    assert level == pytest.approx(-40, abs=2)
    assert rx.stats.lost == 0  # a DTX pause is not loss
    assert rx.stats.frames == 40


def test_g722_stream_with_loss():
    codec = get_codec("G722")
    t = np.arange(320 * 50) / 16000
    x = (5000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
    enc = codec.encoder()
    pk = [RtpPacket(9, i, 160 * i, 5, enc.encode(x[i * 320 : (i + 1) * 320])) for i in range(50)]
    rx = Receiver(codec, trace=True)
    out = []
    for i in range(60):
        if i < 50 and i != 25:
            rx.put(pk[i], 0.02 * i)
        out.append(rx.pull(0.02 * i, 320))
    assert rx.stats.lost == 1 and rx.stats.frames == 49
    y = np.concatenate(out)
    assert len(y) == 60 * 320 and np.abs(y).max() > 3000


def _g722_runs(x: np.ndarray, traces: dict[str, list[float]], **kw) -> dict[str, np.ndarray]:
    from porch.media.netsim import Impairment, simulate

    return {
        name: simulate(x, 16000, "G722", Impairment(trace=t, seed=3), **kw).out.astype(float)
        for name, t in traces.items()
    }


def _g722_voice(seconds: float) -> np.ndarray:
    rate = 16000
    t = np.arange(int(rate * seconds)) / rate
    phase = 2 * np.pi * np.cumsum(120 + 15 * np.sin(2 * np.pi * 2 * t)) / rate
    x = sum(np.sin(k * phase + k) / k for k in range(1, 50) if k * 140 < 7000)
    x = x * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (6000 * x / np.abs(x).max()).astype(np.int16)


def test_g722_gap_is_bridged_when_the_next_packet_is_already_here():
    x = _g722_voice(1.0)
    frames, lost = len(x) // 320, 20
    clean = [0.0] * frames
    buffered = [float("nan") if i == lost else 0.0 for i in range(frames)]
    late = [30.0 if i == lost + 1 else v for i, v in enumerate(buffered)]  # comes just in time
    y = _g722_runs(x, {"clean": clean, "buffered": buffered, "late": late})
    gap = slice(lost * 320, (lost + 1) * 320)
    assert not np.array_equal(y["buffered"][gap], y["late"][gap])  # aimed at the next frame
    for name in ("buffered", "late"):
        out = y[name]
        # the join into the next frame is smooth, and playback goes on unharmed
        edge = gap.stop
        assert abs(out[edge] - out[edge - 1]) < 0.15 * np.abs(out[gap]).max()
        tail = slice((lost + 10) * 320, (lost + 20) * 320)
        err = out[tail] - y["clean"][tail]
        assert np.sum(err**2) < 1e-3 * np.sum(y["clean"][tail] ** 2)


def test_g722_decoder_retrained_on_the_bridge_decodes_the_next_frames_better():
    """With the next packet already here, the decoder is re-trained on the gap as
    bridged towards it: the frames after the gap decode much closer to the lossless
    stream than with the decoder left as it was, or re-trained on a one-sided
    concealment (the next packet coming too late to bridge to)."""
    x = _g722_voice(1.0)
    frames = len(x) // 320
    losses = [10, 17, 24, 31, 38]
    buffered = [float("nan") if i in losses else 0.0 for i in range(frames)]
    late = [30.0 if i - 1 in losses else v for i, v in enumerate(buffered)]
    clean = _g722_runs(x, {"clean": [0.0] * frames})["clean"]
    after = [slice((k + 1) * 320, (k + 3) * 320) for k in losses]
    err = {}
    for name, trace, mode in (
        ("bridged", buffered, "reencode"),
        ("frozen", buffered, "none"),
        ("one-sided", late, "reencode"),
    ):
        y = _g722_runs(x, {name: trace}, resync=mode)[name]
        err[name] = sum(np.sum((y[s] - clean[s]) ** 2) for s in after)
    assert err["bridged"] < 0.6 * err["frozen"]
    assert err["bridged"] < 0.6 * err["one-sided"]
