"""The command line: bad arguments get a clear message and exit 2; passwd writes the hash."""

import json
import subprocess
import sys
from pathlib import Path

PORCH = str(Path(sys.executable).with_name("porch"))


def porch(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([PORCH, *args], input=stdin, capture_output=True, text=True, timeout=60)


def test_bad_arguments_name_what_is_wrong():
    result = porch("run", "--bogus")
    assert result.returncode == 2 and "--bogus" in result.stderr
    result = porch("check-config")
    assert result.returncode == 2 and "path" in result.stderr
    result = porch("frobnicate")
    assert result.returncode == 2 and "frobnicate" in result.stderr
    result = porch("tools", "netsim", "--in", "x.wav", "--out", "y.wav", "--loss", "lots")
    assert result.returncode == 2 and "--loss" in result.stderr


def test_check_config_of_a_missing_file(tmp_path):
    result = porch("check-config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2 and "nope.toml" in result.stdout + result.stderr


def test_run_with_a_broken_config_exits_2_naming_the_key(tmp_path):
    config = tmp_path / "porch.toml"
    config.write_text('[door]\nunlock_seconds = 99\n[web]\nlisten = "127.0.0.1:1"\n')
    result = porch("run", "--sim", "--config", str(config), "--state-dir", str(tmp_path / "s"))
    assert result.returncode == 2 and "door.unlock_seconds" in result.stderr


def test_passwd_from_stdin(tmp_path):
    result = porch("passwd", "--state-dir", str(tmp_path), stdin="short\n")
    assert result.returncode == 2 and "at least" in result.stderr
    assert not (tmp_path / "admin.json").exists()
    result = porch("passwd", "--state-dir", str(tmp_path), stdin="a long enough secret\n")
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "admin.json").read_text())
    assert record["kdf"] == "scrypt" and "a long enough secret" not in json.dumps(record)
    assert (tmp_path / "admin.json").stat().st_mode & 0o777 == 0o600
