"""The socket edge of the media path: RTP and RTCP over UDP on the asyncio loop.

Everything above this (packets, jitter buffer, DTMF, RTCP reports) is sans-IO;
this module only owns the sockets, stamps arrivals with the loop's clock and
applies symmetric-RTP latching (`rtp.SymmetricLatch`): we send to where the
far end's valid RTP comes from, and take RTP only from there once latched.
RTP gets DSCP EF (46) and RTCP AF31 where the OS allows; when it does not
(some containers) the call goes on and `dscp` says so. No threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import Callable

from porch.media.rtp import Addr, RtpError, RtpPacket, SymmetricLatch, is_rtcp

DSCP_EF = 46
DSCP_AF31 = 26  # RTCP: signalling-grade, below voice
PORT_RANGE = (16384, 32766)

RtpHandler = Callable[[RtpPacket, Addr, float], None]
RtcpHandler = Callable[[bytes, Addr, float], None]


def set_dscp(sock: socket.socket, dscp: int) -> bool:
    """Mark outgoing packets; False where the OS refuses (no error)."""
    tos = dscp << 2
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, tos)
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
    except OSError:
        return False
    return True


def _bind_pair(host: str, port: int, rtcp_mux: bool) -> tuple[socket.socket, socket.socket | None]:
    """An RTP socket on an even port and (unless muxed) RTCP on the next one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    candidates = [port] if port else [random.randrange(*PORT_RANGE) & ~1 for _ in range(64)]
    last: OSError | None = None
    for p in candidates:
        rtp = socket.socket(family, socket.SOCK_DGRAM)
        rtcp = None
        try:
            rtp.bind((host, p))
            if not rtcp_mux:
                rtcp = socket.socket(family, socket.SOCK_DGRAM)
                rtcp.bind((host, rtp.getsockname()[1] + 1))
            return rtp, rtcp
        except OSError as exc:
            last = exc
            rtp.close()
            if rtcp is not None:
                rtcp.close()
    raise OSError(f"no free RTP port pair on {host}") from last


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, owner: MediaTransport, rtcp: bool) -> None:
        self.owner = owner
        self.rtcp = rtcp
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.owner._received(data, (addr[0], addr[1]), self.rtcp)

    def error_received(self, exc: Exception) -> None:
        self.owner.errors += 1  # ICMP unreachable and the like: keep going


class MediaTransport:
    """RTP (+ RTCP) sockets for one call.

    `on_rtp(packet, addr, arrival)` gets parsed RTP of the accepted payload
    types from the latched peer, `arrival` on the loop clock (seconds);
    `on_rtcp(data, addr, arrival)` gets raw RTCP. Use `open()` to bind.
    """

    def __init__(
        self,
        on_rtp: RtpHandler,
        on_rtcp: RtcpHandler | None = None,
        remote: Addr | None = None,
        remote_rtcp: Addr | None = None,
        payload_types: set[int] | None = None,
        rtcp_mux: bool = False,
    ) -> None:
        self.on_rtp = on_rtp
        self.on_rtcp = on_rtcp
        self.payload_types = payload_types
        self.rtcp_mux = rtcp_mux
        self.latch = SymmetricLatch(remote)
        if remote_rtcp is None and remote is not None and not rtcp_mux:
            remote_rtcp = (remote[0], remote[1] + 1)
        self.rtcp_latch = SymmetricLatch(remote if rtcp_mux else remote_rtcp)
        self.dscp = False
        self.errors = 0
        self.received = 0
        self.refused = 0  # not RTP, unexpected payload type, or not from the latched peer
        self._rtp: _Endpoint | None = None
        self._rtcp: _Endpoint | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self, host: str = "0.0.0.0", port: int = 0) -> MediaTransport:
        loop = self._loop = asyncio.get_running_loop()
        rtp_sock, rtcp_sock = _bind_pair(host, port, self.rtcp_mux)
        self.dscp = set_dscp(rtp_sock, DSCP_EF)
        rtp_sock.setblocking(False)
        _, self._rtp = await loop.create_datagram_endpoint(
            lambda: _Endpoint(self, rtcp=False), sock=rtp_sock
        )
        if rtcp_sock is not None:
            set_dscp(rtcp_sock, DSCP_AF31)
            rtcp_sock.setblocking(False)
            _, self._rtcp = await loop.create_datagram_endpoint(
                lambda: _Endpoint(self, rtcp=True), sock=rtcp_sock
            )
        return self

    @property
    def port(self) -> int:
        assert self._rtp is not None and self._rtp.transport is not None
        return self._rtp.transport.get_extra_info("sockname")[1]

    @property
    def rtcp_port(self) -> int:
        if self._rtcp is None or self._rtcp.transport is None:
            return self.port
        return self._rtcp.transport.get_extra_info("sockname")[1]

    def set_remote(self, remote: Addr | None, remote_rtcp: Addr | None = None) -> None:
        """A re-INVITE moved the far end: send there, and latch afresh."""
        self.latch.update_sdp(remote)
        if remote_rtcp is None and remote is not None and not self.rtcp_mux:
            remote_rtcp = (remote[0], remote[1] + 1)
        self.rtcp_latch.update_sdp(remote if self.rtcp_mux else remote_rtcp)

    # --- receive -------------------------------------------------------------------

    def _received(self, data: bytes, addr: Addr, on_rtcp_socket: bool) -> None:
        now = self._loop.time() if self._loop is not None else 0.0
        self.received += 1
        if on_rtcp_socket or (self.rtcp_mux and is_rtcp(data)):
            if self.rtcp_latch.on_packet(addr, len(data) >= 8 and data[0] >> 6 == 2, now):
                if self.on_rtcp is not None:
                    self.on_rtcp(data, addr, now)
            else:
                self.refused += 1
            return
        packet = None
        try:
            packet = RtpPacket.parse(data)
        except RtpError:
            pass
        valid = packet is not None and (
            self.payload_types is None or packet.payload_type in self.payload_types
        )
        if self.latch.on_packet(addr, valid, now) and packet is not None:
            self.on_rtp(packet, addr, now)
        else:
            self.refused += 1

    # --- send ---------------------------------------------------------------------------

    def send_rtp(self, data: bytes) -> bool:
        target = self.latch.target
        if target is None or self._rtp is None or self._rtp.transport is None:
            return False
        self._rtp.transport.sendto(data, target)
        return True

    def send_rtcp(self, data: bytes) -> bool:
        target = self.rtcp_latch.target
        endpoint = self._rtp if self.rtcp_mux else self._rtcp
        if target is None or endpoint is None or endpoint.transport is None:
            return False
        endpoint.transport.sendto(data, target)
        return True

    def close(self) -> None:
        for ep in (self._rtp, self._rtcp):
            if ep is not None and ep.transport is not None:
                with contextlib.suppress(Exception):
                    ep.transport.close()
        self._rtp = self._rtcp = None
