"""RFC 3263 server location: the pure ordering rules, then real lookups through dnspython
against a small authoritative DNS server started on 127.0.0.1 by the test."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import dns.asyncresolver
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.zone
import pytest
from authoritative_dns import AuthoritativeServer
from sip_edge_util import run

from porch.sip.locate import LocateError, SrvRecord, Target, locate, order_srv, plan

ZONE = """
$ORIGIN sip.test.
$TTL 60
@                IN SOA  ns hostmaster 1 60 60 60 60
@                IN NS   ns
ns               IN A    127.0.0.1

; NAPTR -> SRV -> A/AAAA, three transports and one service we do not speak
naptr            IN NAPTR 10 50 "s" "SIP+D2T"  "" _sip._tcp.naptr.sip.test.
naptr            IN NAPTR 20 50 "s" "SIP+D2U"  "" _sip._udp.naptr.sip.test.
naptr            IN NAPTR 5  50 "s" "SIPS+D2T" "" _sips._tcp.naptr.sip.test.
naptr            IN NAPTR 1  50 "s" "SIP+D2S"  "" _sip._sctp.naptr.sip.test.
_sip._tcp.naptr  IN SRV  10 0 5070 pbx1.naptr.sip.test.
_sip._udp.naptr  IN SRV  10 0 5071 pbx1.naptr.sip.test.
_sips._tcp.naptr IN SRV  10 0 5061 pbx1.naptr.sip.test.
pbx1.naptr       IN A    127.0.0.11
pbx1.naptr       IN AAAA ::1

; SRV without NAPTR: two at priority 10 (weights 60/40), a backup at 20
srv              IN A    127.0.0.99
_sip._udp.srv    IN SRV  20 0  5080 backup.srv.sip.test.
_sip._udp.srv    IN SRV  10 60 5081 a.srv.sip.test.
_sip._udp.srv    IN SRV  10 40 5082 b.srv.sip.test.
a.srv            IN A    127.0.0.21
b.srv            IN A    127.0.0.22
backup.srv       IN A    127.0.0.23

; neither NAPTR nor SRV
plain            IN A    127.0.0.31
plain            IN A    127.0.0.32
plain            IN AAAA ::1

; SRV says "not here"
_sip._tcp.gone   IN SRV  0 0 0 .
gone             IN A    127.0.0.51
"""


async def dns_server() -> tuple[AuthoritativeServer, dns.asyncresolver.Resolver]:
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(
        lambda: AuthoritativeServer(ZONE), local_addr=("127.0.0.1", 0)
    )
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = transport.get_extra_info("sockname")[1]
    resolver.lifetime = 2.0
    return server, resolver


class NoDns:
    async def resolve(self, qname, rdtype):
        raise AssertionError(f"no DNS expected, asked {qname} {rdtype}")


def lookups(uri: str, **kw) -> tuple[list[Target], list[tuple[str, str]]]:
    async def main():
        server, resolver = await dns_server()
        try:
            return await locate(uri, resolver=resolver, **kw), server.queries
        finally:
            server.transport.close()

    return run(main())


def test_numeric_hosts_and_explicit_parameters_need_no_dns():
    async def main():
        no = NoDns()
        assert await locate("sip:127.0.0.1", resolver=no) == [
            Target("udp", "127.0.0.1", 5060, "127.0.0.1")
        ]
        assert await locate("sips:alice@127.0.0.1", resolver=no) == [
            Target("tls", "127.0.0.1", 5061, "127.0.0.1")
        ]
        assert await locate("sip:[::1]:5070;transport=tcp", resolver=no) == [
            Target("tcp", "::1", 5070, "::1")
        ]
        # maddr overrides the host; the TLS name stays the URI's host.
        assert await locate("sip:bob@nowhere.sip.test;maddr=127.0.0.41", resolver=no) == [
            Target("udp", "127.0.0.41", 5060, "nowhere.sip.test")
        ]
        # sip: without UDP enabled falls back to TCP.
        assert await locate("sip:127.0.0.1:5090", resolver=no, transports=("tcp",)) == [
            Target("tcp", "127.0.0.1", 5090, "127.0.0.1")
        ]

    run(main())


def test_naptr_srv_a_in_naptr_order():
    targets, queries = lookups("sip:naptr.sip.test")
    assert targets == [
        Target("tls", "127.0.0.11", 5061, "naptr.sip.test"),
        Target("tls", "::1", 5061, "naptr.sip.test"),
        Target("tcp", "127.0.0.11", 5070, "naptr.sip.test"),
        Target("tcp", "::1", 5070, "naptr.sip.test"),
        Target("udp", "127.0.0.11", 5071, "naptr.sip.test"),
        Target("udp", "::1", 5071, "naptr.sip.test"),
    ]
    assert queries[0] == ("naptr.sip.test.", "NAPTR")
    assert ("_sip._sctp.naptr.sip.test.", "SRV") not in queries


def test_naptr_filtered_by_scheme_transports_and_families():
    targets, _ = lookups("sips:naptr.sip.test")
    assert {t.transport for t in targets} == {"tls"}
    targets, _ = lookups("sip:naptr.sip.test", transports=("udp",), families=("A",))
    assert targets == [Target("udp", "127.0.0.11", 5071, "naptr.sip.test")]


def test_srv_without_naptr_honours_priority_and_weight():
    targets, queries = lookups("sip:srv.sip.test", rng=random.Random(7))
    hosts = [t.host for t in targets]
    assert set(hosts[:2]) == {"127.0.0.21", "127.0.0.22"}
    assert hosts[2] == "127.0.0.23" and len(hosts) == 3
    assert all(t.transport == "udp" for t in targets)
    assert {t.port for t in targets} == {5080, 5081, 5082}
    assert ("_sips._tcp.srv.sip.test.", "SRV") in queries  # asked for every transport
    assert ("srv.sip.test.", "A") not in queries  # SRV found: no plain A lookup


def test_plain_a_and_aaaa_when_there_is_no_srv():
    targets, _ = lookups("sip:plain.sip.test")
    # The two A records in the order DNS gave them (a set), then the AAAA.
    assert set(targets[:2]) == {
        Target("udp", "127.0.0.31", 5060, "plain.sip.test"),
        Target("udp", "127.0.0.32", 5060, "plain.sip.test"),
    }
    assert targets[2:] == [Target("udp", "::1", 5060, "plain.sip.test")]
    targets, _ = lookups("sips:plain.sip.test", families=("A",))
    assert sorted(t[:3] for t in targets) == [
        ("tls", "127.0.0.31", 5061),
        ("tls", "127.0.0.32", 5061),
    ]


def test_explicit_port_or_transport_short_circuits():
    targets, queries = lookups("sip:srv.sip.test:5099")
    assert [t[:3] for t in targets] == [("udp", "127.0.0.99", 5099)]
    assert all(rdtype in ("A", "AAAA") for _, rdtype in queries)
    targets, queries = lookups("sip:srv.sip.test;transport=tcp", families=("A",))
    assert [t[:3] for t in targets] == [("tcp", "127.0.0.99", 5060)]
    assert ("_sip._tcp.srv.sip.test.", "SRV") in queries
    assert not any(rdtype == "NAPTR" for _, rdtype in queries)


def test_failures_are_explained():
    with pytest.raises(LocateError, match="no DNS records"):
        lookups("sip:missing.sip.test")
    with pytest.raises(LocateError, match="no DNS records"):
        lookups("sip:gone.sip.test;transport=tcp")  # SRV "." = not offered; no A fallback
    with pytest.raises(LocateError, match="sips"):
        lookups("sips:naptr.sip.test;transport=udp")
    with pytest.raises(LocateError, match="not a SIP URI"):
        lookups("tel:+4912345")

    async def dead_server():
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        probe = await asyncio.get_running_loop().create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
        )
        resolver.port = probe[0].get_extra_info("sockname")[1]  # bound but never answers
        resolver.lifetime = 0.3
        try:
            await locate("sip:plain.sip.test", resolver=resolver)
        finally:
            probe[0].close()

    with pytest.raises(LocateError, match="DNS"):
        run(dead_server())


def test_plan_rules():
    p = plan("sips:pbx.example.org;transport=tcp")
    assert (p.transport, p.secure, p.numeric, p.name) == ("tls", True, False, "pbx.example.org")
    assert plan("sip:pbx.example.org:5070").transport == "udp"
    assert plan("sip:pbx.example.org").transport is None  # left to NAPTR/SRV
    with pytest.raises(LocateError):
        plan("sip:pbx.example.org;transport=tcp", transports=("udp",))


def test_srv_weights_share_the_first_place_by_weight():
    records = [
        SrvRecord(10, 60, 1, "a"),
        SrvRecord(10, 40, 2, "b"),
        SrvRecord(10, 0, 3, "zero"),
        SrvRecord(5, 1, 4, "first"),
        SrvRecord(20, 0, 5, "."),
    ]
    rng = random.Random(1)
    firsts = Counter()
    for _ in range(2000):
        order = order_srv(records, rng)
        assert order[0].target == "first"
        assert {r.target for r in order[1:]} == {"a", "b", "zero"}
        assert "." not in {r.target for r in order}
        firsts[order[1].target] += 1
    assert 0.52 < firsts["a"] / 2000 < 0.68
    assert 0.32 < firsts["b"] / 2000 < 0.48
    assert firsts["zero"] < 60  # weight 0: chosen only when the draw lands exactly on 0
