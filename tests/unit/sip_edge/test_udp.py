"""SipTransport over UDP on 127.0.0.1 with real sockets: delivery, bad input, rport, DSCP."""

from __future__ import annotations

import logging
import socket

from sip_edge_util import Responder, run, sip_request, udp_peer, wait_for

from porch.sip.headers import Via
from porch.sip.message import Response, parse_datagram
from porch.sip.transport import (
    DSCP_CS3,
    SipTransport,
    response_destination,
    stamp_via,
)


def test_request_delivered_and_answered_to_source_with_rport():
    async def main():
        async with SipTransport("127.0.0.1", 0) as t:
            responder = Responder(t)
            peer = await udp_peer()
            port = t.ports["udp"]
            # The Via claims port 5999, but asks for rport: the answer must come back to the
            # port the request really came from (symmetric response routing, RFC 3581).
            via = "SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKa1;rport"
            peer.send(sip_request(via=via), ("127.0.0.1", port))
            data = await peer.next()
            response = parse_datagram(data)
            assert isinstance(response, Response) and response.status == 200
            top = response.top_via
            assert top.received == "127.0.0.1"
            assert top.rport == peer.port
            request, source = responder.requests[0]
            assert source.transport == "udp" and source.port == peer.port
            assert request.top_via.rport == peer.port  # stamped before delivery
            assert t.stats.received == 1 and t.stats.sent == 1
            peer.close()

    run(main())


def test_without_rport_the_response_goes_to_sent_by_port():
    async def main():
        async with SipTransport("127.0.0.1", 0) as t:
            Responder(t)
            sender, listener = await udp_peer(), await udp_peer()
            via = f"SIP/2.0/UDP 127.0.0.1:{listener.port};branch=z9hG4bKa2"
            sender.send(sip_request(via=via), ("127.0.0.1", t.ports["udp"]))
            data = await listener.next()
            response = parse_datagram(data)
            assert response.status == 200
            # Same host as the packet source, no rport: no received parameter (18.2.1).
            assert response.top_via.received is None
            assert sender.received == []
            sender.close()
            listener.close()

    run(main())


def test_malformed_request_gets_400_and_the_transport_keeps_serving():
    async def main():
        bad_inputs = []
        async with SipTransport("127.0.0.1", 0, on_bad_input=bad_inputs.append) as t:
            responder = Responder(t)
            peer = await udp_peer()
            dest = ("127.0.0.1", t.ports["udp"])
            via = "SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKbad;rport"
            # A header line without a colon: the parser refuses the whole head.
            broken = sip_request(via=via, call_id="broken-1").replace(
                b"Max-Forwards: 70\r\n", b"Max-Forwards 70\r\n"
            )
            peer.send(broken, dest)
            answer = parse_datagram(await peer.next())
            assert answer.status == 400
            assert answer.call_id == "broken-1"
            assert answer.cseq.method == "OPTIONS"
            assert answer.top_via.branch == "z9hG4bKbad"
            # Content-Length larger than the body: the parser keeps the head, still a 400.
            short = sip_request(via=via, call_id="short-1").replace(
                b"Content-Length: 0", b"Content-Length: 50"
            )
            peer.send(short, dest)
            answer = parse_datagram(await peer.next())
            assert answer.status == 400 and answer.call_id == "short-1"
            # A datagram cut before the end of its header section: salvaged from the text.
            cut = sip_request(via=via, call_id="cut-1").split(b"\r\n\r\n")[0]
            peer.send(cut, dest)
            answer = parse_datagram(await peer.next())
            assert answer.status == 400 and answer.call_id == "cut-1"
            # A garbled top Via after a good parse: 400 too.
            peer.send(sip_request(via="garbage here!", call_id="via-1"), dest)
            answer = parse_datagram(await peer.next())
            assert answer.status == 400 and answer.call_id == "via-1"
            # Garbage and a broken response: dropped, counted, no answer.
            peer.send(b"\x16\x03\x01 definitely not SIP", dest)
            peer.send(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP x\r\nBroken header\r\n\r\n", dest)
            peer.send(b"hello world\r\n\r\n", dest)
            await wait_for(lambda: t.stats.dropped == 3)
            # Still serving.
            peer.send(sip_request(via=via, call_id="good"), dest)
            answer = parse_datagram(await peer.next())
            assert answer.status == 200 and answer.call_id == "good"
            assert len(peer.received) == 5
            assert t.stats.answered_bad == 4
            assert [b.answered for b in bad_inputs] == [400, 400, 400, 400, None, None, None]
            assert [r.call_id for r, _ in responder.requests] == ["good"]
            peer.close()

    run(main())


def test_ack_and_responses_are_never_answered_even_when_malformed():
    async def main():
        async with SipTransport("127.0.0.1", 0) as t:
            peer = await udp_peer()
            dest = ("127.0.0.1", t.ports["udp"])
            via = "SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKack;rport"
            ack = sip_request("ACK", via=via).replace(b"Max-Forwards: 70", b"Max-Forwards 70")
            peer.send(ack, dest)
            await wait_for(lambda: t.stats.dropped == 1)
            assert peer.received == [] and t.stats.answered_bad == 0
            peer.close()

    run(main())


def test_callback_exception_does_not_stop_the_socket():
    async def main():
        seen = []

        def explode(msg, source):
            seen.append(msg)
            raise RuntimeError("bug in the UA")

        async with SipTransport("127.0.0.1", 0, on_message=explode) as t:
            peer = await udp_peer()
            for i in range(3):
                peer.send(
                    sip_request(via=f"SIP/2.0/UDP 127.0.0.1:5;branch=z9hG4bK{i}"),
                    ("127.0.0.1", t.ports["udp"]),
                )
            await wait_for(lambda: len(seen) == 3)
            assert t.stats.callback_errors == 3
            peer.close()

    run(main())


def test_public_address_learned_from_received_and_rport():
    async def main():
        changes = []
        async with SipTransport(
            "127.0.0.1", 0, on_public_address=lambda tr, a: changes.append((tr, a))
        ) as t:
            got = []
            t.on_message = lambda m, s: got.append(m)
            peer = await udp_peer()
            via = t.make_via("udp", "z9hG4bKpub")
            assert str(via).endswith(";rport")
            assert via.sent_by == f"127.0.0.1:{t.ports['udp']}"
            # A server behind which we appear as 198.51.100.7:40000 tells us so.
            answered = via.with_params(received="198.51.100.7", rport="40000")
            response = (
                f"SIP/2.0 200 OK\r\nVia: {answered}\r\nFrom: <sip:a@b>;tag=1\r\n"
                "To: <sip:a@b>;tag=2\r\nCall-ID: c1\r\nCSeq: 1 REGISTER\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
            peer.send(response, ("127.0.0.1", t.ports["udp"]))
            await wait_for(lambda: len(got) == 1)
            assert t.public_address("udp") == ("198.51.100.7", 40000)
            assert changes == [("udp", ("198.51.100.7", 40000))]
            # The same again does not fire the callback; a new mapping does.
            peer.send(response, ("127.0.0.1", t.ports["udp"]))
            peer.send(response.replace(b"40000", b"40001"), ("127.0.0.1", t.ports["udp"]))
            await wait_for(lambda: len(got) == 3)
            assert changes[-1] == ("udp", ("198.51.100.7", 40001)) and len(changes) == 2
            peer.close()

    run(main())


def test_send_request_object_and_bytes():
    async def main():
        async with SipTransport("127.0.0.1", 0) as t:
            peer = await udp_peer()
            raw = sip_request(via=str(t.make_via()))
            await t.send(parse_datagram(raw), ("127.0.0.1", peer.port))
            await t.send(raw, ("127.0.0.1", peer.port), "udp")
            first, second = await peer.next(), await peer.next()
            assert parse_datagram(first) == parse_datagram(second) == parse_datagram(raw)
            # The source port is the listening port: responses come back to the same socket.
            assert peer.received[0][1] == ("127.0.0.1", t.ports["udp"])
            peer.close()

    run(main())


def test_oversize_datagram_refused_locally_and_413_or_513_remotely():
    async def main():
        from porch.sip.message import Limits
        from porch.sip.transport import TransportError

        async with SipTransport("127.0.0.1", 0, limits=Limits(max_message_size=2000)) as t:
            peer = await udp_peer()
            try:
                await t.send(b"x" * 70000, ("127.0.0.1", peer.port))
            except TransportError:
                pass
            else:
                raise AssertionError("a 70000-byte datagram was accepted")
            via = "SIP/2.0/UDP 127.0.0.1:5;branch=z9hG4bKbig;rport"
            big = sip_request(via=via, body=b"a" * 3000, extra="Content-Type: text/plain\r\n")
            peer.send(big, ("127.0.0.1", t.ports["udp"]))
            answer = parse_datagram(await peer.next())
            assert answer.status in (413, 513)
            peer.close()

    run(main())


def test_dscp_cs3_on_sip_sockets():
    async def main():
        async with SipTransport("127.0.0.1", 0, transports=("udp", "tcp")) as t:
            udp = t._udp.get_extra_info("socket")
            tcp = t._servers["tcp"].sockets[0]
            assert udp.getsockopt(socket.IPPROTO_IP, socket.IP_TOS) == DSCP_CS3
            assert tcp.getsockopt(socket.IPPROTO_IP, socket.IP_TOS) == DSCP_CS3
            assert t.dscp_ok == {"udp": True, "tcp": True}

    run(main())


def test_stamp_via_and_response_destination_rules():
    v = Via.parse("SIP/2.0/UDP 10.0.0.5:5070;branch=z9hG4bKx;rport")
    stamped = stamp_via(v, ("203.0.113.9", 61000))
    assert stamped.received == "203.0.113.9" and stamped.rport == 61000
    assert response_destination(stamped) == ("203.0.113.9", 61000)
    # received is added even when it equals sent-by, because rport was asked for (RFC 3581).
    same = stamp_via(
        Via.parse("SIP/2.0/UDP 10.0.0.5:5070;branch=z9hG4bKx;rport"), ("10.0.0.5", 5070)
    )
    assert same.received == "10.0.0.5" and same.rport == 5070
    plain = stamp_via(
        Via.parse("SIP/2.0/UDP 10.0.0.5:5070;branch=z9hG4bKy"), ("203.0.113.9", 61000)
    )
    assert plain.received == "203.0.113.9" and plain.rport is None
    assert response_destination(plain) == ("203.0.113.9", 5070)
    untouched = Via.parse("SIP/2.0/UDP 10.0.0.5;branch=z9hG4bKz")
    assert stamp_via(untouched, ("10.0.0.5", 5060)) is untouched
    assert response_destination(untouched) == ("10.0.0.5", 5060)
    named = stamp_via(Via.parse("SIP/2.0/UDP door.example;branch=z9hG4bKn"), ("::1", 5062))
    assert named.received == "[::1]"
    assert response_destination(named) == ("::1", 5060)
    assert response_destination(
        Via.parse("SIP/2.0/UDP 10.0.0.5:5070;branch=z9hG4bKm;maddr=239.1.1.1")
    ) == ("239.1.1.1", 5070)


def test_dscp_refused_by_the_os_is_logged_and_skipped(caplog):
    from porch.sip.transport import _set_dscp

    caplog.set_level(logging.INFO, logger="porch.sip.transport")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unix:
        assert _set_dscp(unix, DSCP_CS3) is False
    assert "DSCP" in caplog.text


def test_ipv6_loopback():
    if not socket.has_ipv6:
        return
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return  # no IPv6 loopback on this machine

    async def main():
        import asyncio

        async with SipTransport("::1", 0) as t:
            responder = Responder(t)
            loop = asyncio.get_running_loop()
            got = []

            class Peer(asyncio.DatagramProtocol):
                def datagram_received(self, data, addr):
                    got.append(data)

            transport, _ = await loop.create_datagram_endpoint(Peer, local_addr=("::1", 0))
            via = t.make_via()
            assert via.host == "[::1]"
            peer_port = transport.get_extra_info("sockname")[1]
            transport.sendto(
                sip_request(via="SIP/2.0/UDP [::1]:9;branch=z9hG4bK6;rport"),
                ("::1", t.ports["udp"]),
            )
            await wait_for(lambda: got)
            answer = parse_datagram(got[0])
            assert answer.status == 200
            assert answer.top_via.received == "[::1]" and answer.top_via.rport == peer_port
            assert responder.requests[0][1].host == "::1"
            assert (
                t._udp.get_extra_info("socket").getsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS)
                == DSCP_CS3
            )
            transport.close()

    run(main())
