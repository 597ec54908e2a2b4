"""Start-to-READY time and memory of `porch run --sim`, next to a bare interpreter.

The firmware is started the way systemd starts it (NOTIFY_SOCKET set), the
clock runs from spawn to READY=1, and RSS is read from /proc after READY. The
baseline is `python -c pass` started and measured the same way in the same run.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from porch.bench import BenchResult


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_once(tmp: Path) -> tuple[float, float]:
    sock_path = tmp / "notify.sock"
    sock_path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(sock_path))
    listener.settimeout(15)
    config = tmp / "porch.toml"
    config.write_text(f'[web]\nlisten = "127.0.0.1:{_free_port()}"\n')
    porch = str(Path(sys.executable).with_name("porch"))
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [porch, "run", "--sim", "--config", str(config), "--state-dir", str(tmp / "state")],
        env={**os.environ, "NOTIFY_SOCKET": str(sock_path)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            if b"READY=1" in listener.recv(4096).split(b"\n"):
                ready = time.perf_counter() - t0
                break
        time.sleep(0.5)  # let start-up garbage settle
        rss = _rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=5)
        listener.close()
    return ready, rss


def _baseline_once() -> tuple[float, float]:
    """A bare interpreter: start-to-exit time, and its RSS while it idles."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    elapsed = time.perf_counter() - t0
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"])
    time.sleep(0.5)
    rss = _rss_mb(proc.pid)
    proc.wait()
    return elapsed, rss


def run(quick: bool = False) -> list[BenchResult]:
    rounds = 3 if quick else 7
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        porch = [_start_once(tmp) for _ in range(rounds)]
    base = [_baseline_once() for _ in range(rounds)]
    ready = statistics.median(r for r, _ in porch)
    rss = statistics.median(m for _, m in porch)
    base_time = statistics.median(t for t, _ in base)
    base_rss = statistics.median(m for _, m in base)
    return [
        BenchResult(
            "startup",
            "spawn to READY=1 (porch run --sim)",
            ready * 1000,
            "ms",
            base_time * 1000,
            "python -c pass",
            note=f"median of {rounds}",
        ),
        BenchResult(
            "startup",
            "RSS after READY",
            rss,
            "MB",
            base_rss,
            "bare python",
            note=f"median of {rounds}",
        ),
    ]
