"""A small authoritative DNS server over UDP for RFC 3263 tests: answers from a zone text
with the AA bit, NXDOMAIN for names that do not exist.

In-process (asyncio) for the locator's unit tests; as a program
(`python authoritative_dns.py ZONE_FILE HOST PORT`) for the firmware run in a namespace.
"""

from __future__ import annotations

import asyncio
import sys

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.zone


class AuthoritativeServer(asyncio.DatagramProtocol):
    def __init__(self, zone_text: str) -> None:
        self.zone = dns.zone.from_text(zone_text, relativize=False)
        self.queries: list[tuple[str, str]] = []

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        query = dns.message.from_wire(data)
        reply = dns.message.make_response(query)
        reply.flags |= dns.flags.AA
        question = query.question[0]
        self.queries.append((question.name.to_text(), dns.rdatatype.to_text(question.rdtype)))
        node = self.zone.get_node(question.name)
        if node is None:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        else:
            rdataset = node.get_rdataset(question.rdclass, question.rdtype)
            if rdataset is not None:
                rrset = dns.rrset.RRset(question.name, question.rdclass, question.rdtype)
                rrset.update(rdataset)
                reply.answer.append(rrset)
        self.transport.sendto(reply.to_wire(), addr)


async def serve(zone_text: str, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(
        lambda: AuthoritativeServer(zone_text), local_addr=(host, port)
    )
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    zone_file, host, port = sys.argv[1:4]
    with open(zone_file) as f:
        asyncio.run(serve(f.read(), host, int(port)))
