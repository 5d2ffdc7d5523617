"""Scenario runner benchmark: in-process steps per second with hooks on, and REST round trips.

Prints one JSON object. Run with ``make bench`` or ``.venv/bin/python bench/bench_scenario.py``.
The in-process numbers emit into a real hook bus (its writer thread commits every event to
SQLite meanwhile); the REST numbers drive ``POST /api/scenario/run/step`` on the real server,
each answer waiting for its events' commit. Target: under 100 µs per in-process step.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from comfyvn.core.event_log import SQLiteEventLog  # noqa: E402
from comfyvn.core.hook_bus import HookBus  # noqa: E402
from comfyvn.scenario import ScenarioRunner, load_scene  # noqa: E402
from comfyvn.scenario.catalog import DEMO_DIR, read_scene_file  # noqa: E402
from tests.support import ServerProcess  # noqa: E402

IN_PROCESS_STEPS = 50_000
REST_SECONDS = 4.0


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))]


def in_process(raw: dict[str, Any], runner: ScenarioRunner, steps: int) -> dict[str, float]:
    """Auto-play the demo over and over; every start and step counts as one step."""
    scene = load_scene(raw)
    done = 0
    seed = 0
    began = time.perf_counter()
    while done < steps:
        state = runner.start(scene, seed=seed, pov="theo" if seed % 2 else "mara")
        done += 1
        while not state.finished:
            state = runner.step(state)
            done += 1
        seed += 1
    elapsed = time.perf_counter() - began
    return {"steps": done, "us_per_step": round(elapsed / done * 1e6, 2)}


def rest(raw: dict[str, Any], seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        server = ServerProcess(data, extra_args=["--log-level", "WARNING"]).start()
        try:
            with server.client() as client:
                samples: list[float] = []
                began = time.perf_counter()
                seed = 0
                while time.perf_counter() - began < seconds:
                    body: dict[str, Any] = {"scene": raw, "seed": seed}
                    while True:
                        t0 = time.perf_counter()
                        response = client.post("/api/scenario/run/step", json=body)
                        samples.append((time.perf_counter() - t0) * 1000)
                        answer = response.raise_for_status().json()
                        if answer["finished"]:
                            break
                        body = {"scene": raw, "state": answer["state"]}
                    seed += 1
                elapsed = time.perf_counter() - began
        finally:
            server.stop()
    return {
        "round_trips": len(samples),
        "round_trips_per_s": round(len(samples) / elapsed, 1),
        "p50_ms": round(statistics.median(samples), 3),
        "p95_ms": round(percentile(samples, 95), 3),
    }


def main() -> None:
    raw = read_scene_file(DEMO_DIR / "lighthouse.json")
    with tempfile.TemporaryDirectory() as tmp:
        bus = HookBus(SQLiteEventLog(Path(tmp) / "events.sqlite3"))
        try:
            in_process(raw, ScenarioRunner(bus), 2000)  # warm-up
            hooked = in_process(raw, ScenarioRunner(bus), IN_PROCESS_STEPS)
            t0 = time.perf_counter()
            bus.flush(timeout=60)
            drain_s = time.perf_counter() - t0
            committed = bus.committed_seq
        finally:
            bus.close()
    bare = in_process(raw, ScenarioRunner(None), IN_PROCESS_STEPS)
    result = {
        "bench": "scenario",
        "scene": "lighthouse (demo)",
        "in_process_hooks_on": {
            **hooked,
            "steps_per_s": round(1e6 / hooked["us_per_step"]),
            "events_committed": committed,
            "commit_backlog_drain_s": round(drain_s, 3),
        },
        "in_process_hooks_off": {**bare, "steps_per_s": round(1e6 / bare["us_per_step"])},
        "target_us_per_step": 100,
        "meets_target": hooked["us_per_step"] < 100,
        "rest_step": rest(raw, REST_SECONDS),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
