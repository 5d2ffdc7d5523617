"""Run every ``bench/bench_*.py`` several times; write ``bench/results.json`` and
``docs/performance.md`` with the median of each figure.

Medians, because this machine is shared and noisy: one slow run should not set the number.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"emit": [{"subscribers": 0, "p50": 1}]}`` -> ``{"emit[subscribers=0].p50": 1}``."""
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            label = _label(item) or str(index)
            out.update(flatten(item, f"{prefix}[{label}]"))
    else:
        out[prefix] = value
    return out


def _label(item: Any) -> str | None:
    """Name list entries by their first integer or string field (e.g. ``clients=50``)."""
    if not isinstance(item, dict):
        return None
    for key, value in item.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | str):
            return f"{key}={value}"
    return None


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for key in runs[0]:
        values = [run[key] for run in runs if key in run]
        if all(isinstance(v, bool) for v in values):
            merged[key] = all(values)
        elif all(isinstance(v, int | float) for v in values):
            median = statistics.median(values)
            merged[key] = round(median, 3) if isinstance(median, float) else median
        else:
            merged[key] = values[0]
    return merged


def run_bench(path: Path, runs: int) -> dict[str, Any]:
    results = []
    for _ in range(runs):
        proc = subprocess.run(
            [sys.executable, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=900
        )
        if proc.returncode != 0:
            raise SystemExit(f"{path.name} failed:\n{proc.stderr[-4000:]}")
        results.append(flatten(json.loads(proc.stdout)))
    return combine(results)


def machine() -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpus": os.cpu_count(),
    }


def render_markdown(report: dict[str, Any]) -> str:
    info = report["machine"]
    lines = [
        "# Performance",
        "",
        "Produced by `make bench` (`bench/run_all.py`); do not edit by hand. Each figure is the",
        f"median of {report['runs']} runs.",
        "",
        f"Machine: {info['cpus']} CPUs, {info['processor']}, {info['platform']}; "
        f"Python {info['python']}; {info['date']}.",
        "",
    ]
    for name, figures in report["benchmarks"].items():
        lines += [f"## {name}", "", "| figure | value |", "| --- | --- |"]
        for key, value in figures.items():
            if key == "benchmark":
                continue
            lines.append(f"| `{key}` | {json.dumps(value)} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", help="run only bench files whose name contains this")
    args = parser.parse_args()
    files = sorted(BENCH.glob("bench_*.py"))
    if args.only:
        files = [f for f in files if args.only in f.name]
    report: dict[str, Any] = {"machine": machine(), "runs": args.runs, "benchmarks": {}}
    for path in files:
        print(f"== {path.name} x{args.runs}", file=sys.stderr, flush=True)
        report["benchmarks"][path.stem] = run_bench(path, args.runs)
    (BENCH / "results.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (ROOT / "docs" / "performance.md").write_text(render_markdown(report), encoding="utf-8")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
