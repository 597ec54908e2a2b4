"""Per-call quality figures and an E-model (ITU-T G.107) MOS estimate.

`call_quality` gathers what the receive chain and RTCP know about a call
into one flat dict: for the event log at call end and live in /api/status.

The MOS is the G.107 E-model in its usual VoIP reduction: R = 93.2 - Id -
Ie,eff with default send/receive parameters, Id from the one-way delay
(the common simplification of G.107's Idd, linear to 177.3 ms, steeper
after), and Ie,eff from loss with G.113 packet-loss robustness Bpl = 25.1
(G.711 with Appendix I style concealment) and a burst ratio measured from the
loss runs. G.722 is rated on the same narrowband scale with the same
parameters: a conservative stand-in, since the wideband model (G.107.1) is
on a different scale. It is an estimate for trends and alarms, not a listening
test; porch.bench.media has PESQ for that.
"""

from __future__ import annotations

from dataclasses import dataclass

# G.113 Appendix I: equipment impairment Ie and loss robustness Bpl with PLC
CODEC_IMPAIRMENT = {"PCMU": (0.0, 25.1), "PCMA": (0.0, 25.1), "G722": (0.0, 25.1)}
R0 = 93.2  # R with G.107 default parameters and no impairment
DEVICE_DELAY_MS = 40.0  # framing, codec and sound card on our side, for Id


def r_factor(
    loss_pct: float,
    burst_ratio: float = 1.0,
    one_way_delay_ms: float = 0.0,
    ie: float = 0.0,
    bpl: float = 25.1,
) -> float:
    d = max(0.0, one_way_delay_ms)
    idd = 0.024 * d + (0.11 * (d - 177.3) if d > 177.3 else 0.0)
    ppl = max(0.0, min(100.0, loss_pct))
    burst = max(1.0, burst_ratio)
    ie_eff = ie + (95 - ie) * ppl / (ppl / burst + bpl)
    return R0 - idd - ie_eff


def mos_from_r(r: float) -> float:
    """G.107 Annex B mapping from R to an estimated conversational MOS."""
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    return 1 + 0.035 * r + r * (r - 60) * (100 - r) * 7e-6


def burst_ratio(frames: int, lost: int, bursts: int) -> float:
    """G.107 BurstR from loss runs: 1 for random loss, > 1 when losses clump.

    With p = P(loss after a good frame) and q = P(good after a lost frame),
    estimated from counts of frames, lost frames and loss runs, BurstR = 1/(p+q).
    """
    good = frames - lost
    if lost <= 0 or good <= 0 or bursts <= 0:
        return 1.0
    p = bursts / good
    q = bursts / lost
    return 1.0 / (p + q)


@dataclass
class Quality:
    codec: str
    packets: int
    lost: int  # cumulative, from the RTP sequence numbers (RFC 3550 A.3)
    loss_pct: float
    late: int
    duplicates: int
    jitter_ms: float  # RFC 3550 interarrival jitter
    rtt_ms: float | None
    concealed_ms: float
    playout_delay_ms: float
    burst_ratio: float
    mos: float

    def as_dict(self) -> dict:
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in vars(self).items()}


def call_quality(codec: str, receiver, rtcp=None) -> Quality:
    """Figures for one call from a `jitter.Receiver` and an `rtcp.RtcpSession`."""
    s = receiver.stats
    src = rtcp.source if rtcp is not None else None
    if src is not None:
        expected = max(src.expected, 0)
        lost = max(src.lost, 0)
        jitter_ms = 1000 * src.jitter / src.clock_rate
    else:
        expected = s.packets + s.lost
        lost = s.lost
        jitter_ms = 0.0
    total = max(expected, 1)
    late_or_lost = lost + s.late
    loss_pct = 100 * late_or_lost / total  # what the listener misses: lost or too late
    frames = s.frames + s.lost
    br = burst_ratio(frames, s.lost, s.loss_runs)
    rtt = rtcp.rtt if rtcp is not None else None
    one_way = (rtt or 0.0) * 500 + 1000 * s.delay_mean + DEVICE_DELAY_MS
    ie, bpl = CODEC_IMPAIRMENT.get(codec, (0.0, 25.1))
    mos = mos_from_r(r_factor(loss_pct, br, one_way, ie, bpl))
    return Quality(
        codec=codec,
        packets=s.packets,
        lost=lost,
        loss_pct=loss_pct,
        late=s.late,
        duplicates=s.duplicates,
        jitter_ms=jitter_ms,
        rtt_ms=None if rtt is None else 1000 * rtt,
        concealed_ms=receiver.concealed_ms,
        playout_delay_ms=1000 * s.delay_mean,
        burst_ratio=br,
        mos=mos,
    )
