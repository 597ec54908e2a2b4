"""RTCP (RFC 3550): SR, RR, SDES, BYE packets, receiver statistics (loss,
interarrival jitter), round-trip time and the report schedule. Sans-IO.

Times passed in are wall-clock seconds (``time.time()``): the same clock gives
the NTP timestamps in sender reports and measures the round trip from the
LSR/DLSR fields, so it has to be one clock.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from random import Random

SR, RR, SDES, BYE, APP = 200, 201, 202, 203, 204
SDES_CNAME, SDES_NAME, SDES_TOOL = 1, 2, 6
NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01


class RtcpError(ValueError):
    """A datagram that is not a well-formed RTCP compound packet."""


def ntp_from_unix(t: float) -> int:
    """64-bit NTP timestamp (32.32 fixed point) of a Unix time."""
    secs = int(t) + NTP_EPOCH_OFFSET
    frac = int((t - int(t)) * (1 << 32)) & 0xFFFFFFFF
    return (secs & 0xFFFFFFFF) << 32 | frac


def ntp_middle(ntp: int) -> int:
    """The middle 32 bits (16.16), as used in LSR and for round-trip time."""
    return (ntp >> 16) & 0xFFFFFFFF


@dataclass(slots=True)
class ReportBlock:
    ssrc: int
    fraction_lost: int = 0  # 0..255, fraction of 256
    cumulative_lost: int = 0  # signed 24-bit
    highest_seq: int = 0  # extended highest sequence number received
    jitter: int = 0  # RTP timestamp units
    lsr: int = 0  # middle 32 bits of the last SR's NTP time
    dlsr: int = 0  # delay since that SR, 1/65536 s

    def pack(self) -> bytes:
        lost = max(-0x800000, min(0x7FFFFF, self.cumulative_lost)) & 0xFFFFFF
        return struct.pack(
            "!IIIIII",
            self.ssrc,
            (self.fraction_lost & 0xFF) << 24 | lost,
            self.highest_seq & 0xFFFFFFFF,
            self.jitter & 0xFFFFFFFF,
            self.lsr & 0xFFFFFFFF,
            self.dlsr & 0xFFFFFFFF,
        )

    @classmethod
    def unpack(cls, data: bytes, pos: int) -> ReportBlock:
        ssrc, word, hseq, jit, lsr, dlsr = struct.unpack_from("!IIIIII", data, pos)
        lost = word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 0x1000000
        return cls(ssrc, word >> 24, lost, hseq, jit, lsr, dlsr)


@dataclass(slots=True)
class SenderReport:
    ssrc: int
    ntp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: list[ReportBlock] = field(default_factory=list)


@dataclass(slots=True)
class ReceiverReport:
    ssrc: int
    reports: list[ReportBlock] = field(default_factory=list)


@dataclass(slots=True)
class SourceDescription:
    # one chunk per source: (ssrc, [(item type, value), ...])
    chunks: list[tuple[int, list[tuple[int, bytes]]]] = field(default_factory=list)

    def cname(self, ssrc: int) -> str | None:
        for src, items in self.chunks:
            if src == ssrc:
                for kind, value in items:
                    if kind == SDES_CNAME:
                        return value.decode("utf-8", "replace")
        return None


@dataclass(slots=True)
class Bye:
    ssrcs: list[int]
    reason: str = ""


@dataclass(slots=True)
class UnknownRtcp:
    packet_type: int
    count: int
    body: bytes


RtcpPacket = SenderReport | ReceiverReport | SourceDescription | Bye | UnknownRtcp


def _header(pt: int, count: int, body_len: int, padding: bool = False) -> bytes:
    if body_len % 4:
        raise RtcpError("RTCP body must be a multiple of 4 octets")
    return struct.pack("!BBH", 0x80 | (0x20 if padding else 0) | count, pt, body_len // 4)


def serialize(packet: RtcpPacket) -> bytes:
    """One RTCP packet (use `serialize_compound` for what goes on the wire)."""
    if isinstance(packet, SenderReport):
        body = struct.pack(
            "!IQIII",
            packet.ssrc,
            packet.ntp,
            packet.rtp_timestamp & 0xFFFFFFFF,
            packet.packet_count & 0xFFFFFFFF,
            packet.octet_count & 0xFFFFFFFF,
        ) + b"".join(b.pack() for b in packet.reports)
        return _header(SR, len(packet.reports), len(body)) + body
    if isinstance(packet, ReceiverReport):
        body = struct.pack("!I", packet.ssrc) + b"".join(b.pack() for b in packet.reports)
        return _header(RR, len(packet.reports), len(body)) + body
    if isinstance(packet, SourceDescription):
        chunks = []
        for ssrc, items in packet.chunks:
            c = struct.pack("!I", ssrc)
            for kind, value in items:
                if len(value) > 255:
                    raise RtcpError("SDES item longer than 255 octets")
                c += bytes([kind, len(value)]) + value
            c += b"\x00" * (4 - len(c) % 4)  # at least one null octet ends the list
            chunks.append(c)
        body = b"".join(chunks)
        return _header(SDES, len(packet.chunks), len(body)) + body
    if isinstance(packet, Bye):
        body = b"".join(struct.pack("!I", s) for s in packet.ssrcs)
        if packet.reason:
            reason = packet.reason.encode()[:255]
            r = bytes([len(reason)]) + reason
            body += r + b"\x00" * (-len(r) % 4)
        return _header(BYE, len(packet.ssrcs), len(body)) + body
    if isinstance(packet, UnknownRtcp):
        return _header(packet.packet_type, packet.count, len(packet.body)) + packet.body
    raise TypeError(f"not an RTCP packet: {packet!r}")


def serialize_compound(packets: list[RtcpPacket]) -> bytes:
    return b"".join(serialize(p) for p in packets)


def parse_compound(data: bytes) -> list[RtcpPacket]:
    """Split and parse a compound packet; unknown types are kept as `UnknownRtcp`."""
    out: list[RtcpPacket] = []
    pos = 0
    n = len(data)
    if n < 4:
        raise RtcpError("shorter than an RTCP header")
    while pos < n:
        if pos + 4 > n:
            raise RtcpError("truncated RTCP header")
        b0, pt, words = struct.unpack_from("!BBH", data, pos)
        if b0 >> 6 != 2:
            raise RtcpError(f"RTCP version {b0 >> 6}")
        end = pos + 4 + 4 * words
        if end > n:
            raise RtcpError("RTCP length runs past the end")
        count = b0 & 0x1F
        body_end = end
        if b0 & 0x20:  # padding: only valid on the last packet
            if end != n:
                raise RtcpError("padding on a packet that is not last")
            pad = data[end - 1]
            if pad == 0 or pad > 4 * words:
                raise RtcpError("bad RTCP padding")
            body_end = end - pad
        out.append(_parse_one(pt, count, data, pos + 4, body_end))
        pos = end
    return out


def _parse_one(pt: int, count: int, data: bytes, pos: int, end: int) -> RtcpPacket:
    if pt == SR:
        if pos + 24 + 24 * count > end:
            raise RtcpError("SR too short for its report count")
        ssrc, ntp, rtp_ts, pkts, octets = struct.unpack_from("!IQIII", data, pos)
        blocks = [ReportBlock.unpack(data, pos + 24 + 24 * i) for i in range(count)]
        return SenderReport(ssrc, ntp, rtp_ts, pkts, octets, blocks)
    if pt == RR:
        if pos + 4 + 24 * count > end:
            raise RtcpError("RR too short for its report count")
        (ssrc,) = struct.unpack_from("!I", data, pos)
        return ReceiverReport(
            ssrc, [ReportBlock.unpack(data, pos + 4 + 24 * i) for i in range(count)]
        )
    if pt == SDES:
        chunks = []
        for _ in range(count):
            if pos + 4 > end:
                raise RtcpError("SDES chunk truncated")
            (ssrc,) = struct.unpack_from("!I", data, pos)
            pos += 4
            items = []
            while True:
                if pos >= end:
                    raise RtcpError("SDES item list not terminated")
                kind = data[pos]
                if kind == 0:
                    pos = (pos + 4) & ~3  # skip the null octet(s) to the next word
                    break
                if pos + 2 > end or pos + 2 + data[pos + 1] > end:
                    raise RtcpError("SDES item truncated")
                length = data[pos + 1]
                items.append((kind, bytes(data[pos + 2 : pos + 2 + length])))
                pos += 2 + length
            chunks.append((ssrc, items))
        return SourceDescription(chunks)
    if pt == BYE:
        if pos + 4 * count > end:
            raise RtcpError("BYE too short for its source count")
        ssrcs = list(struct.unpack_from(f"!{count}I", data, pos))
        pos += 4 * count
        reason = ""
        if pos < end:
            length = data[pos]
            if pos + 1 + length > end:
                raise RtcpError("BYE reason truncated")
            reason = data[pos + 1 : pos + 1 + length].decode("utf-8", "replace")
        return Bye(ssrcs, reason)
    return UnknownRtcp(pt, count, bytes(data[pos:end]))


# --- receiver statistics (RFC 3550 appendix A.1, A.3, A.8) ---------------------------

MAX_DROPOUT = 3000
MAX_MISORDER = 100
MIN_SEQUENTIAL = 2
SEQ_MOD = 1 << 16


class ReceptionStats:
    """Per-source sequence validation, loss and interarrival jitter.

    `update` returns False for packets the source-validation rules reject
    (during probation, or a large jump that is not yet confirmed by a second
    packet); the jitter buffer should drop those.
    """

    def __init__(self, ssrc: int, clock_rate: int, seq: int) -> None:
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self._init_seq(seq)
        self.max_seq = (seq - 1) & 0xFFFF
        self.bad_seq = SEQ_MOD + 1
        self.probation = MIN_SEQUENTIAL
        self.jitter = 0.0
        self._transit: float | None = None
        self.duplicates_or_old = 0

    def _init_seq(self, seq: int) -> None:
        self.base_seq = seq
        self.max_seq = seq
        self.bad_seq = SEQ_MOD + 1
        self.cycles = 0
        self.received = 0
        self.received_prior = 0
        self.expected_prior = 0

    def update(self, seq: int, rtp_ts: int, arrival: float) -> bool:
        udelta = (seq - self.max_seq) & 0xFFFF
        if self.probation:
            if seq == (self.max_seq + 1) & 0xFFFF:
                self.probation -= 1
                self.max_seq = seq
                if self.probation == 0:
                    self._init_seq(seq)
                    self.received += 1
                    self._jitter(rtp_ts, arrival)
                    return True
            else:
                self.probation = MIN_SEQUENTIAL - 1
                self.max_seq = seq
            return False
        if udelta < MAX_DROPOUT:
            if seq < self.max_seq:
                self.cycles += SEQ_MOD
            self.max_seq = seq
        elif udelta <= SEQ_MOD - MAX_MISORDER:
            if seq == self.bad_seq:
                # two sequential packets after a big jump: the source restarted
                self._init_seq(seq)
                self._transit = None
            else:
                self.bad_seq = (seq + 1) & 0xFFFF
                return False
        else:
            self.duplicates_or_old += 1  # duplicate or reordered; still counted below
        self.received += 1
        self._jitter(rtp_ts, arrival)
        return True

    def _jitter(self, rtp_ts: int, arrival: float) -> None:
        transit = arrival * self.clock_rate - rtp_ts
        if self._transit is not None:
            d = transit - self._transit
            # timestamps wrap at 2**32: fold the difference back near zero
            d = (d + 2**31) % 2**32 - 2**31
            self.jitter += (abs(d) - self.jitter) / 16
        self._transit = transit

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        return self.extended_max - self.base_seq + 1

    @property
    def lost(self) -> int:
        return self.expected - self.received

    def report_block(self, lsr: int = 0, dlsr: int = 0) -> ReportBlock:
        """The next report block; advances the 'since last report' counters."""
        expected = self.expected
        exp_int = expected - self.expected_prior
        rec_int = self.received - self.received_prior
        self.expected_prior = expected
        self.received_prior = self.received
        lost_int = exp_int - rec_int
        fraction = (lost_int << 8) // exp_int if exp_int > 0 and lost_int > 0 else 0
        return ReportBlock(
            ssrc=self.ssrc,
            fraction_lost=min(fraction, 255),
            cumulative_lost=self.lost,
            highest_seq=self.extended_max & 0xFFFFFFFF,
            jitter=int(self.jitter),
            lsr=lsr,
            dlsr=dlsr,
        )


# --- the per-call RTCP session -------------------------------------------------------

MIN_INTERVAL = 5.0  # seconds (RFC 3550 6.2)


@dataclass
class RtcpEvent:
    kind: str  # "report" | "bye" | "sdes"
    ssrc: int
    rtt: float | None = None  # seconds, when a report block about us allowed it
    fraction_lost: float | None = None  # what the far end reports about our stream
    cumulative_lost: int | None = None
    jitter: float | None = None  # seconds, far end's view of our stream
    reason: str = ""


class RtcpSession:
    """Builds our reports and digests the far end's, for one call.

    Two parties only, so the RFC 3550 interval rules reduce to: first report
    after half the minimum interval, then every 5 s randomised by 0.5..1.5.
    """

    def __init__(
        self,
        ssrc: int,
        cname: str,
        clock_rate: int,
        rng: Random | None = None,
    ) -> None:
        self.ssrc = ssrc
        self.cname = cname
        self.clock_rate = clock_rate
        self._rng = rng or Random()
        self.source: ReceptionStats | None = None
        self._last_sr: tuple[int, float] | None = None  # (LSR value, when we got it)
        self.rtt: float | None = None
        self.remote_fraction_lost: float | None = None
        self.remote_cumulative_lost: int | None = None
        self.remote_jitter: float | None = None
        self.remote_cname: str | None = None
        self._sent_since_report = False
        self.next_report: float | None = None

    # inputs
    def on_rtp(self, ssrc: int, seq: int, rtp_ts: int, arrival: float) -> bool:
        """Feed a received RTP packet; False if source validation rejects it."""
        if self.source is None or self.source.ssrc != ssrc:
            self.source = ReceptionStats(ssrc, self.clock_rate, seq)
            self._last_sr = None
        return self.source.update(seq, rtp_ts, arrival)

    def on_rtp_sent(self) -> None:
        self._sent_since_report = True

    def on_rtcp(self, data: bytes, now: float) -> list[RtcpEvent]:
        events: list[RtcpEvent] = []
        for pkt in parse_compound(data):
            if isinstance(pkt, SenderReport | ReceiverReport):
                if isinstance(pkt, SenderReport):
                    self._last_sr = (ntp_middle(pkt.ntp), now)
                ev = RtcpEvent("report", pkt.ssrc)
                for block in pkt.reports:
                    if block.ssrc != self.ssrc:
                        continue
                    ev.fraction_lost = block.fraction_lost / 256
                    ev.cumulative_lost = block.cumulative_lost
                    ev.jitter = block.jitter / self.clock_rate
                    if block.lsr:
                        a = ntp_middle(ntp_from_unix(now))
                        rtt = ((a - block.lsr - block.dlsr) & 0xFFFFFFFF) / 65536
                        if rtt < 60:  # a wrapped (negative) value means clocks are off
                            ev.rtt = rtt
                            self.rtt = rtt
                    self.remote_fraction_lost = ev.fraction_lost
                    self.remote_cumulative_lost = ev.cumulative_lost
                    self.remote_jitter = ev.jitter
                events.append(ev)
            elif isinstance(pkt, SourceDescription):
                for ssrc, _items in pkt.chunks:
                    name = pkt.cname(ssrc)
                    if name is not None and self.source and ssrc == self.source.ssrc:
                        self.remote_cname = name
                    events.append(RtcpEvent("sdes", ssrc, reason=name or ""))
            elif isinstance(pkt, Bye):
                events.extend(RtcpEvent("bye", s, reason=pkt.reason) for s in pkt.ssrcs)
        return events

    # outputs
    def _blocks(self, now: float) -> list[ReportBlock]:
        if self.source is None:
            return []
        lsr = dlsr = 0
        if self._last_sr is not None:
            lsr = self._last_sr[0]
            dlsr = int((now - self._last_sr[1]) * 65536)
        return [self.source.report_block(lsr, dlsr)]

    def report(
        self,
        now: float,
        rtp_timestamp: int = 0,
        packets_sent: int = 0,
        octets_sent: int = 0,
    ) -> bytes:
        """A compound SR or RR + SDES(CNAME); schedules the next one."""
        blocks = self._blocks(now)
        first: RtcpPacket
        if self._sent_since_report:
            first = SenderReport(
                self.ssrc, ntp_from_unix(now), rtp_timestamp, packets_sent, octets_sent, blocks
            )
        else:
            first = ReceiverReport(self.ssrc, blocks)
        self._sent_since_report = False
        self.schedule(now)
        sdes = SourceDescription([(self.ssrc, [(SDES_CNAME, self.cname.encode())])])
        return serialize_compound([first, sdes])

    def bye(self, now: float, reason: str = "", **sender: int) -> bytes:
        """Final report + SDES + BYE, for the end of the call."""
        report = parse_compound(self.report(now, **sender))
        return serialize_compound([*report, Bye([self.ssrc], reason)])

    def schedule(self, now: float) -> float:
        base = MIN_INTERVAL / 2 if self.next_report is None else MIN_INTERVAL
        self.next_report = now + base * self._rng.uniform(0.5, 1.5)
        return self.next_report

    def due(self, now: float) -> bool:
        if self.next_report is None:
            self.schedule(now)
        return now >= self.next_report  # type: ignore[operator]
