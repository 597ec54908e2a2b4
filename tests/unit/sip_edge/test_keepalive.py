"""Keepalive timing (sans-IO, time passed in) and the UDP OPTIONS keepalive on real sockets."""

from __future__ import annotations

import itertools
import random

from sip_edge_util import run, udp_peer, wait_for

from porch.sip.message import Request, make_response, parse_datagram
from porch.sip.transport import KeepaliveSchedule, SipTransport


def drive(schedule: KeepaliveSchedule, until: float, pong_after: float | None = None):
    """Step the schedule from deadline to deadline; answer each ping after `pong_after`."""
    events = []
    pong_due = None
    now = 0.0
    while True:
        now = schedule.deadline if pong_due is None else min(schedule.deadline, pong_due)
        if now > until:
            return events
        if pong_due is not None and now >= pong_due:
            schedule.on_pong(now)
            events.append((now, "pong"))
            pong_due = None
            continue
        for action in schedule.on_timer(now):
            events.append((now, action))
            if action == "ping" and pong_after is not None:
                pong_due = now + pong_after


def test_pings_spread_between_80_and_100_percent_of_the_interval():
    schedule = KeepaliveSchedule(30.0, 0.0, timeout=10.0, rng=random.Random(3))
    events = drive(schedule, 600.0, pong_after=0.05)
    pings = [t for t, a in events if a == "ping"]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert len(pings) >= 20
    assert all(24.0 <= g <= 30.0 for g in gaps)
    assert max(gaps) - min(gaps) > 1.0  # really randomised, not a fixed period
    assert not any(a == "failed" for _, a in events)


def test_missing_pong_fails_after_the_timeout_and_pinging_goes_on():
    schedule = KeepaliveSchedule(20.0, 0.0, timeout=10.0, rng=random.Random(1))
    events = drive(schedule, 100.0)
    pings = [t for t, a in events if a == "ping"]
    fails = [t for t, a in events if a == "failed"]
    assert len(fails) == len(pings) or len(fails) == len(pings) - 1
    assert all(abs((f - p) - 10.0) < 1e-9 for p, f in zip(pings, fails, strict=False))


def test_options_probe_is_resent_like_timer_e_until_answered():
    schedule = KeepaliveSchedule(30.0, 0.0, timeout=30.0, retransmit=True, rng=random.Random(2))
    events = drive(schedule, 100.0)
    first = next(t for t, a in events if a == "ping")
    resends = [round(t - first, 6) for t, a in events if a == "resend" and t < first + 30]
    assert resends[:6] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5]  # T1 doubling, capped at T2 = 4 s
    assert (first + 30.0, "failed") in events
    # An answer stops the resends.
    schedule = KeepaliveSchedule(30.0, 0.0, timeout=30.0, retransmit=True, rng=random.Random(2))
    events = drive(schedule, 100.0, pong_after=0.7)
    assert [a for _, a in events][:4] == ["ping", "resend", "pong", "ping"]


def test_late_pong_is_ignored():
    schedule = KeepaliveSchedule(5.0, 0.0, timeout=1.0, rng=random.Random(4))
    assert schedule.on_pong(0.1) is False  # nothing awaited yet
    t = schedule.deadline
    assert schedule.on_timer(t) == ["ping"]
    assert schedule.on_timer(t + 1.0) == ["failed"]
    assert schedule.on_pong(t + 1.5) is False


def test_udp_options_keepalive_against_a_registrar_stand_in():
    async def main():
        failures, changes = [], []
        async with SipTransport(
            "127.0.0.1",
            0,
            on_flow_failed=lambda *a: failures.append(a),
            on_public_address=lambda *a: changes.append(a),
        ) as t:
            delivered = []
            t.on_message = lambda m, s: delivered.append(m)
            registrar = await udp_peer()
            dest = ("127.0.0.1", registrar.port)
            ka = t.start_keepalive(
                dest, "udp", interval=0.2, uri="sip:pbx.test", from_uri="sip:door@pbx.test"
            )
            data = await registrar.next()
            probe = parse_datagram(data)
            assert isinstance(probe, Request) and probe.method == "OPTIONS"
            assert probe.target == "sip:pbx.test"
            assert probe.from_.uri.user == "door" and probe.from_.tag
            assert probe.top_via.has_rport
            assert registrar.received[0][1] == ("127.0.0.1", t.ports["udp"])
            # Answer like a server behind which we look like 198.51.100.1:40404; even a 404
            # proves the registrar is alive.
            answer = make_response(probe, 404)
            answer.headers.set(
                "Via", str(probe.top_via.with_params(received="198.51.100.1", rport="40404"))
            )
            registrar.send(answer.to_bytes(), ("127.0.0.1", t.ports["udp"]))
            await wait_for(lambda: t.stats.pongs_in == 1)
            assert t.public_address("udp") == ("198.51.100.1", 40404)
            assert changes == [("udp", ("198.51.100.1", 40404))]
            assert delivered == []  # keepalive answers are not the UA's business
            # Next probe: a new transaction (new branch, next CSeq), same Call-ID.
            second = parse_datagram(await registrar.next())
            while second.top_via.branch == probe.top_via.branch:  # a resend of the first
                second = parse_datagram(await registrar.next())
            assert second.cseq.number == probe.cseq.number + 1
            assert second.call_id == probe.call_id
            ka.stop()
            registrar.close()
            assert failures == []

    run(main())


def test_udp_keepalive_without_answers_reports_failure():
    async def main():
        failures = []
        async with SipTransport("127.0.0.1", 0, on_flow_failed=lambda *a: failures.append(a)) as t:
            silent = await udp_peer()
            dest = ("127.0.0.1", silent.port)
            t.start_keepalive(dest, "udp", interval=0.1, timeout=0.6)
            await wait_for(lambda: failures, timeout=5)
            assert failures[0][:2] == ("udp", dest)
            # Resent in between (T1 = 0.5 s): the same request twice.
            branches = [parse_datagram(d).top_via.branch for d, _ in silent.received[:2]]
            assert branches[0] == branches[1]
            t.stop_keepalive(dest, "udp")
            silent.close()

    run(main())


def test_udp_crlf_keepalive_option():
    async def main():
        async with SipTransport("127.0.0.1", 0) as t:
            peer = await udp_peer()
            t.start_keepalive(("127.0.0.1", peer.port), "udp", interval=0.1, method="crlf")
            assert await peer.next() == b"\r\n\r\n"
            assert await peer.next() == b"\r\n\r\n"
            # A CRLF keepalive arriving at our UDP socket is ignored quietly.
            peer.send(b"\r\n\r\n", ("127.0.0.1", t.ports["udp"]))
            peer.send(b"\r\n", ("127.0.0.1", t.ports["udp"]))
            await peer.next()
            assert t.stats.dropped == 0 and t.stats.answered_bad == 0
            peer.close()

    run(main())
