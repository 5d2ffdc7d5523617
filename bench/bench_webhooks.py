"""Webhook benchmark: deliveries per second to a local receiver, and emit() cost with webhooks.

Prints one JSON object. Run with ``.venv/bin/python bench/bench_webhooks.py``.

In process: a real hook bus (SQLite log, writer thread) with the webhook forwarder attached, as
the server runs it. The receiver is a minimal keep-alive HTTP server in a separate process, so it
does not compete with the worker for the GIL. "Deliveries per second" is measured from the first
emit to the last delivery recorded as delivered in the outbox (signing, POST, attempt log).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from comfyvn.core.event_log import SQLiteEventLog  # noqa: E402
from comfyvn.core.hook_bus import HookBus  # noqa: E402
from comfyvn.webhooks.config import WebhookConfig  # noqa: E402
from comfyvn.webhooks.manager import WebhookManager  # noqa: E402
from comfyvn.webhooks.models import Subscription  # noqa: E402
from comfyvn.webhooks.signing import generate_secret  # noqa: E402
from tests.support import scene_enter_payload  # noqa: E402

RECEIVER = r"""
import asyncio, sys

async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))]


def start_receiver() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}"


def open_manager(tmp: Path, base_url: str, endpoints: int) -> tuple[HookBus, WebhookManager]:
    bus = HookBus(SQLiteEventLog(tmp / "events.sqlite3"))
    manager = WebhookManager(bus, WebhookConfig.from_env({}))
    now = time.time()
    for i in range(endpoints):
        manager.store.insert_subscription(
            Subscription(
                id=f"wh_bench{i}",
                url=f"{base_url}/hook{i}",
                events=("*",),
                secret=generate_secret(),
                enabled=True,
                description="bench",
                created_at=now,
                updated_at=now,
            )
        )
    manager.start()
    return bus, manager


def delivered(manager: WebhookManager) -> int:
    rows = manager.store._query(
        "SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'delivered'"
    )
    return int(rows[0][0])


def bench_throughput(base_url: str, endpoints: int, events: int = 1000) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        bus, manager = open_manager(Path(tmp), base_url, endpoints)
        try:
            want = events * endpoints
            began = time.perf_counter()
            for i in range(events):
                bus.emit("on_scene_enter", scene_enter_payload(f"n{i}"))
            deadline = time.monotonic() + 50
            while (done := delivered(manager)) < want and time.monotonic() < deadline:
                time.sleep(0.02)
            elapsed = time.perf_counter() - began
        finally:
            manager.stop()
            bus.close()
    return {
        "endpoints": endpoints,
        "events": events,
        "deliveries": done,
        "seconds": round(elapsed, 3),
        "deliveries_per_s": round(done / elapsed, 1),
    }


def bench_emit(base_url: str, endpoints: int, events: int = 5000) -> dict[str, Any]:
    """Per-call emit() cost while ``endpoints`` subscriptions match every event."""
    with tempfile.TemporaryDirectory() as tmp:
        bus, manager = open_manager(Path(tmp), base_url, endpoints)
        try:
            for i in range(200):  # warm up
                bus.emit("on_scene_enter", scene_enter_payload(f"w{i}"))
            bus.flush()
            costs: list[float] = []
            payloads = [scene_enter_payload(f"e{i}") for i in range(events)]
            began = time.perf_counter()
            for payload in payloads:
                t0 = time.perf_counter_ns()
                bus.emit("on_scene_enter", payload)
                costs.append((time.perf_counter_ns() - t0) / 1000)
            emitted = time.perf_counter() - began
            bus.flush(timeout=30)
            committed = time.perf_counter() - began
        finally:
            manager.stop()
            bus.close()
    return {
        "webhooks": endpoints,
        "events": events,
        "emit_us_mean": round(statistics.fmean(costs), 2),
        "emit_us_p50": round(percentile(costs, 50), 2),
        "emit_us_p99": round(percentile(costs, 99), 2),
        "emit_loop_s": round(emitted, 3),
        "all_committed_s": round(committed, 3),
    }


def main() -> None:
    receiver, base_url = start_receiver()
    try:
        result = {
            "bench": "webhooks",
            "config": {"concurrency": 16, "per_endpoint": 4},
            "throughput": [bench_throughput(base_url, 1), bench_throughput(base_url, 5)],
            "emit": [bench_emit(base_url, 0), bench_emit(base_url, 5)],
        }
    finally:
        receiver.kill()
        receiver.wait()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
