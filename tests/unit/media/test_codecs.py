"""G.711 against a reference built from the tables of ITU-T G.711, G.722, resampling."""

from __future__ import annotations

import bisect

import numpy as np
import pytest

from porch.media import codecs
from porch.media.resample import Resampler, resample

# --- a reference G.711, written from the standard's tables ---------------------------
#
# µ-law (G.711 Table 2a): the 14-bit magnitude (here: the 16-bit sample >> 2) is
# quantised in 8 segments of 16 intervals; segment k starts at 32 * 2**k - 33
# and its intervals are 2**(k+1) wide (segment 0's first interval is [0, 1)).
# The decoded value is the middle of the interval. Character signal: polarity bit
# (1 = positive), then 3 segment bits + 4 interval bits, those seven inverted.
#
# A-law (Table 1a): the 12-bit magnitude (sample >> 3) in segment 0 = [0, 32) and
# segments k = 1..7 = [16 * 2**k, 32 * 2**k), each with 16 intervals; decoded value
# again the middle; sign bit 1 = positive, even bits inverted (XOR 0x55).
#
# A negative sample x is taken as magnitude ~x (one's complement), as the ITU-T
# reference software does, so that -1 is "negative zero".


def _ulaw_levels() -> tuple[list[int], list[int]]:
    lower, middle = [], []
    for k in range(8):
        start, width = 32 * 2**k - 33, 2 ** (k + 1)
        for m in range(16):
            lower.append(max(start + width * m, 0))
            middle.append(start + width * m + width // 2)
    return lower, middle


def _alaw_levels() -> tuple[list[int], list[int]]:
    lower, middle = [], []
    for k in range(8):
        start, width = (0, 2) if k == 0 else (16 * 2**k, 2**k)
        for m in range(16):
            lower.append(start + width * m)
            middle.append(start + width * m + width // 2)
    return lower, middle


U_LOW, U_MID = _ulaw_levels()
A_LOW, A_MID = _alaw_levels()


def ref_ulaw_encode(x: int) -> int:
    mag = (~x if x < 0 else x) >> 2
    code = bisect.bisect_right(U_LOW, mag) - 1  # last interval starting at or below mag
    return (0x80 if x >= 0 else 0) | (code ^ 0x7F)


def ref_ulaw_decode(b: int) -> int:
    y = U_MID[(b & 0x7F) ^ 0x7F] * 4
    return y if b & 0x80 else -y


def ref_alaw_encode(x: int) -> int:
    mag = (~x if x < 0 else x) >> 3
    code = bisect.bisect_right(A_LOW, mag) - 1
    return ((0x80 if x >= 0 else 0) | code) ^ 0x55


def ref_alaw_decode(b: int) -> int:
    v = b ^ 0x55
    y = A_MID[v & 0x7F] * 8
    return y if v & 0x80 else -y


ALL = np.arange(-32768, 32768, dtype=np.int32)


@pytest.mark.parametrize(
    ("encode", "ref"),
    [(codecs.ulaw_encode, ref_ulaw_encode), (codecs.alaw_encode, ref_alaw_encode)],
)
def test_g711_encoder_matches_reference_for_every_sample(encode, ref):
    got = np.frombuffer(encode(ALL.astype(np.int16)), dtype=np.uint8)
    want = np.array([ref(int(x)) for x in ALL], dtype=np.uint8)
    bad = np.nonzero(got != want)[0]
    assert len(bad) == 0, f"first mismatch at sample {ALL[bad[0]]}"


@pytest.mark.parametrize(
    ("decode", "ref"),
    [(codecs.ulaw_decode, ref_ulaw_decode), (codecs.alaw_decode, ref_alaw_decode)],
)
def test_g711_decoder_matches_reference_for_every_code(decode, ref):
    got = decode(bytes(range(256)))
    assert got.tolist() == [ref(b) for b in range(256)]


def test_g711_known_points():
    # well-known values: silence codes, the full-scale codes and their decoded levels
    assert codecs.ulaw_encode(np.array([0, -1, 32767, -32768], np.int16)) == b"\xff\x7f\x80\x00"
    assert codecs.alaw_encode(np.array([0, -1, 32767, -32768], np.int16)) == b"\xd5\x55\xaa\x2a"
    assert codecs.ulaw_decode(b"\x80\x00").tolist() == [32124, -32124]
    assert codecs.alaw_decode(b"\xaa\x2a\xd5").tolist() == [32256, -32256, 8]


@pytest.mark.parametrize("name", ["PCMU", "PCMA"])
def test_g711_decode_encode_is_identity_on_codes(name):
    codec = codecs.get_codec(name)
    data = bytes(range(256))
    again = codec.encoder().encode(codec.decoder().decode(data))
    # the two zero codes decode to the same value; every other code survives
    dec = codec.decoder().decode(data)
    assert codec.decoder().decode(again).tolist() == dec.tolist()
    assert sum(a != b for a, b in zip(again, data, strict=True)) <= 1


def test_codec_table():
    assert codecs.get_codec("pcmu").payload_type == 0
    assert codecs.get_codec("PCMA").payload_type == 8
    g722 = codecs.get_codec("G722")
    assert (g722.payload_type, g722.clock_rate, g722.sample_rate) == (9, 8000, 16000)
    assert g722.frame_samples(20) == 320 and g722.frame_ticks(20) == 160
    with pytest.raises(ValueError):
        codecs.get_codec("OPUS")


def _tone(rate: int, f: float, seconds: float, amp: float = 8000) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * f * t)).astype(np.int16)


def test_g722_round_trip_and_delay():
    codec = codecs.get_codec("G722")
    x = _tone(16000, 1000, 0.5) + _tone(16000, 5000, 0.5, 2000)
    enc, dec = codec.encoder(), codec.decoder()
    frames = [enc.encode(x[i : i + 320]) for i in range(0, len(x), 320)]
    assert all(len(f) == 160 for f in frames)
    y = np.concatenate([dec.decode(f) for f in frames]).astype(float)
    d = codec.delay
    err = y[d + 400 :] - x[400 : len(x) - d]
    snr = 10 * np.log10(np.sum(x[400:].astype(float) ** 2) / np.sum(err**2))
    assert snr > 20  # wideband content survives, aligned by the stated delay


@pytest.mark.parametrize("mode", ["reencode", "none", "reset"])
def test_g722_decoder_survives_concealment(mode):
    codec = codecs.G722Codec(resync=mode)
    x = _tone(16000, 440, 1.0)
    enc, dec = codec.encoder(), codec.decoder()
    out = []
    for i in range(0, len(x), 320):
        payload = enc.encode(x[i : i + 320])
        if i // 320 in (10, 11):
            dec.conceal(x[i : i + 320], x[i + 320 : i + 342])
            out.append(x[i : i + 320])
        else:
            out.append(dec.decode(payload))
    y = np.concatenate(out).astype(float)
    tail = slice(16000 - 3200, 16000 - 22)
    err = y[tail][22:] - x[tail][:-22]
    assert 10 * np.log10(np.sum(x[tail].astype(float) ** 2) / np.sum(err**2)) > 15
    with pytest.raises(ValueError):
        codecs.G722Codec(resync="magic").decoder()


def _voice(rate: int, seconds: float) -> np.ndarray:
    """Harmonics of a wandering 120 Hz pitch, a syllable-rate wobble and a little noise."""
    t = np.arange(int(rate * seconds)) / rate
    phase = 2 * np.pi * np.cumsum(120 + 15 * np.sin(2 * np.pi * 2 * t)) / rate
    x = sum(np.sin(k * phase + k) / k for k in range(1, 50) if k * 140 < 7000)
    noise = np.random.default_rng(1).standard_normal(len(t))
    x = x * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.05 * noise
    return (6000 * x / np.abs(x).max()).astype(np.int16)


def test_g722_provisional_guess_leaves_the_decoder_alone_and_beats_a_frozen_state():
    """The guess at the packet after a loss comes from a stand-in decoder: the real one
    decodes exactly as if it had never been asked. Where a bridge uses the guess (its
    start, past the first 4 ms) it is closer to the truth than decoding that packet
    with the state left as it was before the loss."""
    codec = codecs.get_codec("G722")
    x = _voice(16000, 1.0)
    enc = codec.encoder()
    payloads = [enc.encode(x[i : i + 320]) for i in range(0, len(x), 320)]
    truth = codec.decoder()
    ref = [truth.decode(p) for p in payloads]
    used = slice(64, 224)
    err_guess = err_frozen = energy = 0.0
    for k in range(5, 45, 3):  # frame k is lost; its true audio stands in for the concealment
        a, b = codec.decoder(), codec.decoder()
        for p in payloads[:k]:
            a.decode(p), b.decode(p)
        guess = a.provisional(ref[k], ref[k + 1][:22], payloads[k + 1]).astype(float)
        frozen = a.decode(payloads[k + 1]).astype(float)
        assert np.array_equal(frozen, b.decode(payloads[k + 1]))
        want = ref[k + 1][used].astype(float)
        err_guess += np.sum((guess[used] - want) ** 2)
        err_frozen += np.sum((frozen[used] - want) ** 2)
        energy += np.sum(want**2)
    assert 10 * np.log10(energy / err_guess) > 6
    assert err_guess < 0.6 * err_frozen


# --- resampling ------------------------------------------------------------------


def _gain_db(x_in: np.ndarray, y: np.ndarray) -> float:
    mid = slice(len(y) // 4, 3 * len(y) // 4)
    power = max(float(np.mean(y[mid].astype(float) ** 2)), 1e-12)
    return 10 * np.log10(power / np.mean(x_in.astype(float) ** 2))


@pytest.mark.parametrize(("a", "b"), [(16000, 8000), (48000, 16000), (48000, 8000)])
def test_downsampling_removes_aliases_and_keeps_the_band(a, b):
    low = min(a, b)
    for f in (300, 1000, 3000 * low / 8000):
        x = _tone(a, f, 0.5)
        assert abs(_gain_db(x, resample(x, a, b))) < 0.1
    for f in (0.5625 * low + 50, 0.7 * low, 0.95 * a / 2):
        x = _tone(a, f, 0.5)
        assert _gain_db(x, resample(x, a, b)) < -60, f


@pytest.mark.parametrize(("a", "b"), [(8000, 16000), (16000, 48000)])
def test_upsampling_suppresses_images(a, b):
    x = _tone(a, 1000, 0.5)
    y = resample(x, a, b)
    spec = np.abs(np.fft.rfft(y[1000:-1000].astype(float) * np.hanning(len(y) - 2000)))
    freqs = np.fft.rfftfreq(len(y) - 2000, 1 / b)
    image = spec[np.abs(freqs - (a - 1000)) < 50].max()
    assert 20 * np.log10(image / spec.max()) < -60


def test_resampler_streams_like_one_block_and_is_aligned():
    x = _tone(16000, 700, 1.0) + _tone(16000, 2100, 1.0, 3000)
    one = Resampler(16000, 8000).process(x)
    r = Resampler(16000, 8000)
    blocks = np.concatenate([r.process(c) for c in np.array_split(x, 53)])
    assert np.array_equal(one, blocks)
    y = resample(x, 16000, 8000)
    want = _tone(8000, 700, 1.0).astype(float) + _tone(8000, 2100, 1.0, 3000)
    assert len(y) == 8000
    assert np.max(np.abs(y[200:-200] - want[200:-200])) < 4
