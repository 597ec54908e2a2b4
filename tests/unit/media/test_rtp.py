"""RTP packets, serial arithmetic, SSRC tracking, latching, the per-call sender."""

from __future__ import annotations

from random import Random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from porch.media.rtp import (
    RtpError,
    RtpPacket,
    RtpSender,
    SsrcTracker,
    SymmetricLatch,
    Unwrapper,
    is_rtcp,
    parse_extension_elements,
    seq_diff,
    ts_diff,
)

# Written out by hand from the RFC 3550 header layout:
# V=2 P=1 X=1 CC=2 | M=1 PT=0 | seq 0xFFFF | ts 0xFFFFFFF0 | SSRC 0x11223344
# CSRCs 0xAABBCCDD 0x01020304 | ext profile 0xBEDE, 1 word: id 1 len 2 "abc" |
# payload 80 a0 c0 | padding 3 octets (count 3)
FIXTURE = bytes.fromhex(
    "b2 80 ffff fffffff0 11223344 aabbccdd 01020304 bede 0001 12616263 80a0c0 000003".replace(
        " ", ""
    )
)


def test_parse_fixture_with_csrc_extension_and_padding():
    p = RtpPacket.parse(FIXTURE)
    assert p.payload_type == 0 and p.marker
    assert (p.sequence, p.timestamp, p.ssrc) == (0xFFFF, 0xFFFFFFF0, 0x11223344)
    assert p.csrc == (0xAABBCCDD, 0x01020304)
    assert p.extension == (0xBEDE, b"\x12abc")
    assert parse_extension_elements(p.extension) == [(1, b"abc")]
    assert p.payload == b"\x80\xa0\xc0"
    assert p.padding == 3
    assert p.serialize() == FIXTURE


def test_minimal_packet_round_trip():
    p = RtpPacket(payload_type=9, sequence=1, timestamp=160, ssrc=7, payload=b"x" * 160)
    data = p.serialize()
    assert data[:2] == b"\x80\x09" and len(data) == 12 + 160
    assert RtpPacket.parse(data) == p


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80\x00",  # short
        bytes.fromhex("4000000100000001000000010000"),  # version 1
        bytes.fromhex("8300000100000001000000010000"),  # 3 CSRCs announced, none there
        bytes.fromhex("900000010000000100000001bede0005"),  # extension longer than packet
        bytes.fromhex("a000000100000001000000010000"),  # padding count 0
        bytes.fromhex("a0000001000000010000000100ff"),  # padding longer than packet
    ],
)
def test_malformed_packets_are_refused(data):
    with pytest.raises(RtpError):
        RtpPacket.parse(data)


@settings(max_examples=200)
@given(
    pt=st.integers(0, 127),
    seq=st.integers(0, 0xFFFF),
    ts=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    marker=st.booleans(),
    csrc=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15),
    ext=st.one_of(st.none(), st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=12))),
    payload=st.binary(max_size=64),
    padding=st.integers(0, 8),
)
def test_round_trip_property(pt, seq, ts, ssrc, marker, csrc, ext, payload, padding):
    if ext is not None:
        ext = (ext[0], ext[1] + bytes(-len(ext[1]) % 4))
    p = RtpPacket(pt, seq, ts, ssrc, payload, marker, tuple(csrc), ext, padding)
    assert RtpPacket.parse(p.serialize()) == p


@settings(max_examples=300)
@given(st.binary(max_size=80))
def test_parser_never_crashes(data):
    try:
        RtpPacket.parse(data)
    except RtpError:
        pass


def test_rtcp_demultiplexing():
    assert is_rtcp(bytes([0x80, 200]) + bytes(6))  # SR
    assert is_rtcp(bytes([0x81, 201]) + bytes(6))  # RR
    assert not is_rtcp(bytes([0x80, 0]) + bytes(10))  # PCMU
    assert not is_rtcp(bytes([0x80, 0x80 | 101]) + bytes(10))  # telephone-event with marker


def test_serial_arithmetic_across_the_wrap():
    assert seq_diff(2, 0xFFFE) == 4
    assert seq_diff(0xFFFE, 2) == -4
    assert ts_diff(80, 0xFFFFFFB0) == 160
    assert ts_diff(0xFFFFFFB0, 80) == -160


def test_unwrapper_extends_and_handles_reordering_over_the_wrap():
    u = Unwrapper(16)
    values = [0xFFFD, 0xFFFE, 0x0001, 0xFFFF, 0x0000, 0x0002]
    assert [u.extend(v) for v in values] == [0xFFFD, 0xFFFE, 0x10001, 0xFFFF, 0x10000, 0x10002]
    t = Unwrapper(32)
    assert t.extend(0xFFFFFF60) == 0xFFFFFF60
    assert t.extend(0x00000000 + 0x40) == 0x100000040


def test_sender_randomises_per_call_and_counts():
    a, b = RtpSender(), RtpSender()
    assert (a.ssrc, a.sequence, a.timestamp) != (b.ssrc, b.sequence, b.timestamp)
    s = RtpSender(rng=Random(1))
    s.sequence, s.timestamp = 0xFFFF, 0xFFFFFF60
    p1 = RtpPacket.parse(s.packet(b"a" * 160, 0, advance=160, marker=True))
    p2 = RtpPacket.parse(s.packet(b"b" * 160, 0, advance=160))
    s.skip(320)
    p3 = RtpPacket.parse(s.packet(b"c" * 10, 101, timestamp=1234))
    assert (p1.sequence, p2.sequence, p3.sequence) == (0xFFFF, 0, 1)
    assert (p1.timestamp, p2.timestamp) == (0xFFFFFF60, 0)
    assert p3.timestamp == 1234 and s.timestamp == 480
    assert p1.marker and not p2.marker
    assert s.packets_sent == 3 and s.octets_sent == 330
    assert p1.ssrc == p2.ssrc == s.ssrc


def test_ssrc_tracker_follows_a_new_source_after_two_packets():
    t = SsrcTracker()
    assert t.accept(1, 0.00) == (True, True)
    assert t.accept(1, 0.02) == (True, False)
    assert t.accept(2, 0.03) == (False, False)  # one stray packet: refused
    assert t.accept(1, 0.04) == (True, False)
    assert t.accept(2, 0.05) == (False, False)
    assert t.accept(2, 0.06) == (True, True)  # second in a row: switch
    assert t.accept(1, 0.07) == (False, False)  # the old one is now the stranger


def test_ssrc_tracker_switches_at_once_when_the_old_source_went_quiet():
    t = SsrcTracker(idle=0.2)
    t.accept(1, 0.0)
    assert t.accept(2, 1.0) == (True, True)


def test_symmetric_latch():
    sdp = ("192.0.2.1", 4000)
    latch = SymmetricLatch(sdp, relatch_after=2.0, confirm=3)
    assert latch.target == sdp
    assert not latch.on_packet(("198.51.100.7", 5000), valid=False, now=0.0)
    assert latch.target == sdp  # garbage does not latch
    assert latch.on_packet(("198.51.100.7", 5000), valid=True, now=0.1)
    assert latch.target == ("198.51.100.7", 5000)
    # someone else, while the peer is active: refused, however often
    for i in range(5):
        assert not latch.on_packet(("203.0.113.9", 6000), True, 0.2 + i * 0.02)
    assert latch.target == ("198.51.100.7", 5000)
    # the peer goes quiet (NAT rebinding): a new address needs 3 valid packets in a row
    assert not latch.on_packet(("198.51.100.7", 5002), True, 3.0)
    assert not latch.on_packet(("198.51.100.7", 5002), True, 3.02)
    assert latch.on_packet(("198.51.100.7", 5002), True, 3.04)
    assert latch.target == ("198.51.100.7", 5002)
    latch.update_sdp(("192.0.2.50", 4010))
    assert latch.target == ("192.0.2.50", 4010)
