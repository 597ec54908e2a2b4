"""systemd integration through systemd-python: notify, watchdog, journal logging."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)


def under_systemd() -> bool:
    """True when systemd started us (it sets one of these for every service)."""
    return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))


def setup_logging(level: int = logging.INFO) -> None:
    """Journal when run by systemd, stderr otherwise."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler: logging.Handler
    if under_systemd():
        from systemd.journal import JournalHandler

        handler = JournalHandler(SYSLOG_IDENTIFIER="porch")
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class Notifier:
    """READY=1, STATUS= and WATCHDOG=1 to $NOTIFY_SOCKET; a no-op without one."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._last_status = ""
        self._watchdog: asyncio.Task[None] | None = None
        if self.enabled:
            from systemd import daemon

            self._notify = daemon.notify

    def send(self, message: str) -> None:
        if self.enabled:
            try:
                self._notify(message)
            except OSError as exc:
                log.warning("sd_notify failed: %s", exc)

    def ready(self) -> None:
        self.send("READY=1")

    def status(self, text: str) -> None:
        if text != self._last_status:
            self._last_status = text
            self.send(f"STATUS={text}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def watchdog_interval(self) -> float | None:
        """Half of WATCHDOG_USEC, when systemd asked for pings (and meant this process)."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 2_000_000
        except ValueError:
            log.warning("ignoring bad WATCHDOG_USEC=%r", usec)
            return None

    def start_watchdog(self, healthy: Callable[[], bool] = lambda: True) -> None:
        interval = self.watchdog_interval()
        if not self.enabled or interval is None:
            return
        self._watchdog = asyncio.get_running_loop().create_task(self._ping(interval, healthy))

    async def _ping(self, interval: float, healthy: Callable[[], bool]) -> None:
        # A ping proves the loop still turns; a wedged loop stops pinging and
        # systemd restarts us (the relay starts off again).
        while True:
            if healthy():
                self.send("WATCHDOG=1")
            await asyncio.sleep(interval)

    def stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
