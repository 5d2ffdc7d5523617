"""Hook bus benchmark: in-process emit() cost and WebSocket fan-out over loopback.

Prints one JSON object. Run with ``make bench`` or ``.venv/bin/python bench/bench_hooks.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import websockets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from comfyvn.core.event_log import SQLiteEventLog  # noqa: E402
from comfyvn.core.hook_bus import HookBus  # noqa: E402
from tests.support import ServerProcess, scene_enter_payload  # noqa: E402


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def bench_emit(subscribers: int, events: int = 20_000) -> dict:
    """Per-call emit() cost with the durable log on and N subscribers draining concurrently."""
    with tempfile.TemporaryDirectory() as tmp:
        bus = HookBus(SQLiteEventLog(Path(tmp) / "events.sqlite3"))
        loop = asyncio.new_event_loop()
        received = [0] * subscribers
        ready = threading.Event()

        async def drain(i: int) -> None:
            sub = bus.subscribe(since=0)
            if i == subscribers - 1:
                ready.set()
            while received[i] < events + 1000:
                received[i] += len(await sub.next_batch())

        def run_loop() -> None:
            asyncio.set_event_loop(loop)
            tasks = [loop.create_task(drain(i)) for i in range(subscribers)]
            if not tasks:
                ready.set()
                return
            loop.run_until_complete(asyncio.gather(*tasks))

        thread = threading.Thread(target=run_loop, daemon=True)
        thread.start()
        ready.wait(10)
        payload = scene_enter_payload("bench")
        for _ in range(1000):  # warm-up
            bus.emit("on_scene_enter", payload)
        costs = []
        clock = time.perf_counter_ns
        for _ in range(events):
            start = clock()
            bus.emit("on_scene_enter", payload)
            costs.append((clock() - start) / 1000)
        bus.flush(60)
        deadline = time.monotonic() + 30
        while any(r < events + 1000 for r in received) and time.monotonic() < deadline:
            time.sleep(0.01)
        complete = all(r >= events + 1000 for r in received)
        bus.close()
        return {
            "subscribers": subscribers,
            "events": events,
            "emit_p50_us": round(percentile(costs, 50), 2),
            "emit_p99_us": round(percentile(costs, 99), 2),
            "emit_mean_us": round(statistics.fmean(costs), 2),
            "every_subscriber_got_every_event": complete,
        }


async def _fanout(url: str, token: str, clients: int, events: int, concurrency: int) -> dict:
    ws_url = "ws" + url[len("http") :] + f"/api/modder/hooks/ws?topics=on_scene_enter&token={token}"
    latencies: list[float] = []
    seqs: list[list[int]] = [[] for _ in range(clients)]
    connections = [await websockets.connect(ws_url, max_size=None) for _ in range(clients)]
    for ws in connections:
        json.loads(await ws.recv())  # hello

    async def reader(i: int, ws) -> None:
        while len(seqs[i]) < events:
            msg = json.loads(await ws.recv())
            if "seq" in msg:
                seqs[i].append(msg["seq"])
                latencies.append((time.time() - msg["ts"]) * 1000)

    readers = [asyncio.create_task(reader(i, ws)) for i, ws in enumerate(connections)]
    headers = {"Authorization": f"Bearer {token}"}
    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(events):
            queue.put_nowait(i)

        async def emitter() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                body = {"event": "on_scene_enter", "payload": scene_enter_payload(f"n{i}")}
                response = await client.post("/api/modder/hooks/test", json=body)
                response.raise_for_status()

        await asyncio.gather(*(emitter() for _ in range(concurrency)))
    emitted_at = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*readers), 120)
    elapsed = time.perf_counter() - start
    for ws in connections:
        await ws.close()
    first = seqs[0][0] if seqs[0] else 0
    expected = list(range(first, first + events))
    return {
        "clients": clients,
        "events": events,
        "emit_rate_per_s": round(events / (emitted_at - start), 1),
        "events_per_s_delivered_to_all": round(events / elapsed, 1),
        "frames_per_s": round(events * clients / elapsed, 1),
        "latency_p50_ms": round(percentile(latencies, 50), 2),
        "latency_p99_ms": round(percentile(latencies, 99), 2),
        "every_client_got_every_seq_in_order": all(s == expected for s in seqs),
    }


def bench_fanout(clients: int, events: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp) / "data").start()
        try:
            return asyncio.run(_fanout(server.url, server.token, clients, events, concurrency=8))
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--fanout-events", type=int, default=1000)
    parser.add_argument("--clients", default="10,50")
    args = parser.parse_args()
    result = {
        "benchmark": "hooks",
        "emit": [bench_emit(n, args.events) for n in (0, 1, 10)],
        "ws_fanout": [
            bench_fanout(int(c), args.fanout_events) for c in args.clients.split(",") if c
        ],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
