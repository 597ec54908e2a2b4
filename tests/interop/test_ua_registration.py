"""porch registers to a real PBX (Kamailio with digest auth) over UDP, TCP and TLS.

The firmware runs as a process (`porch run --sim`); Kamailio grants at most 4 s, so porch
refreshes every 2 s and outages show up quickly. One Kamailio serves the whole module.
"""

from __future__ import annotations

import pytest
from peers import Kamailio, PeerSet, free_port, wait_until
from peers_fixtures import fixture_module_peer_set, fixture_peer_set  # noqa: F401
from porch_interop import (
    events,
    fixture_run_porch,  # noqa: F401
    outputs,
    status,
    wait_registration,
)

pytestmark = pytest.mark.interop

USERS = {"udp": "door", "tcp": "door2", "tls": "1003"}


@pytest.fixture(scope="module")
def kam(module_peer_set: PeerSet) -> Kamailio:
    return module_peer_set.kamailio(min_expires=2, max_expires=4)


def sip_section(kam: Kamailio, transport: str, user: str, **extra) -> dict:
    section = {
        "registrar": kam.uri(transport),
        "username": user,
        "password": Kamailio.USERS[user],
        "transport": transport,
        "listen": f"127.0.0.1:{free_port(('udp', 'tcp'))}",
    }
    if transport == "tls":
        section["tls_ca"] = str(kam.ca_file)
    section.update(extra)
    return section


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_registers_refreshes_and_deregisters(
    kam: Kamailio, peer_set: PeerSet, run_porch, transport
):
    user = USERS[transport]
    porch = run_porch({"sip": sip_section(kam, transport, user)})
    s = wait_registration(porch, "registered")
    assert kam.uri(transport) in s["registration_reason"]
    contact = kam.wait_registered(user, timeout=5, transport=transport)
    assert "porch/" in contact["User-Agent"]
    first_cseq = int(contact["CSeq"])
    # A call to the door comes back over the registration's flow (UDP, or porch's own
    # TCP/TLS connection, which Kamailio reuses) and is answered.
    call = peer_set.sipp.run(
        "uac_call", kam.address("udp"), service=user, duration_ms=200, timeout=10
    )
    assert call.ok and call.log_lines("HUNGUP"), call.report()
    # Kamailio grants 4 s: a refresh (same Call-ID, higher CSeq) comes within ~2 s.
    refreshed = wait_until(lambda: any(int(c["CSeq"]) > first_cseq for c in kam.contacts(user)), 10)
    assert refreshed, kam.contacts(user)
    assert kam.contacts(user)[0]["Call-ID"] == contact["Call-ID"]
    assert outputs(porch)["led_ready_mode"] == "on"
    code, _ = porch.stop()  # SIGTERM: de-register, exit 0 within 3 s (asserted by stop())
    assert code == 0
    kam.wait_unregistered(user, timeout=2)


def test_wrong_password_is_reported(kam: Kamailio, run_porch):
    section = sip_section(kam, "udp", "door")
    section["password"] = "not-the-password"
    porch = run_porch({"sip": section})
    s = wait_registration(porch, "failed")
    assert "wrong username or password" in s["registration_reason"]
    assert outputs(porch)["led_ready_mode"] == "fast"
    assert any(e["state"] == "failed" for e in events(porch, "registration"))
    assert not kam.registered("door")
    # The installer fixes the password on the web page: applied live, porch registers.
    doc = porch.request("GET", "/api/config")[1]
    doc["sip"]["password"] = Kamailio.USERS["door"]
    assert porch.request("PUT", "/api/config", doc)[0] == 200
    wait_registration(porch, "registered")
    kam.wait_registered("door", timeout=5)
    assert porch.stop()[0] == 0


def test_reregisters_after_kamailio_outage(kam: Kamailio, run_porch):
    porch = run_porch({"sip": sip_section(kam, "udp", "door", keepalive_seconds=5)})
    wait_registration(porch, "registered")
    kam.wait_registered("door", timeout=5)
    kam.stop()
    try:
        # The binding lapses (4 s) or the keepalive fails: porch no longer claims it.
        left = wait_until(lambda: status(porch)["registration"] != "registered", 20)
        assert left, status(porch)
        assert outputs(porch)["led_ready_mode"] in ("blink", "fast")
    finally:
        kam.start()
    # Kamailio forgot everything (location in memory): porch must register again.
    wait_registration(porch, "registered", timeout=20)
    kam.wait_registered("door", timeout=5)
    assert porch.stop()[0] == 0


def test_fails_over_to_backup_registrar(kam: Kamailio, peer_set: PeerSet, run_porch):
    backup = peer_set.kamailio(backup=True, tls=False, min_expires=2, max_expires=4)
    section = sip_section(kam, "tcp", "door2", backup_registrar=backup.uri("tcp"))
    porch = run_porch({"sip": section})
    wait_registration(porch, "registered")
    kam.wait_registered("door2", timeout=5, transport="tcp")
    kam.stop()
    try:
        try:
            contact = backup.wait_registered("door2", timeout=30, transport="tcp")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{backup.kamcmd('ul.dump')}\n{porch.log()}") from None
        assert "porch/" in contact["User-Agent"]
        s = wait_registration(porch, "registered")
        assert "(backup)" in s["registration_reason"], s
    finally:
        kam.start()
    assert porch.stop()[0] == 0
    backup.wait_unregistered("door2", timeout=2)


def test_registers_again_at_once_when_the_pbx_drops_its_tcp_connection(
    peer_set: PeerSet, run_porch
):
    """Kamailio restarts between two keepalives, long before porch's refresh (600 s asked,
    and granted: the refresh is 9 minutes away). Its exit closes porch's TCP connection and
    it forgets every binding; porch registers again (the same registration: Call-ID kept)
    as soon as it is back, so calls reach the door again within seconds."""
    pbx = peer_set.kamailio(tls=False)
    porch = run_porch({"sip": sip_section(pbx, "tcp", "door2", register_expires=600)})
    wait_registration(porch, "registered")
    before = pbx.wait_registered("door2", timeout=5, transport="tcp")
    assert int(before["Expires"]) > 500, before
    pbx.restart()
    after = pbx.wait_registered("door2", timeout=10, transport="tcp")
    assert after["Call-ID"] == before["Call-ID"]
    assert int(after["CSeq"]) > int(before["CSeq"])
    assert "the registrar closed our tcp connection: registering again" in porch.log()
    wait_registration(porch, "registered")
    call = peer_set.sipp.run(
        "uac_call", pbx.address("udp"), service="door2", duration_ms=200, timeout=10
    )
    assert call.ok and call.log_lines("HUNGUP"), call.report()
    assert porch.stop()[0] == 0
