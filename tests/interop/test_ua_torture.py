"""RFC 4475 torture messages sent to the running firmware over UDP.

Their Via headers name foreign hosts (example.com, 192.0.2.x), so porch's answers would go
there: the firmware runs in a network namespace of its own with nothing but a loopback,
where such answers fail to leave (no route, no DNS) instead of reaching the world. What is
checked: every message goes in, nothing escapes the SIP stack (no traceback, the process
keeps running and answers a clean OPTIONS from 127.0.0.1 afterwards), and SIGTERM still
ends it with exit code 0.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from porch_harness import PORCH, toml_document

pytestmark = [pytest.mark.interop, pytest.mark.netns]

HERE = Path(__file__).resolve().parent
SIP_PORT = 5060

# Runs inside the namespace: send every message, then one OPTIONS whose answer must come.
CLIENT = r"""
import json, socket, sys, time
messages = [bytes.fromhex(h) for h in json.loads(sys.stdin.read())]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
for data in messages:
    s.sendto(data, ("127.0.0.1", PORT))
    time.sleep(0.01)
port = s.getsockname()[1]
call_id = f"after-torture-{time.monotonic_ns()}"
options = (
    "OPTIONS sip:door@127.0.0.1 SIP/2.0\r\n"
    f"Via: SIP/2.0/UDP 127.0.0.1:{port};rport;branch=z9hG4bKafter\r\n"
    "From: <sip:check@127.0.0.1>;tag=1\r\nTo: <sip:door@127.0.0.1>\r\n"
    f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
).encode()
s.settimeout(1.0)
for _ in range(5):
    s.sendto(options, ("127.0.0.1", PORT))
    try:
        while True:
            data = s.recv(65535)
            if call_id.encode() in data:
                print(data.split(b"\r\n", 1)[0].decode())
                sys.exit(0)
    except TimeoutError:
        continue
print("no answer")
"""


def torture_messages() -> dict[str, bytes]:
    path = HERE.parent / "unit" / "sip" / "sip_rfc4475_messages.py"
    spec = importlib.util.spec_from_file_location("sip_rfc4475_messages", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.MESSAGES)


@pytest.fixture
def namespace():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (ip netns)")
    name = f"porch-t-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def test_torture_messages_leave_the_door_working(namespace, tmp_path):
    config = tmp_path / "porch.toml"
    config.write_text(
        toml_document(
            {"web": {"listen": "127.0.0.1:8080"}, "sip": {"listen": f"127.0.0.1:{SIP_PORT}"}}
        )
    )
    log_path = tmp_path / "porch.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", namespace, PORCH, "run", "--sim", "--config", str(config),
             "--state-dir", str(tmp_path / "state")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        client = CLIENT.replace("PORT", str(SIP_PORT))
        payload = json.dumps([m.hex() for m in torture_messages().values()])
        ready = subprocess.run(
            ["ip", "netns", "exec", namespace, sys.executable, "-c", client],
            input="[]",
            capture_output=True,
            text=True,
            timeout=30,
        )  # the empty run waits until porch answers at all
        assert ready.stdout.startswith("SIP/2.0 200"), (ready.stdout, log_path.read_text())
        result = subprocess.run(
            ["ip", "netns", "exec", namespace, sys.executable, "-c", client],
            input=payload,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.stdout.startswith("SIP/2.0 200"), (result, log_path.read_text())
        assert proc.poll() is None, log_path.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(10)
    text = log_path.read_text()
    assert "Traceback" not in text and " ERROR " not in text, text
    assert code == 0
