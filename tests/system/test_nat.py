"""Behind NAT: the firmware learns its public address from the registrar's answer (Via
`received`/`rport`, RFC 3581), registers that address as its Contact, and takes a call the
PBX sends there through the NAT.

Three network namespaces made by the test: `lan` (porch, 10.77.1.2), `router` (10.77.1.1 on
the LAN side, 10.77.2.1 on the WAN side; nftables rewrites the source of everything leaving
towards the WAN to 10.77.2.1 and a port in 40000-40999), `wan` (the PBX, 10.77.2.2:
tests/system/nat_registrar.py, a registrar with digest auth that stamps `received`/`rport`
as PBXs do and, once porch registers its public address, calls that Contact as a PBX calls
a registered phone).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from netns import in_namespace, loopback_namespace, veth
from porch_harness import PORCH, toml_document

pytestmark = pytest.mark.netns

REGISTRAR = Path(__file__).resolve().parent / "nat_registrar.py"

PORCH_ADDR, ROUTER_LAN, ROUTER_WAN, PBX = "10.77.1.2", "10.77.1.1", "10.77.2.1", "10.77.2.2"

NAT_RULES = """
table ip nat {
  chain post {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "%s" meta l4proto { udp, tcp } snat to 10.77.2.1:40000-40999
  }
}
"""


@pytest.fixture
def nat() -> Iterator[tuple[str, str, str]]:
    """(lan, router, wan) namespaces wired and NATed as the module docstring says."""
    with ExitStack() as stack:
        lan = stack.enter_context(loopback_namespace("porch-lan"))
        router = stack.enter_context(loopback_namespace("porch-router"))
        wan = stack.enter_context(loopback_namespace("porch-wan"))
        veth(lan, f"{PORCH_ADDR}/24", router, f"{ROUTER_LAN}/24")
        outside, _ = veth(router, f"{ROUTER_WAN}/24", wan, f"{PBX}/24")  # router's end first
        subprocess.run(["ip", "-n", lan, "route", "add", "default", "via", ROUTER_LAN], check=True)
        subprocess.run(in_namespace(router, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]), check=True)
        subprocess.run(
            in_namespace(router, ["nft", "-f", "-"]), input=NAT_RULES % outside, text=True,
            check=True,
        )  # fmt: skip
        yield lan, router, wan


def events(state: Path) -> list[dict]:
    path = state / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_registers_its_public_address_and_takes_a_call_through_nat(nat, tmp_path):
    lan, _router, wan = nat
    config = tmp_path / "porch.toml"
    config.write_text(
        toml_document(
            {
                "sip": {
                    "registrar": f"sip:{PBX}",
                    "username": "door",
                    "password": "secret",
                    "listen": f"{PORCH_ADDR}:5080",
                },
                "web": {"listen": "127.0.0.1:8080"},
            }
        )
    )
    state = tmp_path / "state"
    pbx = subprocess.Popen(
        in_namespace(wan, [sys.executable, str(REGISTRAR), PBX, "5060", "door", "secret"]),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(0.5)  # the registrar binds its socket
    with open(tmp_path / "porch.log", "w") as out:
        porch = subprocess.Popen(
            in_namespace(lan, [PORCH, "run", "--sim", "--config", str(config),
                               "--state-dir", str(state)]),
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        output, _ = pbx.communicate(timeout=40)
        report = f"{output}\n{(tmp_path / 'porch.log').read_text()}"
        assert pbx.returncode == 0, report
        seen = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
        registered = [e["contact"] for e in seen if e["event"] == "registered"]
        # The first REGISTER names the LAN address; the registrar's answer tells porch
        # where it really is, and porch registers again with that public address.
        assert registered[0] == f"sip:door@{PORCH_ADDR}:5080", registered
        public = registered[-1]
        assert re.fullmatch(r"sip:door@10\.77\.2\.1:4\d{4}", public), registered
        assert [e["event"] for e in seen][-2:] == ["answered", "hung up"], seen
        calls = [
            (e["type"], e.get("state") or e.get("reason"))
            for e in events(state)
            if e["type"] in ("call", "call_end")
        ]
        assert calls == [("call", "connected"), ("call_end", "hung up by the peer")], calls
        porch.send_signal(signal.SIGTERM)
        assert porch.wait(10) == 0
    finally:
        for proc in (pbx, porch):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
