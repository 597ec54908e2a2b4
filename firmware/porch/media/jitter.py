"""Adaptive jitter buffer and the receive chain behind it. Sans-IO.

`Receiver` is what the audio clock talks to: RTP audio packets go in with
their arrival time (`put`), PCM comes out on the play clock (`pull`), already
decoded and concealed. Inside:

* packets are keyed by extended RTP timestamp, not sequence number, so
  reordering, duplicates, telephone-event packets sharing the sequence space,
  and silence gaps need no special cases; a late packet (its time has been
  played) is counted and dropped;
* the playout delay follows a high percentile (97th, as NetEq) of the recent
  relative transit delay: transit = arrival - timestamp / clock, taken relative
  to the fastest packet of the last 200. The *slack* of a frame is how late its
  packet may arrive and still be played; the target keeps the 97th percentile
  of transit within it, and the rest of the delay is kept as small as the play
  clock's granularity allows (see "Where the playout point sits" below);
* the delay grows when a packet is not there in time and the target says
  waiting is right: the gap is concealed and the frame kept (an "expand", in
  NetEq's words); it shrinks, or grows ahead of need, only in quiet frames or
  comfort noise, by dropping or inserting samples, so speech is not cut;
* a missing frame whose time is up is concealed (plc.py), with the next frame
  used to bridge the gap when it is already here: decoded for real (G.711),
  or guessed by a stand-in decoder (G.722, whose decoder state the loss
  leaves stale; the bridge then reaches 4 ms into the next frame and fades
  out there, and the decoder is re-trained on the bridged gap);
* comfort noise (RFC 3389, payload type 13) plays at its level until speech
  returns; a marker bit or a timestamp jump re-anchors the timeline; a new SSRC
  resets the decoder and the buffer but keeps the delay statistics.

Where the playout point sits. Decoded audio goes through a sample FIFO and the
buffer drops or inserts any number of samples, so the playout point is not
tied to packet boundaries. What is tied to the play clock is the *deadline*:
a pull at time t must hand over everything it returns, so the packet holding
any sample of that pull has to be here at t. Starting a frame f samples into
a pull adds f to its delay and buys nothing (its packet was still needed at
t), and the slack of every frame, pull time minus earliest arrival, can only
take values a whole pull period apart for a given clock phase. The best point
is therefore the smallest slack on that grid that covers the target, with
frames starting at the pull boundaries; on average over clock phases it costs
half a pull period above the target (10 ms with the 20 ms ALSA period).
Following the target to the sample instead was measured (porch.bench.media's
grid, 40 ms jitter, 20 ms clock): mean delay 49.3 -> 44.7 ms, but only by
stretching with concealment (expands) whenever a packet was not yet there -
1-5 % of the audio - and PESQ fell 4.13 -> 3.78 (G.711) and 3.59 -> 3.19
(G.722): late loss under another name.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

import numpy as np

from porch.media.codecs import Codec
from porch.media.plc import CONCEALERS, Concealer
from porch.media.rtp import PT_CN, RtpPacket, Unwrapper

QUANTILE = 0.97
WINDOW = 200  # packets of transit history (4 s at 20 ms)
INITIAL_DELAY = 0.040  # s, until the statistics say otherwise
MAX_DELAY = 0.5  # s, the target never goes above this
JUMP = 1.0  # s of sudden transit change that means a new timeline, not jitter
RETARGET_EVERY = 5  # packets between percentile updates
HYSTERESIS = 0.002  # s of excess delay ignored
FORCE_DROP = 0.100  # s of excess delay that is shed even outside silence
EPS = 1e-6  # s: timing comparisons tolerate float rounding
# s of slack beyond the target: a packet due exactly at a pull is not late. It costs
# its own size in delay; without it, at 40 ms jitter and no loss, late loss went
# 0.02 % -> 0.2 % and PESQ down 0.04 (G.711) / 0.06 (G.722) on the bench's passages.
SAFETY = 0.001
QUIET_DBFS = -55.0  # always quiet below this
LOUD_DBFS = -30.0  # never quiet above this


@dataclass
class ReceiverStats:
    packets: int = 0  # audio packets accepted
    duplicates: int = 0
    late: int = 0  # arrived after their time was played
    lost: int = 0  # frames concealed whose packet never came (a later one did)
    concealed_frames: int = 0  # frames concealed for any reason: lost, late, stream paused
    frames: int = 0  # frames played from packets
    loss_runs: int = 0  # runs of consecutive lost frames (for the E-model burst ratio)
    concealed_samples: int = 0  # including expands
    expanded_samples: int = 0  # concealment inserted to grow the delay
    dropped_samples: int = 0  # removed in silence to shrink the delay
    inserted_samples: int = 0  # added in silence to grow the delay
    cn_frames: int = 0
    resets: int = 0  # SSRC changes and timestamp jumps
    delay_sum: float = 0.0  # playout delay (s) summed over played frames
    delay_count: int = 0
    target: float = INITIAL_DELAY
    delays: list[float] = field(default_factory=list)  # per frame, only when recording

    @property
    def delay_mean(self) -> float:
        return self.delay_sum / self.delay_count if self.delay_count else 0.0


class TransitStats:
    """Recent relative transit delays and their percentile.

    `base` (the fastest recent transit) is kept up to date cheaply on each
    add and recomputed exactly with each `spread`, so a fast packet that
    slides out of the window is forgotten at the next retarget.
    """

    def __init__(self, window: int = WINDOW) -> None:
        self._t = np.zeros(window)
        self._n = 0
        self._i = 0
        self.base = float("inf")

    def add(self, transit: float) -> None:
        i = self._i
        self._t[i] = transit
        self._i = i + 1 if i + 1 < len(self._t) else 0
        if self._n < len(self._t):
            self._n += 1
        if transit < self.base:
            self.base = transit

    def shift(self, offset: float) -> None:
        """Move the history onto a new timeline (after a timestamp jump)."""
        self._t[: self._n] += offset
        self.base += offset

    @property
    def count(self) -> int:
        return self._n

    def spread(self, q: float) -> float:
        """q-quantile of transit above the fastest packet."""
        if not self._n:
            return 0.0
        t = self._t[: self._n]
        self.base = float(t.min())
        k = min(int(np.ceil(q * self._n)) - 1, self._n - 1)
        return float(np.partition(t, k)[k]) - self.base


class _Fifo:
    """Decoded samples waiting for the play clock (no per-frame reallocation)."""

    def __init__(self, capacity: int) -> None:
        self.buf = np.zeros(capacity, dtype=np.int16)
        self.r = 0
        self.w = 0

    def __len__(self) -> int:
        return self.w - self.r

    def push(self, x: np.ndarray) -> None:
        n = len(x)
        if self.w + n > len(self.buf):
            live = self.w - self.r
            if live + n > len(self.buf):
                self.buf = np.concatenate((self.buf[self.r : self.w], np.zeros(live + n, np.int16)))
            else:
                self.buf[:live] = self.buf[self.r : self.w]
            self.r, self.w = 0, live
        self.buf[self.w : self.w + n] = x
        self.w += n

    def pop(self, n: int) -> np.ndarray:
        out = self.buf[self.r : self.r + n].copy()
        self.r += n
        return out


class _Entry:
    __slots__ = ("arrival", "marker", "payload", "pt", "seq")

    def __init__(self, seq: int, pt: int, payload: bytes, marker: bool, arrival: float) -> None:
        self.seq = seq
        self.pt = pt
        self.payload = payload
        self.marker = marker
        self.arrival = arrival


class Receiver:
    """Jitter buffer + decoder + concealment for one incoming audio stream.

    `pull(now, n)` returns `n` samples at ``codec.sample_rate``; call it from the
    audio clock. With ``trace=True`` every stretch of output is logged as
    (kind, media sample index or -1, samples, time its first sample is due),
    kind being "audio", "conceal", "noise", "expand", "insert" or "silence";
    that is how netsim lines the output up with its input.
    """

    def __init__(
        self,
        codec: Codec,
        concealer: str = "plc",
        quantile: float = QUANTILE,
        initial_delay: float = INITIAL_DELAY,
        trace: bool = False,
        seed: int = 0,
    ) -> None:
        self.codec = codec
        self._pt = codec.payload_type
        self.decoder = codec.decoder()
        self.rate = codec.sample_rate
        self.clock = codec.clock_rate
        self.spt = self.rate // self.clock  # PCM samples per timestamp tick (2 for G.722)
        self.frame_ticks = codec.frame_ticks(20)
        self.frame = codec.frame_samples(20)
        self._concealer_name = concealer
        self.plc = CONCEALERS[concealer](self.rate)
        # bridging a gap needs the next frame decoded first: stateless codecs decode
        # it for real; a stateful one (G.722) can only guess it (`provisional`), so
        # its bridge reaches `_tail` samples into that frame and is faded out there
        self._bridge = not codec.stateful
        self._guess = (
            codec.stateful
            and hasattr(self.decoder, "provisional")
            and isinstance(self.plc, Concealer)
        )
        self._tail = self.rate // 250  # 4 ms
        self.quantile = quantile
        self.stats = ReceiverStats(target=initial_delay)
        self.trace: list[tuple[str, int, int, float]] | None = [] if trace else None
        self._initial = initial_delay
        self._transit = TransitStats()
        self._fifo = _Fifo(8 * self.frame)
        self._rng = np.random.default_rng(seed)
        self._floor = 1e12
        self._quiet_abs = (32768 * 10 ** (QUIET_DBFS / 20)) ** 2
        self._loud_abs = (32768 * 10 ** (LOUD_DBFS / 20)) ** 2
        self._pull_dt = 0.02
        self._run_counted = False
        self._unconfirmed = 0
        self._reset_stream()

    # --- stream state -----------------------------------------------------------

    def _reset_stream(self) -> None:
        self.ssrc: int | None = None
        self._unwrap = Unwrapper(32)
        self._keys: list[int] = []
        self._entries: dict[int, _Entry] = {}
        self._seen: dict[int, None] = {}  # recently received timestamps (duplicates)
        self._play_ts: int | None = None
        self._cn_level: float | None = None  # rms while comfort noise plays
        self._predecoded: tuple[int, np.ndarray] | None = None  # next frame, decoded early
        self._since_retarget = RETARGET_EVERY

    # --- input --------------------------------------------------------------------

    def put(self, packet: RtpPacket, arrival: float) -> str:
        """Take an audio or CN packet; returns what became of it:
        "ok", "duplicate", "late", "reset" (new SSRC or timeline) or "ignored"."""
        pt = packet.payload_type
        if pt != self._pt and pt != PT_CN:
            return "ignored"
        status = "ok"
        new_source = False
        if packet.ssrc != self.ssrc:
            if self.ssrc is not None:
                self._reset_stream()
                self.decoder.reset()
                self.stats.resets += 1
                status = "reset"
                new_source = True
            self.ssrc = packet.ssrc
        ts = self._unwrap.extend(packet.timestamp)
        transit = arrival - ts / self.clock
        tr = self._transit
        if new_source and tr.count:
            tr.shift(transit - tr.base)  # its own timestamp origin: keep only the spread
        elif tr.count and abs(transit - tr.base) > JUMP:
            # the sender's clock jumped: carry the statistics over, restart the timeline
            tr.shift(transit - tr.base)
            self._keys.clear()
            self._entries.clear()
            self._play_ts = None
            self.stats.resets += 1
            status = "reset"
        seen = self._seen
        if ts in seen:
            self.stats.duplicates += 1
            return "duplicate"
        seen[ts] = None
        if len(seen) > 256:
            del seen[next(iter(seen))]
        tr.add(transit)
        self._since_retarget += 1
        play = self._play_ts
        if play is not None and ts < play:
            if (packet.marker or self._cn_level is not None) and not self._keys:
                self._play_ts = ts  # a talkspurt starts: take it, the delay shrinks later
            else:
                self.stats.late += 1
                self._since_retarget = RETARGET_EVERY  # re-plan at once, not in 5 packets
                if self._unconfirmed:
                    self._unconfirmed -= 1  # not lost after all, just late
                elif self.stats.lost:
                    self.stats.lost -= 1
                return "late"
        if self._unconfirmed:
            self.stats.lost += self._unconfirmed  # the stream went on: those were lost
            self._unconfirmed = 0
            self._count_run()
        self._entries[ts] = _Entry(packet.sequence, pt, packet.payload, packet.marker, arrival)
        keys = self._keys
        if not keys or ts > keys[-1]:
            keys.append(ts)
        else:
            bisect.insort(keys, ts)
        self.stats.packets += 1
        return status

    # --- output -------------------------------------------------------------------

    def target(self) -> float:
        """Slack the next frame should have: the transit spread we plan for."""
        if self._since_retarget >= RETARGET_EVERY:
            self._since_retarget = 0
            n = self._transit.count
            if n >= 10:
                spread = self._transit.spread(self.quantile)
                if n < 50:  # few samples: do not go below the start value yet
                    spread = max(spread, self._initial)
                self.stats.target = min(spread, MAX_DELAY)
        return self.stats.target

    def pull(self, now: float, n: int) -> np.ndarray:
        """The next `n` samples to play; `now` is when the first of them is due."""
        self._pull_dt = n / self.rate
        fifo = self._fifo
        while fifo.w - fifo.r < n:
            self._produce(now, n - (fifo.w - fifo.r))
        return fifo.pop(n)

    def _emit(self, pcm: np.ndarray, media: int, now: float, kind: str) -> None:
        if self.trace is not None:
            self.trace.append((kind, media, len(pcm), now + len(self._fifo) / self.rate))
        self._fifo.push(pcm)

    def _produce(self, now: float, need: int) -> None:
        base = self._transit.base
        if self._play_ts is None:
            if not self._keys or now - (self._keys[0] / self.clock + base) < self.target() + SAFETY:
                self._emit(np.zeros(need, dtype=np.int16), -1, now, "silence")
                return
            self._play_ts = self._keys[0]
        play = self._play_ts
        slack = now - (play / self.clock + base)
        entry = self._entries.pop(play, None)
        if entry is not None:
            keys = self._keys
            if keys[0] == play:
                del keys[0]
            else:
                keys.remove(play)
            self._play(entry, play, slack, now)
            return
        # the frame at `play` is not here
        later = self._keys[0] if self._keys else None
        if later is not None and later < play:  # stale keys (timeline moved under them)
            for k in [k for k in self._keys if k < play]:
                self._keys.remove(k)
                self._entries.pop(k, None)
            later = self._keys[0] if self._keys else None
        if later is not None and later - play < self.frame_ticks:
            self._play_ts = later  # timestamps not on our frame grid: follow the sender
            return
        if self._cn_level is not None:
            self._comfort_noise(play, self.frame, now)  # silence suppression, not loss
            return
        if slack < self.target() + SAFETY:
            # the packet may still come: conceal just what the clock needs, keep the frame
            n = need + (need & 1)  # even, for G.722's sample pairs
            pcm = self.plc.lost(n)
            self.stats.expanded_samples += n
            self.stats.concealed_samples += n
            self._emit(pcm, -1, now, "expand")
            return
        # its time is up: conceal the frame and move on
        gap = self.frame_ticks if later is None else min(later - play, self.frame_ticks)
        n = gap * self.spt
        future = None
        tail = 0
        if later == play + gap and (self._bridge or (self._guess and not self.plc.in_gap)):
            nxt = self._entries[later]
            if nxt.pt == self.codec.payload_type:
                if self._bridge:
                    future = self.decoder.decode(nxt.payload)
                    self._predecoded = (later, future)
                else:
                    d = self.codec.delay
                    ext = self.plc.extension(n + d)
                    future = self.decoder.provisional(ext[:n], ext[n:], nxt.payload)
                    tail = self._tail
        pcm = self.plc.lost(n, future, tail) if tail else self.plc.lost(n, future)
        self.decoder.conceal(self.plc.last_synthetic, self.plc.peek(self.codec.delay))
        stats = self.stats
        stats.concealed_frames += 1
        if later is not None:
            stats.lost += 1
            self._count_run()
        else:
            self._unconfirmed += 1  # lost, unless the stream simply stopped
        stats.concealed_samples += n
        self._play_ts = play + gap
        self._emit(pcm, play * self.spt, now, "conceal")

    def _count_run(self) -> None:
        if not self._run_counted:
            self.stats.loss_runs += 1
            self._run_counted = True

    def _play(self, entry: _Entry, play: int, slack: float, now: float) -> None:
        stats = self.stats
        if entry.pt == PT_CN:
            level = entry.payload[0] & 0x7F if entry.payload else 127
            self._cn_level = 32767 * 10 ** (-level / 20)
            stats.cn_frames += 1
            self._comfort_noise(play, self.frame, now, slack)
            return
        self._cn_level = None
        self._run_counted = False
        self.stats.frames += 1
        pre = self._predecoded
        if pre is not None and pre[0] == play:
            pcm = pre[1]
        else:
            pcm = self.decoder.decode(entry.payload)
        self._predecoded = None
        pcm = self.plc.good(pcm)
        self._play_ts = play + len(pcm) // self.spt
        self._adapt_and_emit(pcm, play * self.spt, slack, now, None, "audio")

    def _is_quiet(self, pcm: np.ndarray) -> bool:
        """Below -55 dBFS, or within 6 dB of the noise floor and below -30 dBFS.
        Only asked when the delay wants changing, so the floor tracks those frames."""
        x = pcm.astype(np.float32)
        energy = float(np.dot(x, x)) / max(len(x), 1)
        self._floor = energy if energy < self._floor else self._floor * 1.02
        return energy < self._quiet_abs or (energy < 4 * self._floor and energy < self._loud_abs)

    def _comfort_noise(self, play: int, n: int, now: float, slack: float | None = None) -> None:
        rms = self._cn_level or 0.0
        pcm = np.clip(self._rng.standard_normal(n) * rms, -32768, 32767).astype(np.int16)
        pcm = self.plc.good(pcm)
        self._play_ts = play + n // self.spt
        if slack is None:
            self._emit(pcm, play * self.spt, now, "noise")
        else:
            self._adapt_and_emit(pcm, play * self.spt, slack, now, True, "noise")

    def _adapt_and_emit(
        self, pcm: np.ndarray, media: int, slack: float, now: float, quiet: bool | None, kind: str
    ) -> None:
        stats = self.stats
        fifo = self._fifo
        delay = slack + (fifo.w - fifo.r) / self.rate
        target = self.target() + SAFETY
        step = self._pull_dt
        # best delay on our clock grid: the smallest slack >= target, nothing queued
        best = slack - math.floor((slack - target) / step + EPS) * step
        excess = delay - best
        if excess > HYSTERESIS:
            if excess > FORCE_DROP or (quiet if quiet is not None else self._is_quiet(pcm)):
                k = min(int(excess * self.rate), len(pcm))
                k -= k % self.spt
                if k:
                    stats.dropped_samples += k
                    pcm = pcm[k:]
                    media += k
                    delay -= k / self.rate
        elif excess < -HYSTERESIS and (quiet if quiet is not None else self._is_quiet(pcm)):
            k = int(-excess * self.rate)
            k -= k % self.spt
            if k:
                stats.inserted_samples += k
                filler = np.resize(pcm, k) if len(pcm) else np.zeros(k, dtype=np.int16)
                self._emit(filler, -1, now, "insert")
                delay += k / self.rate
        stats.delay_sum += delay
        stats.delay_count += 1
        if self.trace is not None:
            stats.delays.append(delay)
        if len(pcm):
            self._emit(pcm, media, now, kind)

    @property
    def queued(self) -> int:
        """Decoded samples waiting for the play clock."""
        return len(self._fifo)

    @property
    def play_timestamp(self) -> int | None:
        """Extended RTP timestamp of the next frame to play (None before the start)."""
        return self._play_ts

    # --- reporting ----------------------------------------------------------------

    @property
    def concealed_ms(self) -> float:
        return 1000 * self.stats.concealed_samples / self.rate

    def snapshot(self) -> dict:
        s = self.stats
        return {
            "packets": s.packets,
            "late": s.late,
            "duplicates": s.duplicates,
            "lost": s.lost,
            "concealed_ms": round(self.concealed_ms, 1),
            "playout_delay_ms": round(1000 * s.delay_mean, 1),
            "target_ms": round(1000 * s.target, 1),
            "resets": s.resets,
        }
