"""A writer killed with SIGKILL at a random moment leaves the old or the new file, never a mix.

A child process saves two documents alternately as fast as it can; the test kills it after
a random delay, 200 times. After every kill the file must be byte-for-byte one of the two
saved versions and load as one of the two configs, and at most one temp file (the killed
writer's) may be left; the next save removes it.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

from porch import fsutil
from porch.config import load, save, validate

ROUNDS = 200


def documents() -> tuple[dict, dict]:
    # Big enough (tens of kB) that a kill often lands while the temp file is being written.
    a = {"device": {"name": "A"}, "door": {"cards": [f"{i:010d}" for i in range(1500)]}}
    b = {
        "device": {"name": "B"},
        "door": {"cards": [f"{i:08X}" for i in range(1200)], "dtmf_codes": ["2468"]},
        "call": {"targets": ["sip:flat@10.0.0.5"]},
    }
    return a, b


def writer(path: Path, docs: tuple[dict, dict], start: int, ready: int) -> None:
    os.write(ready, b"!")  # running: the parent's random delay starts now, even under load
    i = start
    while True:
        save(path, docs[i % 2])
        i += 1


def test_sigkill_during_saves_never_leaves_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "porch.toml"
    docs = documents()
    configs = [validate(d) for d in docs]
    versions = []
    for doc in docs:
        save(path, doc)
        versions.append(path.read_bytes())
    # Kill within about three saves' time, measured here: fsync on a busy disk can make
    # one save take far longer than on an idle machine.
    timings = []
    for doc in (*docs, *docs):
        t0 = time.perf_counter()
        save(path, doc)
        timings.append(time.perf_counter() - t0)
    kill_window = 3 * sorted(timings)[len(timings) // 2]
    rng = random.Random(20261121)
    seen_versions = set()
    kills_with_leftover = 0
    for round_no in range(ROUNDS):
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(ready_r)
                writer(path, docs, round_no, ready_w)
            finally:
                os._exit(1)
        os.close(ready_w)
        assert os.read(ready_r, 1) == b"!"
        os.close(ready_r)
        time.sleep(rng.uniform(0.0, kill_window))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == -signal.SIGKILL

        data = path.read_bytes()
        assert data in versions, f"round {round_no}: broken file ({len(data)} bytes)"
        seen_versions.add(versions.index(data))
        assert load(path) == configs[versions.index(data)]
        leftovers = fsutil.temp_files(path)
        assert len(leftovers) <= 1, leftovers
        kills_with_leftover += bool(leftovers)
        others = {p.name for p in tmp_path.iterdir()} - {path.name} - {p.name for p in leftovers}
        assert not others

    assert seen_versions == {0, 1}  # the writer did get saves through
    assert kills_with_leftover > 0  # and some kills landed in the middle of a write
    save(path, docs[0])
    assert fsutil.temp_files(path) == []
