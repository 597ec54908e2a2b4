"""Locating a SIP server from a URI (RFC 3263 section 4): NAPTR -> SRV -> A/AAAA.

The decisions are plain functions (`plan`, `order_naptr`, `order_srv`) that take records
and return orders, so the rules are tested without DNS; `locate()` runs the queries with an
injectable resolver (dnspython's `dns.asyncresolver.Resolver` by default, or any object with
the same `resolve(qname, rdtype)` coroutine) and returns the ordered list of addresses to try.

What comes back is a list of `Target(transport, host, port, name)`: `host` is an IP address
to send to, `name` the domain the server must prove in its TLS certificate (the URI's host,
RFC 5922 section 7.2, not the SRV target).
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from porch.sip.errors import RemoteProtocolError
from porch.sip.uri import SipUri, parse_uri

__all__ = [
    "DEFAULT_PORTS",
    "LocateError",
    "Plan",
    "SrvRecord",
    "Target",
    "locate",
    "order_naptr",
    "order_srv",
    "plan",
]

TRANSPORTS = ("udp", "tcp", "tls")
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}
NAPTR_SERVICES = {"SIP+D2U": "udp", "SIP+D2T": "tcp", "SIPS+D2T": "tls"}
SRV_PREFIXES = {"udp": "_sip._udp.", "tcp": "_sip._tcp.", "tls": "_sips._tcp."}


class Target(NamedTuple):
    """One address to try: transport ("udp", "tcp" or "tls"), IP address, port, and the
    name to check the server's TLS certificate against."""

    transport: str
    host: str
    port: int
    name: str


class LocateError(Exception):
    """No usable target: `reason` says why in words fit for the log and /api/status."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Resolver(Protocol):
    async def resolve(self, qname: str, rdtype: str) -> Iterable[Any]: ...


# ---------------------------------------------------------------------------------------
# Decisions (pure)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What the URI alone decides.

    `host` is where to look (maddr wins over the host part); `transport` is fixed when the
    URI names one or the host is numeric or a port is given; `port` is the explicit port;
    `numeric` means no DNS at all; `secure` is a sips: URI; `name` is the TLS identity.
    """

    host: str
    port: int | None
    transport: str | None
    secure: bool
    numeric: bool
    name: str


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def plan(uri: SipUri | str, transports: Collection[str] = TRANSPORTS) -> Plan:
    """Apply the URI-only rules of RFC 3263 4.1/4.2; LocateError if nothing fits."""
    if isinstance(uri, str):
        try:
            parsed = parse_uri(uri)
        except RemoteProtocolError as exc:
            raise LocateError(f"not a SIP URI: {uri!r}") from exc
        if not isinstance(parsed, SipUri):
            raise LocateError(f"not a SIP URI: {uri!r}")
        uri = parsed
    secure = uri.scheme == "sips"
    host = uri.maddr or uri.host
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    numeric = _is_ip(host)
    transport = uri.transport
    if transport is not None:
        if transport not in TRANSPORTS:
            raise LocateError(f"transport={transport} is not supported")
        if secure:
            if transport == "udp":
                raise LocateError("a sips: URI cannot use transport=udp")
            transport = "tls"  # sips: with transport=tcp means TLS over TCP
        if transport not in transports:
            raise LocateError(f"transport={transport} is not enabled here")
    elif numeric or uri.port is not None:
        transport = _default_transport(secure, transports)
    return Plan(host, uri.port, transport, secure, numeric, uri.host)


def _default_transport(secure: bool, transports: Collection[str]) -> str:
    """UDP for sip: (TCP if we do not do UDP), TLS for sips: (RFC 3263 4.1)."""
    if secure:
        if "tls" not in transports:
            raise LocateError("a sips: URI needs TLS, which is not enabled here")
        return "tls"
    for choice in ("udp", "tcp", "tls"):
        if choice in transports:
            return choice
    raise LocateError("no transport enabled")


def order_naptr(
    records: Iterable[Any], transports: Sequence[str], secure: bool
) -> list[tuple[str, str]]:
    """(transport, SRV name) pairs from NAPTR records we can use, best first.

    Only terminal "s" records for the SIP services we speak count (RFC 3263 4.1); a sips:
    URI keeps only SIPS+D2T. Sorted by order, then preference, as RFC 3403 says.
    """
    usable = []
    for rec in records:
        flags = _text(rec.flags).lower()
        service = _text(rec.service).upper()
        transport = NAPTR_SERVICES.get(service)
        if flags != "s" or transport is None or transport not in transports:
            continue
        if secure and transport != "tls":
            continue
        replacement = str(rec.replacement).rstrip(".")
        if not replacement:
            continue
        usable.append((rec.order, rec.preference, transport, replacement))
    usable.sort(key=lambda r: (r[0], r[1]))
    seen: set[tuple[str, str]] = set()
    out = []
    for _, _, transport, name in usable:
        if (transport, name) not in seen:
            seen.add((transport, name))
            out.append((transport, name))
    return out


@dataclass(frozen=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str


def order_srv(records: Iterable[SrvRecord], rng: random.Random | None = None) -> list[SrvRecord]:
    """Order SRV records as RFC 2782 says: by priority, and within one priority by a weighted
    random draw (zero-weight records first in the running sum, so they are picked rarely).
    A lone "." target means "no service here" and yields nothing."""
    rng = rng or random.Random()
    records = [r for r in records if r.target not in ("", ".")]
    out: list[SrvRecord] = []
    for priority in sorted({r.priority for r in records}):
        group = [r for r in records if r.priority == priority]
        group.sort(key=lambda r: r.weight != 0)  # zero weights first, stable otherwise
        while group:
            total = sum(r.weight for r in group)
            pick = rng.randint(0, total) if total else 0
            running = 0
            for i, rec in enumerate(group):
                running += rec.weight
                if running >= pick:
                    out.append(group.pop(i))
                    break
    return out


def _text(value: object) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------------------------------
# Queries
# ---------------------------------------------------------------------------------------


class _Lookups:
    """Runs queries and remembers why they failed, to explain an empty result."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.problems: list[str] = []

    async def query(self, name: str, rdtype: str) -> list[Any]:
        import dns.exception
        import dns.resolver

        try:
            answer = await self.resolver.resolve(name, rdtype)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.resolver.NoNameservers as exc:
            self.problems.append(f"DNS failure for {name} {rdtype}: {exc}")
            return []
        except dns.exception.Timeout:
            self.problems.append(f"DNS timeout for {name} {rdtype}")
            return []
        except dns.exception.DNSException as exc:
            self.problems.append(f"DNS error for {name} {rdtype}: {exc}")
            return []
        return list(answer)

    async def addresses(self, host: str, families: Sequence[str]) -> list[str]:
        if _is_ip(host):
            return [host]
        results = await asyncio.gather(*(self.query(host, rdtype) for rdtype in families))
        return [str(rdata.address) for answer in results for rdata in answer]

    async def srv(self, name: str, rng: random.Random) -> tuple[bool, list[SrvRecord]]:
        """(any SRV record at all, the usable ones in order). A lone "." record says the
        service is decidedly not offered there: found, but nothing to try."""
        records = [
            SrvRecord(r.priority, r.weight, r.port, str(r.target).rstrip(".") or ".")
            for r in await self.query(name, "SRV")
        ]
        return bool(records), order_srv(records, rng)


def default_resolver() -> Resolver:
    import dns.asyncresolver

    return dns.asyncresolver.Resolver()


async def locate(
    uri: SipUri | str,
    *,
    resolver: Resolver | None = None,
    transports: Sequence[str] = TRANSPORTS,
    families: Sequence[str] = ("A", "AAAA"),
    rng: random.Random | None = None,
) -> list[Target]:
    """The ordered targets for `uri` (RFC 3263 section 4); LocateError when there are none.

    `transports` are those we may use, in our order of preference (it decides among SRV
    results when there is no NAPTR); `families` the address records to ask for ("A" when
    our socket is IPv4 only).
    """
    p = plan(uri, transports)
    if p.numeric:
        assert p.transport is not None
        return [Target(p.transport, p.host, p.port or DEFAULT_PORTS[p.transport], p.name)]
    look = _Lookups(resolver or default_resolver())
    rng = rng or random.Random()
    out: list[Target] = []

    async def add_records(transport: str, records: list[SrvRecord]) -> None:
        found = await asyncio.gather(*(look.addresses(r.target, families) for r in records))
        for rec, ips in zip(records, found, strict=True):
            out.extend(Target(transport, ip, rec.port, p.name) for ip in ips)

    async def add_srv(transport: str, name: str) -> bool:
        exists, records = await look.srv(name, rng)
        await add_records(transport, records)
        return exists

    async def add_plain(transport: str, port: int) -> None:
        for ip in await look.addresses(p.host, families):
            out.append(Target(transport, ip, port, p.name))

    if p.port is not None:
        # An explicit port: A/AAAA only (RFC 3263 4.2).
        assert p.transport is not None
        await add_plain(p.transport, p.port)
    elif p.transport is not None:
        # A transport but no port: SRV for that transport, else A/AAAA.
        if not await add_srv(p.transport, SRV_PREFIXES[p.transport] + p.host):
            await add_plain(p.transport, DEFAULT_PORTS[p.transport])
    else:
        naptr = order_naptr(await look.query(p.host, "NAPTR"), transports, p.secure)
        found = False
        for transport, name in naptr:
            found = await add_srv(transport, name) or found
        if not found:
            wanted = [t for t in transports if not p.secure or t == "tls"]
            # Without NAPTR, query SRV for each transport we support; keep our preference.
            results = await asyncio.gather(
                *(look.srv(SRV_PREFIXES[t] + p.host, rng) for t in wanted)
            )
            for transport, (exists, records) in zip(wanted, results, strict=True):
                found = found or exists
                await add_records(transport, records)
        if not found:
            transport = _default_transport(p.secure, transports)
            await add_plain(transport, DEFAULT_PORTS[transport])
    unique = list(dict.fromkeys(out))
    if not unique:
        if look.problems:
            raise LocateError("; ".join(look.problems))
        raise LocateError(f"no DNS records for {p.host}")
    return unique
