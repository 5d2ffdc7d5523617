"""Load generators for ``bench/bench_ratios.py``; one process each, identical for ours and the
reference (only the base URL differs; both get the same headers and bodies).

- ``rest``: N keep-alive ``POST /api/modder/hooks/test`` from C concurrent connections over a
  raw asyncio HTTP/1.1 client (far cheaper than httpx, so the client disturbs the server less on
  a small machine). Reads the server's CPU time (``/proc/PID/stat`` utime+stime) around the N
  requests and prints JSON: server CPU per request and client-side latency percentiles.
- ``ws-readers``: C WebSocket clients; prints ``READY`` once every client has its hello, then
  waits for E envelopes on each and prints JSON: server CPU over that window, end-to-end
  latency (receive time minus the ``payload.timestamp`` the producer set with ``time.time()``),
  and whether every client got every envelope in order.
- ``produce``: E ``POST /api/modder/hooks/test`` ``{event, payload}`` from K connections, paced
  at a fixed rate (open loop: event i is due at i / rate), each payload stamped with
  ``time.time()`` just before its request is written. Prints ``READY``, starts on a line on
  stdin. Paced, because a closed loop drives a server that answers sooner (the reference does
  not wait for a commit) several times harder, and latencies under different loads do not
  compare.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import time
from typing import Any

EMIT_PATH = "/api/modder/hooks/test"
WS_PATH = "/api/modder/hooks/ws"


def server_cpu_s(pid: int) -> float:
    """utime + stime of every thread of ``pid``, in seconds (10 ms resolution on Linux)."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        fields = fh.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))]


def payload(node: str, ts: float) -> dict[str, Any]:
    """An ``on_scene_enter`` payload, as tests/support.py's ``scene_enter_payload`` builds it."""
    return {
        "scene_id": "demo",
        "node": node,
        "pov": "narrator",
        "variables": {"trust": 1},
        "history": [{"node": node, "choice": None}],
        "finished": False,
        "timestamp": ts,
    }


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Http:
    """One keep-alive HTTP/1.1 connection that POSTs JSON and reads a Content-Length reply."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port = host, port
        self.prefix = (
            f"POST {EMIT_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        ).encode()

    async def open(self) -> Http:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def post(self, body: bytes) -> int:
        self.writer.write(self.prefix + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = None
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length is None:
            raise RuntimeError(f"reply without content-length: {head[:200]!r}")
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


def split_url(url: str) -> tuple[str, int]:
    host, port = url.split("://", 1)[1].rstrip("/").rsplit(":", 1)
    return host, int(port)


# -- REST --------------------------------------------------------------------------------------
async def rest(args: argparse.Namespace) -> dict[str, Any]:
    host, port = split_url(args.url)
    conns = [await Http(host, port, args.token).open() for _ in range(args.clients)]
    body = json.dumps(
        {"event": "on_scene_enter", "payload": payload("bench", time.time())},
        separators=(",", ":"),
    ).encode()
    latencies: list[float] = []
    errors = 0

    async def run(conn: Http, total: int, record: bool) -> None:
        nonlocal errors
        clock = time.perf_counter
        while counter[0] < total:
            counter[0] += 1
            t0 = clock()
            status = await conn.post(body)
            if record:
                latencies.append(clock() - t0)
            if status != 200:
                errors += 1

    counter = [0]
    await asyncio.gather(*(run(c, args.warmup, False) for c in conns))
    counter = [0]
    cpu0 = server_cpu_s(args.pid)
    began = time.perf_counter()
    await asyncio.gather(*(run(c, args.requests, True) for c in conns))
    elapsed = time.perf_counter() - began
    cpu = server_cpu_s(args.pid) - cpu0
    for conn in conns:
        conn.close()
    return {
        "requests": len(latencies),
        "clients": args.clients,
        "errors": errors,
        "server_cpu_s": round(cpu, 3),
        "server_cpu_us_per_request": round(cpu / len(latencies) * 1e6, 1),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 99) * 1000, 3),
    }


# -- WebSocket fan-out -------------------------------------------------------------------------
async def ws_readers(args: argparse.Namespace) -> dict[str, Any]:
    import websockets

    base = "ws" + args.url[len("http") :].rstrip("/")
    query = f"?since={args.since}&token={args.token}" if args.since >= 0 else f"?token={args.token}"
    url = base + WS_PATH + query
    compression = "deflate" if args.compression else None
    conns = [
        await websockets.connect(url, max_size=None, compression=compression)
        for _ in range(args.clients)
    ]
    for ws in conns:
        json.loads(await ws.recv())  # the hello: subscribed from here on
    latencies: list[float] = []
    seqs: list[list[int]] = [[] for _ in conns]

    async def read(i: int, ws: Any) -> None:
        mine = seqs[i]
        loads, now = json.loads, time.time
        while len(mine) < args.events:
            msg = loads(await ws.recv())
            if "seq" not in msg:
                continue  # a heartbeat
            at = now()
            mine.append(msg["seq"])
            latencies.append(at - msg["data"]["timestamp"])

    cpu0 = server_cpu_s(args.pid)
    print("READY", flush=True)
    timed_out = False
    try:
        await asyncio.wait_for(
            asyncio.gather(*(read(i, ws) for i, ws in enumerate(conns))), args.timeout
        )
    except TimeoutError:
        timed_out = True
    cpu = server_cpu_s(args.pid) - cpu0
    for ws in conns:
        await ws.close()
    frames = sum(len(s) for s in seqs)
    in_order = all(
        len(s) == args.events and all(b == a + 1 for a, b in itertools.pairwise(s)) for s in seqs
    )
    return {
        "clients": args.clients,
        "events": args.events,
        "frames": frames,
        "timed_out": timed_out,
        "every_client_got_every_event_in_order": in_order and not timed_out,
        "permessage_deflate": args.compression,
        "server_cpu_s": round(cpu, 3),
        "server_cpu_us_per_frame": round(cpu / max(frames, 1) * 1e6, 2),
        "latency_p50_ms": round(percentile(latencies, 50) * 1000, 2) if latencies else None,
        "latency_p99_ms": round(percentile(latencies, 99) * 1000, 2) if latencies else None,
    }


async def produce(args: argparse.Namespace) -> dict[str, Any]:
    host, port = split_url(args.url)
    conns = [await Http(host, port, args.token).open() for _ in range(args.concurrency)]
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    counter = [0]
    errors = 0
    clock = time.perf_counter
    interval = 1.0 / args.rate if args.rate > 0 else 0.0
    began = clock()

    async def run(conn: Http) -> None:
        nonlocal errors
        while counter[0] < args.events:
            i = counter[0]
            counter[0] += 1
            wait = began + i * interval - clock()  # open loop: event i is due at i / rate
            if wait > 0:
                await asyncio.sleep(wait)
            body = {"event": "on_scene_enter", "payload": payload(f"n{i}", time.time())}
            if await conn.post(json.dumps(body, separators=(",", ":")).encode()) != 200:
                errors += 1

    await asyncio.gather(*(run(c) for c in conns))
    elapsed = clock() - began
    for conn in conns:
        conn.close()
    return {"events": args.events, "errors": errors, "emit_per_s": round(args.events / elapsed, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="role", required=True)
    p = sub.add_parser("rest")
    p.add_argument("--url", required=True)
    p.add_argument("--token", default="")
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--warmup", type=int, default=320)
    p.add_argument("--clients", type=int, default=16)
    p = sub.add_parser("ws-readers")
    p.add_argument("--url", required=True)
    p.add_argument("--token", default="")
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--since", type=int, default=-1)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--events", type=int, default=5000)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--compression", action="store_true", help="offer permessage-deflate")
    p = sub.add_parser("produce")
    p.add_argument("--url", required=True)
    p.add_argument("--token", default="")
    p.add_argument("--events", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rate", type=float, default=500.0, help="events/s; 0: as fast as answered")
    args = parser.parse_args()
    role = {"rest": rest, "ws-readers": ws_readers, "produce": produce}[args.role]
    loop = new_loop()
    try:
        result = loop.run_until_complete(role(args))
    finally:
        loop.close()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
