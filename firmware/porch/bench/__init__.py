"""Benchmarks behind `porch bench` / `make bench`.

Each benchmark module exposes ``run(quick: bool) -> list[BenchResult]`` and is
listed in ``MODULES``. Results carry a baseline measured in the same run where
one exists, because the machines we measure on are noisy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

MODULES = [
    "porch.bench.startup",
    "porch.bench.sip",
    "porch.bench.media",
    "porch.bench.ua",
]


@dataclass
class BenchResult:
    """One measured figure, with its same-run baseline and the budget we aim at."""

    group: str
    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    target: str = ""
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)
