"""Every file in bad/ is a wrong porch.toml; its first line names the keys that must be blamed.

Each one is checked twice: through validate() and through `porch check-config FILE` in a
subprocess (exit 2, one `dotted.key: reason` line per problem on stdout). The set of keys
reported must equal the expected set, so a missing message and a spurious follow-on
message both fail.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from porch.config import ConfigError, parse_text, validate

HERE = Path(__file__).parent
BAD = sorted((HERE / "bad").glob("*.toml"))
PORCH = Path(sys.executable).with_name("porch")
LINE = re.compile(r"^([A-Za-z0-9_.\[\]<>-]+): \S.*$")


def expected_keys(path: Path) -> set[str]:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# expect: "), path
    return {k.strip() for k in first.removeprefix("# expect: ").split(",")}


def reported_keys(lines: list[str]) -> set[str]:
    keys = set()
    for line in lines:
        match = LINE.match(line)
        assert match, f"not a 'dotted.key: reason' line: {line!r}"
        keys.add(match.group(1))
    return keys


def test_there_are_enough_bad_configs() -> None:
    assert len(BAD) >= 20
    assert len({frozenset(expected_keys(p)) for p in BAD}) >= 20  # different keys, too


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_validate_blames_the_right_key(path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        validate(parse_text(path.read_text(encoding="utf-8")))
    assert reported_keys(info.value.problems) == expected_keys(path)
    assert str(info.value) == "\n".join(info.value.problems)


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_check_config_cli_blames_the_right_key(path: Path) -> None:
    proc = subprocess.run(
        [str(PORCH), "check-config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines, proc.stderr
    assert reported_keys(lines) == expected_keys(path)


def test_full_config_passes_check_config() -> None:
    proc = subprocess.run(
        [str(PORCH), "check-config", str(HERE / "full.toml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "ok"


def test_check_config_on_missing_file_is_one_clear_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    proc = subprocess.run(
        [str(PORCH), "check-config", str(missing)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    assert str(missing) in lines[0] and "No such file" in lines[0]
    assert "Traceback" not in proc.stderr


def test_check_config_on_a_folder_is_one_clear_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(PORCH), "check-config", str(tmp_path)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    assert len(proc.stdout.splitlines()) == 1
    assert str(tmp_path) in proc.stdout
    assert "Traceback" not in proc.stderr


def test_check_config_on_binary_garbage(tmp_path: Path) -> None:
    path = tmp_path / "porch.toml"
    path.write_bytes(b"\xff\xfe[sip]\x00")
    proc = subprocess.run(
        [str(PORCH), "check-config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    assert proc.stdout.startswith("<toml>: ")
    assert "Traceback" not in proc.stderr


def test_toml_syntax_error_has_line_and_column() -> None:
    with pytest.raises(ConfigError) as info:
        parse_text('[sip]\nlisten = "0.0.0.0:5060"\nregistrar = sip:pbx\n')
    (problem,) = info.value.problems
    assert problem.startswith("<toml>: line 3 column 13: "), problem
