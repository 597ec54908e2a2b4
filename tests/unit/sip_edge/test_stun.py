"""STUN binding client: codec vectors, the RFC 5389 7.2.1 schedule, and real exchanges on
127.0.0.1 with a small server written here and, when installed, coturn's turnserver."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import struct
import subprocess
import time
import zlib

import pytest
from sip_edge_util import run, sip_request, udp_peer

from porch.sip import stun
from porch.sip.transport import SipTransport

COOKIE = bytes.fromhex("2112a442")
# RFC 5769 section 2.2/2.3: transaction id and the XOR-MAPPED-ADDRESS values of the sample
# responses (192.0.2.1:32853 and 2001:db8:1234:5678:11:2233:4455:6677 port 32853).
TXID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
XOR_V4 = bytes.fromhex("0001a147e112a643")
XOR_V6 = bytes.fromhex("0002a1470113a9faa5d3f179bc25f4b5bed2b9d9")


def response(txid: bytes, attrs: list[tuple[int, bytes]], msg_type: int = 0x0101) -> bytes:
    """Assemble a STUN message by hand (independent of the encoder under test)."""
    body = b"".join(struct.pack("!HH", t, len(v)) + v + b"\0" * (-len(v) % 4) for t, v in attrs)
    return struct.pack("!HH", msg_type, len(body)) + COOKIE + txid + body


def test_rfc5769_xor_mapped_address_vectors():
    v4 = stun.decode(response(TXID, [(0x0020, XOR_V4)]))
    assert v4.mapped_address == ("192.0.2.1", 32853)
    v6 = stun.decode(response(TXID, [(0x0020, XOR_V6)]))
    assert v6.mapped_address == ("2001:db8:1234:5678:11:2233:4455:6677", 32853)
    assert stun.encode_address(("192.0.2.1", 32853), xor=TXID) == XOR_V4
    assert stun.encode_address(("2001:db8:1234:5678:11:2233:4455:6677", 32853), xor=TXID) == XOR_V6


def test_plain_mapped_address_and_xor_preferred():
    mapped = bytes.fromhex("0001") + struct.pack("!H", 4000) + bytes([10, 1, 2, 3])
    only_plain = stun.decode(response(TXID, [(0x0001, mapped)]))
    assert only_plain.mapped_address == ("10.1.2.3", 4000)
    both = stun.decode(response(TXID, [(0x0001, mapped), (0x0020, XOR_V4)]))
    assert both.mapped_address == ("192.0.2.1", 32853)


def test_request_encoding_with_fingerprint():
    data = stun.encode_binding_request(TXID, software="porch")
    assert data[:2] == b"\x00\x01" and data[4:8] == COOKIE and data[8:20] == TXID
    assert struct.unpack("!H", data[2:4])[0] == len(data) - 20
    assert stun.is_stun(data)
    # FINGERPRINT: CRC-32 of everything before it, XOR 0x5354554e (RFC 5389 15.5).
    assert data[-8:-4] == bytes.fromhex("80280004")
    assert struct.unpack("!I", data[-4:])[0] == zlib.crc32(data[:-8]) ^ 0x5354554E
    message = stun.decode(data)
    assert message.msg_type == stun.BINDING_REQUEST and message.get(0x8022) == b"porch"
    damaged = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(stun.StunError):
        stun.decode(damaged)


def test_not_stun():
    assert not stun.is_stun(sip_request(via="SIP/2.0/UDP h;branch=z9hG4bK1"))
    assert not stun.is_stun(b"\r\n\r\n")
    header = struct.pack("!HH", 0x0101, 8) + COOKIE + TXID
    for junk in (
        b"",
        b"\x00" * 10,
        b"\xc0" + response(TXID, [])[1:],  # top bits set
        header,  # announces 8 bytes of attributes that are not there
        struct.pack("!HH", 0x0101, 6) + COOKIE + TXID + b"\0" * 6,  # not a multiple of 4
        header + struct.pack("!HH", 0x0020, 40) + b"\0" * 4,  # attribute runs past the end
    ):
        with pytest.raises(stun.StunError):
            stun.decode(junk)


def test_retransmission_schedule_rfc5389():
    tx = stun.BindingTransaction(transaction_id=TXID)
    sends = [0.0]
    assert isinstance(tx.start(0.0), stun.Send)
    now = 0.0
    outcome = None
    while outcome is None:
        now = tx.deadline
        step = tx.on_timer(now)
        assert tx.on_timer(now) is None or isinstance(step, stun.Failed)  # nothing twice
        if isinstance(step, stun.Send):
            sends.append(now)
        else:
            outcome = step
    assert sends == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert now == 39.5 and isinstance(outcome, stun.Failed) and "timeout" in outcome.reason
    assert tx.on_timer(100.0) is None


def test_transaction_matches_only_its_answer():
    tx = stun.BindingTransaction(transaction_id=TXID, rto=1.0)
    tx.start(0.0)
    other = bytes(12)
    assert tx.on_datagram(response(other, [(0x0020, XOR_V4)]), 0.1) is None
    assert tx.on_timer(0.5) is None  # not due yet
    assert tx.on_datagram(b"\x01\x01\x00\x00garbage", 0.2) is None
    done = tx.on_datagram(response(TXID, [(0x0020, XOR_V4)]), 0.3)
    assert done == stun.Succeeded(("192.0.2.1", 32853))
    assert tx.done and tx.deadline is None
    assert tx.on_datagram(response(TXID, [(0x0020, XOR_V4)]), 0.4) is None


def test_error_response_and_unknown_required_attribute():
    tx = stun.BindingTransaction(transaction_id=TXID)
    tx.start(0.0)
    error = struct.pack("!HBB", 0, 4, 20) + b"Unknown Attribute"
    failed = tx.on_datagram(response(TXID, [(0x0009, error)], msg_type=0x0111), 0.1)
    assert isinstance(failed, stun.Failed) and failed.code == 420
    tx = stun.BindingTransaction(transaction_id=TXID)
    tx.start(0.0)
    failed = tx.on_datagram(response(TXID, [(0x0020, XOR_V4), (0x0033, b"abcd")]), 0.1)
    assert isinstance(failed, stun.Failed)


class MiniStunServer(asyncio.DatagramProtocol):
    """A tiny STUN server: answers Binding requests with XOR-MAPPED-ADDRESS (and
    MAPPED-ADDRESS), optionally ignoring the first `drop` requests."""

    def __init__(self, drop: int = 0, report: tuple[str, int] | None = None) -> None:
        self.drop = drop
        self.report = report
        self.requests: list[tuple[bytes, tuple[str, int]]] = []

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.requests.append((data, addr))
        if len(self.requests) <= self.drop:
            return
        if data[:2] != b"\x00\x01" or data[4:8] != COOKIE:
            return
        txid = data[8:20]
        host, port = self.report or (addr[0], addr[1])
        ip = socket.inet_aton(host)
        xport = port ^ 0x2112
        xip = bytes(a ^ b for a, b in zip(ip, COOKIE, strict=True))
        attrs = [
            (0x0001, struct.pack("!BBH", 0, 1, port) + ip),
            (0x0020, struct.pack("!BBH", 0, 1, xport) + xip),
        ]
        self.transport.sendto(response(txid, attrs), addr)


async def mini_server(**kw) -> tuple[MiniStunServer, int]:
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(
        lambda: MiniStunServer(**kw), local_addr=("127.0.0.1", 0)
    )
    return server, transport.get_extra_info("sockname")[1]


def test_binding_with_own_socket_and_retransmissions():
    async def main():
        server, port = await mini_server(drop=2)
        address = await stun.binding(("127.0.0.1", port), local_host="127.0.0.1", rto=0.05)
        assert address[0] == "127.0.0.1"
        assert len(server.requests) == 3  # two lost, the third answered
        assert len({d[8:20] for d, _ in server.requests}) == 1  # same transaction id
        assert server.requests[0][1][1] == address[1]
        server.transport.close()

    run(main())


def test_binding_times_out_with_a_stun_error():
    async def main():
        server, port = await mini_server(drop=1000)
        with pytest.raises(stun.StunError, match="timeout"):
            await stun.binding(("127.0.0.1", port), local_host="127.0.0.1", rto=0.01, rm=4)
        assert len(server.requests) == 7
        server.transport.close()

    run(main())


def test_binding_through_the_sip_socket_while_sip_keeps_working():
    async def main():
        server, port = await mini_server(report=("203.0.113.50", 41000))
        changes = []
        got = []
        async with SipTransport(
            "127.0.0.1",
            0,
            on_public_address=lambda t, a: changes.append((t, a)),
            on_message=lambda m, s: got.append(m),
        ) as t:
            address = await t.stun_binding(("127.0.0.1", port), rto=0.05)
            assert address == ("203.0.113.50", 41000)
            # The request left from the SIP socket itself, so the mapping is the SIP one.
            assert server.requests[0][1] == ("127.0.0.1", t.ports["udp"])
            assert t.public_address("udp") == address
            assert changes == [("udp", address)]
            assert t.stats.stun_in == 1 and t.stats.dropped == 0
            # A stray STUN message nobody waits for is dropped, not parsed as SIP.
            peer = await udp_peer()
            peer.send(response(TXID, [(0x0020, XOR_V4)]), ("127.0.0.1", t.ports["udp"]))
            peer.send(
                sip_request(via="SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKs"),
                ("127.0.0.1", t.ports["udp"]),
            )
            while not got:
                await asyncio.sleep(0.01)
            assert t.stats.dropped == 1
            assert got[0].method == "OPTIONS"
            peer.close()
        server.transport.close()

    run(main())


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("turnserver") is None, reason="coturn (turnserver) missing")
def test_binding_against_coturn(tmp_path):
    """A real, independent STUN server: coturn's turnserver in STUN-only mode."""
    port = _free_udp_port()
    proc = subprocess.Popen(
        [
            "turnserver",
            "--stun-only",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--listening-ip",
            "127.0.0.1",
            "--listening-port",
            str(port),
            "--no-stdout-log",
            "--log-file",
            str(tmp_path / "turn.log"),
            "--simple-log",
            "--pidfile",
            str(tmp_path / "turn.pid"),
            "--userdb",
            str(tmp_path / "turn.db"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    try:

        async def main():
            async with SipTransport("127.0.0.1", 0) as t:
                # turnserver needs a moment to open its socket: retry the first binding.
                deadline = time.monotonic() + 10
                while True:
                    try:
                        address = await t.stun_binding(("127.0.0.1", port), rto=0.1, rc=3)
                        break
                    except stun.StunError:
                        if time.monotonic() > deadline or proc.poll() is not None:
                            raise
                assert address == ("127.0.0.1", t.ports["udp"])
                # Our own socket, too.
                own = await stun.binding(("127.0.0.1", port), local_host="127.0.0.1", rto=0.1)
                assert own[0] == "127.0.0.1" and own[1] != t.ports["udp"]

        run(main())
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
