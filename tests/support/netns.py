"""Loopback-only network namespaces for tests that must not reach any other host.

`ip netns exec NAME` also bind-mounts /etc/netns/NAME/* over /etc, which gives a process
in the namespace its own resolv.conf (a DNS server of the test's, on the namespace's
loopback).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def loopback_namespace(prefix: str, resolv_conf: str | None = None) -> Iterator[str]:
    """A new namespace with only `lo` (up); skips the test where that cannot be made."""
    if os.geteuid() != 0:
        pytest.skip("needs root: it creates a network namespace with `ip netns add`")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2 (`ip netns`), which is not installed")
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"`ip netns add` is unavailable here: {made.stderr.strip()}")
    etc = Path("/etc/netns") / name
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        if resolv_conf is not None:
            etc.mkdir(parents=True)
            (etc / "resolv.conf").write_text(resolv_conf)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)
        shutil.rmtree(etc, ignore_errors=True)


def in_namespace(name: str, argv: list[str]) -> list[str]:
    """`argv` run inside namespace `name`."""
    return ["ip", "netns", "exec", name, *argv]


def links(name: str) -> list[str]:
    """The names of the namespace's network interfaces."""
    out = subprocess.run(
        ["ip", "-n", name, "-o", "link"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    return [line.split(":")[1].strip() for line in out]


def veth(a: str, a_addr: str, b: str, b_addr: str) -> tuple[str, str]:
    """A veth pair between namespaces `a` and `b`, addressed (CIDR) and up; its two names."""
    tag = uuid.uuid4().hex[:6]
    ends = (f"va{tag}", f"vb{tag}")
    subprocess.run(["ip", "link", "add", ends[0], "type", "veth", "peer", "name", ends[1]],
                   check=True)  # fmt: skip
    for ns, end, addr in ((a, ends[0], a_addr), (b, ends[1], b_addr)):
        subprocess.run(["ip", "link", "set", end, "netns", ns], check=True)
        subprocess.run(["ip", "-n", ns, "addr", "add", addr, "dev", end], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", end, "up"], check=True)
    return ends
