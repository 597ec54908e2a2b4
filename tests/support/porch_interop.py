"""What the interop tests (tests/interop/test_ua_*.py) share: porch's API as they read it,
doors started for a module or a test, waiting for call and registration states, SIPp
calling the door through Kamailio, and the parts of the SIPp scenarios they write inline.

Import the fixtures where they are used, as with peers_fixtures:

    from porch_interop import fixture_idle_door, fixture_kam, fixture_run_porch  # noqa: F401

`kam` needs peers_fixtures' `module_peer_set`; `idle_door` needs a fixture `door` (the
module's door, e.g. from `serve_door`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from peers import Kamailio, PeerSet, SippProcess, SippResult, free_port, wait_until
from porch_harness import Porch, start_porch

LOOPBACK = "127.0.0.1"

# --------------------------------------------------------------------------- porch's API


def status(porch: Porch) -> dict:
    return porch.request("GET", "/api/status")[1]


def outputs(porch: Porch) -> dict:
    return porch.request("GET", "/api/sim/outputs")[1]


def events(porch: Porch, kind: str | None = None, since: int = 0) -> list[dict]:
    """The event log after `since`, only events of type `kind` when given."""
    body = porch.request("GET", f"/api/events?since={since}&limit=1000")[1]
    return [e for e in body["events"] if kind is None or e["type"] == kind]


def call_states(porch: Porch, since: int = 0) -> list[str]:
    return [e["state"] for e in events(porch, "call", since)]


def press(porch: Porch) -> None:
    """The call button, pressed and released (simulation API)."""
    assert porch.request("POST", "/api/sim/button")[0] in (200, 204)


def wait_status(porch: Porch, key: str, value: str, timeout: float = 10.0) -> dict:
    """Wait until /api/status has `key` == `value`; that status, or a failed assertion
    showing the last status and the end of porch's log."""
    found = wait_until(lambda: (s := status(porch))[key] == value and s, timeout)
    assert found, f"{key} never became {value!r}: {status(porch)}\n{porch.log()[-3000:]}"
    return found


def wait_call(porch: Porch, state: str, timeout: float = 10.0) -> dict:
    return wait_status(porch, "call", state, timeout)


def wait_registration(porch: Porch, state: str, timeout: float = 10.0) -> dict:
    return wait_status(porch, "registration", state, timeout)


# --------------------------------------------------------------------------- doors


def sip_address(porch: Porch) -> tuple[str, int]:
    """Where porch takes SIP (its sip.listen)."""
    return porch.extra["address"]


def _run(folder: Path, sections: dict) -> Porch:
    """A set-up porch (admin password set) with sip.listen on a free port unless given."""
    sections = {name: dict(values) for name, values in sections.items()}
    sip = sections.setdefault("sip", {})
    sip.setdefault("listen", f"{LOOPBACK}:{free_port()}")
    porch = start_porch(folder, sections)
    host, _, port = sip["listen"].rpartition(":")
    porch.extra["address"] = (host, int(port))
    porch.setup()
    return porch


def registered_at(kam: Kamailio, **sections: dict) -> dict:
    """Config of the door registered at `kam` over UDP as "door", auto-answering callers of
    the registrar's domain (call.auto_answer = "allowlist"); `sections` add to it."""
    config: dict[str, dict] = {
        "sip": {
            "registrar": kam.uri("udp"),
            "username": "door",
            "password": Kamailio.USERS["door"],
        },
        "call": {"auto_answer": "allowlist"},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return config


def serve_door(folder: Path, sections: dict) -> Iterator[Porch]:
    """One porch for a whole module (a door station is one long-running process), for a
    module fixture to `yield from`; registered first when it has a registrar. It must
    still run at the end and stop with exit code 0."""
    porch = _run(folder, sections)
    if sections.get("sip", {}).get("registrar"):
        wait_registration(porch, "registered")
    yield porch
    if porch.proc.poll() is None:
        assert porch.stop()[0] == 0


def keep_idle(door: Porch) -> Iterator[Porch]:
    """The shared door, idle at the start and at the end of a test (for a fixture to
    `yield from`): a call the test left up is hung up."""
    wait_call(door, "idle")
    yield door
    if status(door)["call"] != "idle":
        door.request("POST", "/api/hangup")
        wait_call(door, "idle")


@pytest.fixture(name="idle_door")
def fixture_idle_door(door: Porch) -> Iterator[Porch]:
    """The module's `door` fixture, idle at the start and at the end of the test."""
    yield from keep_idle(door)


@pytest.fixture(scope="module", name="kam")
def fixture_kam(module_peer_set: PeerSet) -> Kamailio:
    """The module's PBX: one Kamailio (UDP and TCP; no TLS, which starts slower)."""
    return module_peer_set.kamailio(tls=False)


@pytest.fixture(name="run_porch")
def fixture_run_porch(tmp_path) -> Iterator[Callable[[dict], Porch]]:
    """run_porch(sections) -> a set-up porch of this test (sip.listen on a free port unless
    the sections give one); whatever still runs at the end is killed."""
    started: list[Porch] = []

    def run(sections: dict) -> Porch:
        folder = tmp_path / f"porch{len(started)}"
        folder.mkdir()
        porch = _run(folder, sections)
        started.append(porch)
        return porch

    yield run
    for porch in started:
        if porch.proc.poll() is None:
            porch.proc.kill()
            porch.proc.wait()


# --------------------------------------------------------------------------- SIPp callers


def door_uri(kam: Kamailio) -> str:
    """The door's address at the PBX, for a phone registered there to dial."""
    return f"sip:door@{LOOPBACK}:{kam.port('udp')}"


def sipp_call(
    peer_set: PeerSet,
    to: Porch | Kamailio,
    scenario: str | Path,
    *,
    wait: bool = True,
    duration_ms: int | None = None,
    timeout: float = 10.0,
    extra: tuple[str, ...] = (),
    **variables: object,
) -> SippResult | SippProcess:
    """SIPp runs the UAC `scenario` calling "door": straight to the door's SIP address, or
    through the PBX `to` over UDP as a caller of its domain (From host 127.0.0.1, which
    call.allow lets in, unless `from_host` says otherwise). `variables` are the
    scenario's -set variables. Its result, or the running process with `wait=False`."""
    if isinstance(to, Kamailio):
        address = to.address("udp")
        variables = {"from_host": LOOPBACK, **variables}
    else:
        address = sip_address(to)
    process = peer_set.sipp.start(
        scenario,
        address,
        service="door",
        variables=variables,
        duration_ms=duration_ms,
        timeout=timeout,
        extra=extra,
    )
    return process.wait() if wait else process


# --------------------------------------------------------------------------- SIPp scenarios
# Scenarios a test writes inline are put together from these parts; every part is a
# UAC's, calling [service] at the remote address, with From `sipp` at the From host
# given by the scenario (a [$from_host] variable set by `sipp_call`, or the local
# address).

FROM_LOCAL = "<sip:sipp@[local_ip]:[local_port]>"
FROM_DOMAIN = '"sipp" <sip:sipp@[$from_host]>'

RECV_ANSWER = """
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rrs="true"/>"""


def audio_sdp(version: int, *codecs: str) -> list[str]:
    """SDP lines offering `codecs` ("0 PCMU/8000" ...) and telephone-event 101."""
    payloads = " ".join(c.split()[0] for c in codecs)
    return [
        "v=0",
        f"o=sipp 1 {version} IN IP4 [local_ip]",
        "s=-",
        "c=IN IP4 [media_ip]",
        "t=0 0",
        f"m=audio [media_port] RTP/AVP {payloads} 101",
        *(f"a=rtpmap:{c}" for c in codecs),
        "a=rtpmap:101 telephone-event/8000",
    ]


def _send(lines: list[str], sdp: list[str] | None, retrans: bool) -> str:
    """A <send> of the message `lines`, with `sdp` as its body when given."""
    if sdp is None:
        lines = [*lines, "Content-Length: 0"]
    else:
        lines = [*lines, "Content-Type: application/sdp", "Content-Length: [len]", "", *sdp]
    text = "\n".join(f"      {line}" if line else "" for line in lines)
    attrs = ' retrans="500"' if retrans else ""
    return f"""
  <send{attrs}>
    <![CDATA[
{text}
    ]]>
  </send>"""


def first_invite(from_: str, *, sdp: list[str] | None = None, headers: tuple[str, ...] = ()) -> str:
    """The dialog-creating INVITE (CSeq 1), with an offer `sdp` or none."""
    lines = [
        "INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0",
        "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]",
        f"From: {from_};tag=[pid]SIPpTag00[call_number]",
        "To: <sip:[service]@[remote_ip]:[remote_port]>",
        "Call-ID: [call_id]",
        "CSeq: 1 INVITE",
        "Contact: <sip:sipp@[local_ip]:[local_port]>",
        "Max-Forwards: 70",
        *headers,
    ]
    return _send(lines, sdp, retrans=True)


def in_dialog(method: str, cseq: int, from_: str, *, sdp: list[str] | None = None) -> str:
    """A request inside the answered dialog (ACK, re-INVITE, BYE ...), to its remote
    target; only the ACK is not retransmitted."""
    lines = [
        f"{method} [next_url] SIP/2.0",
        "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]",
        f"From: {from_};tag=[pid]SIPpTag00[call_number]",
        "[last_To:]",
        "Call-ID: [call_id]",
        f"CSeq: {cseq} {method}",
    ]
    if method == "INVITE":
        lines.append("Contact: <sip:sipp@[local_ip]:[local_port]>")
    lines.append("Max-Forwards: 70")
    return _send(lines, sdp, retrans=method != "ACK")


def cancel_first_invite(from_: str) -> str:
    """CANCEL of the first INVITE (its Via, its CSeq number, no To tag)."""
    lines = [
        "CANCEL sip:[service]@[remote_ip]:[remote_port] SIP/2.0",
        "[last_Via:]",
        f"From: {from_};tag=[pid]SIPpTag00[call_number]",
        "To: <sip:[service]@[remote_ip]:[remote_port]>",
        "Call-ID: [call_id]",
        "CSeq: 1 CANCEL",
        "Max-Forwards: 70",
    ]
    return _send(lines, None, retrans=False)


def ack_non_2xx(from_: str) -> str:
    """ACK of a non-2xx final answer to the first INVITE, sent right after receiving it:
    the answer's Via (the INVITE's branch) and To."""
    lines = [
        "ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0",
        "[last_Via:]",
        f"From: {from_};tag=[pid]SIPpTag00[call_number]",
        "[last_To:]",
        "Call-ID: [call_id]",
        "CSeq: 1 ACK",
        "Max-Forwards: 70",
    ]
    return _send(lines, None, retrans=False)


def uac_scenario(name: str, *parts: str, globals_: str = "") -> str:
    """A SIPp scenario document made of `parts` (the elements above, or any XML)."""
    declared = f'\n  <Global variables="{globals_}"/>' if globals_ else ""
    body = "".join(p if p.startswith("\n") else f"\n  {p}" for p in parts)
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="{name}">{declared}{body}
</scenario>
"""


def scenario_file(folder: Path, name: str, xml: str) -> Path:
    """`xml` written to folder/name.xml, for SIPp's -sf."""
    path = folder / f"{name}.xml"
    path.write_text(xml)
    return path


__all__ = [
    "FROM_DOMAIN",
    "FROM_LOCAL",
    "RECV_ANSWER",
    "ack_non_2xx",
    "audio_sdp",
    "call_states",
    "cancel_first_invite",
    "door_uri",
    "events",
    "first_invite",
    "fixture_idle_door",
    "fixture_kam",
    "fixture_run_porch",
    "in_dialog",
    "keep_idle",
    "outputs",
    "press",
    "registered_at",
    "scenario_file",
    "serve_door",
    "sip_address",
    "sipp_call",
    "status",
    "uac_scenario",
    "wait_call",
    "wait_registration",
    "wait_status",
]
