"""RFC 3263 end to end: the firmware finds its registrar by DNS SRV and moves on to the next
SRV target when the first one is unreachable (TCP) or answers 503 (UDP).

Everything runs in a network namespace with only a loopback: an authoritative DNS server
(tests/support/authoritative_dns.py) on 127.0.0.1:53, named in the namespace's own
resolv.conf; SIPp as the registrar with digest auth (and, for UDP, a second SIPp that
answers 503); and porch with `sip.registrar = "sip:pbx.test"`. The registration state is
read from porch's event log in its state folder.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from netns import in_namespace, loopback_namespace
from porch_harness import PORCH, toml_document

pytestmark = pytest.mark.netns

HERE = Path(__file__).resolve().parent
SUPPORT = HERE.parent / "support"
SIPP_DIR = HERE.parent / "interop" / "peers" / "sipp"
DEAD, LIVE, PORCH_SIP, WEB = 5091, 5070, 5080, 8080

ZONE = f"""
$ORIGIN pbx.test.
$TTL 60
@          IN SOA ns hostmaster 1 60 60 60 60
@          IN NS  ns
ns         IN A   127.0.0.1
_sip._tcp  IN SRV 10 0 {DEAD} first.pbx.test.
_sip._tcp  IN SRV 20 0 {LIVE} second.pbx.test.
_sip._udp  IN SRV 10 0 {DEAD} first.pbx.test.
_sip._udp  IN SRV 20 0 {LIVE} second.pbx.test.
first      IN A   127.0.0.1
second     IN A   127.0.0.1
"""

UNAVAILABLE = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="Registrar out of service">
  <recv request="REGISTER" crlf="true"><action><log message="REGISTER here"/></action></recv>
  <send>
    <![CDATA[
      SIP/2.0 503 Service Unavailable
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0
    ]]>
  </send>
  <timewait milliseconds="500"/>
</scenario>
"""


@pytest.fixture
def namespace():
    with loopback_namespace("porch-dns", "nameserver 127.0.0.1\noptions timeout:1\n") as name:
        yield name


def start(namespace: str, argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(in_namespace(namespace, argv), stdout=out, stderr=subprocess.STDOUT)


def sipp(
    namespace: str, scenario: Path, port: int, transport: str, work: Path, name: str, *args: str
):
    folder = work / name
    folder.mkdir()
    argv = ["sipp", "-sf", str(scenario), "-i", "127.0.0.1", "-p", str(port),
            "-t", "t1" if transport == "tcp" else "u1", "-m", "1", "-nostdin",
            "-mp", str(port + 1000), "-cp", str(port + 2000), *args,
            "-trace_logs", "-log_file", str(folder / "log.log")]  # fmt: skip
    return start(namespace, argv, folder / "out.txt"), folder / "log.log"


def wait_listening(namespace: str, ports: list[int], dns_log: Path) -> None:
    """Until the DNS server said it is ready and every SIPp listens on its port."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        sockets = subprocess.run(
            in_namespace(namespace, ["ss", "-Hlntu"]), capture_output=True, text=True
        ).stdout
        bound = all(f"127.0.0.1:{port} " in sockets for port in ports)
        if bound and "ready" in dns_log.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"peers not ready: {sockets}")


def registrations(state: Path) -> list[dict]:
    path = state / "events.jsonl"
    if not path.exists():
        return []
    events = [json.loads(line) for line in path.read_text().splitlines() if line]
    return [e for e in events if e["type"] == "registration"]


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_registrar_found_by_srv_and_the_next_target_taken(namespace, tmp_path, transport):
    (tmp_path / "zone").write_text(ZONE)
    dns_log = tmp_path / "dns.txt"
    procs = []
    try:
        dns = start(
            namespace,
            [sys.executable, str(SUPPORT / "authoritative_dns.py"), str(tmp_path / "zone"),
             "127.0.0.1", "53"],
            dns_log,
        )  # fmt: skip
        procs.append(dns)
        account = ("-set", "user", "door", "-set", "pass", "secret", "-set", "expires", "60")
        registrar = SIPP_DIR / "uas_registrar_digest.xml"
        live, live_log = sipp(namespace, registrar, LIVE, transport, tmp_path, "live", *account)
        procs.append(live)
        dead_log = None
        if transport == "udp":  # on UDP the first target answers, but 503
            (tmp_path / "unavailable.xml").write_text(UNAVAILABLE)
            dead, dead_log = sipp(
                namespace, tmp_path / "unavailable.xml", DEAD, "udp", tmp_path, "dead"
            )
            procs.append(dead)
        config = tmp_path / "porch.toml"
        config.write_text(
            toml_document(
                {
                    "sip": {
                        "registrar": "sip:pbx.test",
                        "username": "door",
                        "password": "secret",
                        "transport": transport,
                        "listen": f"127.0.0.1:{PORCH_SIP}",
                    },
                    "web": {"listen": f"127.0.0.1:{WEB}"},
                }
            )
        )
        state = tmp_path / "state"
        wait_listening(namespace, [LIVE] if transport == "tcp" else [LIVE, DEAD], dns_log)
        porch = start(
            namespace,
            [PORCH, "run", "--sim", "--config", str(config), "--state-dir", str(state)],
            tmp_path / "porch.log",
        )
        procs.append(porch)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if any(e["state"] == "registered" for e in registrations(state)):
                break
            time.sleep(0.1)
        log = (tmp_path / "porch.log").read_text()
        assert any(e["state"] == "registered" for e in registrations(state)), (
            registrations(state),
            log,
        )
        registered = next(e for e in registrations(state) if e["state"] == "registered")
        assert registered["reason"].startswith("registered at sip:pbx.test for 60 s"), registered
        why = "unreachable" if transport == "tcp" else "503 Service Unavailable"
        assert f"REGISTER to 127.0.0.1:{DEAD} failed ({why}): trying 127.0.0.1:{LIVE}" in log, log
        assert "REGISTER auth valid=true" in live_log.read_text()
        if dead_log is not None:
            assert "REGISTER here" in dead_log.read_text()
        porch.send_signal(signal.SIGTERM)
        assert porch.wait(10) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
