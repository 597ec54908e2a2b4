"""The media of one call: what the user agent opens, starts, updates and closes.

`MediaSession` ties the media modules together for one call: the RTP/RTCP sockets
(`transport.MediaTransport`), a 20 ms frame clock on the loop, the encoder and RTP sender,
the receive chain (`jitter.Receiver`: jitter buffer, decoder, concealment), RFC 4733 and
in-band DTMF detection (digits go to `on_dtmf(digit, source)`), the confirmation and
error tones porch plays to the caller, RTCP reports, and the per-call figures at the end
(`stats.call_quality`).

Until the ALSA driver lands, audio comes from and goes to files: the source is a WAV file
when one is given (looped), else a quiet 425 Hz tone in simulation and near silence on a
device; what is received is decoded (so that DTMF tones are heard and the statistics are
real) and written to a WAV file when one is given, else dropped.

Directions follow offer/answer: on hold (`sendonly`/`inactive` from the far end, i.e. our
`recvonly`/`inactive`) nothing is sent; RTCP keeps going.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from porch.media import dtmf
from porch.media.codecs import Codec, get_codec
from porch.media.jitter import Receiver
from porch.media.resample import resample
from porch.media.rtcp import RtcpSession
from porch.media.rtp import Addr, RtpPacket, RtpSender, SsrcTracker
from porch.media.stats import call_quality
from porch.media.transport import MediaTransport
from porch.sip.sdp import AudioSession

__all__ = ["FRAME", "MediaSession", "WavSource", "comfort_source"]

log = logging.getLogger("porch.media")

FRAME = 0.020  # s: the frame clock
MAX_LATE = 0.2  # s behind schedule: skip frames instead of bursting them out
TONE_LEVEL_DBM0 = -30.0

DigitCallback = Callable[[str, str], None]


class WavSource:
    """Mono 16-bit PCM from a WAV file, looped, at the codec's rate."""

    def __init__(self, path: Path) -> None:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2 or w.getnchannels() != 1:
                raise ValueError(f"{path}: need mono 16-bit PCM")
            self.rate = w.getframerate()
            self.pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)
        if not len(self.pcm):
            raise ValueError(f"{path}: no audio")
        self._cache: dict[int, np.ndarray] = {}
        self._pos: dict[int, int] = {}

    def read(self, rate: int, n: int) -> np.ndarray:
        pcm = self._cache.get(rate)
        if pcm is None:
            pcm = self._cache[rate] = (
                self.pcm if rate == self.rate else resample(self.pcm, self.rate, rate)
            )
        pos = self._pos.get(rate, 0)
        idx = (pos + np.arange(n)) % len(pcm)
        self._pos[rate] = (pos + n) % len(pcm)
        return pcm[idx]


def comfort_source(audible: bool) -> Callable[[int, int], np.ndarray]:
    """A quiet 425 Hz tone (audible=True, for simulation) or faint noise (a device with no
    capture path yet): callers hear that the line is up, nothing more."""
    phase = {"t": 0}
    rng = np.random.default_rng()

    def read(rate: int, n: int) -> np.ndarray:
        if not audible:
            return rng.integers(-2, 3, n, dtype=np.int16)
        t0 = phase["t"]
        phase["t"] += n
        t = (t0 + np.arange(n)) / rate
        amp = dtmf.DBM0_PEAK * 10 ** (TONE_LEVEL_DBM0 / 20)
        return np.rint(amp * np.sin(2 * np.pi * 425.0 * t)).astype(np.int16)

    return read


class _WavSink:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.rate: int | None = None
        self._w: wave.Wave_write | None = None

    def write(self, pcm: np.ndarray, rate: int) -> None:
        if self._w is None:
            self.rate = rate
            # open for the whole call, frame after frame; closed by close()
            self._w = wave.open(str(self.path), "wb")  # noqa: SIM115
            self._w.setnchannels(1)
            self._w.setsampwidth(2)
            self._w.setframerate(rate)
        elif rate != self.rate:
            pcm = resample(pcm, rate, self.rate or rate)
        self._w.writeframes(np.asarray(pcm, dtype="<i2").tobytes())

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
            self._w = None


class _Stream:
    """What one offer/answer settled: codec, payload types, the per-stream coders."""

    def __init__(self, audio: AudioSession) -> None:
        self.audio = audio
        self.codec: Codec = get_codec(audio.codec.name)
        self.pt = audio.codec.pt
        self.event_pt = audio.telephone_event.pt if audio.telephone_event else None
        self.encoder = self.codec.encoder()
        self.samples = self.codec.frame_samples(round(FRAME * 1000))
        self.ticks = self.codec.frame_ticks(round(FRAME * 1000))


class MediaSession:
    """One call's media. `await open()` binds the sockets (the port goes into SDP), then
    `start(audio)` once offer/answer is done, `update(audio)` after a re-offer, `close()`."""

    def __init__(
        self,
        host: str,
        *,
        on_dtmf: DigitCallback | None = None,
        source: Path | None = None,
        sink: Path | None = None,
        audible: bool = True,
        local_event_pt: int = 101,
        cname: str = "porch",
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self.host = host
        self.on_dtmf = on_dtmf
        self.port = 0
        self.local_event_pt = local_event_pt
        self.cname = cname
        self._wallclock = wallclock
        self._source_path = source
        self._read = comfort_source(audible)
        self._sink = _WavSink(sink) if sink is not None else None
        self.transport = MediaTransport(self._on_rtp, self._on_rtcp)
        self.sender = RtpSender()
        self.rtcp: RtcpSession | None = None
        self.stream: _Stream | None = None
        self.receiver: Receiver | None = None
        self.events = dtmf.Rfc4733Receiver()
        self.sources = SsrcTracker()  # a stray packet of another SSRC must not reset the stream
        self.stray = 0  # packets refused as from a stray SSRC
        self.detector: dtmf.ToneDetector | None = None
        self.digits: list[tuple[str, str]] = []  # (digit, source) heard in this call
        self.frames_sent = 0
        self.frames_heard = 0  # 20 ms frames taken from the receive chain (played)
        self._tone: np.ndarray | None = None  # feedback tone still to play
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._next = 0.0
        self._opened = False
        self._closed = False

    # -- life cycle ------------------------------------------------------------------------
    async def open(self) -> int:
        self._loop = asyncio.get_running_loop()
        if self._source_path is not None:
            try:
                self._read = WavSource(self._source_path).read
            except (OSError, ValueError, EOFError, wave.Error) as exc:
                log.warning("audio source %s unusable (%s): sending a tone", self._source_path, exc)
        await self.transport.open(self.host, 0)
        self._opened = True
        self.port = self.transport.port
        if self._closed:  # closed while binding
            self.transport.close()
        return self.port

    def start(self, audio: AudioSession) -> None:
        """Offer/answer is done: send and receive with the negotiated codec."""
        if self._closed or not self._opened:
            return
        self._apply(audio)
        if self._handle is None:
            assert self._loop is not None
            self._next = self._loop.time()
            self._tick()

    def update(self, audio: AudioSession) -> None:
        """A re-offer changed direction (hold/resume), codec or the far end's address."""
        if self._closed or not self._opened:
            return
        if self.stream is None:
            self.start(audio)
            return
        self._apply(audio)

    def _apply(self, audio: AudioSession) -> None:
        old = self.stream
        stream = _Stream(audio)
        if old is not None and old.codec.name == stream.codec.name and old.pt == stream.pt:
            stream.encoder = old.encoder  # keep the coder state across a hold/resume
        self.stream = stream
        if self.receiver is None or self.receiver.codec.name != stream.codec.name:
            self.receiver = Receiver(stream.codec)
            self.detector = dtmf.ToneDetector(stream.codec.sample_rate)
        if self.rtcp is None or self.rtcp.clock_rate != stream.codec.clock_rate:
            self.rtcp = RtcpSession(self.sender.ssrc, self.cname, stream.codec.clock_rate)
        remote = (
            None
            if audio.hold and audio.remote_host in ("0.0.0.0", "::")
            else (
                audio.remote_host,
                audio.remote_port,
            )
        )
        old_remote = old.audio if old is not None else None
        if old_remote is None or (old_remote.remote_host, old_remote.remote_port) != (
            audio.remote_host,
            audio.remote_port,
        ):
            self.transport.set_remote(remote, (audio.remote_rtcp_host, audio.remote_rtcp_port))
        pts = {stream.pt, self.local_event_pt, stream.codec.payload_type, 13}
        if stream.event_pt is not None:
            pts.add(stream.event_pt)
        self.transport.payload_types = pts
        log.info(
            "media %s pt %d to %s:%s (%s)",
            stream.codec.name,
            stream.pt,
            audio.remote_host,
            audio.remote_port,
            audio.direction,
        )

    def feedback(self, kind: Literal["confirm", "error"]) -> None:
        """Play the door-opened or wrong-code tone to the caller (mixed into what we send)."""
        stream = self.stream
        if stream is None:
            return
        rate = stream.codec.sample_rate
        tone = dtmf.confirmation_tone(rate) if kind == "confirm" else dtmf.error_tone(rate)
        self._tone = tone

    def figures(self) -> dict[str, Any] | None:
        """The call's quality figures so far (None before media flows): /api/status shows
        them live, and `close` logs the final ones."""
        if self.stream is None or self.receiver is None:
            return None
        figures = call_quality(self.stream.codec.name, self.receiver, self.rtcp).as_dict()
        figures["sent"] = self.sender.packets_sent
        figures["refused"] = self.transport.refused
        figures["stray"] = self.stray
        return figures

    def close(self) -> dict[str, Any]:
        """Stop, say BYE in RTCP, and return the call's figures (empty if it never started)."""
        if self._closed:
            return {}
        self._closed = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        figures: dict[str, Any] = {}
        if self.stream is not None and self.receiver is not None:
            if self.rtcp is not None:
                with contextlib.suppress(Exception):
                    self.transport.send_rtcp(
                        self.rtcp.bye(
                            self._wallclock(),
                            rtp_timestamp=self.sender.last_timestamp,
                            packets_sent=self.sender.packets_sent,
                            octets_sent=self.sender.octets_sent,
                        )
                    )
            figures = self.figures() or {}
        if self._opened:
            self.transport.close()
        if self._sink is not None:
            self._sink.close()
        return figures

    # -- the frame clock ---------------------------------------------------------------------
    def _tick(self) -> None:
        assert self._loop is not None
        self._handle = None
        if self._closed or self.stream is None:
            return
        now = self._loop.time()
        if now - self._next > MAX_LATE:  # the loop stalled: resynchronise, do not burst
            skipped = int((now - self._next) / FRAME)
            self.sender.skip(skipped * self.stream.ticks)
            self._next += skipped * FRAME
        try:
            self._frame(now)
        except Exception:  # media trouble must not take the call (or the loop) down
            log.exception("media frame failed")
        self._next += FRAME
        self._handle = self._loop.call_at(self._next, self._tick)

    def _frame(self, now: float) -> None:
        stream = self.stream
        receiver = self.receiver
        assert stream is not None and receiver is not None
        rate = stream.codec.sample_rate
        n = stream.samples
        if stream.audio.send:
            pcm = self._read(rate, n)
            tone = self._tone
            if tone is not None:
                part = tone[:n]
                pcm = pcm.copy()
                pcm[: len(part)] = part
                self._tone = tone[n:] if len(tone) > n else None
            data = self.sender.packet(stream.encoder.encode(pcm), stream.pt, advance=stream.ticks)
            if self.transport.send_rtp(data) and self.rtcp is not None:
                self.rtcp.on_rtp_sent()
            self.frames_sent += 1
        else:
            self.sender.skip(stream.ticks)
        heard = receiver.pull(now, n)
        self.frames_heard += 1
        if self._sink is not None:
            self._sink.write(heard, rate)
        if self.detector is not None and receiver.stats.packets:
            for ev in self.detector.process(heard, now):
                if isinstance(ev, dtmf.Digit):
                    self._digit(ev.digit, "inband")
        self.events.on_timer(now)  # closes events whose end packets were lost
        rtcp = self.rtcp
        if rtcp is not None:
            wall = self._wallclock()
            if rtcp.due(wall):
                self.transport.send_rtcp(
                    rtcp.report(
                        wall,
                        rtp_timestamp=self.sender.last_timestamp,
                        packets_sent=self.sender.packets_sent,
                        octets_sent=self.sender.octets_sent,
                    )
                )

    # -- receiving -------------------------------------------------------------------------
    def _on_rtp(self, packet: RtpPacket, addr: Addr, arrival: float) -> None:
        stream = self.stream
        if stream is None or self.receiver is None:
            return
        pt = packet.payload_type
        if pt == self.local_event_pt or pt == stream.event_pt:
            for ev in self.events.on_packet(packet.ssrc, packet.timestamp, packet.payload, arrival):
                if isinstance(ev, dtmf.Digit):
                    self._digit(ev.digit, "rfc4733")
            return
        accepted, _new = self.sources.accept(packet.ssrc, arrival)
        if not accepted:
            self.stray += 1
            return
        if self.rtcp is not None:
            self.rtcp.on_rtp(packet.ssrc, packet.sequence, packet.timestamp, self._wallclock())
        self.receiver.put(packet, arrival)

    def _on_rtcp(self, data: bytes, addr: Addr, arrival: float) -> None:
        if self.rtcp is not None:
            with contextlib.suppress(ValueError):
                self.rtcp.on_rtcp(data, self._wallclock())

    def _digit(self, digit: str, source: str) -> None:
        self.digits.append((digit, source))
        log.info("DTMF %s (%s)", digit, source)
        if self.on_dtmf is not None:
            self.on_dtmf(digit, source)


def new_cname() -> str:
    return f"porch-{secrets.token_hex(4)}"
