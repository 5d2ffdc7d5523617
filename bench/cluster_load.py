"""Load generators for ``bench/bench_cluster.py``; one process each, the same for every server
configuration (embedded bus, JetStream with 1 worker, JetStream with 2 workers).

- ``readers``: C WebSocket subscribers to ``/api/modder/hooks/ws`` on a raw asyncio protocol
  (no WebSocket library: the handshake, unmasked server frames, a masked first message and
  pongs, nothing else), so that a client costs a few microseconds per frame and the clients
  are not what limits the server on a 2-CPU machine. Each subscriber sends
  ``{"topics": ["on_scene_enter"]}`` (live from its hello). With ``--workers N`` the
  subscribers are spread evenly over the server processes: the hello names its node
  (``host:pid``), and a connection that lands on a node which already has its share is closed
  and made again. Prints ``READY {per-node counts}`` once every subscriber has its hello, then
  waits for E envelopes on each and prints JSON: frames, first/last receive time, end-to-end
  latencies (receive time minus the ``payload.timestamp`` the producer set with
  ``time.time()``), whether every subscriber got every envelope once and in order, and its own
  CPU time over the window.
- ``produce``: E ``POST /api/modder/hooks/test`` ``{event, payload}`` on K keep-alive
  connections (spread evenly over the workers, as the subscribers: ``GET /health`` names the
  node), paced (event i is due at i / rate) or, with ``--rate 0``, as fast as the server
  answers (each answer comes once the event is committed: stored in SQLite, or acknowledged by
  JetStream). Prints ``READY``, starts on a line on stdin, prints JSON: its start and end time,
  errors, emit rate, POST latency (send to committed answer) and its own CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from collections import Counter
from typing import Any

from ratio_load import Http, new_loop, payload, percentile, split_url

WS_PATH = "/api/modder/hooks/ws"
TOPIC = "on_scene_enter"


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


# -- WebSocket subscribers ---------------------------------------------------------------------
def _client_frame(opcode: int, data: bytes) -> bytes:
    """A client frame (clients must mask; the mask is zero, which is a valid mask)."""
    n = len(data)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + data


class Subscriber(asyncio.Protocol):
    """One WebSocket subscriber; counts envelopes and keeps (seq order, latency) per frame."""

    def __init__(self, request: bytes, expect: int, all_done: Any) -> None:
        self.request = request
        self.expect = expect
        self.all_done = all_done  # called once this subscriber has its E envelopes
        self.buf = bytearray()
        self.pos = 0
        self.handshaken = False
        self.hello: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.count = 0
        self.last_seq = 0
        self.in_order = True
        self.gaps = 0
        self.latencies: list[float] = []
        self.first_at = 0.0
        self.last_at = 0.0
        self.transport: asyncio.Transport | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.hello.done():
            self.hello.set_exception(ConnectionError(f"closed before the hello: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.handshaken:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.hello.set_exception(ConnectionError(bytes(buf[:200]).decode("latin-1")))
                assert self.transport is not None
                self.transport.close()
                return
            self.handshaken = True
            self.pos = end + 4
            assert self.transport is not None
            self.transport.write(_client_frame(1, json.dumps({"topics": [TOPIC]}).encode()))
        now = time.time()  # one clock read per read: the frames in it arrived together
        pos, size = self.pos, len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if size - pos < head + length:
                break
            frame = bytes(buf[pos + head : pos + head + length])
            pos += head + length
            self._frame(b0 & 0x0F, frame, now)
        if pos:
            del buf[:pos]
        self.pos = 0

    def _frame(self, opcode: int, frame: bytes, now: float) -> None:
        if opcode == 1:
            if frame.startswith(b'{"seq":'):
                self._envelope(frame, now)
            elif not self.hello.done():
                self.hello.set_result(json.loads(frame))
            elif frame.startswith(b'{"gap"'):
                self.gaps += 1
            # else a heartbeat
        elif opcode == 9:  # ping -> pong
            assert self.transport is not None
            self.transport.write(_client_frame(10, frame))
        elif opcode == 8:
            assert self.transport is not None
            self.transport.close()

    def _envelope(self, frame: bytes, now: float) -> None:
        seq = int(frame[7 : frame.index(b",", 7)])
        if seq <= self.last_seq:
            self.in_order = False
        self.last_seq = seq
        at = frame.find(b'"timestamp":')
        if at > 0:
            at += 12
            end = at
            while frame[end] not in b",}":
                end += 1
            self.latencies.append(now - float(frame[at:end]))
        self.count += 1
        if self.count == 1:
            self.first_at = now
        if self.count == self.expect:
            self.last_at = now
            self.all_done()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_client_frame(8, (1000).to_bytes(2, "big")))
            self.transport.close()


async def readers(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    host, port = split_url(args.url)
    done = asyncio.Event()
    remaining = [args.clients]

    def one_done() -> None:
        remaining[0] -= 1
        if remaining[0] == 0:
            done.set()

    def request() -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        return (
            f"GET {WS_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {args.token}\r\n\r\n"
        ).encode()

    async def connect() -> tuple[Subscriber, str]:
        _, sub = await loop.create_connection(
            lambda: Subscriber(request(), args.events, one_done), host, port
        )
        hello = await asyncio.wait_for(sub.hello, 30)
        return sub, hello.get("node", "embedded")

    quota = -(-args.clients // args.workers)  # the share of each node, rounded up
    per_node: Counter[str] = Counter()
    subs: list[Subscriber] = []
    reconnects = 0
    for _ in range(args.clients):
        for attempt in range(100):
            sub, node = await connect()
            if per_node[node] < quota or attempt == 99:
                break
            sub.close()  # this node has its share: try again
            await sub.closed
            reconnects += 1
        per_node[node] += 1
        subs.append(sub)
    cpu0 = time.process_time()
    print("READY " + json.dumps({"per_node": per_node, "reconnects": reconnects}), flush=True)
    timed_out = False
    try:
        await asyncio.wait_for(done.wait(), args.timeout)
    except TimeoutError:
        timed_out = True
    cpu = time.process_time() - cpu0
    latencies = [x for s in subs for x in s.latencies]
    result = {
        "clients": args.clients,
        "events": args.events,
        "frames": sum(s.count for s in subs),
        "timed_out": timed_out,
        "every_client_got_every_event_in_order": not timed_out
        and all(s.count == args.events and s.in_order and not s.gaps for s in subs),
        "per_node": dict(per_node),
        "reconnects": reconnects,
        "first_at": min((s.first_at for s in subs if s.count), default=0.0),
        "last_at": max((s.last_at or s.first_at for s in subs), default=0.0),
        "cpu_s": round(cpu, 3),
        "latency_p50_ms": ms(percentile(latencies, 50)) if latencies else None,
        "latency_p99_ms": ms(percentile(latencies, 99)) if latencies else None,
        "latency_max_ms": ms(max(latencies)) if latencies else None,
    }
    print(json.dumps(result), flush=True)  # before closing: the server's CPU is read on this
    for sub in subs:
        sub.close()
    return result


# -- producer ----------------------------------------------------------------------------------
async def node_of(conn: Http, host: str, port: int, token: str) -> str:
    """Which server process answers on this connection (``GET /health`` names it)."""
    conn.writer.write(
        f"GET /health HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {token}\r\n\r\n".encode()
    )
    head = await conn.reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return json.loads(await conn.reader.readexactly(length)).get("node", "embedded")


async def produce(args: argparse.Namespace) -> dict[str, Any]:
    """The K connections are spread evenly over the server processes, as the subscribers."""
    host, port = split_url(args.url)
    quota = -(-args.concurrency // args.workers)
    per_node: Counter[str] = Counter()
    conns: list[Http] = []
    for _ in range(args.concurrency):
        for attempt in range(100):
            conn = await Http(host, port, args.token).open()
            node = await node_of(conn, host, port, args.token)
            if per_node[node] < quota or attempt == 99:
                break
            conn.close()
        per_node[node] += 1
        conns.append(conn)
    print("READY " + json.dumps({"per_node": per_node}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    counter = [0]
    errors = 0
    latencies: list[float] = []
    clock = time.perf_counter
    interval = 1.0 / args.rate if args.rate > 0 else 0.0
    cpu0 = time.process_time()
    started_at = time.time()
    began = clock()

    async def run(conn: Http) -> None:
        nonlocal errors
        while counter[0] < args.events:
            i = counter[0]
            counter[0] += 1
            wait = began + i * interval - clock()  # open loop: event i is due at i / rate
            if wait > 0:
                await asyncio.sleep(wait)
            body = {"event": TOPIC, "payload": payload(f"n{i}", time.time())}
            t0 = clock()
            if await conn.post(json.dumps(body, separators=(",", ":")).encode()) != 200:
                errors += 1
            latencies.append(clock() - t0)

    await asyncio.gather(*(run(c) for c in conns))
    elapsed = clock() - began
    cpu = time.process_time() - cpu0
    for conn in conns:
        conn.close()
    return {
        "events": args.events,
        "errors": errors,
        "started_at": started_at,
        "finished_at": started_at + elapsed,
        "emit_per_s": round(args.events / elapsed, 1),
        "post_p50_ms": ms(percentile(latencies, 50)),
        "post_p99_ms": ms(percentile(latencies, 99)),
        "cpu_s": round(cpu, 3),
        "per_node": dict(per_node),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="role", required=True)
    p = sub.add_parser("readers")
    p.add_argument("--url", required=True)
    p.add_argument("--token", default="")
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--events", type=int, default=1000)
    p.add_argument("--workers", type=int, default=1, help="spread the clients over N nodes")
    p.add_argument("--timeout", type=float, default=60.0)
    p = sub.add_parser("produce")
    p.add_argument("--url", required=True)
    p.add_argument("--token", default="")
    p.add_argument("--events", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rate", type=float, default=200.0, help="events/s; 0: as fast as answered")
    p.add_argument("--workers", type=int, default=1, help="spread the connections over N nodes")
    args = parser.parse_args()
    role = {"readers": readers, "produce": produce}[args.role]
    loop = new_loop()
    try:
        result = loop.run_until_complete(role(args))
    finally:
        loop.close()
    if args.role == "produce":
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
