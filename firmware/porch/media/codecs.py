"""Audio codecs behind one small interface: G.711 µ-law/A-law and G.722.

A `Codec` describes a payload format (name, RTP payload type, RTP clock, PCM
rate) and makes per-stream `Encoder`/`Decoder` objects. PCM is always a 1-D
``numpy.int16`` array at ``codec.sample_rate``.

G.711 is done with lookup tables built once at import: 64 Ki entries for the
encoder (indexed by the 16-bit sample as unsigned) and 256 for the decoder, so
a 20 ms frame is a single numpy gather. The tables follow ITU-T G.711: µ-law
quantises the 14-bit magnitude and A-law the 12-bit magnitude of the sample;
negative samples use their one's complement magnitude (``~x``), the
convention of the ITU-T reference software, so -1 maps to "negative zero".

G.722 uses the `g722` package (module ``G722``). Its RTP clock is 8000 even
though it samples at 16 kHz (RFC 3551), and as an ADPCM codec its decoder
carries state that a lost packet leaves stale: `G722Decoder.conceal` re-trains
that state from the concealment signal (see plc.py for the signal itself).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

# --- G.711 -------------------------------------------------------------------


def _magnitudes(x: np.ndarray) -> np.ndarray:
    """Sign-magnitude view of 16-bit samples (one's complement for negatives)."""
    x = x.astype(np.int32)
    return np.where(x < 0, ~x, x)


def _build_ulaw_encode() -> np.ndarray:
    x = np.arange(-32768, 32768, dtype=np.int32)
    biased = np.minimum((_magnitudes(x) >> 2) + 33, 0x1FFF)
    # segment = position of the leading one of the biased magnitude, minus 5
    seg = np.floor(np.log2(biased)).astype(np.int32) - 5
    mant = (biased >> (seg + 1)) & 0x0F
    code = (seg << 4) | mant
    out = np.where(x >= 0, 0xFF - code, 0x7F - code).astype(np.uint8)
    # index by the sample's bit pattern as uint16: reorder -32768..32767 -> 0..65535
    return np.roll(out, -32768)


def _build_ulaw_decode() -> np.ndarray:
    b = np.arange(256, dtype=np.int32)
    inv = ~b & 0xFF
    seg = (inv >> 4) & 7
    mant = inv & 0x0F
    mag = ((2 * mant + 33) << seg) - 33
    return (np.where(inv & 0x80, -mag, mag) * 4).astype(np.int16)


def _build_alaw_encode() -> np.ndarray:
    x = np.arange(-32768, 32768, dtype=np.int32)
    mag = _magnitudes(x) >> 3  # 12-bit magnitude, 0..4095
    bits = np.floor(np.log2(np.maximum(mag, 1))).astype(np.int32) + 1
    seg = np.where(mag < 32, 0, bits - 5)
    mant = np.where(seg == 0, mag >> 1, (mag >> np.maximum(seg, 1)) & 0x0F)
    code = (seg << 4) | mant
    out = (np.where(x >= 0, 0x80 | code, code) ^ 0x55).astype(np.uint8)
    return np.roll(out, -32768)


def _build_alaw_decode() -> np.ndarray:
    v = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (v >> 4) & 7
    mant = v & 0x0F
    mag = np.where(seg == 0, 2 * mant + 1, (2 * mant + 33) << np.maximum(seg - 1, 0))
    return (np.where(v & 0x80, mag, -mag) * 8).astype(np.int16)


ULAW_ENCODE = _build_ulaw_encode()
ULAW_DECODE = _build_ulaw_decode()
ALAW_ENCODE = _build_alaw_encode()
ALAW_DECODE = _build_alaw_decode()


def ulaw_encode(pcm: np.ndarray) -> bytes:
    return ULAW_ENCODE[np.asarray(pcm, dtype=np.int16).view(np.uint16)].tobytes()


def ulaw_decode(data: bytes) -> np.ndarray:
    return ULAW_DECODE[np.frombuffer(data, dtype=np.uint8)]


def alaw_encode(pcm: np.ndarray) -> bytes:
    return ALAW_ENCODE[np.asarray(pcm, dtype=np.int16).view(np.uint16)].tobytes()


def alaw_decode(data: bytes) -> np.ndarray:
    return ALAW_DECODE[np.frombuffer(data, dtype=np.uint8)]


# --- the interface -----------------------------------------------------------


class Encoder(Protocol):
    def encode(self, pcm: np.ndarray) -> bytes: ...


class Decoder(Protocol):
    def decode(self, payload: bytes) -> np.ndarray: ...

    def conceal(self, pcm: np.ndarray, ahead: np.ndarray | None = None) -> None:
        """Tell the decoder what was played in place of a lost packet (and what
        the concealment would continue with), so a stateful codec can resync."""
        ...

    def reset(self) -> None: ...


class Codec:
    """A payload format. Subclasses set the class attributes and the factories."""

    name: str = ""
    payload_type: int = -1
    clock_rate: int = 8000  # RTP timestamp units per second
    sample_rate: int = 8000  # PCM samples per second
    delay: int = 0  # algorithmic delay of encode+decode, in PCM samples
    stateful: bool = False  # decoder state depends on every packet (ADPCM)

    def encoder(self) -> Encoder:
        raise NotImplementedError

    def decoder(self) -> Decoder:
        raise NotImplementedError

    def frame_samples(self, ptime_ms: int = 20) -> int:
        return self.sample_rate * ptime_ms // 1000

    def frame_ticks(self, ptime_ms: int = 20) -> int:
        """RTP timestamp increment of one packet."""
        return self.clock_rate * ptime_ms // 1000

    def __repr__(self) -> str:
        return f"<Codec {self.name}/{self.clock_rate} pt={self.payload_type}>"


class _TableCodec:
    """Stateless G.711 encoder/decoder: one table lookup per frame."""

    __slots__ = ("_dec", "_enc")

    def __init__(self, enc: np.ndarray, dec: np.ndarray) -> None:
        self._enc = enc
        self._dec = dec

    def encode(self, pcm: np.ndarray) -> bytes:
        return self._enc[np.asarray(pcm, dtype=np.int16).view(np.uint16)].tobytes()

    def decode(self, payload: bytes) -> np.ndarray:
        return self._dec[np.frombuffer(payload, dtype=np.uint8)]

    def conceal(self, pcm: np.ndarray, ahead: np.ndarray | None = None) -> None:
        return None

    def reset(self) -> None:
        return None


class PCMU(Codec):
    name = "PCMU"
    payload_type = 0

    def encoder(self) -> Encoder:
        return _TableCodec(ULAW_ENCODE, ULAW_DECODE)

    def decoder(self) -> Decoder:
        return _TableCodec(ULAW_ENCODE, ULAW_DECODE)


class PCMA(Codec):
    name = "PCMA"
    payload_type = 8

    def encoder(self) -> Encoder:
        return _TableCodec(ALAW_ENCODE, ALAW_DECODE)

    def decoder(self) -> Decoder:
        return _TableCodec(ALAW_ENCODE, ALAW_DECODE)


# --- G.722 -------------------------------------------------------------------

_G722_BITRATE = 64000
# Decoded history that warms up a fresh encoder before it re-encodes the
# concealment: 20 ms scored the same as 60 ms (PESQ) at a third of the cost.
_G722_WARMUP = 320


class G722Encoder:
    __slots__ = ("_codec",)

    def __init__(self) -> None:
        import G722

        self._codec = G722.G722(16000, _G722_BITRATE)

    def encode(self, pcm: np.ndarray) -> bytes:
        return self._codec.encode(np.asarray(pcm, dtype=np.int16))


class G722Decoder:
    """G.722 decoder that re-trains its ADPCM state across a loss.

    The `g722` module hides the decoder state: it cannot be copied or set, only
    driven by a bitstream. So on loss a fresh encoder is warmed up on the last
    20 ms of decoded audio and then fed the concealment signal, and the decoder
    decodes what it produces (output discarded): step sizes, predictors and
    QMF memory then follow the concealed audio instead of freezing at their
    pre-loss values. The encoder sees audio `delay` (22) samples later than
    the decoder's state (the QMF pair's delay), so it is first advanced by the
    start of the concealment and then fed `delay` samples of look-ahead.

    Only the first lost frame of a gap is re-encoded; in longer gaps the state
    is then left alone. Measured with PESQ (porch.bench.media): training on a
    whole burst of fading concealment drags the step sizes down and costs
    more than it gains, while a frozen state after one trained frame beat
    both full re-training and plain freezing on bursty loss and tied on
    single losses.

    When the packet after a single lost one is already buffered, the jitter
    buffer bridges the gap towards a guess at that packet (`provisional`) and
    the decoder is re-trained on the bridged gap instead: its state then
    follows audio that leads into what the encoder really sent, and the next
    frames decode much closer to the lossless stream.

    The module's objects cannot be copied or pickled (TypeError), so exact
    state snapshots are out of reach short of poking its C struct through
    ctypes. That was tried offline as an upper bound: an encoder given the
    decoder's exact state re-encodes the concealment with no mismatch, yet
    scored within 0.01 PESQ of the spare-encoder warm-up used here; a perfect
    state after every loss (an oracle) would be worth about +0.16.

    ``resync`` picks the strategy: ``"reencode"`` (that), ``"none"`` (skip the
    lost frames: the decoder state freezes) or ``"reset"`` (a new decoder when
    audio returns). porch.bench.media measures them against each other.
    """

    __slots__ = ("_codec", "_last", "_module", "_probe", "_resync", "_shadow", "_spare")

    def __init__(self, resync: str = "reencode") -> None:
        import G722

        if resync not in ("reencode", "none", "reset"):
            raise ValueError(f"unknown G.722 resync mode {resync!r}")
        self._module = G722
        self._codec = G722.G722(16000, _G722_BITRATE)
        self._resync = resync
        self._last: np.ndarray | None = None  # the last decoded frame
        self._shadow = None  # encoder tracking the decoder during a loss
        # one encoder for every loss of the call: a new G722 object costs more than
        # encoding 20 ms, and after the warm-up its old state made no measurable difference
        self._spare = G722.G722(16000, _G722_BITRATE) if resync == "reencode" else None
        self._probe = None  # encoder/decoder pair for `provisional`, made on first use

    def decode(self, payload: bytes) -> np.ndarray:
        if self._shadow is not None:
            self._shadow = None
            if self._resync == "reset":
                self._codec = self._module.G722(16000, _G722_BITRATE)
        out = self._last = np.frombuffer(self._codec.decode(payload), dtype=np.int16)
        return out

    def provisional(self, pcm: np.ndarray, ahead: np.ndarray, payload: bytes) -> np.ndarray:
        """A guess at how `payload` (the packet after a lost one) decodes, as if `pcm`
        had been decoded for the lost stretch - without touching this decoder.

        The g722 module's state cannot be copied, so a separate encoder/decoder pair
        stands in: warmed up on the last decoded audio and then on `pcm` (+ `ahead`,
        see `conceal` for the alignment), its decoder tracks what this one would be
        after re-training, closely enough for the guess to be useful past its first
        few ms, which is where a bridge uses it."""
        d = G722Codec.delay
        probe = self._probe
        if probe is None:
            probe = self._probe = self._module.G722(16000, _G722_BITRATE)
        pcm = np.asarray(pcm, dtype=np.int16)
        last = self._last[-_G722_WARMUP:] if self._last is not None else pcm[:0]
        probe.decode(probe.encode(np.concatenate((last, pcm[:d]))))
        probe.decode(probe.encode(np.concatenate((pcm[d:], np.asarray(ahead[:d], np.int16)))))
        return np.frombuffer(probe.decode(payload), dtype=np.int16)

    def conceal(self, pcm: np.ndarray, ahead: np.ndarray | None = None) -> None:
        """`pcm` was played for a lost stretch; `ahead` is the concealment that
        would follow it (at least `G722Codec.delay` samples), if known."""
        if self._resync == "none":
            return
        if self._resync == "reset":
            self._shadow = True
            return
        if self._shadow is not None:
            return  # only the first lost frame: then the state is left as it is
        d = G722Codec.delay
        if ahead is None or len(ahead) < d:
            ahead = np.zeros(d, dtype=np.int16)
        pcm = np.asarray(pcm, dtype=np.int16)
        shadow = self._shadow = self._spare
        if self._last is not None:
            shadow.encode(self._last[-_G722_WARMUP:])
        shadow.encode(pcm[:d])
        feed = np.concatenate((pcm[d:], np.asarray(ahead[:d], dtype=np.int16)))
        self._codec.decode(shadow.encode(feed))

    def reset(self) -> None:
        self._codec = self._module.G722(16000, _G722_BITRATE)
        self._last = None
        self._shadow = None


class G722Codec(Codec):
    name = "G722"
    payload_type = 9
    clock_rate = 8000
    sample_rate = 16000
    delay = 22  # measured: QMF analysis + synthesis of the g722 module
    stateful = True

    def __init__(self, resync: str = "reencode") -> None:
        self.resync = resync

    def encoder(self) -> Encoder:
        return G722Encoder()

    def decoder(self) -> Decoder:
        return G722Decoder(self.resync)


CODECS: dict[str, type[Codec]] = {"PCMU": PCMU, "PCMA": PCMA, "G722": G722Codec}


def get_codec(name: str) -> Codec:
    """A codec by its SDP encoding name (case-insensitive)."""
    try:
        return CODECS[name.upper()]()
    except KeyError:
        raise ValueError(f"unknown codec {name!r}; known: {', '.join(CODECS)}") from None
