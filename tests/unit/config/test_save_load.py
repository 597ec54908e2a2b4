"""load/save: defaults, round trips, and failed saves that must leave the old file alone."""

from __future__ import annotations

import errno
import os
import resource
import signal
import stat
import subprocess
import sys
import time
import tomllib
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from porch import config, fsutil
from porch.config import ConfigError, defaults, load, save

FULL = Path(__file__).with_name("full.toml")


def full_doc() -> dict:
    return tomllib.loads(FULL.read_text(encoding="utf-8"))


def in_child(fn: Callable[[], int]) -> int:
    """Run fn in a forked child (for process-wide limits); returns its exit code."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            code = fn()
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, bytes]:
    """A folder with a valid porch.toml in place; returns its path and bytes."""
    path = tmp_path / "porch.toml"
    save(path, full_doc())
    return path, path.read_bytes()


def assert_untouched(path: Path, old: bytes) -> None:
    assert path.read_bytes() == old
    assert fsutil.temp_files(path) == []
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


# --- load -----------------------------------------------------------------------------


def test_load_none_gives_defaults() -> None:
    assert load(None, sim=True) == defaults(sim=True)
    assert load(None) == defaults()


def test_missing_file_is_an_error_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "etc" / "porch.toml"
    with pytest.raises(ConfigError) as info:
        load(missing)
    (problem,) = info.value.problems
    assert str(missing) in problem
    # in simulation a missing file means "not saved yet": defaults
    assert load(missing, sim=True) == defaults(sim=True)


def test_load_reports_problems_by_key(tmp_path: Path) -> None:
    path = tmp_path / "porch.toml"
    path.write_text('[door]\nunlock_seconds = 99\n[web]\nlisten = "x"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert [p.split(":")[0] for p in info.value.problems] == ["door.unlock_seconds", "web.listen"]


# --- save / load round trips ----------------------------------------------------------


@pytest.mark.parametrize("sim", [False, True])
def test_defaults_round_trip_through_save_and_load(tmp_path: Path, sim: bool) -> None:
    path = tmp_path / "porch.toml"
    written = save(path, defaults(sim=sim).to_document(), sim=sim)
    assert written == defaults(sim=sim)
    assert load(path, sim=sim) == defaults(sim=sim)
    # an empty document saves the same file: the writer fills in every default
    first = path.read_bytes()
    save(path, {}, sim=sim)
    assert path.read_bytes() == first


def test_full_config_round_trips_and_is_stable(tmp_path: Path) -> None:
    path = tmp_path / "porch.toml"
    cfg = save(path, full_doc())
    assert load(path) == cfg
    assert load(path).to_document() == cfg.to_document()
    assert tomllib.loads(path.read_text(encoding="utf-8")) == cfg.to_document()
    first = path.read_bytes()
    save(path, tomllib.loads(first.decode()))
    assert path.read_bytes() == first  # saving what was loaded changes nothing


def test_saved_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "porch.toml"
    save(path, {})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds the SIP password


def test_save_follows_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real" / "porch.toml"
    real.parent.mkdir()
    link = tmp_path / "porch.toml"
    link.symlink_to(real)
    save(link, {"device": {"name": "Gate"}})
    assert link.is_symlink()
    assert load(real).device.name == "Gate"


# --- failed saves ---------------------------------------------------------------------


def test_invalid_document_writes_nothing(saved: tuple[Path, bytes]) -> None:
    path, old = saved
    mtime = path.stat().st_mtime_ns
    with pytest.raises(ConfigError) as info:
        save(path, {"sip": {"registrar": "pbx"}, "door": {"unlock_seconds": 45}})
    assert "sip.registrar: not a SIP URI: 'pbx'" in info.value.problems
    assert_untouched(path, old)
    assert path.stat().st_mtime_ns == mtime


def test_save_into_missing_folder_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        save(tmp_path / "no-such-dir" / "porch.toml", {})
    assert list(tmp_path.iterdir()) == []


def test_write_error_mid_file_keeps_old_file(saved: tuple[Path, bytes]) -> None:
    """A full disk (file size limit): the temp file cannot be completed."""
    path, old = saved
    doc = full_doc()
    doc["door"]["cards"] = [f"{i:08X}" for i in range(500)]  # far beyond the limit

    def child() -> int:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (300, resource.RLIM_INFINITY))
        try:
            save(path, doc)
        except OSError as exc:
            return 0 if exc.errno == errno.EFBIG else 3
        return 4

    assert in_child(child) == 0
    assert_untouched(path, old)


def test_temp_file_cannot_be_created_keeps_old_file(saved: tuple[Path, bytes]) -> None:
    """No file descriptor left: the temp file cannot even be created."""
    path, old = saved
    doc = full_doc()
    doc["device"]["name"] = "Other"
    config.validate(doc)  # warm the board-profile cache before running out of descriptors

    def child() -> int:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        )
        hog = []
        try:
            while True:
                hog.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as exc:
            assert exc.errno == errno.EMFILE
        try:
            save(path, doc)
        except OSError as exc:
            return 0 if exc.errno == errno.EMFILE else 3
        return 4

    assert in_child(child) == 0
    assert_untouched(path, old)


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_failure_at_fsync_or_rename_keeps_old_file(
    saved: tuple[Path, bytes], step: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, old = saved

    def broken(*_args: object) -> None:
        raise OSError(errno.EIO, "simulated I/O error")

    monkeypatch.setattr(os, step, broken)
    with pytest.raises(OSError, match="simulated"):
        save(path, {"device": {"name": "New"}})
    monkeypatch.undo()
    assert_untouched(path, old)


# --- leftovers of killed writers ------------------------------------------------------


def test_writer_killed_before_rename_leaves_old_file_and_next_save_cleans_up(
    saved: tuple[Path, bytes],
) -> None:
    path, old = saved

    def child() -> int:
        os.replace = lambda *_a: os.kill(os.getpid(), signal.SIGKILL)  # die at the rename
        save(path, {"device": {"name": "Never"}})
        return 5

    assert in_child(child) == -signal.SIGKILL
    assert path.read_bytes() == old
    (leftover,) = fsutil.temp_files(path)
    assert leftover.name.startswith(".porch.toml.porch-tmp-")
    assert load(path).device.name == load(path).device.name  # still loads
    save(path, {"device": {"name": "Next"}})
    assert fsutil.temp_files(path) == []
    assert load(path).device.name == "Next"


def test_stale_temp_rules(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        prefix = fsutil.temp_prefix(path)
        of_dead = tmp_path / f"{prefix}{dead.pid}-abcd1234"
        of_alive = tmp_path / f"{prefix}{alive.pid}-abcd1234"
        old_of_alive = tmp_path / f"{prefix}{alive.pid}-00000000"
        garbage = tmp_path / f"{prefix}junk"
        other_file = tmp_path / ".other.porch-tmp-1-ab"
        for p in (of_dead, of_alive, old_of_alive, garbage, other_file):
            p.write_bytes(b"partial")
        hour_ago = time.time() - 2 * fsutil.STALE_AFTER_SECONDS
        os.utime(old_of_alive, (hour_ago, hour_ago))
        fsutil.atomic_write(path, b"line\n")
        assert fsutil.temp_files(path) == [of_alive]  # a live writer's file is left alone
        assert other_file.exists()  # temps of other files are not ours to remove
        assert path.read_bytes() == b"line\n"
    finally:
        alive.kill()
        alive.wait()


def test_atomic_write_mode_is_exact_whatever_the_umask(tmp_path: Path) -> None:
    old_umask = os.umask(0o077)
    try:
        fsutil.atomic_write(tmp_path / "a", b"x")
        fsutil.atomic_write(tmp_path / "b", b"y", mode=0o600)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o600
    fsutil.atomic_write(tmp_path / "a", b"")
    assert (tmp_path / "a").read_bytes() == b""
