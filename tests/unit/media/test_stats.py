"""E-model MOS estimate and the per-call quality summary."""

from __future__ import annotations

from random import Random

import numpy as np
import pytest

from porch.media.codecs import get_codec
from porch.media.jitter import Receiver
from porch.media.rtcp import RtcpSession
from porch.media.rtp import RtpPacket
from porch.media.stats import burst_ratio, call_quality, mos_from_r, r_factor


def test_r_and_mos_reference_points():
    assert r_factor(0.0) == pytest.approx(93.2)
    assert mos_from_r(93.2) == pytest.approx(4.41, abs=0.01)
    assert mos_from_r(0) == 1.0 and mos_from_r(120) == 4.5
    # G.113: G.711 with PLC at 1 % random loss costs Ie,eff = 95 * 1 / (1 + 25.1)
    assert r_factor(1.0) == pytest.approx(93.2 - 95 / 26.1, abs=0.01)
    # delay: 0.024/ms up to 177.3 ms
    assert r_factor(0.0, one_way_delay_ms=150) == pytest.approx(93.2 - 3.6)


def test_mos_falls_with_loss_burstiness_and_delay():
    base = mos_from_r(r_factor(2.0))
    assert mos_from_r(r_factor(5.0)) < base
    assert mos_from_r(r_factor(2.0, burst_ratio=3.0)) < base
    assert mos_from_r(r_factor(2.0, one_way_delay_ms=300)) < base


def test_burst_ratio_from_loss_runs():
    assert burst_ratio(1000, 0, 0) == 1.0
    # random 5 %: runs are about as many as losses -> BurstR about 1
    assert burst_ratio(1000, 50, 48) == pytest.approx(1.0, abs=0.1)
    # the same losses in runs of 5: BurstR about 5 * 0.95
    assert burst_ratio(1000, 50, 10) == pytest.approx(4.76, abs=0.1)


def test_call_quality_from_a_call():
    codec = get_codec("PCMU")
    rx = Receiver(codec)
    session = RtcpSession(ssrc=1, cname="door", clock_rate=8000, rng=Random(0))
    enc = codec.encoder()
    x = (3000 * np.sin(np.arange(160 * 100) * 0.1)).astype(np.int16)
    for i in range(100):
        now = 0.02 * i
        if i not in (30, 31, 60):
            p = RtpPacket(0, 500 + i, 160 * i, 42, enc.encode(x[i * 160 : (i + 1) * 160]))
            session.on_rtp(p.ssrc, p.sequence, p.timestamp, now)
            rx.put(p, now)
        rx.pull(now, 160)
    q = call_quality("PCMU", rx, session)
    d = q.as_dict()
    assert d["lost"] == 3 and d["packets"] == 97
    assert d["loss_pct"] == pytest.approx(3.0, abs=0.1)
    assert d["burst_ratio"] > 1.0
    assert 3.0 < d["mos"] < 4.4
    assert d["concealed_ms"] >= 60 and d["rtt_ms"] is None
    assert set(d) >= {"jitter_ms", "playout_delay_ms", "duplicates", "late", "codec"}
