"""RTP packets (RFC 3550), sequence/timestamp arithmetic, the per-call sender,
SSRC tracking and symmetric-RTP latching. Sans-IO: bytes and times in, values out.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass, field
from random import Random

RTP_VERSION = 2
HEADER = struct.Struct("!BBHII")

PT_CN = 13  # comfort noise, RFC 3389


class RtpError(ValueError):
    """A datagram that is not a well-formed RTP packet."""


@dataclass(slots=True)
class RtpPacket:
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrc: tuple[int, ...] = ()
    # header extension: (16-bit profile value, data whose length is a multiple of 4)
    extension: tuple[int, bytes] | None = None
    padding: int = 0  # padding octets (including the count octet); 0 = none

    def serialize(self) -> bytes:
        if not 0 <= self.payload_type < 128:
            raise RtpError(f"payload type {self.payload_type} out of range")
        if len(self.csrc) > 15:
            raise RtpError("more than 15 CSRCs")
        b0 = RTP_VERSION << 6 | len(self.csrc)
        if self.padding:
            b0 |= 0x20
        if self.extension is not None:
            b0 |= 0x10
        b1 = self.payload_type | (0x80 if self.marker else 0)
        parts = [
            HEADER.pack(
                b0, b1, self.sequence & 0xFFFF, self.timestamp & 0xFFFFFFFF, self.ssrc & 0xFFFFFFFF
            )
        ]
        if self.csrc:
            parts.append(struct.pack(f"!{len(self.csrc)}I", *self.csrc))
        if self.extension is not None:
            profile, data = self.extension
            if len(data) % 4:
                raise RtpError("extension data must be a multiple of 4 octets")
            parts.append(struct.pack("!HH", profile, len(data) // 4))
            parts.append(data)
        parts.append(self.payload)
        if self.padding:
            if not 1 <= self.padding <= 255:
                raise RtpError("padding must be 1..255 octets")
            parts.append(bytes(self.padding - 1) + bytes([self.padding]))
        return b"".join(parts)

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        n = len(data)
        if n < 12:
            raise RtpError("shorter than an RTP header")
        b0, b1, seq, ts, ssrc = HEADER.unpack_from(data)
        if b0 >> 6 != RTP_VERSION:
            raise RtpError(f"RTP version {b0 >> 6}")
        cc = b0 & 0x0F
        pos = 12 + 4 * cc
        if pos > n:
            raise RtpError("CSRC list runs past the end")
        csrc = struct.unpack_from(f"!{cc}I", data, 12) if cc else ()
        ext = None
        if b0 & 0x10:
            if pos + 4 > n:
                raise RtpError("extension header runs past the end")
            profile, words = struct.unpack_from("!HH", data, pos)
            end = pos + 4 + 4 * words
            if end > n:
                raise RtpError("extension runs past the end")
            ext = (profile, bytes(data[pos + 4 : end]))
            pos = end
        pad = 0
        if b0 & 0x20:
            pad = data[-1]
            if pad == 0 or pos + pad > n:
                raise RtpError("bad padding length")
        return cls(
            payload_type=b1 & 0x7F,
            sequence=seq,
            timestamp=ts,
            ssrc=ssrc,
            payload=bytes(data[pos : n - pad]),
            marker=bool(b1 & 0x80),
            csrc=tuple(csrc),
            extension=ext,
            padding=pad,
        )


def parse_extension_elements(ext: tuple[int, bytes]) -> list[tuple[int, bytes]]:
    """Split an RFC 8285 one-byte (0xBEDE) or two-byte (0x100x) header extension."""
    profile, data = ext
    out: list[tuple[int, bytes]] = []
    i = 0
    if profile == 0xBEDE:
        while i < len(data):
            b = data[i]
            if b == 0:  # padding
                i += 1
                continue
            ident, length = b >> 4, (b & 0x0F) + 1
            if ident == 15:
                break
            out.append((ident, bytes(data[i + 1 : i + 1 + length])))
            i += 1 + length
    elif profile >> 4 == 0x100:
        while i + 1 < len(data):
            ident = data[i]
            if ident == 0:
                i += 1
                continue
            length = data[i + 1]
            out.append((ident, bytes(data[i + 2 : i + 2 + length])))
            i += 2 + length
    return out


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 demultiplexing: RTCP packet types 192..223 sit where RTP has
    marker+payload types 64..95, which no audio mapping uses."""
    return len(data) >= 2 and 192 <= data[1] <= 223


# --- serial number arithmetic ---------------------------------------------------


def seq_diff(a: int, b: int) -> int:
    """a - b for 16-bit sequence numbers, in -32768..32767."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


def ts_diff(a: int, b: int) -> int:
    """a - b for 32-bit timestamps, in -2**31..2**31-1."""
    return ((a - b + 0x80000000) & 0xFFFFFFFF) - 0x80000000


class Unwrapper:
    """Extend wrapping counters (16-bit seq, 32-bit timestamp) to plain ints.

    Each value is placed nearest to the last one returned, so reordering across
    the wrap point extends correctly in both directions.
    """

    __slots__ = ("_half", "_last", "_mod")

    def __init__(self, bits: int) -> None:
        self._mod = 1 << bits
        self._half = 1 << (bits - 1)
        self._last: int | None = None

    def extend(self, value: int) -> int:
        if self._last is None:
            self._last = value
            return value
        delta = ((value - self._last + self._half) % self._mod) - self._half
        ext = self._last + delta
        if delta > 0:
            self._last = ext
        return ext

    def reset(self) -> None:
        self._last = None


# --- sending ------------------------------------------------------------------------


@dataclass
class RtpSender:
    """One outgoing stream: a random SSRC, initial sequence and timestamp per call
    (RFC 3550 section 5.1), and the counters an RTCP sender report needs.

    Audio and RFC 4733 events share the stream: `timestamp` is the media clock
    of the next audio frame, and DTMF packets pass their own event timestamp.
    """

    rng: Random | None = None
    ssrc: int = field(init=False)
    sequence: int = field(init=False)
    timestamp: int = field(init=False)
    packets_sent: int = field(default=0, init=False)
    octets_sent: int = field(default=0, init=False)
    last_timestamp: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        bits = self.rng.getrandbits if self.rng is not None else secrets.randbits
        self.ssrc = bits(32)
        self.sequence = bits(16)
        self.timestamp = bits(32)
        self.last_timestamp = self.timestamp

    def packet(
        self,
        payload: bytes,
        payload_type: int,
        advance: int = 0,
        marker: bool = False,
        timestamp: int | None = None,
    ) -> bytes:
        """Serialise the next packet; `advance` moves the media clock after it."""
        ts = self.timestamp if timestamp is None else timestamp & 0xFFFFFFFF
        data = RtpPacket(payload_type, self.sequence, ts, self.ssrc, payload, marker).serialize()
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.timestamp = (self.timestamp + advance) & 0xFFFFFFFF
        self.packets_sent += 1
        self.octets_sent += len(payload)
        self.last_timestamp = ts
        return data

    def skip(self, ticks: int) -> None:
        """Advance the media clock without sending (silence suppression)."""
        self.timestamp = (self.timestamp + ticks) & 0xFFFFFFFF


# --- receiving: which source, from where ------------------------------------------


class SsrcTracker:
    """Follow the far end's SSRC, including a change mid-call.

    A PBX that re-INVITEs or bridges another leg often restarts RTP with a new
    SSRC. A new SSRC takes over once it has sent `switch_after` packets in a row,
    or at once when the current source has been silent for `idle` seconds;
    stray packets from the old one are then refused.
    """

    def __init__(self, switch_after: int = 2, idle: float = 0.2) -> None:
        self.ssrc: int | None = None
        self._switch_after = switch_after
        self._idle = idle
        self._last_seen = 0.0
        self._candidate: int | None = None
        self._count = 0

    def accept(self, ssrc: int, now: float) -> tuple[bool, bool]:
        """(accept the packet, this packet starts a new source)."""
        if self.ssrc is None or ssrc == self.ssrc:
            new = self.ssrc is None
            self.ssrc = ssrc
            self._last_seen = now
            self._candidate = None
            return True, new
        if ssrc == self._candidate:
            self._count += 1
        else:
            self._candidate, self._count = ssrc, 1
        if self._count >= self._switch_after or now - self._last_seen > self._idle:
            self.ssrc = ssrc
            self._last_seen = now
            self._candidate = None
            return True, True
        return False, False


Addr = tuple[str, int]


class SymmetricLatch:
    """Where to send RTP, and whose RTP to take (symmetric RTP, RFC 4961 style).

    Until a valid packet arrives we send to the address from SDP. The first
    valid packet latches the peer's real address (the NAT's public side); from
    then on only that address is accepted. If the latched peer has been quiet
    for `relatch_after` seconds, `confirm` valid packets in a row from a new
    address move the latch (NAT rebinding, media moved by the PBX) - a lone
    spoofed packet cannot.
    """

    def __init__(self, sdp_addr: Addr | None, relatch_after: float = 2.0, confirm: int = 3) -> None:
        self.sdp_addr = sdp_addr
        self.latched: Addr | None = None
        self._relatch_after = relatch_after
        self._confirm = confirm
        self._last_valid = 0.0
        self._candidate: Addr | None = None
        self._count = 0

    @property
    def target(self) -> Addr | None:
        return self.latched or self.sdp_addr

    def on_packet(self, addr: Addr, valid: bool, now: float) -> bool:
        """Whether to process a datagram from `addr` (`valid`: parsed and expected PT)."""
        if not valid:
            return False
        if self.latched is None or addr == self.latched:
            self.latched = addr
            self._last_valid = now
            self._candidate = None
            return True
        if now - self._last_valid < self._relatch_after:
            return False
        if addr == self._candidate:
            self._count += 1
        else:
            self._candidate, self._count = addr, 1
        if self._count >= self._confirm:
            self.latched = addr
            self._last_valid = now
            self._candidate = None
            return True
        return False

    def update_sdp(self, sdp_addr: Addr | None) -> None:
        """A new offer/answer moved the media: forget the latch."""
        self.sdp_addr = sdp_addr
        self.latched = None
        self._candidate = None
