"""Wall time of ``GET /api/providers/health`` for 1, 10 and 50 providers that each take 300 ms.

Runs the real server in a subprocess and a local fake HTTP provider (threaded, loopback only).
Concurrent checks should cost about one provider's latency, not the sum.
Prints one JSON object. Usage: ``.venv/bin/python bench/bench_providers.py``
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import ServerProcess  # noqa: E402
from tests.test_providers_fakes import FakeProviders, Reply  # noqa: E402

LATENCY_S = 0.3
SIZES = (1, 10, 50)
REPEATS = 3


def main() -> None:
    fake = FakeProviders().start()
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp), env={"COMFYVN_PROVIDER_TIMEOUT": "10"}).start()
        try:
            with server.client() as client:
                ids = []
                for n in range(max(SIZES)):
                    fake.route("GET", f"/p{n}/", Reply(200, "ok", delay=LATENCY_S))
                    body = {"id": f"p{n}", "kind": "http", "base_url": f"{fake.url}/p{n}"}
                    body["thresholds"] = {"latency_amber_ms": 5000}
                    response = client.post("/api/providers", json=body)
                    response.raise_for_status()
                    ids.append(body["id"])
                results = {}
                for size in SIZES:
                    params = {"id": ",".join(ids[:size])}
                    walls, server_ms = [], []
                    for _ in range(REPEATS):
                        started = time.perf_counter()
                        response = client.get("/api/providers/health", params=params)
                        walls.append(time.perf_counter() - started)
                        body = response.json()
                        assert len(body["results"]) == size
                        assert all(r["status"] == "green" for r in body["results"]), body
                        server_ms.append(body["elapsed_ms"])
                    results[str(size)] = {
                        "wall_s_median": round(statistics.median(walls), 3),
                        "wall_s_max": round(max(walls), 3),
                        "server_elapsed_ms_median": round(statistics.median(server_ms), 1),
                        "sequential_would_be_s": round(size * LATENCY_S, 1),
                    }
        finally:
            server.stop()
            fake.stop()
    print(
        json.dumps(
            {
                "bench": "providers_health",
                "provider_latency_s": LATENCY_S,
                "repeats": REPEATS,
                "providers": results,
            }
        )
    )


if __name__ == "__main__":
    main()
