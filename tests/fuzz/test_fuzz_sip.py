"""The long fuzz run behind `-m fuzz` (excluded from `make test`).

With atheris installed it runs tests/fuzz/fuzz_sip.py for PORCH_FUZZ_RUNS inputs
(default 200000) and reports the count; without it, a long Hypothesis run does the same
job on random and mutated messages.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
RUNS = int(os.environ.get("PORCH_FUZZ_RUNS", "200000"))

pytestmark = pytest.mark.fuzz


@pytest.mark.timeout(3600)
@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
def test_atheris_fuzz_sip() -> None:
    proc = subprocess.run(
        [sys.executable, str(HERE / "fuzz_sip.py"), f"-runs={RUNS}", "-max_len=4096"],
        capture_output=True,
        text=True,
        timeout=3500,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    done = re.findall(r"Done (\d+) runs", output)
    assert done and int(done[-1]) >= RUNS, output[-2000:]
    print(f"atheris: {done[-1]} inputs, no escaping exception")


@pytest.mark.timeout(3600)
def test_long_hypothesis_fuzz() -> None:
    sys.path.insert(0, str(HERE.parent / "unit" / "sip"))
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from sip_exercise import exercise
    from test_sip_properties import mutated

    examples = int(os.environ.get("PORCH_FUZZ_EXAMPLES", "20000"))
    count = {"n": 0}

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(st.one_of(st.binary(max_size=2000), mutated()))
    def run(data: bytes) -> None:
        count["n"] += 1
        exercise(data)

    run()
    print(f"hypothesis: {count['n']} inputs, no escaping exception")
