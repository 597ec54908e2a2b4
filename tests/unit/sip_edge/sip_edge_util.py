"""Helpers shared by the SIP network-edge tests (imported through conftest's sys.path)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Coroutine
from typing import Any

from porch.sip.message import Request, Response, make_response
from porch.sip.transport import SipTransport, Source


def run(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
    """Run one test coroutine on a fresh loop, bounded so a hang fails instead of blocking."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll until `predicate()` holds (events arrive through callbacks, not return values)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def sip_request(
    method: str = "OPTIONS",
    *,
    via: str,
    uri: str = "sip:door@127.0.0.1",
    call_id: str | None = None,
    cseq: int = 1,
    body: bytes = b"",
    extra: str = "",
) -> bytes:
    """A hand-written request, so tests do not depend on the builder they exercise."""
    call_id = call_id or secrets.token_hex(6)
    head = (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: {via}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:tester@127.0.0.1>;tag=t1\r\n"
        f"To: <{uri}>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Responder:
    """A UAS stand-in on a transport: keeps what arrives and, unless `answer` is False,
    answers every request but ACK with 200 over the transport."""

    def __init__(self, transport: SipTransport, *, answer: bool = True) -> None:
        self.transport = transport
        self.answer = answer
        self.requests: list[tuple[Request, Source]] = []
        self.responses: list[tuple[Response, Source]] = []
        transport.on_message = self.on_message

    def on_message(self, msg: Request | Response, source: Source) -> None:
        if isinstance(msg, Response):
            self.responses.append((msg, source))
            return
        self.requests.append((msg, source))
        if self.answer and msg.method != "ACK":
            asyncio.get_running_loop().create_task(
                self.transport.respond(make_response(msg, 200, to_tag="srv"), source)
            )


class UdpPeer(asyncio.DatagramProtocol):
    """A bare UDP socket standing in for the far end: records what it receives."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.read = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.received.append((data, (addr[0], addr[1])))

    @property
    def port(self) -> int:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[1]

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)

    async def next(self, timeout: float = 5.0) -> bytes:
        """The next datagram not yet read through next() (waits for it)."""
        index = self.read
        await wait_for(lambda: len(self.received) > index, timeout)
        self.read += 1
        return self.received[index][0]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def udp_peer() -> UdpPeer:
    loop = asyncio.get_running_loop()
    _, peer = await loop.create_datagram_endpoint(UdpPeer, local_addr=("127.0.0.1", 0))
    return peer
