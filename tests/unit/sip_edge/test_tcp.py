"""SipTransport over TCP on 127.0.0.1: framing, connection reuse, CRLF keepalives, idle close."""

from __future__ import annotations

import asyncio

from sip_edge_util import Responder, run, sip_request, wait_for

from porch.sip.message import Request, Response, StreamParser, make_response
from porch.sip.transport import SipTransport, Source, TransportError


async def read_messages(reader: asyncio.StreamReader, count: int) -> list:
    """Frame `count` messages from a raw socket with the project's parser."""
    parser = StreamParser()
    out: list = []
    while len(out) < count:
        chunk = await asyncio.wait_for(reader.read(4096), 5)
        assert chunk, "connection closed early"
        out += [m for m in parser.feed(chunk) if isinstance(m, Request | Response)]
    return out


def test_framing_across_split_writes_and_pipelined_messages():
    async def main():
        async with SipTransport("127.0.0.1", 0, transports=("tcp",)) as t:
            server = Responder(t)
            reader, writer = await asyncio.open_connection("127.0.0.1", t.ports["tcp"])
            body = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"
            one = sip_request(
                "MESSAGE",
                via="SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bKs1;rport",
                call_id="split",
                body=body,
                extra="Content-Type: application/sdp\r\n",
            )
            # One byte per write, with the loop turning between writes.
            for i in range(len(one)):
                writer.write(one[i : i + 1])
                await writer.drain()
                if i % 50 == 0:
                    await asyncio.sleep(0)
            # Two messages in a single write, then a third split in the middle of its body.
            two = sip_request(
                via="SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKs2", call_id="p1"
            ) + sip_request(via="SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKs3", call_id="p2")
            writer.write(two)
            three = sip_request(
                "MESSAGE",
                via="SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKs4",
                call_id="p3",
                body=b"x" * 300,
            )
            writer.write(three[:-150])
            await writer.drain()
            await asyncio.sleep(0.05)
            assert len(server.requests) == 3
            writer.write(three[-150:])
            answers = await read_messages(reader, 4)
            assert [r.call_id for r, _ in server.requests] == ["split", "p1", "p2", "p3"]
            assert server.requests[0][0].body == body
            assert server.requests[3][0].body == b"x" * 300
            assert [a.call_id for a in answers] == ["split", "p1", "p2", "p3"]
            assert all(a.status == 200 for a in answers)
            # The answer to the rport request says which port we saw.
            assert answers[0].top_via.rport == writer.get_extra_info("sockname")[1]
            writer.close()

    run(main())


def test_outgoing_connection_is_reused_and_responses_come_back_on_it():
    async def main():
        async with (
            SipTransport("127.0.0.1", 0, transports=("tcp",)) as a,
            SipTransport("127.0.0.1", 0, transports=("tcp",)) as b,
        ):
            client, server = Responder(a, answer=False), Responder(b)
            dest = ("127.0.0.1", b.ports["tcp"])
            # Three concurrent sends share one connection (one connect, not three).
            await asyncio.gather(
                *(
                    a.send(sip_request(via=str(a.make_via("tcp")), call_id=f"r{i}"), dest, "tcp")
                    for i in range(3)
                )
            )
            await wait_for(lambda: len(client.responses) == 3)
            assert a.stats.connections_out == 1 and b.stats.connections_in == 1
            assert len(a.flows) == 1 and len(b.flows) == 1
            flow = a.flow("tcp", dest)
            assert flow is not None and flow.outgoing
            # Responses arrived on the connection we opened.
            assert {s.flow for _, s in client.responses} == {flow}
            # The incoming connection on b is usable for b's own requests back to a.
            incoming = server.requests[0][1]
            await b.send(
                sip_request(via=str(b.make_via("tcp")), call_id="back"),
                incoming.address,
                "tcp",
            )
            await wait_for(lambda: len(client.requests) == 1)
            assert client.requests[0][0].call_id == "back"
            assert b.stats.connections_out == 0 and a.stats.connections_in == 0

    run(main())


def test_response_after_connection_loss_opens_a_new_one_to_sent_by():
    async def main():
        async with (
            SipTransport("127.0.0.1", 0, transports=("tcp",)) as a,
            SipTransport("127.0.0.1", 0, transports=("tcp",)) as b,
        ):
            client = Responder(a, answer=False)
            got: list[tuple[Request, Source]] = []
            b.on_message = lambda m, s: got.append((m, s))
            await a.send(
                sip_request(via=str(a.make_via("tcp")), call_id="late"),
                ("127.0.0.1", b.ports["tcp"]),
                "tcp",
            )
            await wait_for(lambda: len(got) == 1)
            request, source = got[0]
            a.flow("tcp", ("127.0.0.1", b.ports["tcp"])).close()
            await wait_for(lambda: not source.flow.open)
            await b.respond(make_response(request, 200, to_tag="x"), source)
            await wait_for(lambda: len(client.responses) == 1)
            assert client.responses[0][0].call_id == "late"
            assert b.stats.connections_out == 1  # to a's listening port (Via sent-by)

    run(main())


def test_connection_closed_by_the_far_end_is_reported_but_not_our_own_closes():
    async def main():
        closed: list[tuple[str, tuple[str, int]]] = []
        far_end: list[asyncio.StreamWriter] = []

        async def accept(reader, writer):
            far_end.append(writer)
            await reader.read()  # until we close

        peer = await asyncio.start_server(accept, "127.0.0.1", 0)
        dest = ("127.0.0.1", peer.sockets[0].getsockname()[1])
        async with SipTransport(
            "127.0.0.1",
            0,
            transports=("tcp",),
            idle_timeout=0.3,
            on_connection_closed=lambda *a: closed.append(a),
        ) as t:
            # The far end (a PBX going down) closes the connection we opened.
            await t.send(sip_request(via=str(t.make_via("tcp"))), dest, "tcp")
            await wait_for(lambda: len(far_end) == 1)
            far_end[0].close()
            await wait_for(lambda: closed)
            assert closed == [("tcp", dest)]
            assert t.flow("tcp", dest) is None
            # A new connection, which we close ourselves when it is idle: nothing reported.
            await t.send(sip_request(via=str(t.make_via("tcp"))), dest, "tcp")
            await wait_for(lambda: t.stats.idle_closed == 1, timeout=3)
            # And one that is open when the transport stops.
            await t.send(sip_request(via=str(t.make_via("tcp"))), dest, "tcp")
            await wait_for(lambda: len(far_end) == 3)
        await asyncio.sleep(0.05)
        assert closed == [("tcp", dest)]
        peer.close()

    run(main())


def test_crlf_ping_is_answered_with_a_pong_even_when_split():
    async def main():
        async with SipTransport("127.0.0.1", 0, transports=("tcp",)) as t:
            reader, writer = await asyncio.open_connection("127.0.0.1", t.ports["tcp"])
            writer.write(b"\r\n\r\n")
            assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\r\n"
            writer.write(b"\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"\r\n")
            assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\r\n"
            # A ping right after a message in the same segment is answered too.
            writer.write(sip_request(via="SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKp") + b"\r\n\r\n")
            data = await asyncio.wait_for(reader.read(4096), 5)
            assert data == b"\r\n"
            assert t.stats.pings_in == 3
            writer.close()

    run(main())


def test_keepalive_pings_and_pong_timeout_reports_a_failed_flow():
    async def main():
        failures = []
        async with (
            SipTransport("127.0.0.1", 0, transports=("tcp",)) as server,
            SipTransport(
                "127.0.0.1",
                0,
                transports=("tcp",),
                on_flow_failed=lambda *a: failures.append(a),
            ) as client,
        ):
            dest = ("127.0.0.1", server.ports["tcp"])
            ka = client.start_keepalive(dest, "tcp", interval=0.2)
            await wait_for(lambda: client.stats.pongs_in >= 2)
            assert server.stats.pings_in >= 2 and failures == []
            ka.stop()
            # A "server" that swallows pings: the flow is declared dead after the timeout.
            silent_got = []

            async def swallow(reader, writer):
                while chunk := await reader.read(100):
                    silent_got.append(chunk)
                writer.close()

            silent = await asyncio.start_server(swallow, "127.0.0.1", 0)
            port = silent.sockets[0].getsockname()[1]
            client.start_keepalive(("127.0.0.1", port), "tcp", interval=0.1, timeout=0.3)
            await wait_for(lambda: client.flow("tcp", ("127.0.0.1", port)) is not None)
            first = client.flow("tcp", ("127.0.0.1", port))
            await wait_for(lambda: failures, timeout=5)
            client.stop_keepalive(("127.0.0.1", port), "tcp")
            assert failures[0][:2] == ("tcp", ("127.0.0.1", port))
            assert "keepalive" in failures[0][2]
            assert silent_got and silent_got[0].startswith(b"\r\n\r\n")
            assert not first.open  # the failed flow is closed (RFC 5626: flow failed)
            silent.close()

    run(main())


def test_idle_connections_are_closed_but_keepalive_flows_are_kept():
    async def main():
        async with (
            SipTransport("127.0.0.1", 0, transports=("tcp",), idle_timeout=0.3) as a,
            SipTransport("127.0.0.1", 0, transports=("tcp",)) as b,
        ):
            Responder(b)
            dest = ("127.0.0.1", b.ports["tcp"])
            await a.send(sip_request(via=str(a.make_via("tcp"))), dest, "tcp")
            assert a.flow("tcp", dest) is not None
            await wait_for(lambda: a.flow("tcp", dest) is None, timeout=3)
            assert a.stats.idle_closed == 1
            a.start_keepalive(dest, "tcp", interval=0.1)
            await a.send(sip_request(via=str(a.make_via("tcp"))), dest, "tcp")
            await asyncio.sleep(1.0)
            assert a.flow("tcp", dest) is not None
            assert a.stats.idle_closed == 1

    run(main())


def test_malformed_request_over_tcp_gets_400_after_earlier_good_ones():
    async def main():
        async with SipTransport("127.0.0.1", 0, transports=("tcp",)) as t:
            server = Responder(t)
            reader, writer = await asyncio.open_connection("127.0.0.1", t.ports["tcp"])
            good = sip_request(via="SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKg", call_id="good")
            bad = (
                b"OPTIONS sip:door@127.0.0.1 SIP/2.0\r\n"
                b"Via: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKb\r\n"
                b"Call-ID: bad\r\nCSeq: 2 OPTIONS\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\n"
                b"This line is broken\r\n\r\n"
            )
            # Both in one segment: the good one is delivered and answered, the bad one gets
            # a 400, and then the connection closes (the stream cannot be re-framed).
            writer.write(good + bad)
            answers = await read_messages(reader, 2)
            assert {(a.call_id, a.status) for a in answers} == {("good", 200), ("bad", 400)}
            assert await asyncio.wait_for(reader.read(100), 5) == b""
            assert [r.call_id for r, _ in server.requests] == ["good"]
            assert t.stats.answered_bad == 1
            # No Content-Length on a stream: 400 too (the parser keeps the head).
            reader, writer = await asyncio.open_connection("127.0.0.1", t.ports["tcp"])
            writer.write(
                sip_request(via="SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKn", call_id="nolen").replace(
                    b"Content-Length: 0\r\n", b""
                )
            )
            answers = await read_messages(reader, 1)
            assert (answers[0].call_id, answers[0].status) == ("nolen", 400)
            # Garbage: closed without an answer.
            reader, writer = await asyncio.open_connection("127.0.0.1", t.ports["tcp"])
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await asyncio.wait_for(reader.read(100), 5) == b""
            assert t.stats.dropped == 1

    run(main())


def test_connection_refused_is_a_transport_error():
    async def main():
        async with SipTransport("127.0.0.1", 0, transports=("tcp",)) as t:
            probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
            port = probe.sockets[0].getsockname()[1]
            probe.close()
            await probe.wait_closed()
            try:
                await t.send(b"x", ("127.0.0.1", port), "tcp")
            except TransportError as exc:
                assert "connect" in str(exc)
            else:
                raise AssertionError("send to a closed port succeeded")

    run(main())
