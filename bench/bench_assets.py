"""Asset registry benchmark: registrations per second and list latency with 10,000 assets.

Prints one JSON object. Run with ``make bench`` or ``.venv/bin/python bench/bench_assets.py``.
In-process numbers use a real hook bus (events are committed as in the server); the HTTP
numbers start the real server on the same data dir.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from comfyvn.assets import AssetConfig, AssetRegistry  # noqa: E402
from comfyvn.core.event_log import SQLiteEventLog  # noqa: E402
from comfyvn.core.hook_bus import HookBus  # noqa: E402
from tests.support import ServerProcess  # noqa: E402

TYPES = ["character.portrait", "character.sprite", "background.scene", "ui.icon", "audio.sfx"]
TOTAL = 10_000


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))]


def timed(fn: Callable[[], Any], runs: int) -> dict[str, float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return {
        "p50_ms": round(statistics.median(samples), 3),
        "p95_ms": round(percentile(samples, 95), 3),
    }


def meta_for(i: int) -> dict[str, Any]:
    return {"title": f"asset number {i}", "tags": [f"set{i % 20}", "bench"], "index": i}


def register_files(registry: AssetRegistry, src: Path, start: int, count: int) -> float:
    """Sequential ``register_file(copy=True)`` of ``count`` small files; returns seconds."""
    paths = []
    for i in range(start, start + count):
        path = src / f"file{i}.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + f"small file {i}".encode() * 20)
        paths.append(path)
    began = time.perf_counter()
    for i, path in zip(range(start, start + count), paths, strict=True):
        registry.register_file(path, TYPES[i % len(TYPES)], meta_for(i))
    return time.perf_counter() - began


def register_threads(registry: AssetRegistry, start: int, count: int, threads: int) -> float:
    per = count // threads

    def work(t: int) -> None:
        for i in range(start + t * per, start + (t + 1) * per):
            registry.register_bytes(f"thread bytes {i}".encode() * 20, TYPES[i % 5], meta_for(i))

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    began = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - began


def main() -> None:
    result: dict[str, Any] = {"bench": "assets"}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        src = Path(tmp) / "src"
        src.mkdir()
        bus = HookBus(SQLiteEventLog(data / "events.sqlite3"))
        registry = AssetRegistry(
            AssetConfig(root=(data / "assets").resolve(), db_path=data / "assets.sqlite3"), bus
        )
        seconds = register_files(registry, src, 0, 1000)
        bus.flush()
        result["register_file_1000_small_files_per_s"] = round(1000 / seconds, 1)
        seconds = register_threads(registry, 1000, 1000, 8)
        bus.flush()
        result["register_bytes_1000_from_8_threads_per_s"] = round(1000 / seconds, 1)
        seconds = register_threads(registry, 2000, TOTAL - 2000, 1)
        bus.flush()
        result["register_bytes_8000_sequential_per_s"] = round((TOTAL - 2000) / seconds, 1)
        assert registry.count() == TOTAL
        result["assets"] = registry.count()
        result["events_committed"] = bus.committed_seq

        result["list_in_process"] = {
            "first_page_50": timed(lambda: registry.list(limit=50), 100),
            "type_filter_50": timed(lambda: registry.list(type="character", limit=50), 100),
            "tag_filter_50": timed(lambda: registry.list(tag="set7", limit=50), 100),
            "q_text_50": timed(lambda: registry.list(q="number 99", limit=50), 100),
            "deep_offset_9000": timed(lambda: registry.list(limit=50, offset=9000), 100),
            "page_1000": timed(lambda: registry.list(limit=1000), 20),
        }
        registry.close()
        bus.close()

        server = ServerProcess(data).start()
        try:
            with server.client() as client:

                def get(**params: Any) -> None:
                    response = client.get("/api/assets", params=params)
                    assert response.status_code == 200 and response.json()["total"] > 0

                get(limit=1)  # warm up
                result["list_http"] = {
                    "first_page_50": timed(lambda: get(limit=50), 100),
                    "tag_filter_50": timed(lambda: get(tag="set7", limit=50), 100),
                    "q_text_50": timed(lambda: get(q="number 99", limit=50), 100),
                    "page_1000": timed(lambda: get(limit=1000), 20),
                }
        finally:
            server.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
