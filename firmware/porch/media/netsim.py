"""`porch tools netsim`: the whole receive path, offline, over an impaired network.

IN is encoded in 20 ms frames, packetised to RTP, sent through a simulated
network (random or Gilbert-Elliott loss, uniform delay jitter that reorders
packets once it exceeds 20 ms, or a replayed trace of arrival offsets) into
the same `jitter.Receiver` a call uses, pulled on a 10 ms play clock with a
random phase, and written to OUT at IN's rate and length. OUT is aligned with
IN: every played sample goes where its media timestamp says, so samples the
jitter buffer inserted (to grow its delay) are left out and samples it dropped
in silence are left as zeros.

Trace files have one line per packet in send order: the arrival offset in ms
relative to the send time, or ``-`` (also ``lost``/``x``) for a lost packet;
``#`` starts a comment. A trace shorter than the stream repeats.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported when a simulation runs, not when the CLI is built
    import numpy as np

PTIME = 0.020
TICK = 0.010  # play clock period (an ALSA period)
MIN_RATE, MAX_RATE = 8000, 96000  # WAV rates the tool converts to and from the codec's
LOST = float("nan")


@dataclass
class Impairment:
    jitter_ms: float = 0.0
    loss: float = 0.0
    burst: float | None = None  # mean burst length (packets): Gilbert-Elliott
    seed: int = 0
    trace: list[float] | None = None  # ms offsets, nan = lost


@dataclass
class Result:
    out: np.ndarray
    stats: dict = field(default_factory=dict)


# --- the network ------------------------------------------------------------------


def loss_pattern(n: int, loss: float, burst: float | None, rng: np.random.Generator) -> np.ndarray:
    """Boolean per packet. Random (Bernoulli) or a two-state Gilbert-Elliott
    chain that loses every packet in the bad state: entering it with
    probability p / (B (1 - p)) and leaving with 1 / B gives loss rate p and
    mean burst length B."""
    import numpy as np

    if loss <= 0:
        return np.zeros(n, dtype=bool)
    if burst is None or burst <= 1:
        return rng.random(n) < loss
    p_gb = min(1.0, loss / (burst * (1 - loss)))
    p_bg = 1.0 / burst
    u = rng.random(n)
    lost = np.zeros(n, dtype=bool)
    bad = rng.random() < loss  # start in the stationary distribution
    for i in range(n):
        bad = (u[i] >= p_bg) if bad else (u[i] < p_gb)
        lost[i] = bad
    return lost


def read_trace(path: Path) -> list[float]:
    offsets: list[float] = []
    for line in path.read_text().splitlines():
        token = line.split("#", 1)[0].replace(",", " ").split()
        if not token:
            continue
        word = token[-1].lower()
        offsets.append(LOST if word in ("-", "x", "lost", "nan") else float(word))
    if not offsets:
        raise ValueError(f"{path}: no packets in trace")
    return offsets


def arrivals(n: int, imp: Impairment) -> np.ndarray:
    """Arrival time of each packet (s), nan when lost. Packet i is sent at i * 20 ms."""
    import numpy as np

    # separate streams: the same seed loses the same packets whatever the jitter
    send = np.arange(n) * PTIME
    jitter_rng = np.random.default_rng([imp.seed, 1])
    delay = jitter_rng.uniform(0, imp.jitter_ms / 1000, n) if imp.jitter_ms > 0 else np.zeros(n)
    lost = loss_pattern(n, imp.loss, imp.burst, np.random.default_rng([imp.seed, 2]))
    if imp.trace:
        t = np.resize(np.asarray(imp.trace, dtype=float), n)
        lost |= np.isnan(t)
        delay = delay + np.nan_to_num(t) / 1000
    out = send + delay
    out[lost] = np.nan
    return out


# --- the run -------------------------------------------------------------------------


def simulate(
    pcm: np.ndarray,
    rate: int,
    codec_name: str = "PCMU",
    imp: Impairment | None = None,
    concealer: str = "plc",
    resync: str | None = None,
    tick: float = TICK,
) -> Result:
    """Run IN through encoder, network and receiver; OUT aligned with IN."""
    import numpy as np

    from porch.media.codecs import get_codec
    from porch.media.jitter import Receiver
    from porch.media.resample import resample
    from porch.media.rtp import RtpPacket, RtpSender

    imp = imp or Impairment()
    codec = get_codec(codec_name)
    if resync is not None:
        codec.resync = resync  # type: ignore[attr-defined]
    crate = codec.sample_rate
    x = resample(pcm, rate, crate) if rate != crate else np.asarray(pcm, dtype=np.int16)
    n_frame = codec.frame_samples(20)
    n_pkts = -(-len(x) // n_frame)
    x = np.concatenate((x, np.zeros(n_pkts * n_frame - len(x), dtype=np.int16)))

    sender = RtpSender(rng=Random(imp.seed))
    ts0 = sender.timestamp
    encoder = codec.encoder()
    packets = [
        sender.packet(
            encoder.encode(x[i * n_frame : (i + 1) * n_frame]),
            codec.payload_type,
            advance=codec.frame_ticks(20),
            marker=i == 0,
        )
        for i in range(n_pkts)
    ]
    arrive = arrivals(n_pkts, imp)
    order = [i for i in np.argsort(arrive, kind="stable") if not np.isnan(arrive[i])]
    reordered = sum(1 for a, b in itertools.pairwise(order) if b < a)

    receiver = Receiver(codec, concealer=concealer, trace=True, seed=imp.seed)
    tick_n = round(tick * crate)
    phase = np.random.default_rng(imp.seed + 1).uniform(0, tick)
    end = (np.nanmax(arrive) if len(order) else 0.0) + 1.0
    last_ts = ts0 + n_pkts * codec.frame_ticks(20)  # where the stream ends, unwrapped
    chunks = []
    k = 0
    t = phase
    while t < end:
        played_ts = receiver.play_timestamp
        if k == len(order) and played_ts is not None and played_ts >= last_ts:
            chunks.append(receiver.pull(t, receiver.queued))  # drain, then stop
            break
        while k < len(order) and arrive[order[k]] <= t:
            i = order[k]
            receiver.put(RtpPacket.parse(packets[i]), float(arrive[i]))
            k += 1
        chunks.append(receiver.pull(t, tick_n))
        t += tick
    played = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)

    # line the output up with the input by media timestamp
    spt = receiver.spt
    shift = codec.delay + receiver.plc.delay
    out = np.zeros(len(x), dtype=np.int16)
    delays = []
    pos = 0
    for kind, media, n, due in receiver.trace or []:
        if media >= 0 and pos < len(played):
            m = media - ts0 * spt - shift
            seg = played[pos : pos + n]
            lo, hi = max(m, 0), min(m + len(seg), len(out))
            if hi > lo:
                out[lo:hi] = seg[lo - m : hi - m]
            if kind == "audio":
                delays.append(due - (media - ts0 * spt) / crate)
        pos += n
    if rate != crate:
        out = resample(out, crate, rate)
    out = out[: len(pcm)]
    if len(out) < len(pcm):
        out = np.concatenate((out, np.zeros(len(pcm) - len(out), dtype=np.int16)))

    s = receiver.stats
    d = np.asarray(delays) * 1000 if delays else np.zeros(1)
    stats = {
        "packets": n_pkts,
        "lost": int(np.isnan(arrive).sum()),
        "late": s.late,
        "concealed": s.concealed_frames,
        "delay_mean_ms": round(float(d.mean()), 2),
        "delay_p95_ms": round(float(np.percentile(d, 95)), 2),
        "reordered": reordered,
        "duplicates": s.duplicates,
        "expanded_ms": round(1000 * s.expanded_samples / crate, 1),
        "dropped_ms": round(1000 * s.dropped_samples / crate, 1),
        "inserted_ms": round(1000 * s.inserted_samples / crate, 1),
        "target_ms": round(1000 * s.target, 1),
        "codec": codec.name,
    }
    return Result(out, stats)


# --- command line --------------------------------------------------------------------


def _rate(text: str) -> float:
    """A loss rate as a fraction (0.03) or a percentage (3%)."""
    value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError("loss is a fraction in [0, 1) or a percentage like 3%")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--in", dest="infile", type=Path, required=True, metavar="SPEECH.wav")
    parser.add_argument("--out", dest="outfile", type=Path, required=True, metavar="OUT.wav")
    parser.add_argument("--codec", default="PCMU", choices=["PCMU", "PCMA", "G722"])
    parser.add_argument(
        "--jitter-ms", type=float, default=0.0, metavar="J",
        help="delay each packet by an independent uniform 0..J ms",
    )  # fmt: skip
    parser.add_argument(
        "--loss", type=_rate, default=0.0, metavar="P",
        help="overall loss rate: fraction (0.03) or percentage (3%%)",
    )  # fmt: skip
    parser.add_argument(
        "--burst", type=float, default=None, metavar="B",
        help="bursty loss (Gilbert-Elliott) with mean burst length B packets",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, metavar="S")
    parser.add_argument(
        "--trace", type=Path, default=None, metavar="FILE",
        help="per-packet arrival offsets in ms, '-' for lost",
    )  # fmt: skip


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    import wave

    import numpy as np

    try:
        with wave.open(str(path), "rb") as w:
            if w.getnchannels() != 1 or w.getsampwidth() != 2:
                raise ValueError(f"{path}: need mono 16-bit PCM WAV")
            rate = w.getframerate()
            data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)
    except wave.Error as exc:
        raise ValueError(f"{path}: {exc}") from None
    return data, rate


def write_wav(path: Path, pcm: np.ndarray, rate: int) -> None:
    import wave

    import numpy as np

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(pcm, dtype="<i2").tobytes())


def run(args: argparse.Namespace) -> int:
    try:
        pcm, rate = read_wav(args.infile)
        if not MIN_RATE <= rate <= MAX_RATE:  # any rate between is converted both ways
            raise ValueError(
                f"{args.infile}: sample rate {rate} Hz outside {MIN_RATE}-{MAX_RATE} Hz"
            )
        trace = read_trace(args.trace) if args.trace else None
    except (OSError, ValueError, EOFError) as exc:
        print(f"netsim: {exc}", file=sys.stderr)
        return 2
    imp = Impairment(args.jitter_ms, args.loss, args.burst, args.seed, trace)
    result = simulate(pcm, rate, args.codec, imp)
    write_wav(args.outfile, result.out, rate)
    print(json.dumps(result.stats))
    return 0
