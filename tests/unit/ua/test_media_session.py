"""The per-call media session over real loopback sockets: two sessions talk to each other.

Checked: audio flows and is decoded into the sink, the feedback tones reach the far end,
RFC 4733 events and in-band tones become digits, hold stops sending, and the figures at
the end are those of the call.
"""

from __future__ import annotations

import asyncio
import socket
import wave
from pathlib import Path

import numpy as np
import pytest

from porch.media import dtmf
from porch.media.rtp import RtpSender
from porch.media.session import MediaSession
from porch.sip.sdp import AudioSession, Codec

PCMU = Codec("PCMU", 8000, 0)
EVENT = Codec("telephone-event", 8000, 101, fmtp="0-16")


def audio(port: int, direction: str = "sendrecv", codec: Codec = PCMU) -> AudioSession:
    return AudioSession(
        remote_host="127.0.0.1",
        remote_port=port,
        remote_rtcp_host="127.0.0.1",
        remote_rtcp_port=port + 1,
        codec=codec,
        telephone_event=EVENT,
        direction=direction,
        ptime=20,
        hold=direction in ("recvonly", "inactive"),
        media_index=0,
    )


async def talking(door: MediaSession, phone: MediaSession) -> None:
    """Both sessions bound and sending to each other (PCMU, sendrecv), as in a call."""
    await door.open()
    await phone.open()
    door.start(audio(phone.port))
    phone.start(audio(door.port))


async def until(predicate, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"), w.getframerate()


def band_energy(x: np.ndarray, rate: int, freq: float) -> float:
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64)))
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    band = (freqs > freq - 15) & (freqs < freq + 15)
    return float(spectrum[band].sum() / max(spectrum.sum(), 1e-9))


def write_wav(path: Path, pcm: np.ndarray, rate: int = 8000) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())
    return path


@pytest.fixture
def run():
    return lambda coro: asyncio.run(asyncio.wait_for(coro, 20))


def test_audio_and_feedback_tone_reach_the_far_end(run, tmp_path):
    async def main():
        door = MediaSession("127.0.0.1", audible=False)
        phone = MediaSession("127.0.0.1", sink=tmp_path / "heard.wav")
        await talking(door, phone)
        assert door.port % 2 == 0 and door.port != phone.port
        await until(lambda: phone.receiver.stats.packets >= 10)
        door.feedback("confirm")  # 880 Hz then 1320 Hz, about 0.36 s
        await until(lambda: door._tone is None)
        # the jitter buffer still holds the tail of the tone: let 15 more frames play out
        played = phone.frames_heard
        await until(lambda: phone.frames_heard >= played + 15)
        heard = phone.close()
        sent = door.close()
        return heard, sent

    heard, sent = run(main())
    assert heard["codec"] == "PCMU" and heard["packets"] >= 20 and heard["lost"] == 0
    assert sent["sent"] >= heard["packets"]
    pcm, rate = read_wav(tmp_path / "heard.wav")
    assert rate == 8000
    assert band_energy(pcm, rate, 880.0) > 0.05
    assert band_energy(pcm, rate, 1320.0) > 0.05


def test_rfc4733_events_become_digits_once(run):
    async def main():
        got: list[tuple[str, str]] = []
        door = MediaSession("127.0.0.1", on_dtmf=lambda d, s: got.append((d, s)))
        await door.open()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as phone:
            phone.bind(("127.0.0.1", 0))
            door.start(audio(phone.getsockname()[1]))
            sender = RtpSender()
            events = dtmf.Rfc4733Sender()
            events.send("258#")
            ts = 0
            for _ in range(200):
                out = events.tick(ts)
                ts += 160
                if out is not None:
                    payload, marker, event_ts = out
                    packet = sender.packet(payload, 101, marker=marker, timestamp=event_ts)
                    phone.sendto(packet, ("127.0.0.1", door.port))
                    phone.sendto(packet, ("127.0.0.1", door.port))  # duplicated on the wire
                if not events.busy:
                    break
            await until(lambda: len(got) >= 4)
        door.close()
        return got

    assert run(main()) == [(d, "rfc4733") for d in "258#"]


def test_inband_tones_become_digits(run, tmp_path):
    gap = np.zeros(800, dtype=np.int16)
    tones = [np.concatenate([dtmf.dtmf_tone(d, 8000, 0.1), gap]) for d in "2580"]
    source = write_wav(tmp_path / "keys.wav", np.concatenate([gap, *tones, np.zeros(16000)]))

    async def main():
        got: list[tuple[str, str]] = []
        phone = MediaSession("127.0.0.1", source=source)
        door = MediaSession("127.0.0.1", on_dtmf=lambda d, s: got.append((d, s)))
        await talking(door, phone)
        await until(lambda: len(got) >= 4)
        phone.close()
        door.close()
        return got

    assert run(main())[:4] == [(d, "inband") for d in "2580"]


def test_hold_stops_sending_and_resume_starts_again(run):
    async def main():
        door = MediaSession("127.0.0.1")
        phone = MediaSession("127.0.0.1")
        await talking(door, phone)
        await until(lambda: phone.receiver.stats.packets >= 5)
        door.update(audio(phone.port, "recvonly"))  # the far end put us on hold
        held_at = door.frames_sent
        await until(lambda: door.sender.packets_sent == held_at and phone.frames_sent > 20)
        assert door.frames_sent == held_at
        door.update(audio(phone.port, "sendrecv"))
        await until(lambda: door.frames_sent >= held_at + 5)
        before = phone.receiver.stats.packets
        await until(lambda: phone.receiver.stats.packets > before + 3)
        door.close()
        phone.close()

    run(main())


def test_codec_change_and_close_before_start(run):
    async def main():
        idle = MediaSession("127.0.0.1")
        await idle.open()
        assert idle.close() == {}  # never started: no figures
        door = MediaSession("127.0.0.1")
        phone = MediaSession("127.0.0.1")
        await talking(door, phone)
        await until(lambda: phone.receiver.stats.packets >= 5)
        g722 = Codec("G722", 8000, 9)
        door.update(audio(phone.port, codec=g722))
        phone.update(audio(door.port, codec=g722))
        await until(
            lambda: phone.receiver.codec.name == "G722" and phone.receiver.stats.packets > 5
        )
        figures = phone.close()
        door.close()
        return figures

    assert run(main())["codec"] == "G722"


def test_closed_while_opening_releases_the_port(run):
    async def main():
        session = MediaSession("127.0.0.1")
        opening = asyncio.ensure_future(session.open())
        session.close()
        port = await opening
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", port))  # free again

    run(main())


def test_a_stray_ssrc_is_refused_and_a_new_source_takes_over(run):
    """One packet of another SSRC (a PBX leg crossing) does not reset the stream; a source
    that keeps sending after the old one stopped takes over (RFC 3550 8.2)."""

    async def main():
        door = MediaSession("127.0.0.1", audible=False)
        await door.open()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as phone:
            phone.bind(("127.0.0.1", 0))
            door.start(audio(phone.getsockname()[1]))
            first, stray, second = RtpSender(), RtpSender(), RtpSender()
            silence = bytes([0xFF]) * 160

            async def send(sender: RtpSender, count: int) -> None:
                for _ in range(count):
                    phone.sendto(sender.packet(silence, 0, advance=160), ("127.0.0.1", door.port))
                    await asyncio.sleep(0.02)

            def taken() -> int:  # packets the receive chain took (in time or late)
                stats = door.receiver.stats
                return stats.packets + stats.late

            await send(first, 10)
            await send(stray, 1)
            await send(first, 10)
            await until(lambda: taken() >= 20)
            before = (door.receiver.stats.resets, door.stray)
            await send(second, 10)
            await asyncio.sleep(0.1)
            await until(lambda: taken() >= 29)
            after = (door.receiver.stats.resets, door.stray)
        return before, after, door.close()

    before, after, figures = run(main())
    assert before == (0, 1)
    assert after[0] == 1 and after[1] in (1, 2)  # the new source's first packet may wait
    assert figures["stray"] == after[1]
