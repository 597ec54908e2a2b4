"""The RTP socket edge on 127.0.0.1: latching, DSCP, RTCP on its own port or muxed."""

from __future__ import annotations

import asyncio
import socket

from porch.media.rtcp import ReceiverReport, serialize
from porch.media.rtp import RtpPacket
from porch.media.transport import MediaTransport


def _udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(2)
    return s


def _rtp(seq: int, pt: int = 0) -> bytes:
    return RtpPacket(pt, seq, seq * 160, 99, bytes(160)).serialize()


async def _until(cond, timeout: float = 2.0) -> None:
    end = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > end:
            raise AssertionError("timed out")
        await asyncio.sleep(0.005)


def test_latching_symmetric_rtp_and_dscp():
    async def scenario():
        got: list[tuple[int, tuple]] = []
        peer, intruder = _udp(), _udp()
        sdp_addr = ("127.0.0.1", 9)  # what SDP said; the real peer sends from elsewhere
        t = await MediaTransport(
            lambda p, a, now: got.append((p.sequence, a)), remote=sdp_addr, payload_types={0}
        ).open("127.0.0.1")
        try:
            assert t.port % 2 == 0 and t.rtcp_port == t.port + 1
            sock = t._rtp.transport.get_extra_info("socket")
            assert t.dscp and sock.getsockopt(socket.IPPROTO_IP, socket.IP_TOS) == 46 << 2
            assert t.latch.target == sdp_addr
            intruder.sendto(b"garbage", ("127.0.0.1", t.port))
            peer.sendto(_rtp(1, pt=18), ("127.0.0.1", t.port))  # not a payload type we offered
            peer.sendto(_rtp(2), ("127.0.0.1", t.port))
            await _until(lambda: len(got) == 1)
            assert t.latch.target == peer.getsockname()
            intruder.sendto(_rtp(3), ("127.0.0.1", t.port))
            peer.sendto(_rtp(4), ("127.0.0.1", t.port))
            await _until(lambda: len(got) == 2)
            assert [s for s, _ in got] == [2, 4]
            assert t.refused == 3
            # we answer where the peer's media comes from, not where SDP said
            assert t.send_rtp(_rtp(100))
            data, _ = await asyncio.get_running_loop().run_in_executor(None, peer.recvfrom, 2048)
            assert RtpPacket.parse(data).sequence == 100
        finally:
            t.close()
            peer.close()
            intruder.close()

    asyncio.run(scenario())


def test_rtcp_on_its_own_port_and_muxed():
    async def scenario(mux: bool):
        rtcp_got: list[bytes] = []
        rtp_got: list[int] = []
        peer = _udp()
        t = await MediaTransport(
            lambda p, a, now: rtp_got.append(p.sequence),
            lambda d, a, now: rtcp_got.append(d),
            rtcp_mux=mux,
        ).open("127.0.0.1")
        try:
            rr = serialize(ReceiverReport(5, []))
            peer.sendto(rr, ("127.0.0.1", t.rtcp_port))
            peer.sendto(_rtp(7), ("127.0.0.1", t.port))
            await _until(lambda: rtcp_got and rtp_got)
            assert rtcp_got == [rr] and rtp_got == [7]
            assert (t.rtcp_port == t.port) == mux
            assert t.send_rtcp(rr)
            data, _ = await asyncio.get_running_loop().run_in_executor(None, peer.recvfrom, 2048)
            assert data == rr
        finally:
            t.close()
            peer.close()

    asyncio.run(scenario(False))
    asyncio.run(scenario(True))
