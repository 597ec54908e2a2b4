"""A small reader for classic libpcap files: UDP payloads over Ethernet/IPv4."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path


@dataclass
class UdpRecord:
    time: float
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes


def read_udp(path: Path) -> list[UdpRecord]:
    data = Path(path).read_bytes()
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"{path}: not a pcap file")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    pos = 24
    out = []
    while pos + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack_from(endian + "IIII", data, pos)
        frame = data[pos + 16 : pos + 16 + incl]
        pos += 16 + incl
        t = sec + frac / (1e9 if nano else 1e6)
        if linktype == 1:  # Ethernet, maybe one VLAN tag
            ethertype = struct.unpack_from("!H", frame, 12)[0]
            off = 14
            if ethertype == 0x8100:
                ethertype = struct.unpack_from("!H", frame, 16)[0]
                off = 18
            if ethertype != 0x0800:
                continue
        elif linktype == 113:  # Linux cooked capture
            off = 16
        elif linktype == 101:  # raw IP
            off = 0
        else:
            raise ValueError(f"{path}: link type {linktype} not handled")
        ip = frame[off:]
        if ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        ihl = (ip[0] & 0x0F) * 4
        src = ".".join(str(b) for b in ip[12:16])
        dst = ".".join(str(b) for b in ip[16:20])
        sport, dport, length = struct.unpack_from("!HHH", ip, ihl)
        out.append(UdpRecord(t, (src, sport), (dst, dport), bytes(ip[ihl + 8 : ihl + length])))
    return out
