"""What serial RFID/keypad readers send, decoded sans-IO: bytes and time in, cards and keys out.

Two kinds of reader are common at doors:
- 125 kHz EM4100 modules (RDM6300 and clones): STX, 10 hex digits (version + 4 data
  bytes), 2 hex digits of XOR checksum, ETX. The card id is the 10 hex digits.
- Wiegand-to-serial converters and USB readers in "keyboard" mode: a card number as one
  line (hex or decimal, CR and/or LF), and keypad keys as single characters sent at once.
A run of keypad characters with no line end for `KEY_IDLE` seconds is keys, not a card.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

STX, ETX = 0x02, 0x03
KEY_IDLE = 0.25
MAX_BUFFER = 64
CARD_LINE = re.compile(rb"[0-9A-Fa-f]{4,32}")
KEYS = frozenset(b"0123456789*#")


@dataclass(frozen=True)
class Card:
    id: str


@dataclass(frozen=True)
class Key:
    key: str


@dataclass(frozen=True)
class Garbage:
    """Bytes that are neither a card nor keys; logged, never fatal."""

    data: bytes
    reason: str


ReaderEvent = Card | Key | Garbage


class ReaderDecoder:
    """Feed bytes with the time they arrived; poll to flush keys typed without a line end."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._last = 0.0
        self._in_frame = False

    def feed(self, data: bytes, now: float) -> list[ReaderEvent]:
        events: list[ReaderEvent] = []
        for byte in data:
            if byte == STX:
                events.extend(self._flush_keys())
                self._buffer.clear()
                self._in_frame = True
            elif byte == ETX and self._in_frame:
                events.append(self._em4100(bytes(self._buffer)))
                self._buffer.clear()
                self._in_frame = False
            elif byte in (0x0D, 0x0A) and not self._in_frame:
                events.extend(self._line(bytes(self._buffer)))
                self._buffer.clear()
            else:
                self._buffer.append(byte)
                if len(self._buffer) > MAX_BUFFER:
                    events.append(Garbage(bytes(self._buffer), "too long without a frame end"))
                    self._buffer.clear()
                    self._in_frame = False
        self._last = now
        return events

    def poll(self, now: float) -> list[ReaderEvent]:
        """Keys that have waited `KEY_IDLE` without a line end are keypad presses."""
        if self._buffer and not self._in_frame and now - self._last >= KEY_IDLE:
            return self._flush_keys()
        return []

    def _flush_keys(self) -> list[ReaderEvent]:
        if self._buffer and all(b in KEYS for b in self._buffer):
            keys: list[ReaderEvent] = [Key(chr(b)) for b in self._buffer]
            self._buffer.clear()
            return keys
        if self._buffer and not self._in_frame:
            garbage = Garbage(bytes(self._buffer), "not keys and no line end")
            self._buffer.clear()
            return [garbage]
        return []

    @staticmethod
    def _line(line: bytes) -> list[ReaderEvent]:
        line = line.strip()
        if not line:
            return []
        if all(b in KEYS for b in line) and (b"*" in line or b"#" in line or len(line) < 4):
            return [Key(chr(b)) for b in line]
        if CARD_LINE.fullmatch(line):
            return [Card(line.decode().upper())]
        return [Garbage(line, "not a card number")]

    @staticmethod
    def _em4100(frame: bytes) -> ReaderEvent:
        if len(frame) != 12:
            return Garbage(frame, f"EM4100 frame of {len(frame)} digits, not 12")
        try:
            raw = bytes.fromhex(frame.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return Garbage(frame, "EM4100 frame is not hex")
        checksum = 0
        for b in raw[:5]:
            checksum ^= b
        if checksum != raw[5]:
            return Garbage(frame, "EM4100 checksum mismatch")
        return Card(frame[:10].decode().upper())
