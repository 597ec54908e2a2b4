"""STUN binding client (RFC 5389): learn the public address a NAT gives our SIP socket.

The codec and the retransmission schedule are sans-IO: `BindingTransaction` is fed the
current time and the datagrams that arrive and answers with what to send and when it is
done, so the rules of RFC 5389 7.2.1 are tested without a socket or a clock. `binding()` at
the bottom is the small asyncio driver; it can borrow the SIP UDP socket (so the answer is
the mapping of the socket SIP really uses) or open a throwaway one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "BINDING_ERROR",
    "BINDING_REQUEST",
    "BINDING_SUCCESS",
    "MAGIC_COOKIE",
    "BindingTransaction",
    "DatagramEndpoint",
    "Failed",
    "Send",
    "StunError",
    "StunMessage",
    "Succeeded",
    "binding",
    "decode",
    "encode",
    "encode_binding_request",
    "is_stun",
]

MAGIC_COOKIE = 0x2112A442
_COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)
_FINGERPRINT_XOR = 0x5354554E
_HEADER = struct.Struct("!HHI12s")

BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
BINDING_ERROR = 0x0111

ATTR_MAPPED_ADDRESS = 0x0001
ATTR_ERROR_CODE = 0x0009
ATTR_UNKNOWN_ATTRIBUTES = 0x000A
ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_SOFTWARE = 0x8022
ATTR_FINGERPRINT = 0x8028
# Servers built on pre-RFC 5389 drafts send XOR-MAPPED-ADDRESS under this number.
ATTR_XOR_MAPPED_ADDRESS_OLD = 0x8020

_KNOWN = {
    ATTR_MAPPED_ADDRESS,
    ATTR_ERROR_CODE,
    ATTR_UNKNOWN_ATTRIBUTES,
    ATTR_XOR_MAPPED_ADDRESS,
    ATTR_SOFTWARE,
    ATTR_FINGERPRINT,
    ATTR_XOR_MAPPED_ADDRESS_OLD,
}

Address = tuple[str, int]


class StunError(Exception):
    """A malformed STUN message, an error response or a transaction that timed out."""


# ---------------------------------------------------------------------------------------
# Codec
# ---------------------------------------------------------------------------------------


@dataclass
class StunMessage:
    """One STUN message: type, 96-bit transaction id and the attributes in wire order."""

    msg_type: int
    transaction_id: bytes
    attributes: list[tuple[int, bytes]] = field(default_factory=list)

    def get(self, attr_type: int) -> bytes | None:
        for kind, value in self.attributes:
            if kind == attr_type:
                return value
        return None

    @property
    def mapped_address(self) -> Address | None:
        """XOR-MAPPED-ADDRESS if present (what NATs cannot rewrite), else MAPPED-ADDRESS."""
        for kind in (ATTR_XOR_MAPPED_ADDRESS, ATTR_XOR_MAPPED_ADDRESS_OLD):
            value = self.get(kind)
            if value is not None:
                return _decode_address(value, xor=self.transaction_id)
        value = self.get(ATTR_MAPPED_ADDRESS)
        if value is not None:
            return _decode_address(value, xor=None)
        return None

    @property
    def error(self) -> tuple[int, str] | None:
        """(code, reason) of an ERROR-CODE attribute."""
        value = self.get(ATTR_ERROR_CODE)
        if value is None:
            return None
        if len(value) < 4:
            raise StunError("short ERROR-CODE")
        code = (value[2] & 0x07) * 100 + value[3]
        return code, value[4:].decode("utf-8", "replace")

    @property
    def unknown_required(self) -> list[int]:
        """Comprehension-required attributes (type < 0x8000) we do not understand."""
        return [k for k, _ in self.attributes if k < 0x8000 and k not in _KNOWN]


def is_stun(data: bytes) -> bool:
    """Cheap test to tell STUN from SIP on a shared socket (RFC 5389 section 6 and 8).

    The top two bits of a STUN message are zero, so the first byte is 0x00-0x03, which no
    SIP message starts with; the magic cookie makes a false match practically impossible.
    """
    return len(data) >= 20 and data[0] < 4 and data[4:8] == _COOKIE_BYTES


def encode(message: StunMessage, *, fingerprint: bool = False) -> bytes:
    """Serialise `message`; with `fingerprint` a FINGERPRINT attribute is appended."""
    if len(message.transaction_id) != 12:
        raise ValueError("a STUN transaction id has 12 bytes")
    body = bytearray()
    for kind, value in message.attributes:
        body += struct.pack("!HH", kind, len(value)) + value
        body += b"\0" * (-len(value) % 4)
    if fingerprint:
        length = len(body) + 8
        head = _HEADER.pack(message.msg_type, length, MAGIC_COOKIE, message.transaction_id)
        crc = (zlib.crc32(head + bytes(body)) ^ _FINGERPRINT_XOR) & 0xFFFFFFFF
        body += struct.pack("!HHI", ATTR_FINGERPRINT, 4, crc)
    head = _HEADER.pack(message.msg_type, len(body), MAGIC_COOKIE, message.transaction_id)
    return head + bytes(body)


def decode(data: bytes) -> StunMessage:
    """Parse a STUN message; StunError when it is not one (or is damaged)."""
    if len(data) < 20:
        raise StunError("shorter than a STUN header")
    msg_type, length, cookie, txid = _HEADER.unpack_from(data)
    if msg_type & 0xC000:
        raise StunError("top bits set: not STUN")
    if length % 4 or 20 + length > len(data):
        raise StunError("bad STUN message length")
    attributes: list[tuple[int, bytes]] = []
    pos, end = 20, 20 + length
    while pos < end:
        if pos + 4 > end:
            raise StunError("truncated attribute header")
        kind, size = struct.unpack_from("!HH", data, pos)
        value_end = pos + 4 + size
        if value_end > end:
            raise StunError("attribute runs past the message")
        value = bytes(data[pos + 4 : value_end])
        if kind == ATTR_FINGERPRINT:
            if size != 4:
                raise StunError("bad FINGERPRINT size")
            head = data[:2] + struct.pack("!H", value_end - 20) + data[4:pos]
            expected = (zlib.crc32(head) ^ _FINGERPRINT_XOR) & 0xFFFFFFFF
            if struct.unpack("!I", value)[0] != expected:
                raise StunError("FINGERPRINT mismatch")
        attributes.append((kind, value))
        pos = value_end + (-size % 4)
    # RFC 3489 servers have no cookie: their 16-byte id is cookie-space plus our 12 bytes,
    # which we still compare on the 12 bytes; the cookie only matters for XOR decoding.
    del cookie
    return StunMessage(msg_type, txid, attributes)


def _decode_address(value: bytes, *, xor: bytes | None) -> Address:
    if len(value) < 8:
        raise StunError("short address attribute")
    family, port = value[1], struct.unpack_from("!H", value, 2)[0]
    raw = value[4:]
    if family == 0x01:
        if len(raw) != 4:
            raise StunError("bad IPv4 address length")
        if xor is not None:
            raw = bytes(a ^ b for a, b in zip(raw, _COOKIE_BYTES, strict=True))
        host = str(ipaddress.IPv4Address(raw))
    elif family == 0x02:
        if len(raw) != 16:
            raise StunError("bad IPv6 address length")
        if xor is not None:
            raw = bytes(a ^ b for a, b in zip(raw, _COOKIE_BYTES + xor, strict=True))
        host = str(ipaddress.IPv6Address(raw))
    else:
        raise StunError(f"unknown address family {family}")
    if xor is not None:
        port ^= MAGIC_COOKIE >> 16
    return host, port


def encode_address(address: Address, *, xor: bytes | None) -> bytes:
    """The value of a (XOR-)MAPPED-ADDRESS attribute; `xor` is the transaction id or None."""
    host, port = address
    ip = ipaddress.ip_address(host)
    raw = ip.packed
    if xor is not None:
        mask = _COOKIE_BYTES if ip.version == 4 else _COOKIE_BYTES + xor
        raw = bytes(a ^ b for a, b in zip(raw, mask, strict=True))
        port ^= MAGIC_COOKIE >> 16
    return struct.pack("!BBH", 0, 1 if ip.version == 4 else 2, port) + raw


def new_transaction_id() -> bytes:
    return os.urandom(12)


def encode_binding_request(
    transaction_id: bytes, *, software: str | None = None, fingerprint: bool = True
) -> bytes:
    """A Binding request; FINGERPRINT lets a server sharing a port with SIP tell us apart."""
    attributes = []
    if software:
        attributes.append((ATTR_SOFTWARE, software.encode("utf-8")[:763]))
    return encode(StunMessage(BINDING_REQUEST, transaction_id, attributes), fingerprint=fingerprint)


# ---------------------------------------------------------------------------------------
# One binding transaction, sans-IO (RFC 5389 7.2.1)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Put these bytes on the wire (the first request or a retransmission)."""

    data: bytes


@dataclass(frozen=True)
class Succeeded:
    """The server told us our reflexive transport address."""

    address: Address


@dataclass(frozen=True)
class Failed:
    """The transaction is over without an address: `code` is the STUN error or None."""

    reason: str
    code: int | None = None


class BindingTransaction:
    """A Binding request over UDP with the retransmissions of RFC 5389 7.2.1.

    The request goes out at 0, RTO, 3*RTO, 7*RTO ... (doubling intervals), `rc` times in all;
    after the last one the client waits `rm` * RTO before giving up. With the defaults (RTO
    0.5 s, Rc 7, Rm 16) that is sends at 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s and failure at
    39.5 s.
    """

    def __init__(
        self,
        *,
        rto: float = 0.5,
        rc: int = 7,
        rm: int = 16,
        transaction_id: bytes | None = None,
        software: str | None = "porch",
    ) -> None:
        if rc < 1 or rto <= 0 or rm < 1:
            raise ValueError("rto > 0, rc >= 1 and rm >= 1 required")
        self.rto = rto
        self.rc = rc
        self.rm = rm
        self.transaction_id = transaction_id or new_transaction_id()
        self.request = encode_binding_request(self.transaction_id, software=software)
        self.sent = 0
        self.deadline: float | None = None
        self.outcome: Succeeded | Failed | None = None
        self._interval = rto

    @property
    def done(self) -> bool:
        return self.outcome is not None

    def start(self, now: float) -> Send:
        if self.sent:
            raise RuntimeError("transaction already started")
        self.sent = 1
        self.deadline = now + self._interval if self.rc > 1 else now + self.rm * self.rto
        return Send(self.request)

    def on_timer(self, now: float) -> Send | Failed | None:
        """Call at (or after) `deadline`: a retransmission, the final failure, or nothing."""
        if self.outcome is not None or self.deadline is None or now < self.deadline:
            return None
        if self.sent >= self.rc:
            return self._finish(Failed("timeout: no STUN response"))
        self.sent += 1
        self._interval *= 2
        if self.sent < self.rc:
            self.deadline = self.deadline + self._interval
        else:
            self.deadline = self.deadline + self.rm * self.rto
        return Send(self.request)

    def on_datagram(self, data: bytes, now: float) -> Succeeded | Failed | None:
        """Offer a received datagram; None when it is not the answer to this transaction."""
        del now
        if self.outcome is not None or not self.sent or len(data) < 20:
            return None
        if data[8:20] != self.transaction_id:
            return None
        try:
            message = decode(data)
        except StunError:
            return None  # damaged; a retransmission may still bring a good answer
        if message.msg_type == BINDING_SUCCESS:
            if message.unknown_required:
                return self._finish(Failed("unknown comprehension-required attribute"))
            try:
                address = message.mapped_address
            except (StunError, ValueError) as exc:
                return self._finish(Failed(f"bad address attribute: {exc}"))
            if address is None:
                return self._finish(Failed("success response without an address"))
            return self._finish(Succeeded(address))
        if message.msg_type == BINDING_ERROR:
            try:
                error = message.error
            except StunError:
                error = None
            code, reason = error or (None, "error response")
            return self._finish(Failed(f"STUN error {code}: {reason}", code))
        return None

    def _finish(self, outcome: Succeeded | Failed) -> Succeeded | Failed:
        self.outcome = outcome
        self.deadline = None
        return outcome


# ---------------------------------------------------------------------------------------
# asyncio driver
# ---------------------------------------------------------------------------------------


class DatagramEndpoint(Protocol):
    """What `binding()` needs from a socket it borrows (SipTransport provides both)."""

    def send_datagram(self, data: bytes, address: Address) -> None: ...

    def add_datagram_hook(self, hook: Callable[[bytes, Address], bool]) -> Callable[[], None]: ...


class _OwnSocket(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.hooks: list[Callable[[bytes, Address], bool]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        for hook in list(self.hooks):
            if hook(data, (addr[0], addr[1])):
                return

    def send_datagram(self, data: bytes, address: Address) -> None:
        assert self.transport is not None
        self.transport.sendto(data, address)

    def add_datagram_hook(self, hook: Callable[[bytes, Address], bool]) -> Callable[[], None]:
        self.hooks.append(hook)
        return lambda: self.hooks.remove(hook)


async def _resolve(host: str, port: int) -> Address:
    try:
        ip = ipaddress.ip_address(host)
        return str(ip), port
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise StunError(f"cannot resolve STUN server {host!r}: {exc}") from exc
    if not infos:
        raise StunError(f"cannot resolve STUN server {host!r}")
    addr = infos[0][4]
    return addr[0], addr[1]


async def binding(
    server: Address,
    *,
    endpoint: DatagramEndpoint | None = None,
    local_host: str = "0.0.0.0",
    rto: float = 0.5,
    rc: int = 7,
    rm: int = 16,
) -> Address:
    """Our public (server-reflexive) address as seen by the STUN `server` (host, port).

    With `endpoint` the request leaves through that socket (pass the SipTransport to learn
    the mapping of the SIP port); otherwise a throwaway socket on `local_host` is used.
    Raises StunError on an error response or after the RFC 5389 timeout.
    """
    loop = asyncio.get_running_loop()
    target = await _resolve(*server)
    own_transport: asyncio.DatagramTransport | None = None
    if endpoint is None:
        family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
        if family == socket.AF_INET6 and local_host == "0.0.0.0":
            local_host = "::"
        own_transport, own = await loop.create_datagram_endpoint(
            _OwnSocket, local_addr=(local_host, 0), family=family
        )
        endpoint = own
    tx = BindingTransaction(rto=rto, rc=rc, rm=rm)
    answer: asyncio.Future[Succeeded | Failed] = loop.create_future()

    def hook(data: bytes, source: Address) -> bool:
        if answer.done() or not is_stun(data):
            return False
        outcome = tx.on_datagram(data, loop.time())
        if outcome is None:
            return False
        answer.set_result(outcome)
        return True

    remove = endpoint.add_datagram_hook(hook)
    try:
        endpoint.send_datagram(tx.start(loop.time()).data, target)
        while not answer.done():
            assert tx.deadline is not None
            delay = max(0.0, tx.deadline - loop.time())
            try:
                await asyncio.wait_for(asyncio.shield(answer), delay)
            except TimeoutError:
                step = tx.on_timer(loop.time())
                if isinstance(step, Send):
                    endpoint.send_datagram(step.data, target)
                elif isinstance(step, Failed) and not answer.done():
                    answer.set_result(step)
        outcome = answer.result()
    finally:
        remove()
        if own_transport is not None:
            own_transport.close()
    if isinstance(outcome, Failed):
        raise StunError(outcome.reason)
    return outcome.address
