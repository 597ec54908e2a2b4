"""Run every benchmark module, print a table, write bench-results.json."""

from __future__ import annotations

import importlib
import json
import platform
import sys
import time
import traceback
from pathlib import Path

from porch.bench import MODULES, BenchResult


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.4f}"


def format_table(results: list[BenchResult]) -> str:
    """A plain fixed-width table: one line per figure."""
    header = ("group", "benchmark", "value", "unit", "baseline", "baseline is", "target", "note")
    rows = [header] + [
        (
            r.group,
            r.name,
            _fmt(r.value),
            r.unit,
            _fmt(r.baseline),
            r.baseline_name,
            r.target,
            r.note,
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def run_all(
    modules: list[str] | None = None, quick: bool = False
) -> tuple[list[BenchResult], list[str]]:
    """Run the benchmark modules; a module that fails is reported, not fatal."""
    results: list[BenchResult] = []
    errors: list[str] = []
    for name in modules or MODULES:
        try:
            module = importlib.import_module(name)
            results.extend(module.run(quick=quick))
        except Exception:  # a broken benchmark must not hide the others
            errors.append(f"{name}: {traceback.format_exc(limit=3)}")
    return results, errors


def main(
    json_only: bool = False,
    out: Path = Path("bench-results.json"),
    modules: list[str] | None = None,
    quick: bool = False,
) -> int:
    started = time.time()
    results, errors = run_all(modules, quick=quick)
    doc = {
        "started": started,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "results": [r.as_dict() for r in results],
        "errors": errors,
    }
    out.write_text(json.dumps(doc, indent=2) + "\n")
    if json_only:
        print(json.dumps(doc))
    else:
        print(format_table(results))
        for err in errors:
            print(f"\nbenchmark failed: {err}", file=sys.stderr)
        print(f"\nwrote {out}")
    return 1 if errors else 0
