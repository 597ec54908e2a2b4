"""The access and call log: append-only JSON lines in the state folder, rotated.

Every unlock (with its cause), call, alarm and error is one line with a
sequence number that keeps growing across rotations and restarts, so an API
client can ask for "everything since N" and never miss or repeat an entry.
Access events are fsynced: a door log that loses the last unlock on a power
cut is worse than a few extra writes to the SD card.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOG_NAME = "events.jsonl"
MAX_BYTES = 256 * 1024
KEEP_FILES = 4  # events.jsonl plus events.jsonl.1 .. .3
RECENT = 500


class EventLog:
    """Append-only, rotated JSON-lines log with monotonically increasing `seq`."""

    def __init__(
        self,
        folder: Path,
        *,
        max_bytes: int = MAX_BYTES,
        keep_files: int = KEEP_FILES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.folder = folder
        self.path = folder / LOG_NAME
        self.max_bytes = max_bytes
        self.keep_files = keep_files
        self._clock = clock
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        folder.mkdir(parents=True, exist_ok=True)
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        for entry in self._read_all():
            self._recent.append(entry)
        self._seq = self._recent[-1]["seq"] if self._recent else 0

    @property
    def last_seq(self) -> int:
        return self._seq

    def subscribe(self, listener: Callable[[dict[str, Any]], None]) -> None:
        self._listeners.append(listener)

    def append(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Write one event; returns it with its `seq` and time."""
        now = self._clock()
        self._seq += 1
        entry: dict[str, Any] = {
            "seq": self._seq,
            "time": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
            "type": kind,
            **fields,
        }
        line = json.dumps(entry, separators=(",", ":"), default=str) + "\n"
        try:
            self._rotate_if_needed(len(line))
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:  # a full or read-only disk must not stop the door
            log.error("event log: cannot write %s: %s", self.path, exc)
        self._recent.append(entry)
        for listener in self._listeners:
            listener(entry)
        return entry

    def since(self, seq: int, limit: int = 200) -> list[dict[str, Any]]:
        """Events with a sequence number above `seq`, oldest first, at most `limit`."""
        if self._recent and self._recent[0]["seq"] <= seq + 1:
            source: Iterator[dict[str, Any]] | deque[dict[str, Any]] = self._recent
        else:
            source = self._read_all()
        out = [entry for entry in source if entry["seq"] > seq]
        return out[:limit]

    def _files_oldest_first(self) -> list[Path]:
        names = [self.folder / f"{LOG_NAME}.{i}" for i in range(self.keep_files - 1, 0, -1)]
        return [p for p in [*names, self.path] if p.exists()]

    def _read_all(self) -> Iterator[dict[str, Any]]:
        for path in self._files_oldest_first():
            try:
                text = path.read_text(errors="replace")
            except OSError as exc:
                log.warning("event log: cannot read %s: %s", path, exc)
                continue
            for line in text.splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a torn last line after a power cut
                if isinstance(entry, dict) and isinstance(entry.get("seq"), int):
                    yield entry

    def _rotate_if_needed(self, incoming: int) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size + incoming <= self.max_bytes:
            return
        for i in range(self.keep_files - 1, 0, -1):
            older = self.folder / f"{LOG_NAME}.{i}"
            newer = self.path if i == 1 else self.folder / f"{LOG_NAME}.{i - 1}"
            if newer.exists():
                os.replace(newer, older)
