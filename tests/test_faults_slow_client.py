"""A WebSocket client that stops reading for 30 s while 10,000 events are emitted."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest
import websockets

from .support import ServerProcess, scene_enter_payload

pytestmark = pytest.mark.fault

EVENTS = 10_000
STALL_S = 30.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def scenario(server: ServerProcess) -> dict:
    url = f"{server.ws_url}/api/modder/hooks/ws?since=0&token={server.token}"
    # A small receive buffer on the stalled client, so the server really meets backpressure.
    stalled = await websockets.connect(url, max_size=None, max_queue=1)
    healthy = await websockets.connect(url, max_size=None)
    json.loads(await stalled.recv())
    json.loads(await healthy.recv())
    assert server.proc is not None
    rss_before = rss_kib(server.proc.pid)

    healthy_seqs: list[int] = []
    healthy_lag: list[float] = []

    async def read_healthy() -> None:
        while len(healthy_seqs) < EVENTS:
            msg = json.loads(await healthy.recv())
            if "seq" in msg:
                healthy_seqs.append(msg["seq"])
                healthy_lag.append(time.time() - msg["ts"])

    reader = asyncio.create_task(read_healthy())
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=30) as http:
        counter = iter(range(EVENTS))

        async def emitter() -> None:
            for i in counter:
                body = {"event": "on_scene_enter", "payload": scene_enter_payload(f"n{i}")}
                (await http.post("/api/modder/hooks/test", json=body)).raise_for_status()

        await asyncio.gather(*(emitter() for _ in range(8)))
    await asyncio.wait_for(reader, 60)
    rss_peak = rss_kib(server.proc.pid)
    await asyncio.sleep(max(0.0, STALL_S - (time.monotonic() - started)))

    got: list[int] = []
    gaps = 0
    while len(got) < EVENTS:
        msg = json.loads(await asyncio.wait_for(stalled.recv(), 30))
        if msg.get("gap"):
            gaps += 1
            got.extend(range(msg["from"], msg["to"] + 1))
        elif "seq" in msg:
            got.append(msg["seq"])
    await stalled.close()
    await healthy.close()
    return {
        "stalled": got,
        "healthy": healthy_seqs,
        "healthy_lag_p99": sorted(healthy_lag)[int(len(healthy_lag) * 0.99)],
        "rss_growth_kib": rss_peak - rss_before,
        "gaps": gaps,
    }


def test_stalled_websocket_client_is_bounded_and_loses_nothing(data_dir: Path) -> None:
    # A client that pauses for 30 s and then reads again is slow, not stuck: the send timeout
    # and the protocol pings (which would close it, see test_ws_stuck_reader.py) are set wider.
    env = {"COMFYVN_SEND_TIMEOUT_S": "300", "COMFYVN_WS_PING": "300"}
    server = ServerProcess(data_dir, env=env).start()
    try:
        result = asyncio.run(scenario(server))
    finally:
        server.stop()
    expected = list(range(1, EVENTS + 1))
    assert result["healthy"] == expected  # the healthy client got everything, live
    assert result["stalled"] == expected  # the stalled one too, afterwards (no gap needed)
    assert result["gaps"] == 0
    # Other clients are not slowed: generous bound, the stall lasts 30 s.
    assert result["healthy_lag_p99"] < 3.0
    # Memory stays bounded: no per-client queue of 10,000 envelopes (they are ~300 B each, the
    # ring holds a bounded number; 64 MiB is a generous ceiling).
    assert result["rss_growth_kib"] < 64 * 1024
