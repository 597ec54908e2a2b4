"""Receive-path quality (PESQ) and CPU, with naive baselines from the same run.

Speech comes from espeak-ng (two voices, eight ~10 s passages), resampled by
sox to 8 kHz (G.711, narrowband PESQ) and 16 kHz (G.722, wideband PESQ), and
goes through `porch.media.netsim.simulate` - the code behind
`porch tools netsim` - at 0/1/3/5 % random and 3 % bursty loss (mean burst 3
packets), each with 0/20/40 ms of uniform jitter. Every cell is scored for
porch's concealment and for zero-fill and repeat-last-frame concealment over
the same packets, and the averages are reported side by side; G.711 Appendix I
and G.722 without decoder resync are extra baselines at 3 % loss.

Delay: late loss and mean playout delay at 40 ms jitter, against the 97th
percentile of that jitter plus 10 ms, on the 10 ms play clock of the grid and
on a 20 ms one (the ALSA period), over the same passages and seeds. Delay is
netsim's: for each frame played from a packet, when its first sample plays
minus when the packet was sent. The clock phase is random per run and moves
a run's delay by up to a period, so the mean over 32 runs is good to about
+-1 ms on the 20 ms clock (160 other runs: 50.2 +- 0.4 ms, the grid 49.3).

CPU: jitter buffer + decode + PLC per 20 ms frame, next to the bare decoder
in the same run, without jitter and with 40 ms of it (where most gaps are
bridged, for G.722 with a guess at the next packet: the costliest path).
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from porch.bench import BenchResult

PASSAGES = [
    "Please wait at the gate while I come down to let you in. It will take a minute.",
    "The parcel for flat seven can go in the box beside the stairs, thank you very much.",
    "Could you tell me which number you are trying to reach today? The list is by the door.",
    "We will be home again around six, so leave it with the neighbour on the ground floor.",
    "Press the green button once and speak slowly into the grille. Someone will answer soon.",
    "The lift is broken this week, so the stairs are on your left after the second door.",
    "It is raining hard outside, please step under the roof while you wait for the lock.",
    "Thank you, the courier will come back on Monday morning at nine with the large box.",
]
VOICES = ["en+m3", "en+f3"]
LOSSES = [(0.0, None), (0.01, None), (0.03, None), (0.05, None), (0.03, 3.0)]
JITTERS = [0.0, 20.0, 40.0]
CODECS = [("PCMU", 8000, "nb"), ("G722", 16000, "wb")]


def have_tools() -> bool:
    return bool(shutil.which("espeak-ng") and shutil.which("sox"))


def make_speech(folder: Path, rate: int, count: int | None = None) -> list[np.ndarray]:
    """Speech passages at `rate` (mono int16), one per passage and voice."""
    from porch.media.netsim import read_wav

    out = []
    for v, voice in enumerate(VOICES):
        for i, text in enumerate(PASSAGES[:count]):
            raw = folder / f"s{v}_{i}.wav"
            wav = folder / f"s{v}_{i}_{rate}.wav"
            if not wav.exists():
                if not raw.exists():
                    subprocess.run(
                        ["espeak-ng", "-v", voice, "-s", "150", "-g", "8", "-w", str(raw), text],
                        check=True,
                        capture_output=True,
                    )
                # -D: no dither, so the same passages come out bit for bit every run
                # (sox dithers by default, which moved cells by up to 0.02 PESQ)
                subprocess.run(["sox", str(raw), "-D", "-r", str(rate), str(wav)], check=True)
            out.append(read_wav(wav)[0])
    return out


def score(job: tuple) -> tuple[float, float, float]:
    """One netsim run: (PESQ, late fraction, mean playout delay ms). In a worker."""
    from pesq import pesq

    from porch.media.netsim import simulate

    x, rate, mode, codec, imp, concealer, resync = job
    result = simulate(x, rate, codec, imp, concealer=concealer, resync=resync)
    stats = result.stats
    return (
        float(pesq(rate, x, result.out, mode)),
        stats["late"] / stats["packets"],
        stats["delay_mean_ms"],
    )


class Cell:
    """Scores of one grid cell over speech passages and seeds."""

    def __init__(self, runs: list[tuple[float, float, float]]) -> None:
        self.pesq = statistics.fmean(r[0] for r in runs)
        self.late = [r[1] for r in runs]
        self.delay = [r[2] for r in runs]
        self.n = len(runs)


def pesq_grid(
    speech: dict[int, list[np.ndarray]],
    cells: list[tuple],
    seeds: int,
    workers: int = 2,
) -> dict[tuple, Cell]:
    """Score cells (codec, loss, burst, jitter, concealer, resync)."""
    from porch.media.netsim import Impairment

    jobs, keys = [], []
    for cell in cells:
        codec, loss, burst, jitter, concealer, resync = cell
        rate, mode = next((r, m) for c, r, m in CODECS if c == codec)
        for i, x in enumerate(speech[rate]):
            for s in range(seeds):
                imp = Impairment(jitter, loss, burst, seed=1000 * s + i)
                jobs.append((x, rate, mode, codec, imp, concealer, resync))
                keys.append(cell)
    with ProcessPoolExecutor(workers) as pool:
        runs = list(pool.map(score, jobs, chunksize=4))
    out: dict[tuple, list] = {}
    for k, v in zip(keys, runs, strict=True):
        out.setdefault(k, []).append(v)
    return {k: Cell(v) for k, v in out.items()}


def _quality(quick: bool) -> list[BenchResult]:
    losses = [(0.0, None), (0.03, None), (0.03, 3.0)] if quick else LOSSES
    jitters = [0.0, 40.0] if quick else JITTERS
    seeds = 1 if quick else 2  # concealers are compared on the same packets
    with tempfile.TemporaryDirectory() as tmp:
        speech = {r: make_speech(Path(tmp), r, 2 if quick else None) for _c, r, _m in CODECS}
    cells = []
    for codec, _rate, _mode in CODECS:
        for loss, burst in losses:
            for jitter in jitters:
                methods = ["plc"] if loss == 0 else ["plc", "repeat", "zero"]
                cells += [(codec, loss, burst, jitter, m, None) for m in methods]
            if loss == 0.03 and burst is None:
                extra = ("appendix1", None) if codec == "PCMU" else ("plc", "none")
                cells += [(codec, loss, burst, j, *extra) for j in jitters]
    grid = pesq_grid(speech, cells, seeds)
    res = {k: c.pesq for k, c in grid.items()}
    n = len(speech[8000]) * seeds
    out: list[BenchResult] = []
    for codec, _rate, mode in CODECS:
        clean = statistics.fmean(res[(codec, 0.0, None, j, "plc", None)] for j in jitters)
        for loss, burst in losses:
            for jitter in jitters:
                ours = res[(codec, loss, burst, jitter, "plc", None)]
                kind = f"{loss:.0%} {'bursty' if burst else 'random'}"
                name = f"PESQ-{mode} {codec} {kind} jitter {jitter:.0f}ms"
                if loss == 0:
                    out.append(BenchResult("media", name, ours, "MOS-LQO", note=f"n={n}"))
                    continue
                rep = res[(codec, loss, burst, jitter, "repeat", None)]
                zero = res[(codec, loss, burst, jitter, "zero", None)]
                target = ""
                if loss == 0.03 and burst is not None:
                    target = "> repeat-last"
                elif codec == "PCMU" and loss == 0.03:
                    target = ">= repeat-last +0.1"
                elif codec == "G722" and loss == 0.03:
                    target = f">= {clean - 0.6:.2f} (no-loss - 0.6)"
                note = f"zero-fill {zero:.2f}, n={n}"
                extra = res.get((codec, loss, burst, jitter, "appendix1", None))
                if extra is not None:
                    note += f", Appendix I {extra:.2f}"
                extra = res.get((codec, loss, burst, jitter, "plc", "none"))
                if extra is not None:
                    note += f", no G.722 resync {extra:.2f}"
                out.append(
                    BenchResult("media", name, ours, "MOS-LQO", rep, "repeat-last", target, note)
                )
    return out + _delay(grid, max(jitters), speech[8000], seeds)


def _delay_run(job: tuple) -> tuple[float, float]:
    from porch.media.netsim import simulate

    x, imp, tick = job
    stats = simulate(x, 8000, "PCMU", imp, tick=tick).stats
    return stats["late"] / stats["packets"], stats["delay_mean_ms"]


def _delay(
    grid: dict[tuple, Cell], jitter: float, speech: list[np.ndarray], seeds: int
) -> list[BenchResult]:
    """Late loss and playout delay of the loss-free runs at the largest jitter, on a
    10 ms play clock (the grid) and again on a 20 ms one (one ALSA period per frame),
    over the same passages and seeds (so the same spread of clock phases).

    Delay is what netsim reports: for every frame played from a packet, the time
    its first sample is played minus the time the packet was sent, averaged."""
    from porch.media.netsim import Impairment

    jobs = [
        (x, Impairment(jitter, seed=1000 * s + i), 0.020)
        for i, x in enumerate(speech)
        for s in range(seeds)
    ]
    with ProcessPoolExecutor(2) as pool:
        coarse = list(pool.map(_delay_run, jobs))
    rows = [
        (codec, "10ms clock", grid[(codec, 0.0, None, jitter, "plc", None)])
        for codec, _r, _m in CODECS
    ]
    out = []
    p97 = 0.97 * jitter
    for codec, clock, cell in [*rows, ("PCMU", "20ms clock", None)]:
        if cell is None:
            late, delay, n = [c[0] for c in coarse], [c[1] for c in coarse], len(coarse)
        else:
            late, delay, n = cell.late, cell.delay, cell.n
        out += [
            BenchResult(
                "media", f"late loss {codec} jitter {jitter:.0f}ms {clock}",
                100 * statistics.fmean(late), "%", target="< 1",
                note=f"max {100 * max(late):.2f}%, n={n}",
            ),
            BenchResult(
                "media", f"mean playout delay {codec} jitter {jitter:.0f}ms {clock}",
                statistics.fmean(delay), "ms", p97 + 10, "p97(jitter)+10ms",
                f"<= {p97 + 10:.1f}", f"max {max(delay):.1f}",
            ),
        ]  # fmt: skip
    return out


def _cpu_times(fns: tuple, repeat: int) -> list[float]:
    """Least process CPU time of each function over `repeat` rounds, run in turn within
    each round so that they see the same machine: other load only ever adds."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            start = time.process_time()
            fn()
            best[i] = min(best[i], time.process_time() - start)
    return best


def _cpu(quick: bool) -> list[BenchResult]:
    """Receive path per 20 ms frame: put + two 10 ms pulls (jitter buffer, decode, PLC).

    Without jitter every packet is just in time, so a loss is concealed from the
    past alone; with 40 ms of jitter the frame after a loss is usually already
    buffered and the gap is bridged from both sides (for G.722 that also means
    guessing how the next packet decodes), the most expensive path."""
    from porch.media.codecs import get_codec
    from porch.media.jitter import Receiver
    from porch.media.netsim import loss_pattern
    from porch.media.rtp import RtpPacket, RtpSender

    frames = 500 if quick else 2000
    repeat = 3 if quick else 7
    out = []
    for name in ("PCMU", "G722"):
        codec = get_codec(name)
        n = codec.frame_samples(20)
        t = np.arange(frames * n) / codec.sample_rate
        wobble = 1 + np.sin(2 * np.pi * 0.7 * t)
        x = (8000 * np.sin(2 * np.pi * 200 * t) * wobble).astype(np.int16)
        enc = codec.encoder()
        sender = RtpSender()
        pkts = [
            RtpPacket.parse(
                sender.packet(enc.encode(x[i * n : (i + 1) * n]), codec.payload_type, 160)
            )
            for i in range(frames)
        ]
        jittered = 0.02 * np.arange(frames) + np.random.default_rng(4).uniform(0, 0.04, frames)
        order = np.argsort(jittered, kind="stable")
        for loss, jitter in ((0.0, 0), (0.03, 0), (0.03, 40)):
            lost = loss_pattern(frames, loss, None, np.random.default_rng(3))
            if jitter:
                arrivals = [(jittered[i], pkts[i]) for i in order if not lost[i]]
            else:
                arrivals = [(i * 0.02, pkts[i]) for i in range(frames) if not lost[i]]

            def receive(arrivals=arrivals, codec=codec, n=n, jitter=jitter) -> None:
                rx = Receiver(codec, initial_delay=0.0 if not jitter else 0.04)
                k = 0
                for i in range(2 * frames):
                    now = i * 0.01
                    while k < len(arrivals) and arrivals[k][0] <= now:
                        rx.put(arrivals[k][1], arrivals[k][0])
                        k += 1
                    rx.pull(now, n // 2)

            def decode_only(codec=codec, pkts=pkts) -> None:
                dec = codec.decoder()
                for p in pkts:
                    dec.decode(p.payload)

            per_frame, bare = (t / frames * 1e6 for t in _cpu_times((receive, decode_only), repeat))
            label = f"receive path CPU {name} {loss:.0%} loss"
            if jitter:
                label += f" jitter {jitter}ms"
            out.append(
                BenchResult(
                    "media", label, per_frame, "us/frame",
                    bare, "decoder alone", "< 40", f"{frames} frames, best of {repeat}",
                )
            )  # fmt: skip
    return out


def run(quick: bool) -> list[BenchResult]:
    results = _cpu(quick)
    try:
        import pesq  # noqa: F401
    except ImportError:
        return [*results, BenchResult("media", "PESQ", float("nan"), "", note="pesq missing")]
    if not have_tools():
        return [*results, BenchResult("media", "PESQ", float("nan"), "", note="no espeak/sox")]
    return results + _quality(quick)
