"""SipTransport over TLS on 127.0.0.1 with a CA made for the test: verification, SNI, reuse."""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest
from sip_edge_util import run, sip_request, wait_for

from porch.sip.locate import locate
from porch.sip.message import Response, make_response
from porch.sip.transport import (
    DSCP_CS3,
    SipTransport,
    TransportError,
    client_tls_context,
    server_tls_context,
)


async def tls_server(pki, seen_names: list | None = None) -> SipTransport:
    ctx = server_tls_context(str(pki.cert), str(pki.key))
    if seen_names is not None:
        ctx.sni_callback = lambda sock, name, c: seen_names.append(name)
    server = SipTransport("127.0.0.1", 0, transports=("tls",), tls_server_context=ctx)
    server.on_message = lambda m, s: (
        asyncio.get_running_loop().create_task(
            server.respond(make_response(m, 200, to_tag="tls"), s)
        )
        if not isinstance(m, Response)
        else None
    )
    await server.start()
    return server


def test_tls_request_and_response_with_configured_ca_and_sni(pki):
    async def main():
        names: list[str] = []
        server = await tls_server(pki, names)
        got = []
        async with SipTransport(
            "127.0.0.1", 0, tls_ca=str(pki.ca), on_message=lambda m, s: got.append((m, s))
        ) as client:
            dest = ("127.0.0.1", server.ports["tls"])
            for i in range(2):
                await client.send(
                    sip_request(via=str(client.make_via("tls")), call_id=f"tls{i}"),
                    dest,
                    "tls",
                    server_name="sip.test",
                )
            await wait_for(lambda: len(got) == 2)
            assert [m.status for m, _ in got] == [200, 200]
            assert {s.transport for _, s in got} == {"tls"}
            assert names == ["sip.test"]  # SNI carried the name, one handshake for both
            assert client.stats.connections_out == 1
            flow = client.flow("tls", dest)
            assert flow.transport.get_extra_info("peercert")["subject"][0][0][1] == "sip.test"
            sock = flow.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_TOS) == DSCP_CS3
            (incoming,) = server.flows
            sock = incoming.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_TOS) == DSCP_CS3
            # Via says TLS, and the stamped answer tells the port we connected from.
            assert got[0][0].top_via.transport == "TLS"
            assert got[0][0].top_via.rport == flow.local[1]
        await server.stop()

    run(main())


def test_ip_address_in_certificate_is_accepted_without_a_name(pki):
    async def main():
        server = await tls_server(pki)
        got = []
        async with SipTransport(
            "127.0.0.1", 0, tls_ca=str(pki.ca), on_message=lambda m, s: got.append(m)
        ) as client:
            await client.send(
                sip_request(via=str(client.make_via("tls"))),
                ("127.0.0.1", server.ports["tls"]),
                "tls",
            )
            await wait_for(lambda: got)
        await server.stop()

    run(main())


@pytest.mark.parametrize(
    ("which_ca", "name", "why"),
    [
        ("other_ca", "sip.test", "unrelated CA"),
        ("ca", "pbx.example.org", "name not in the certificate"),
        (None, "sip.test", "system store does not know the test CA"),
    ],
)
def test_untrusted_server_is_refused(pki, which_ca, name, why):
    async def main():
        server = await tls_server(pki)
        cafile = str(getattr(pki, which_ca)) if which_ca else None
        async with SipTransport("127.0.0.1", 0, tls_ca=cafile) as client:
            with pytest.raises(TransportError, match="certificate not accepted"):
                await client.send(
                    sip_request(via=str(client.make_via("tls"))),
                    ("127.0.0.1", server.ports["tls"]),
                    "tls",
                    server_name=name,
                )
            assert client.flows == []
            assert server.stats.received == 0, why
        await server.stop()

    run(main())


def test_client_context_trusts_system_store_or_only_the_configured_ca(pki):
    system = client_tls_context(None)
    assert system.verify_mode == ssl.CERT_REQUIRED and system.check_hostname
    assert system.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert system.cert_store_stats()["x509_ca"] > 0  # Debian's ca-certificates
    configured = client_tls_context(str(pki.ca))
    assert configured.cert_store_stats()["x509_ca"] == 1  # sip.tls_ca replaces the store
    assert configured.verify_mode == ssl.CERT_REQUIRED and configured.check_hostname


def test_sips_uri_leads_to_tls_through_locate(pki):
    async def main():
        server = await tls_server(pki)
        got = []
        async with SipTransport(
            "127.0.0.1", 0, tls_ca=str(pki.ca), on_message=lambda m, s: got.append((m, s))
        ) as client:
            (target,) = await locate(f"sips:door@127.0.0.1:{server.ports['tls']}")
            assert target.transport == "tls"
            await client.send(sip_request(via=str(client.make_via("tls"))), target)
            await wait_for(lambda: got)
            assert got[0][1].transport == "tls" and got[0][0].status == 200
        await server.stop()

    run(main())
