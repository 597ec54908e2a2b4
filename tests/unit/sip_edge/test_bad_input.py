"""Whatever arrives, the transport answers or drops it and nothing escapes: properties of the
salvage path, and a burst of mutated datagrams against a live transport."""

from __future__ import annotations

import logging
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from sip_edge_util import run, sip_request, udp_peer, wait_for

from porch.sip.errors import RemoteProtocolError
from porch.sip.message import Request, Response, parse_datagram
from porch.sip.transport import SipTransport, error_response

GOOD = sip_request(
    "INVITE",
    via="SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKfz;rport",
    body=b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\n",
    extra="Contact: <sip:a@127.0.0.1:9>\r\nContent-Type: application/sdp\r\n",
)


def mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(out))
        choice = rng.random()
        if choice < 0.4:
            out[i] = rng.randrange(256)
        elif choice < 0.7:
            del out[i : i + rng.randint(1, 20)]
        else:
            out[i:i] = rng.choice([b"\r\n", b":", b" ", b"\x00", b",", b";", b"<", b"\r\n\r\n"])
        if not out:
            out = bytearray(b"x")
    return bytes(out)


def check_salvage(data: bytes) -> None:
    try:
        parse_datagram(data)
    except RemoteProtocolError as exc:
        response, why = error_response(data, exc)
        if response is None:
            assert why
            return
        assert isinstance(response, Response) and 300 <= response.status <= 699
        again = parse_datagram(response.to_bytes())  # what we send must itself be valid SIP
        assert isinstance(again, Response) and again.status == response.status
        assert again.headers.getall("via")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_salvage_never_raises(data):
    check_salvage(data)


@settings(max_examples=300, deadline=None)
@given(st.randoms(use_true_random=False))
def test_mutated_requests_salvage_never_raises(rng):
    check_salvage(mutate(GOOD, rng))


def test_mutated_burst_against_a_live_transport(caplog):
    caplog.set_level(logging.DEBUG, logger="porch.sip.transport")

    async def main():
        delivered = []
        async with SipTransport("127.0.0.1", 0, on_message=lambda m, s: delivered.append(m)) as t:
            peer = await udp_peer()
            dest = ("127.0.0.1", t.ports["udp"])
            rng = random.Random(2024)
            s = t.stats
            # In batches, so the kernel's receive buffer never overflows (that would drop
            # datagrams before they reach us and make the count below meaningless).
            for batch in range(20):
                for _ in range(20):
                    peer.send(mutate(GOOD, rng), dest)
                done = 20 * (batch + 1)
                await wait_for(lambda: s.received + s.answered_bad + s.dropped == done)  # noqa: B023
            marker = sip_request(via="SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKend", call_id="end")
            peer.send(marker, dest)
            await wait_for(lambda: any(m.headers.get("call-id") == "end" for m in delivered))
            assert s.received + s.answered_bad + s.dropped == 401
            assert s.answered_bad > 0 and s.dropped > 0 and s.received > 1
            assert s.callback_errors == 0
            # Every answer we sent is a parseable error response.
            for data, _ in peer.received:
                answer = parse_datagram(data)
                assert isinstance(answer, Response) and answer.status >= 400
            assert all(isinstance(m, Request | Response) for m in delivered)
            peer.close()

    run(main())
    assert "unexpected error" not in caplog.text
