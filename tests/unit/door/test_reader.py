"""The serial card/keypad reader: the decoder sans-IO, and the driver over a real pty."""

import asyncio
import os
import tty

from porch.drivers.reader import SerialReader
from porch.drivers.reader_protocol import KEY_IDLE, Card, Garbage, Key, ReaderDecoder


def em4100(hex10: str) -> bytes:
    raw = bytes.fromhex(hex10)
    checksum = 0
    for b in raw:
        checksum ^= b
    return b"\x02" + hex10.encode() + f"{checksum:02X}".encode() + b"\x03"


def test_em4100_frame_with_checksum():
    d = ReaderDecoder()
    assert d.feed(em4100("0F00A1B2C3"), 0.0) == [Card("0F00A1B2C3")]
    bad = bytearray(em4100("0F00A1B2C3"))
    bad[11] ^= 0x01  # flip a checksum bit
    (event,) = d.feed(bytes(bad), 1.0)
    assert isinstance(event, Garbage) and "checksum" in event.reason


def test_em4100_split_across_reads():
    d = ReaderDecoder()
    frame = em4100("1234567890")
    assert d.feed(frame[:5], 0.0) == []
    assert d.feed(frame[5:], 0.01) == [Card("1234567890")]


def test_card_lines_and_keypad_keys():
    d = ReaderDecoder()
    assert d.feed(b"04a1b2c3\r\n", 0.0) == [Card("04A1B2C3")]
    assert d.feed(b"0012345678\n", 0.1) == [Card("0012345678")]
    assert d.feed(b"12#\r\n", 0.2) == [Key("1"), Key("2"), Key("#")]
    # keys typed one by one without line ends are flushed after a pause
    assert d.feed(b"47", 1.0) == []
    assert d.poll(1.0 + KEY_IDLE / 2) == []
    assert d.poll(1.0 + KEY_IDLE) == [Key("4"), Key("7")]


def test_garbage_is_reported_not_raised():
    d = ReaderDecoder()
    (event,) = d.feed(b"hello world\n", 0.0)
    assert isinstance(event, Garbage)
    (event,) = d.feed(b"\x02zz\x03", 0.1)
    assert isinstance(event, Garbage)
    events = d.feed(b"A" * 100, 0.2)
    assert any(isinstance(e, Garbage) for e in events)
    d.feed(b"\n", 0.25)  # the rest of the noise ends at the line end
    assert d.feed(b"DEADBEEF\n", 0.3) == [Card("DEADBEEF")]  # and it recovers


def test_driver_reads_a_pty_and_survives_unplugging():
    async def main():
        master, slave = os.openpty()
        tty.setraw(slave)
        path = os.ttyname(slave)
        events = []
        reader = SerialReader(path, 9600, events.append, reopen_seconds=0.2)
        await reader.start()
        assert reader.connected
        os.write(master, em4100("0F00A1B2C3"))
        os.write(master, b"DEADBEEF\r\n")
        os.write(master, b"9")
        for _ in range(50):
            await asyncio.sleep(0.02)
            if len(events) >= 3:
                break
        os.close(master)  # the reader goes away
        await asyncio.sleep(0.3)
        disconnected = not reader.connected
        error = reader.last_error
        await reader.stop()
        os.close(slave)
        return events, disconnected, error

    events, disconnected, error = asyncio.run(main())
    assert events == [Card("0F00A1B2C3"), Card("DEADBEEF"), Key("9")]
    assert disconnected and error


def test_missing_device_is_retried_not_fatal():
    async def main():
        reader = SerialReader("/dev/ttyDOESNOTEXIST", 9600, lambda e: None, reopen_seconds=0.05)
        await reader.start()
        await asyncio.sleep(0.2)
        state = (reader.connected, reader.last_error)
        await reader.stop()
        return state

    connected, error = asyncio.run(main())
    assert not connected and "ttyDOESNOTEXIST" in error
