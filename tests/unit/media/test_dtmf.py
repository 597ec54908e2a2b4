"""DTMF: RFC 4733 from SIPp's captures over real UDP, the sender, and the tone detector."""

from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path

import numpy as np
import pytest

from porch.media.dtmf import (
    EVENTS,
    Digit,
    DigitEnd,
    EventPayload,
    Rfc4733Receiver,
    Rfc4733Sender,
    ToneDetector,
    confirmation_tone,
    dtmf_tone,
    error_tone,
    parse_events,
)
from porch.media.netsim import read_wav
from porch.media.rtp import RtpPacket
from porch.media.transport import MediaTransport

from .pcap import read_udp

SIPP = Path("/usr/share/sip-tester")
PCAPS = sorted(SIPP.glob("dtmf_2833_*.pcap"))
NAMES = {"star": "*", "pound": "#"}


def pcap_digit(path: Path) -> str:
    tail = path.stem.rsplit("_", 1)[1]
    return NAMES.get(tail, tail)


def digits(events) -> list[str]:
    return [e.digit for e in events if isinstance(e, Digit)]


async def _play_over_udp(datagrams: list[bytes]) -> list:
    """Send datagrams from 127.0.0.1 into a MediaTransport; feed RFC 4733 from it."""
    rx = Rfc4733Receiver()
    events: list = []
    got = asyncio.Event()
    count = 0

    def on_rtp(packet: RtpPacket, addr, now: float) -> None:
        nonlocal count
        events.extend(rx.on_packet(packet.ssrc, packet.timestamp, packet.payload, now))
        count += 1
        if count == len(datagrams):
            got.set()

    transport = await MediaTransport(on_rtp, payload_types={101}).open("127.0.0.1")
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sender.bind(("127.0.0.1", 0))
        for d in datagrams:
            sender.sendto(d, ("127.0.0.1", transport.port))
            await asyncio.sleep(0.001)
        await asyncio.wait_for(got.wait(), 5)
    finally:
        sender.close()
        transport.close()
    events.extend(rx.on_timer(asyncio.get_running_loop().time() + 10))
    return events


@pytest.mark.skipif(not PCAPS, reason="SIPp's pcaps (Debian sip-tester) not installed")
@pytest.mark.parametrize("path", PCAPS, ids=lambda p: p.stem)
def test_sipp_pcap_gives_exactly_one_digit(path):
    datagrams = [r.payload for r in read_udp(path)]
    assert datagrams and all(RtpPacket.parse(d).payload_type == 101 for d in datagrams)
    events = asyncio.run(_play_over_udp(datagrams))
    assert digits(events) == [pcap_digit(path)]
    ends = [e for e in events if isinstance(e, DigitEnd)]
    assert len(ends) == 1 and not ends[0].timed_out


@pytest.mark.skipif(not PCAPS, reason="SIPp's pcaps (Debian sip-tester) not installed")
def test_sipp_pcap_duplicated_and_reordered_still_one_digit():
    path = next(p for p in PCAPS if p.stem.endswith("_5"))
    datagrams = [r.payload for r in read_udp(path)]
    doubled = [d for d in datagrams for _ in range(2)]
    rng = random.Random(4)
    middle = doubled[2:-2]
    rng.shuffle(middle)
    mixed = doubled[:2] + middle + doubled[-2:]
    events = asyncio.run(_play_over_udp(mixed))
    assert digits(events) == ["5"]


def _event_packets(
    code: int, ts: int, durations: list[int], ends: int = 3
) -> list[tuple[bytes, int]]:
    out = [(EventPayload(code, False, 10, d).pack(), ts) for d in durations]
    out += [(EventPayload(code, True, 10, durations[-1] + 160).pack(), ts)] * ends
    return out


def test_each_event_once_and_lost_end_by_timeout():
    rx = Rfc4733Receiver(end_timeout=0.3)
    events = []
    t = 0.0
    # "1" complete, "1" again (new timestamp) without any end packet, then "9"
    for payload, ts in _event_packets(1, 8000, [160, 320, 480]):
        events += rx.on_packet(77, ts, payload, t)
        t += 0.02
    for payload, ts in _event_packets(1, 16000, [160, 320], ends=0):
        events += rx.on_packet(77, ts, payload, t)
        t += 0.02
    assert digits(events) == ["1", "1"]
    assert rx.next_deadline == pytest.approx(t - 0.02 + 0.3)
    events += rx.on_timer(t + 0.5)
    ends = [e for e in events if isinstance(e, DigitEnd)]
    assert [e.timed_out for e in ends] == [False, True]
    for payload, ts in _event_packets(9, 24000, [160]):
        events += rx.on_packet(77, ts, payload, t + 1)
    assert digits(events) == ["1", "1", "9"]
    # a straggler from the first event long after it ended: ignored
    assert rx.on_packet(77, 8000, _event_packets(1, 8000, [160])[0][0], t + 2) == []


def test_long_event_segments_stay_one_digit():
    rx = Rfc4733Receiver()
    events = rx.on_packet(5, 1000, EventPayload(0, False, 10, 0xFFFF).pack(), 0.0)
    # RFC 4733 2.5.1.3: the next segment starts at timestamp + 0xFFFF
    events += rx.on_packet(5, 1000 + 0xFFFF, EventPayload(0, False, 10, 800).pack(), 0.02)
    events += rx.on_packet(5, 1000 + 0xFFFF, EventPayload(0, True, 10, 1600).pack(), 0.04)
    assert digits(events) == ["0"]


def test_several_events_in_one_packet():
    payload = EventPayload(2, True, 10, 800).pack() + EventPayload(3, False, 10, 0).pack()
    assert [e.event for e in parse_events(payload)] == [2, 3]
    rx = Rfc4733Receiver()
    assert digits(rx.on_packet(1, 500, payload, 0.0)) == ["2", "3"]


def test_sender_to_receiver_round_trip():
    tx = Rfc4733Sender(duration=0.1)
    tx.send("4*#")
    rx = Rfc4733Receiver()
    events, markers, media_ts, t = [], 0, 0, 0.0
    while tx.busy or t < 0.1:
        pkt = tx.tick(media_ts)
        if pkt is not None:
            payload, marker, ts = pkt
            markers += marker
            events += rx.on_packet(9, ts, payload, t)
        media_ts += 160
        t += 0.02
    assert digits(events) == ["4", "*", "#"]
    assert markers == 3
    ends = [e for e in events if isinstance(e, DigitEnd)]
    assert [round(e.duration, 3) for e in ends] == [0.1, 0.1, 0.1]


# --- in-band ------------------------------------------------------------------------


def detect(x: np.ndarray, rate: int) -> list[str]:
    pad = np.zeros(rate // 10, dtype=np.int16)
    return digits(ToneDetector(rate).process(np.concatenate((pad, x, pad))))


@pytest.mark.parametrize("rate", [8000, 16000])
def test_all_digits_at_the_edges_of_frequency_and_level(rate):
    for offset in (-0.015, 0.015):
        for level in (-25.0, -3.0):
            for key in EVENTS:
                x = dtmf_tone(key, rate, 0.045, level, offset=offset)
                assert detect(x, rate) == [key], (key, offset, level)


@pytest.mark.parametrize("offset", [-0.035, 0.035, -0.05, 0.05])
def test_off_frequency_tones_are_rejected(offset):
    for key in EVENTS:
        assert detect(dtmf_tone(key, 8000, 0.1, -10, offset=offset), 8000) == [], key


def test_twist_limits():
    assert detect(dtmf_tone("8", 8000, 0.1, -10, twist_db=8), 8000) == ["8"]
    assert detect(dtmf_tone("8", 8000, 0.1, -10, twist_db=-4), 8000) == ["8"]
    assert detect(dtmf_tone("8", 8000, 0.1, -10, twist_db=10), 8000) == []
    assert detect(dtmf_tone("8", 8000, 0.1, -10, twist_db=-6), 8000) == []


def test_duration_and_pauses():
    assert detect(dtmf_tone("3", 8000, 0.040), 8000) == ["3"]
    assert detect(dtmf_tone("3", 8000, 0.020), 8000) == []
    gap = np.zeros(320, dtype=np.int16)  # 40 ms pause between two presses of one key
    x = np.concatenate([dtmf_tone("7", 8000, 0.05), gap, dtmf_tone("7", 8000, 0.05)])
    assert detect(x, 8000) == ["7", "7"]
    assert detect(dtmf_tone("6", 8000, 0.02, -40), 8000) == []


def test_detector_is_indifferent_to_block_size():
    pause = np.zeros(400, np.int16)
    paused = np.concatenate([np.concatenate([dtmf_tone(k, 8000, 0.06), pause]) for k in "159#"])
    back_to_back = np.concatenate([dtmf_tone(k, 8000, 0.06) for k in "1122"] + [pause])
    for x, want in ((paused, list("159#")), (back_to_back, list("12"))):
        for block in (37, 160, 1000):
            det = ToneDetector(8000)
            got = []
            for i in range(0, len(x), block):
                got += digits(det.process(x[i : i + block]))
            assert got == want, block


def test_no_digits_in_a_minute_of_speech(speech_minute):
    for rate, path in speech_minute.items():
        x, r = read_wav(path)
        assert r == rate and len(x) > 55 * rate
        assert digits(ToneDetector(rate).process(x)) == []


def test_tones_we_play_are_not_mistaken_for_digits():
    for rate in (8000, 16000):
        for x in (confirmation_tone(rate), error_tone(rate)):
            assert detect(x, rate) == []
            assert np.abs(x).max() > 1000
