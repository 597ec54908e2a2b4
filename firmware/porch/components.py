"""The native and third-party parts the firmware stands on, checked once at start.

A Pi whose image lost a compiled module (pyalsaaudio, webrtcvad, systemd) should
say which one at start, in the log and on the status page, not fail later in
the middle of a call.
"""

from __future__ import annotations

import importlib
from importlib import metadata

# import name -> distribution name
COMPONENTS = {
    "gpiozero": "gpiozero",
    "alsaaudio": "pyalsaaudio",
    "numpy": "numpy",
    "webrtcvad": "webrtcvad-wheels",
    "serial": "pyserial",
    "systemd.daemon": "systemd-python",
    "aiohttp": "aiohttp",
}


def check() -> tuple[dict[str, str], dict[str, str]]:
    """Import every component; returns ({distribution: version}, {distribution: error})."""
    versions: dict[str, str] = {}
    missing: dict[str, str] = {}
    for module, dist in COMPONENTS.items():
        try:
            importlib.import_module(module)
        except Exception as exc:  # ImportError, or a broken native module
            missing[dist] = f"{type(exc).__name__}: {exc}"
            continue
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "unknown"
    return versions, missing
