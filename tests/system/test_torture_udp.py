"""The RFC 4475 torture messages against the running firmware, over UDP, in a network namespace.

The messages' Via headers name other hosts (example.com, 192.0.2.x), so every answer porch
sends is aimed at them; porch therefore runs in a network namespace of its own with nothing
but a loopback, where nothing can leave the machine. Inside it, tests/system/torture_agent.py
plays the other side: it sends each message from 127.0.0.1, catches porch's answers (on its
own socket and on the ports 5060/5050 the Via headers name), ACKs final answers to INVITEs
and hangs up answered calls, then reads /api/status and the event log.

Some messages share a branch and sent-by (RFC 4475 reuses z9hG4bKkdjuw): sent one after
the other they would be one server transaction, and porch would rightly answer the second
as a retransmission of the first. They go to a fresh porch each, in the same namespace.

What is checked per message is the status porch answers (or that nothing is answered where
RFC 3261 says an answer is impossible: a response, or a malformed response); then that the
door survived all of it: still running, /api/status answering and idle, no error in the
event log, no traceback or ERROR line in its log, exit code 0 on SIGTERM.
"""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from netns import in_namespace, links, loopback_namespace
from porch_harness import PASSWORD, PORCH, toml_document

pytestmark = pytest.mark.netns

HERE = Path(__file__).resolve().parent
AGENT = HERE / "torture_agent.py"
SIP_PORT = 5080  # not 5060/5050: those are where porch answers Via headers without rport
WEB_PORT = 8080


def _load_messages() -> dict[str, bytes]:
    path = HERE.parent / "unit" / "sip" / "sip_rfc4475_messages.py"
    spec = importlib.util.spec_from_file_location("sip_rfc4475_messages", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.MESSAGES)


MESSAGES = _load_messages()

# REGISTER and MESSAGE are methods porch knows of but does not implement: RFC 3261 8.2.1
# asks for 405 (with Allow), porch answers 501; either is accepted here.
NOT_IMPLEMENTED = {405, 501}
DROPPED = None  # nothing may be answered: the message is a response, or not one we can answer

# The final status porch answers, by message (RFC 4475 section in the comment).
EXPECTED: dict[str, set[int] | None] = {
    # 3.1.1 valid messages
    "wsinv": {481},  # 3.1.1.1: an INVITE with a To tag, for a dialog porch does not have
    "intmeth": {501},  # 3.1.1.2: an unknown method
    "esc01": {200},  # 3.1.1.3: a call, answered (call.auto_answer = all) and hung up
    "escnull": NOT_IMPLEMENTED,  # 3.1.1.4: REGISTER
    "esc02": {501},  # 3.1.1.5: RE%47IST%45R is not REGISTER but an unknown method
    "lwsdisp": {200},  # 3.1.1.6: OPTIONS
    "longreq": {200},  # 3.1.1.7: a call with very long values
    "dblreq": NOT_IMPLEMENTED,  # 3.1.1.8: REGISTER; the INVITE after it is ignored
    "semiuri": {200},  # 3.1.1.9: OPTIONS
    "transports": {200},  # 3.1.1.10: OPTIONS
    "mpart01": NOT_IMPLEMENTED,  # 3.1.1.11: MESSAGE
    "unreason": DROPPED,  # 3.1.1.12: a response to nothing of ours
    "noreason": DROPPED,  # 3.1.1.13: likewise
    # 3.1.2 invalid messages
    "badinv01": {400},  # 3.1.2.1
    "clerr": {400},  # 3.1.2.2: Content-Length larger than the datagram
    "ncl": {400},  # 3.1.2.3
    "scalar02": {400},  # 3.1.2.4
    "scalarlg": DROPPED,  # 3.1.2.5: a response, discarded
    "quotbal": {400},  # 3.1.2.6
    "ltgtruri": {400},  # 3.1.2.7
    "lwsruri": {400},  # 3.1.2.8
    "lwsstart": {200},  # 3.1.2.9: may be accepted (porch does: a call) or refused with 400
    "trws": {200},  # 3.1.2.10: likewise (OPTIONS)
    "escruri": {400},  # 3.1.2.11
    "baddate": {200},  # 3.1.2.12: a Date porch never reads: the call is taken
    "regbadct": {400},  # 3.1.2.13
    "badaspec": {400},  # 3.1.2.14
    "baddn": {400},  # 3.1.2.15
    "badvers": {505},  # 3.1.2.16
    "mismatch01": {400},  # 3.1.2.17
    "mismatch02": {501, 400},  # 3.1.2.18: 501 preferred, 400 acceptable
    "bigcode": DROPPED,  # 3.1.2.19: a response, discarded
    # 3.2 transaction layer
    "badbranch": {200},  # 3.2.1: OPTIONS with a bare magic cookie as branch
    # 3.3 application layer
    "insuf": {400},  # 3.3.1
    "unkscm": {416},  # 3.3.2
    "novelsc": {416},  # 3.3.3
    "unksm2": NOT_IMPLEMENTED,  # 3.3.4: REGISTER
    "bext01": {420},  # 3.3.5
    "invut": {415},  # 3.3.6
    "regaut01": NOT_IMPLEMENTED,  # 3.3.7: REGISTER
    "multi01": {400},  # 3.3.8
    "mcl01": {400},  # 3.3.9
    "bcast": DROPPED,  # 3.3.10: a response, discarded
    "zeromf": {200},  # 3.3.11: a UAS answers normally
    "cparam01": NOT_IMPLEMENTED,  # 3.3.12: REGISTER
    "cparam02": NOT_IMPLEMENTED,  # 3.3.13: REGISTER
    "regescrt": NOT_IMPLEMENTED,  # 3.3.14: REGISTER
    "sdp01": {406, 400},  # 3.3.15: no SDP may be sent back (Accept lacks application/sdp)
    # 3.4 backward compatibility
    "inv2543": {400},  # 3.4.1: porch wants a Contact in a dialog-creating INVITE
}


def batches(messages: dict[str, bytes]) -> list[dict[str, bytes]]:
    """Split the messages so that no two requests of one run share method, branch and
    sent-by (they would be one server transaction, RFC 3261 17.2.3)."""
    runs: list[tuple[set, dict[str, bytes]]] = []
    for name, data in messages.items():
        head = data.split(b"\r\n\r\n", 1)[0]
        via = re.search(rb"(?im)^(?:via|v)[ \t]*:[ \t]*(.*)$", head)
        branch = re.search(rb"branch[ \t]*=[ \t]*([^;, \r\n]+)", via.group(1)) if via else None
        host = re.search(rb"/[A-Za-z]+[ \t]+([^;, \r\n]+)", via.group(1)) if via else None
        key = (
            head.split(b" ", 1)[0],
            branch.group(1) if branch else None,
            host.group(1).lower() if host else None,
        )
        for keys, batch in runs:
            if key not in keys:
                keys.add(key)
                batch[name] = data
                break
        else:
            runs.append(({key}, {name: data}))
    return [batch for _, batch in runs]


@pytest.fixture(scope="module")
def namespace():
    with loopback_namespace("porch-torture") as name:
        yield name


def run_batch(namespace: str, messages: dict[str, bytes], work: Path) -> dict:
    """One fresh porch in the namespace, the agent against it, then SIGTERM."""
    work.mkdir(parents=True)
    config = work / "porch.toml"
    config.write_text(
        toml_document(
            {
                "web": {"listen": f"127.0.0.1:{WEB_PORT}"},
                "sip": {"listen": f"127.0.0.1:{SIP_PORT}"},
                "call": {"auto_answer": "all"},
            }
        )
    )
    log_path = work / "porch.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            in_namespace(namespace, [PORCH, "run", "--sim", "--config", str(config),
                                     "--state-dir", str(work / "state")]),
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        job = {
            "sip_port": SIP_PORT,
            "web_port": WEB_PORT,
            "password": PASSWORD,
            "messages": {name: data.hex() for name, data in messages.items()},
        }
        agent = subprocess.run(
            in_namespace(namespace, [sys.executable, str(AGENT)]),
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=60,
        )
        alive = proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert agent.returncode == 0, agent.stderr + log_path.read_text()
    return {
        "report": json.loads(agent.stdout),
        "alive": alive,
        "exit": code,
        "log": log_path.read_text(),
    }


@pytest.fixture(scope="module")
def runs(namespace, tmp_path_factory) -> list[dict]:
    work = tmp_path_factory.mktemp("torture")
    return [
        run_batch(namespace, batch, work / f"run{i}") for i, batch in enumerate(batches(MESSAGES))
    ]


@pytest.fixture(scope="module")
def answers(runs) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for run in runs:
        out.update(run["report"]["answers"])
    return out


def test_every_message_was_sent_once() -> None:
    sent = [name for batch in batches(MESSAGES) for name in batch]
    assert sorted(sent) == sorted(MESSAGES) and len(sent) == len(set(sent))
    assert set(EXPECTED) == set(MESSAGES)


def test_the_namespace_has_nothing_but_a_loopback(namespace) -> None:
    assert links(namespace) == ["lo"]


@pytest.mark.parametrize("name", list(MESSAGES))
def test_answer(answers, name: str) -> None:
    got = answers[name]
    expected = EXPECTED[name]
    if expected is DROPPED:
        assert got == [], f"{name}: nothing may be answered, got {got}"
        return
    finals = {a["status"] for a in got if a["status"] is not None and a["status"] >= 200}
    assert len(finals) == 1, f"{name}: want one final answer in {sorted(expected)}, got {got}"
    (status,) = finals
    assert status in expected, f"{name}: {status}, want {sorted(expected)}:\n{got[-1]['text']}"
    text = got[-1]["text"]
    assert "Call-ID: " in text or name == "insuf", text  # insuf has no Call-ID to echo
    if status == 420:
        assert "Unsupported: nothingSupportsThis, nothingSupportsThisEither" in text
    if status == 415:
        assert "Accept: application/sdp" in text
    if status in (405, 501):
        assert "Allow: " in text


def test_answered_calls_end_cleanly(runs) -> None:
    """Every INVITE porch took was ACKed and hung up by the agent, and porch went idle."""
    calls = {}
    for run in runs:
        calls.update(run["report"]["calls"])
    taken = {name for name, call in calls.items() if "bye" in call}
    invites = {n for n, want in EXPECTED.items() if want == {200} and n in calls}
    assert taken == invites, (invites - taken, taken - invites)
    for name, call in calls.items():
        assert call.get("bye", 200) == 200, (name, call)
        assert call["idle"] == "idle", (name, call)


def test_the_door_survives_every_message(runs) -> None:
    for run in runs:
        report = run["report"]
        assert report["ready"], run["log"]
        assert report["probes_lost"] == [], report["probes_lost"]
        assert run["alive"], run["log"]
        status = report["status"]
        assert status["code"] == 200 and status["body"]["call"] == "idle", status
        events = report["events"]
        assert events["code"] == 200, events
        kinds = [e["type"] for e in events["body"]["events"]]
        assert "error" not in kinds, events["body"]["events"]
        assert "Traceback" not in run["log"] and " ERROR " not in run["log"], run["log"]
        assert run["exit"] == 0, run["log"]
