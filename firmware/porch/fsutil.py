"""Crash-safe file replacement for the config, the password file and the event log.

A door station loses power at random moments. Files it rewrites must therefore be replaced
atomically: the new content goes to a temporary file in the same folder (same filesystem, so
the rename is atomic), is flushed and fsynced, renamed over the old name, and the folder is
fsynced so the rename itself survives a power cut. Readers see the old file or the new one,
never a mix.

A process killed between creating the temporary file and renaming it leaves that temporary
file behind. Temporary names carry a recognisable mark and the writer's PID
(``.NAME.porch-tmp-PID-RANDOM``); every later write to the same path removes leftovers whose
writer is gone (or that are older than an hour), so at most a bounded number can pile up.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import time
from pathlib import Path

TEMP_MARK = ".porch-tmp-"
# A leftover whose writer still appears alive is only removed after this long: no write of
# a small file takes an hour, so the PID has been reused.
STALE_AFTER_SECONDS = 3600.0


def temp_prefix(path: Path) -> str:
    """The name prefix of temporary files made while writing `path`."""
    return f".{path.name}{TEMP_MARK}"


def temp_files(path: Path) -> list[Path]:
    """Temporary files (current or left over) belonging to `path`, sorted by name."""
    prefix = temp_prefix(path)
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    return sorted(path.parent / n for n in names if n.startswith(prefix))


def _writer_pid(temp: Path, prefix: str) -> int | None:
    match = re.fullmatch(r"(\d+)-[0-9a-f]+", temp.name[len(prefix) :])
    return int(match.group(1)) if match else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(path: Path, *, now: float | None = None) -> list[Path]:
    """Delete leftovers of interrupted writes to `path`; returns what was removed.

    A temporary file is stale when its writer's PID no longer exists, when its name does
    not parse, or when it is older than STALE_AFTER_SECONDS. Files of live writers (another
    process writing the same path right now) are left alone.
    """
    now = time.time() if now is None else now
    prefix = temp_prefix(path)
    removed: list[Path] = []
    for temp in temp_files(path):
        pid = _writer_pid(temp, prefix)
        try:
            age = now - temp.lstat().st_mtime
        except FileNotFoundError:
            continue
        if pid is not None and pid != os.getpid() and _pid_alive(pid):
            if age < STALE_AFTER_SECONDS:
                continue
        elif pid == os.getpid() and age < STALE_AFTER_SECONDS:
            continue  # possibly another thread of ours writing right now
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
            removed.append(temp)
    return removed


def fsync_dir(folder: Path) -> None:
    """Make a rename or unlink in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some filesystems (e.g. certain FUSE or network mounts) refuse fsync on folders;
        # the rename has still happened, there is nothing better to do.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` atomically and durably, with permission bits `mode`.

    On any failure the temporary file is removed, the old file is untouched and the error
    propagates. A symlink at `path` is followed: its target is replaced in its own folder.
    """
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    folder = path.parent
    remove_stale_temps(path)
    temp = folder / f"{temp_prefix(path)}{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fchmod(fd, mode)  # exact bits, whatever the umask
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    fsync_dir(folder)
