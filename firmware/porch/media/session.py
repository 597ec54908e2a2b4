"""The media of one call: an RTP/RTCP socket pair and what flows through it.

Placeholder while the signalling is built: the socket pair is bound so that SDP can name
a real port, and nothing is sent yet.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any, Literal

from porch.sip.sdp import AudioSession

log = logging.getLogger("porch.media")


class MediaSession:
    """One call's media. `open()` binds the sockets (sync, so SDP can be built at once)."""

    def __init__(
        self,
        host: str,
        *,
        on_dtmf: Callable[[str], None] | None = None,
    ) -> None:
        self.host = host
        self.on_dtmf = on_dtmf
        self.port = 0
        self.audio: AudioSession | None = None
        self._socks: list[socket.socket] = []

    def open(self) -> int:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        for _ in range(50):
            rtp = socket.socket(family, socket.SOCK_DGRAM)
            rtp.bind((self.host, 0))
            port = rtp.getsockname()[1]
            if port % 2 == 0 and port < 65535:
                rtcp = socket.socket(family, socket.SOCK_DGRAM)
                try:
                    rtcp.bind((self.host, port + 1))
                except OSError:
                    rtcp.close()
                    rtp.close()
                    continue
                self._socks = [rtp, rtcp]
                self.port = port
                return port
            rtp.close()
        raise OSError("no free RTP port pair")

    def start(self, audio: AudioSession) -> None:
        self.audio = audio

    def update(self, audio: AudioSession) -> None:
        self.audio = audio

    def feedback(self, kind: Literal["confirm", "error"]) -> None:
        log.debug("feedback %s", kind)

    def close(self) -> dict[str, Any]:
        for s in self._socks:
            s.close()
        self._socks = []
        return {}
