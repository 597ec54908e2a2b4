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
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
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
    oifname "%s" meta l4proto { udp, tcp } snat to 10.77.2.1%s
  }
}
"""
PORT_RANGE = ":40000-40999"  # the NAT also moves the port (most home routers keep it)


@contextmanager
def natted(ports: str) -> Iterator[tuple[str, str, str]]:
    """(lan, router, wan) namespaces wired and NATed as the module docstring says; `ports`
    is the range the NAT maps source ports to ("" keeps them)."""
    with ExitStack() as stack:
        lan = stack.enter_context(loopback_namespace("porch-lan"))
        router = stack.enter_context(loopback_namespace("porch-router"))
        wan = stack.enter_context(loopback_namespace("porch-wan"))
        veth(lan, f"{PORCH_ADDR}/24", router, f"{ROUTER_LAN}/24")
        outside, _ = veth(router, f"{ROUTER_WAN}/24", wan, f"{PBX}/24")  # router's end first
        subprocess.run(["ip", "-n", lan, "route", "add", "default", "via", ROUTER_LAN], check=True)
        subprocess.run(in_namespace(router, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]), check=True)
        subprocess.run(
            in_namespace(router, ["nft", "-f", "-"]), input=NAT_RULES % (outside, ports),
            text=True, check=True,
        )  # fmt: skip
        yield lan, router, wan


def events(state: Path) -> list[dict]:
    path = state / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def wait_udp(namespace: str, address: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        sockets = subprocess.run(
            in_namespace(namespace, ["ss", "-Hlun"]), capture_output=True, text=True
        ).stdout
        if f"{address} " in sockets:
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {address}")


def door_behind_nat(lan: str, wan: str, work: Path, sip: dict, *registrar_args: str) -> dict:
    """Run the registrar in `wan` and porch (with `sip` settings) in `lan` until the
    registrar has called porch's public Contact and hung up; what both saw."""
    config = work / "porch.toml"
    config.write_text(
        toml_document(
            {
                "sip": {
                    "registrar": f"sip:{PBX}",
                    "username": "door",
                    "password": "secret",
                    "listen": f"{PORCH_ADDR}:5080",
                    **sip,
                },
                "web": {"listen": "127.0.0.1:8080"},
            }
        )
    )
    state = work / "state"
    pbx = subprocess.Popen(
        in_namespace(
            wan, [sys.executable, str(REGISTRAR), PBX, "5060", "door", "secret", *registrar_args]
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    porch = None
    try:
        wait_udp(wan, f"{PBX}:5060")
        with open(work / "porch.log", "w") as out:
            porch = subprocess.Popen(
                in_namespace(lan, [PORCH, "run", "--sim", "--config", str(config),
                                   "--state-dir", str(state)]),
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        output, _ = pbx.communicate(timeout=40)
        log = (work / "porch.log").read_text()
        assert pbx.returncode == 0, f"{output}\n{log}"
        seen = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
        porch.send_signal(signal.SIGTERM)
        assert porch.wait(10) == 0
        return {
            "registered": [e["contact"] for e in seen if e["event"] == "registered"],
            "seen": [e["event"] for e in seen],
            "calls": [
                (e["type"], e.get("state") or e.get("reason"))
                for e in events(state)
                if e["type"] in ("call", "call_end")
            ],
            "log": (work / "porch.log").read_text(),
        }
    finally:
        for proc in (pbx, porch):
            if proc is not None:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()


ANSWERED = [("call", "connected"), ("call_end", "hung up by the peer")]


def test_registers_its_public_address_and_takes_a_call_through_nat(tmp_path):
    with natted(PORT_RANGE) as (lan, _router, wan):
        got = door_behind_nat(lan, wan, tmp_path, {})
    registered = got["registered"]
    # The first REGISTER names the LAN address; the registrar's answer (received/rport)
    # tells porch where it really is, and porch registers again with that address.
    assert registered[0] == f"sip:door@{PORCH_ADDR}:5080", registered
    assert re.fullmatch(r"sip:door@10\.77\.2\.1:4\d{4}", registered[-1]), registered
    assert got["seen"][-2:] == ["answered", "hung up"], got["seen"]
    assert got["calls"] == ANSWERED, got["calls"]


@pytest.mark.skipif(shutil.which("turnserver") is None, reason="coturn (turnserver) missing")
def test_stun_finds_the_public_address_when_the_registrar_does_not_say(tmp_path):
    """A registrar without NAT handling (no received/rport): with sip.stun_server set,
    porch asks coturn (on the WAN) where it is and registers that address."""
    with natted("") as (lan, _router, wan):
        turn = subprocess.Popen(
            in_namespace(wan, [
                "turnserver", "--stun-only", "--no-cli", "--no-tls", "--no-dtls",
                "--listening-ip", PBX, "--listening-port", "3478", "--no-stdout-log",
                "--log-file", str(tmp_path / "turn.log"), "--simple-log",
                "--pidfile", str(tmp_path / "turn.pid"), "--userdb", str(tmp_path / "turn.db"),
            ]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
            env={**os.environ, "HOME": str(tmp_path)},
        )  # fmt: skip
        try:
            wait_udp(wan, f"{PBX}:3478")
            got = door_behind_nat(
                lan, wan, tmp_path, {"stun_server": f"{PBX}:3478"}, "--no-nat-handling"
            )
        finally:
            turn.terminate()
            turn.wait(5)
    assert f"STUN: public address {ROUTER_WAN}:5080" in got["log"], got["log"]
    assert got["registered"][-1] == f"sip:door@{ROUTER_WAN}:5080", got["registered"]
    assert got["seen"][-2:] == ["answered", "hung up"], got["seen"]
    assert got["calls"] == ANSWERED, got["calls"]
