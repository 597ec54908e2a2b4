"""RTCP packets against hand-made binaries, receiver statistics, RTT, the session."""

from __future__ import annotations

from random import Random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from porch.media import rtcp
from porch.media.rtcp import (
    Bye,
    ReceiverReport,
    ReceptionStats,
    ReportBlock,
    RtcpError,
    RtcpSession,
    SenderReport,
    SourceDescription,
    parse_compound,
    serialize_compound,
)

# SR from 0x01020304 with one report block, then SDES CNAME "door@porch", then
# BYE with reason "bye", laid out by hand from RFC 3550 section 6.
SR_HEX = (
    "81c8000c" "01020304"  # V=2 RC=1 PT=200 length=12 words, SSRC
    "e8f1a2b3" "80000000"  # NTP seconds, fraction (0.5)
    "0000a000" "00000010" "00000a00"  # RTP ts, packet count 16, octet count 2560
    "aabbccdd" "05fffffe" "00010010" "00000020" "a2b38000" "00008000"  # block
)  # fmt: skip
SDES_HEX = "81ca000501020304010a646f6f7240706f72636800000000"  # item + null word
BYE_HEX = "81cb00020102030403627965"


def test_parse_compound_fixture():
    data = bytes.fromhex(SR_HEX + SDES_HEX + BYE_HEX)
    sr, sdes, bye = parse_compound(data)
    assert isinstance(sr, SenderReport)
    assert sr.ssrc == 0x01020304 and sr.ntp == 0xE8F1A2B3_80000000
    assert (sr.rtp_timestamp, sr.packet_count, sr.octet_count) == (0xA000, 16, 2560)
    (b,) = sr.reports
    assert b.ssrc == 0xAABBCCDD
    assert b.fraction_lost == 5 and b.cumulative_lost == -2  # 24-bit signed
    assert b.highest_seq == 0x00010010 and b.jitter == 32
    assert (b.lsr, b.dlsr) == (0xA2B38000, 0x8000)
    assert isinstance(sdes, SourceDescription) and sdes.cname(0x01020304) == "door@porch"
    assert isinstance(bye, Bye) and bye.ssrcs == [0x01020304] and bye.reason == "bye"
    assert serialize_compound([sr, sdes, bye]) == data


def test_rr_round_trip_and_limits():
    rr = ReceiverReport(7, [ReportBlock(9, 255, 0x7FFFFF, 123456, 99, 1, 2)])
    data = rtcp.serialize(rr)
    assert data[:4] == bytes.fromhex("81c90007")
    assert parse_compound(data) == [rr]
    # cumulative loss saturates at the 24-bit limits
    big = ReportBlock(9, 0, 10**9)
    assert ReportBlock.unpack(big.pack(), 0).cumulative_lost == 0x7FFFFF


@pytest.mark.parametrize(
    "hexdata",
    [
        "81c8",  # short
        "41c8000100000001",  # version 1
        "81c9001000000001",  # length past the end
        "82c9000100000001",  # RR with 2 blocks announced, none present
        "a1cb000100000000",  # padding flag with a pad count of 0
        "81ca0002000000010105",  # SDES item runs past the packet
    ],
)
def test_malformed_rtcp_is_refused(hexdata):
    with pytest.raises(RtcpError):
        parse_compound(bytes.fromhex(hexdata))


@settings(max_examples=300)
@given(st.binary(max_size=120))
def test_rtcp_parser_never_crashes(data):
    try:
        parse_compound(data)
    except RtcpError:
        pass


def test_reception_stats_loss_wrap_and_reordering():
    s = ReceptionStats(ssrc=1, clock_rate=8000, seq=65530)
    seqs = [65530, 65531, 65532, 65534, 65533, 65535, 0, 1, 3, 4, 5]  # 2 missing, 1 swapped
    valid = [s.update(q, 160 * i, 0.02 * i) for i, q in enumerate(seqs)]
    assert valid[0] is False and all(valid[1:])  # probation: the first packet is not counted
    assert s.extended_max == 65536 + 5
    assert s.expected == 11 and s.received == 10 and s.lost == 1
    block = s.report_block()
    assert block.cumulative_lost == 1 and block.fraction_lost == 256 // 11
    assert block.highest_seq == 0x10005
    assert s.report_block().fraction_lost == 0  # nothing new since


def test_interarrival_jitter_follows_rfc3550():
    s = ReceptionStats(ssrc=1, clock_rate=8000, seq=0)
    s.update(0, 0, 0.0)
    for i in range(1, 400):
        s.update(i, 160 * i, 0.02 * i + (0.005 if i % 2 else 0.0))  # +-5 ms alternately
    # |D| is 5 ms = 40 units every packet: J converges to 40
    assert s.report_block().jitter == pytest.approx(40, abs=1)


def test_a_big_jump_is_a_restart_after_two_packets():
    s = ReceptionStats(ssrc=1, clock_rate=8000, seq=100)
    for q in range(100, 110):
        s.update(q, 0, 0)
    assert not s.update(30000, 0, 0)  # one packet far away: not trusted
    assert s.update(30001, 0, 0)  # the next in sequence: source restarted
    assert s.expected == 1 and s.lost == 0


def test_two_sessions_measure_round_trip_and_loss():
    door = RtcpSession(ssrc=0xD00D, cname="door@porch", clock_rate=8000, rng=Random(1))
    phone = RtcpSession(ssrc=0xF00D, cname="phone@pbx", clock_rate=8000, rng=Random(2))
    # the phone sent 50 packets to the door, two lost on the way
    for i in range(50):
        if i not in (10, 20):
            door.on_rtp(0xF00D, 1000 + i, 160 * i, 100.0 + 0.02 * i)
    phone.on_rtp_sent()
    t = 1_700_000_000.0
    sr = phone.report(t, rtp_timestamp=8000, packets_sent=50, octets_sent=8000)
    door.on_rtcp(sr, t + 0.040)  # one-way 40 ms
    rr = door.report(t + 0.540)  # door answers 500 ms later
    events = phone.on_rtcp(rr, t + 0.580)
    report = next(e for e in events if e.kind == "report")
    assert report.rtt == pytest.approx(0.080, abs=0.001)
    assert report.cumulative_lost == 2
    assert phone.remote_cname is None  # the door is not the phone's media source here
    assert door.remote_cname == "phone@pbx"
    door.on_rtcp(phone.report(t + 1.0), t + 1.04)
    bye = phone.on_rtcp(door.bye(t + 2.0, reason="hang up"), t + 2.04)
    assert [e.kind for e in bye][-1] == "bye" and bye[-1].reason == "hang up"
    assert isinstance(parse_compound(door.report(t + 3))[0], ReceiverReport)


def test_report_schedule_is_randomised_around_five_seconds():
    s = RtcpSession(ssrc=1, cname="x", clock_rate=8000, rng=Random(3))
    assert not s.due(0.0)
    first = s.next_report
    assert 1.25 <= first <= 3.75
    s.report(first)
    assert 2.5 <= s.next_report - first <= 7.5
