"""The PBX side of the NAT test: a registrar that handles NAT as PBXs do.

It stamps `received`/`rport` (RFC 3581) into the Via of every answer, challenges REGISTER
with digest, and once a client registers a Contact on the address its requests really come
from, calls that Contact from the registrar's own socket (as a PBX calls a registered
phone: the only way through a NAT that filters by peer), then hangs up. One JSON line per
event on stdout; exit 0 when the call was answered and hung up, 1 on timeout.

Built from porch's sans-IO SIP pieces (parser, digest server, builders) so that it stays
small; what is under test is porch behind a real nftables NAT, not this script.

    python nat_registrar.py HOST PORT USER PASSWORD [--no-nat-handling]

With --no-nat-handling it answers with the Via as it came (a registrar that does not help
clients behind NAT: then only STUN tells porch its public address).
"""

from __future__ import annotations

import json
import secrets
import socket
import sys
import time

from porch.sip.auth import DigestServer
from porch.sip.message import Request, Response, build_request, make_response, parse_datagram
from porch.sip.transport import stamp_via

SDP = (
    "v=0\r\no=pbx 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def say(**event: object) -> None:
    print(json.dumps(event), flush=True)


class Registrar:
    def __init__(
        self, host: str, port: int, user: str, password: str, *, nat_handling: bool = True
    ) -> None:
        self.host, self.port = host, port
        self.nat_handling = nat_handling
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(0.1)
        self.digest = DigestServer("pbx.test", {user: password}, algorithms=("MD5",))
        self.call: dict = {}

    def via(self) -> str:
        return f"SIP/2.0/UDP {self.host}:{self.port};branch=z9hG4bK{secrets.token_hex(6)};rport"

    def receive(self) -> tuple[Request | Response, tuple[str, int]] | None:
        try:
            data, addr = self.sock.recvfrom(65535)
        except TimeoutError:
            return None
        return parse_datagram(data), addr

    def answer(self, request: Request, addr: tuple[str, int], response: Response) -> None:
        self.sock.sendto(response.to_bytes(), addr)

    def on_request(self, request: Request, addr: tuple[str, int]) -> None:
        if self.nat_handling:
            request.headers.set("Via", str(stamp_via(request.top_via, addr)))
        if request.method == "REGISTER":
            challenge = self.digest.check(request, time.monotonic(), to_tag="reg")
            if challenge is not None:
                self.answer(request, addr, challenge)
                return
            contact = request.contact[0]
            self.answer(
                request,
                addr,
                make_response(
                    request,
                    200,
                    to_tag="reg",
                    headers=[("Contact", f"<{contact.uri}>;expires=60"), ("Expires", "60")],
                ),
            )
            uri = contact.uri
            say(event="registered", contact=str(uri), source=f"{addr[0]}:{addr[1]}")
            if (uri.host, uri.port) == addr and not self.call:  # the Contact is reachable
                self.invite(uri, addr)
        elif request.method in ("OPTIONS", "BYE"):
            self.answer(request, addr, make_response(request, 200, to_tag="pbx"))

    def invite(self, uri, addr: tuple[str, int]) -> None:
        invite = build_request(
            "INVITE",
            uri,
            via=self.via(),
            from_=f"<sip:flat@{self.host}>;tag=pbx{secrets.token_hex(3)}",
            to=f"<{uri}>",
            call_id=f"{secrets.token_hex(8)}@{self.host}",
            cseq=1,
            contact=f"<sip:flat@{self.host}:{self.port}>",
            body=SDP.format(host=self.host).encode(),
            content_type="application/sdp",
        )
        self.call = {"invite": invite, "addr": addr, "sent": time.monotonic()}
        self.sock.sendto(invite.to_bytes(), addr)

    def in_dialog(self, method: str, cseq: int, answer: Response) -> Request:
        invite = self.call["invite"]
        return build_request(
            method,
            answer.contact[0].uri,
            via=self.via(),
            from_=invite.from_,
            to=answer.to,
            call_id=invite.call_id,
            cseq=cseq,
        )

    def on_response(self, response: Response) -> bool:
        """True once the call is over."""
        method = response.cseq.method
        if method == "INVITE" and response.status >= 200:
            if response.status >= 300:
                say(event="refused", status=response.status)
                return True
            ack = self.in_dialog("ACK", 1, response)
            self.sock.sendto(ack.to_bytes(), self.call["addr"])
            if "answered" not in self.call:
                self.call["answered"] = time.monotonic()
                self.call["answer"] = response
                say(event="answered", status=response.status)
        elif method == "BYE" and response.status >= 200:
            say(event="hung up", status=response.status)
            return True
        return False

    def run(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.receive()
            if got is not None:
                msg, addr = got
                if isinstance(msg, Request):
                    self.on_request(msg, addr)
                elif self.call and self.on_response(msg):
                    return 0 if "bye" in self.call else 1
            call = self.call
            now = time.monotonic()
            if call and "answered" not in call and now - call["sent"] > 0.5:
                call["sent"] = now  # no answer yet: send the INVITE again (UDP)
                self.sock.sendto(call["invite"].to_bytes(), call["addr"])
            if call and "answered" in call and "bye" not in call and now - call["answered"] > 0.5:
                call["bye"] = self.in_dialog("BYE", 2, call["answer"])
                self.sock.sendto(call["bye"].to_bytes(), call["addr"])
        say(event="timeout")
        return 1


if __name__ == "__main__":
    host, port, user, password = sys.argv[1:5]
    nat = "--no-nat-handling" not in sys.argv[5:]
    sys.exit(Registrar(host, int(port), user, password, nat_handling=nat).run(timeout=25.0))
