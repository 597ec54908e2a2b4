"""Process behaviour: signals, systemd notify and watchdog, `make run`."""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from porch_harness import start_porch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_zero_within_3s_with_the_relay_off(tmp_path, sig):
    porch = start_porch(tmp_path, {"door": {"unlock_seconds": 10}})
    porch.setup()
    porch.request("POST", "/api/door/unlock")
    assert porch.request("GET", "/api/sim/outputs")[1]["relay"] is True
    code, took = porch.stop(sig, timeout=3.0)
    assert code == 0
    assert took < 3.0
    pins = porch.sim_pins()
    assert pins["relay_final"] is False
    assert pins["relay_states"][-1][1] is False  # the last change drove the pin low
    assert any(state for _, state in pins["relay_states"])  # it really was on


def test_notify_socket_gets_ready_status_and_watchdog(tmp_path):
    sock_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(sock_path))
    listener.settimeout(0.2)
    t0 = time.monotonic()
    porch = start_porch(
        tmp_path,
        env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "300000"},
    )
    messages: list[str] = []
    ready_at = None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            data = listener.recv(4096).decode()
        except TimeoutError:
            continue
        messages.extend(data.split("\n"))
        if "READY=1" in messages and ready_at is None:
            ready_at = time.monotonic() - t0
        if "READY=1" in messages and messages.count("WATCHDOG=1") >= 2:
            break
    code, _ = porch.stop()
    listener.close()
    assert code == 0
    assert "READY=1" in messages
    assert messages.count("WATCHDOG=1") >= 2, messages
    assert any(m.startswith("STATUS=registration") for m in messages), messages
    assert messages.index("READY=1") < messages.index("WATCHDOG=1")


@pytest.mark.parametrize(
    "env,handler",
    [
        ({}, "StreamHandler"),
        ({"INVOCATION_ID": "abc"}, "JournalHandler"),
        ({"JOURNAL_STREAM": "8:12345"}, "JournalHandler"),
    ],
)
def test_journal_is_chosen_under_systemd(env, handler):
    code = (
        "import logging, porch.service as s; s.setup_logging();"
        "print(type(logging.getLogger().handlers[0]).__name__)"
    )
    py = str(Path(os.sys.executable))
    run = subprocess.run([py, "-c", code], capture_output=True, text=True, env=env)
    assert run.stdout.strip() == handler, run.stderr


@pytest.mark.parametrize(
    "env,interval",
    [
        ({"WATCHDOG_USEC": "10000000"}, 5.0),  # WatchdogSec=10: a ping every 5 s
        ({"WATCHDOG_USEC": "300000", "WATCHDOG_PID": "{pid}"}, 0.15),
        ({"WATCHDOG_USEC": "300000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_pings_at_half_the_interval_systemd_asks(monkeypatch, env, interval):
    from porch.service import Notifier

    for key in ("WATCHDOG_USEC", "WATCHDOG_PID", "NOTIFY_SOCKET"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(pid=os.getpid()))
    assert Notifier().watchdog_interval() == interval


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no obstacle
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_make_run_answers_status_within_10s():
    if not _port_free(8080):
        pytest.fail("port 8080 is taken: `make run` needs it (SPEC 2)")
    proc = subprocess.Popen(
        ["make", "-s", "run"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    t0 = time.monotonic()
    answered = None
    try:
        import http.client

        while time.monotonic() - t0 < 10:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", 8080, timeout=1)
                conn.request("GET", "/api/status")
                answered = conn.getresponse().status
                break
            except OSError:
                time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
    assert answered in (200, 401), out.decode(errors="replace")
    assert b"http://127.0.0.1:8080/" in out
    text = out.decode(errors="replace")
    # Ctrl-C reaches make too, which then reports the interrupt itself; porch must stop cleanly.
    assert proc.returncode in (0, -signal.SIGINT), text
    assert "stopping" in text and "Traceback" not in text, text


def test_sip_port_in_use_falls_back_to_a_free_port_and_says_so(tmp_path):
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    taken = busy.getsockname()[1]
    porch = start_porch(tmp_path, {"sip": {"listen": f"127.0.0.1:{taken}"}})
    try:
        porch.setup()
        event = porch.wait_event("sip_listen_fallback")
        assert event["port"] != taken and str(taken) in event["reason"]
        # the fallback port really answers SIP
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.settimeout(5)
        probe.bind(("127.0.0.1", 0))
        me = probe.getsockname()[1]
        options = (
            f"OPTIONS sip:door@127.0.0.1:{event['port']} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bKfallback1;rport\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=1\r\n"
            f"To: <sip:door@127.0.0.1:{event['port']}>\r\nCall-ID: fallback-1\r\n"
            "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
        probe.sendto(options.encode(), ("127.0.0.1", event["port"]))
        answer = probe.recv(65535).decode()
        probe.close()
        assert answer.startswith("SIP/2.0 200"), answer
        assert "trying a free port" in porch.log()
    finally:
        code, _ = porch.stop()
        busy.close()
    assert code == 0
