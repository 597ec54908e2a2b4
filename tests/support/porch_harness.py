"""Run the real firmware (`porch run --sim`) in a subprocess and talk to its HTTP API."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PORCH = str(Path(sys.executable).with_name("porch"))
PASSWORD = "correct horse battery"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_document(sections: dict[str, dict]) -> str:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


@dataclass
class Porch:
    """One running firmware process and a small API client for it."""

    proc: subprocess.Popen
    port: int
    state_dir: Path
    config_path: Path
    token: str | None = None
    log_path: Path | None = None
    extra: dict = field(default_factory=dict)

    def request(self, method: str, path: str, body=None, token: str | None = "auto", raw=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        headers = {}
        if token == "auto":
            token = self.token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        if data is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        text = resp.read().decode()
        conn.close()
        try:
            payload = json.loads(text) if text else None
        except ValueError:
            payload = text
        return resp.status, payload, dict(resp.getheaders())

    def setup(self) -> str:
        status, body, _ = self.request("POST", "/api/setup", {"password": PASSWORD}, token=None)
        assert status == 201, body
        self.token = body["token"]
        return self.token

    def wait_event(self, kind: str, since: int = 0, timeout: float = 5.0, **match) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, body, _ = self.request("GET", f"/api/events?since={since}")
            for event in body["events"]:
                if event["type"] == kind and all(event.get(k) == v for k, v in match.items()):
                    return event
            time.sleep(0.05)
        raise AssertionError(f"no {kind} event {match} within {timeout} s: {body}")

    def last_seq(self) -> int:
        _, body, _ = self.request("GET", "/api/events?since=0&limit=1000")
        return body["events"][-1]["seq"] if body["events"] else 0

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 3.0) -> tuple[int, float]:
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"porch did not exit within {timeout} s of signal {sig}") from None
        return code, time.monotonic() - t0

    def sim_pins(self) -> dict:
        return json.loads((self.state_dir / "sim-pins.json").read_text())

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path else ""


def start_porch(
    tmp_path: Path,
    sections: dict | None = None,
    env: dict | None = None,
    wait: float = 10.0,
    port: int | None = None,
) -> Porch:
    """porch run --sim with `sections` over a config whose page is on 127.0.0.1:`port` (a
    free one by default); returns once /api/status answers there."""
    port = port or free_port()
    doc = {"web": {"listen": f"127.0.0.1:{port}"}}
    for section, values in (sections or {}).items():
        doc.setdefault(section, {}).update(values)
    state_dir = tmp_path / "state"
    config_path = tmp_path / "porch.toml"
    config_path.write_text(toml_document(doc))
    log_path = tmp_path / "porch.log"
    with open(log_path, "w") as log_file:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [PORCH, "run", "--sim", "--config", str(config_path), "--state-dir", str(state_dir)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    porch = Porch(proc, port, state_dir, config_path, log_path=log_path)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"porch exited with {proc.returncode}:\n{porch.log()}")
        try:
            porch.request("GET", "/api/status", token=None)
            return porch
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"porch did not answer within {wait} s:\n{porch.log()}")


def high_periods(states) -> list[float]:
    """Durations of each high period in a pin history of (seconds since last change, level)."""
    periods, t, since = [], 0.0, None
    for delta, state in states:
        t += delta
        if state and since is None:
            since = t
        elif not state and since is not None:
            periods.append(t - since)
            since = None
    return periods
