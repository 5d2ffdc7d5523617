"""Ratios against the ceilings (DESIGN.md section 11): each figure measured for our code and for a
reference doing the same work with nothing of ours in the way, in the same run, interleaved
(ours, ref, ours, ref, ... ``--rounds`` each); the medians of each side give the ratio.

Prints one JSON object; every figure is ``{label, unit, ours, ref, ratio, target, met, ...}``
(``ratio`` is ours/ref; ``target`` is ``">= x"`` or ``"<= x"``); the rest is context.
``bench/run_all.py`` turns the ``ratio``/``target`` pairs into the headline table of
docs/performance.md.

1. ``durable_throughput``: 200k ``HookBus.emit()`` then flush on a real SQLite file, against
   raw ``sqlite3`` (WAL, synchronous=NORMAL) ``executemany`` of the same rows in chunks of 2000
   (same table and indexes, payloads serialized with ``json.dumps`` as the writer does). The bus
   is built as the server builds it, so retention (100k events) prunes during the run; the same
   with retention off is context (``ratio_retention_off``).
2. ``rest_cpu`` / ``rest_p99``: ``POST /api/modder/hooks/test`` from 16 concurrent keep-alive
   clients (a separate load-generator process, bench/ratio_load.py) against ``comfyvn serve``,
   and against a bare FastAPI route on the same uvicorn options (bench/ratio_refs.py). Server
   CPU per request from ``/proc/PID/stat``; p99 latency as the client sees it.
3. ``ws_cpu`` / ``ws_p99``: 50 WebSocket clients x 5,000 events, emitted by one producer process
   (``POST {event, payload}`` on 8 connections, paced at 500 events/s for both: a closed loop
   would drive the reference, which answers before any commit, about 3x harder, and latencies
   under different loads do not compare), against our ``/api/modder/hooks/ws`` and a minimal
   Starlette broadcast (a queue per client). Server CPU per delivered frame; end-to-end p99
   (receive time minus the producer's ``time.time()`` in the payload). The clients do not offer
   permessage-deflate (``--ws-compression`` to measure with it).
4. ``webhook_throughput``: deliveries/s to one local receiver (a raw asyncio server answering
   204, its own process): our WebhookManager (the subscription made with ``manager.create``, the
   events emitted in-process in a burst, as bench_webhooks.py does), against a bare
   ``httpx.AsyncClient`` loop POSTing the same signed bodies with the worker's concurrency for
   one endpoint (min(concurrency, per_endpoint) from comfyvn/webhooks/config.py).
5. ``emit_p999``: in-process ``emit()`` p99.9 over 200k calls, timed one by one with
   ``perf_counter_ns`` (the timer's own median cost subtracted from both), against
   ``deque.append`` of the same tuple under a ``threading.Lock``. The reference deque is bounded
   (as if drained, like ours); an unbounded one holding all 200k tuples is context
   (``ratio_vs_unbounded_deque``): its tail is mostly the garbage collector scanning it.

The in-process figures run each side in a fresh child process; the servers run once per
figure and are interleaved round by round. Run: ``.venv/bin/python bench/bench_ratios.py``
(``--only rest,ws`` for some figures; sizes are options, and any below the spec is listed in
``reduced_sizes``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))

EVENT = "on_scene_enter"
# The same payload tests/support.py's scene_enter_payload builds; both sides serialize it.
PAYLOAD: dict[str, Any] = {
    "scene_id": "demo",
    "node": "bench",
    "pov": "narrator",
    "variables": {"trust": 1},
    "history": [{"node": "bench", "choice": None}],
    "finished": False,
    "timestamp": 1_700_000_000.123456,
}
# The spec's sizes (the issue); smaller ones are reported in ``reduced_sizes``.
SPEC = {
    "durable_events": 200_000,
    "rest_clients": 16,
    "ws_clients": 50,
    "ws_events": 5000,
    "emit_events": 200_000,
}
TARGETS = {
    "durable_throughput": ">= 0.75",
    "rest_cpu": "<= 1.6",
    "rest_p99": "<= 1.2",
    "ws_cpu": "<= 1.3",
    "ws_p99": "<= 2.0",
    "webhook_throughput": ">= 0.9",
    "emit_p999": "<= 1.0",
}
# The reference's copy of comfyvn/core/event_log.py's events table (the run checks it matches).
REF_SCHEMA = """
CREATE TABLE events (
    seq   INTEGER PRIMARY KEY,
    id    TEXT NOT NULL UNIQUE,
    event TEXT NOT NULL,
    ts    REAL NOT NULL,
    data  TEXT NOT NULL
);
CREATE INDEX events_by_event ON events(event, seq);
CREATE INDEX events_by_ts ON events(ts);
"""


def _die_with_parent() -> None:
    """Runs in each child before exec: SIGTERM it if this process dies, even by SIGKILL (a
    timeout in run_all.py), so no server or load generator outlives the benchmark."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def popen(cmd: list[str], **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(cmd, cwd=ROOT, text=True, preexec_fn=_die_with_parent, **kwargs)


def run(cmd: list[str], timeout: float) -> str:
    """A child to completion; its stdout. A timeout kills it (and the error says so)."""
    with popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise RuntimeError(f"{cmd[2:4]} took over {timeout} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[2:4]} failed:\n{err[-3000:]}")
    return out


def log(msg: str) -> None:
    print(f"[bench_ratios] {msg}", file=sys.stderr, flush=True)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))]


def met(ratio: float | None, target: str) -> bool | None:
    if ratio is None:
        return None
    op, value = target.split()
    return ratio >= float(value) if op == ">=" else ratio <= float(value)


def _ratio(ours: float, ref: float) -> float | None:
    return round(ours / ref, 3) if ref else None


def figure(
    name: str, label: str, unit: str, ours: list[float], ref: list[float], **context: Any
) -> dict[str, Any]:
    """Medians of each side over the rounds; the ratio of the medians; the rounds' own ratios
    (ours_i / ref_i, paired by round) as the spread."""
    o, r = statistics.median(ours), statistics.median(ref)
    ratio = _ratio(o, r)
    paired = [a / b for a, b in zip(ours, ref, strict=False) if b]
    return {
        "label": label,
        "unit": unit,
        "ours": round(o, 3),
        "ref": round(r, 3),
        "ratio": ratio,
        "target": TARGETS[name],
        "met": met(ratio, TARGETS[name]),
        "round_ratios": " ".join(f"{x:.3f}" for x in paired),
        **context,
    }


# -- child processes ---------------------------------------------------------------------------
def run_child(name: str, *args: Any, timeout: float = 300) -> dict[str, Any]:
    """One side of one round in a fresh interpreter; returns the JSON it printed last."""
    cmd = [sys.executable, str(BENCH / "bench_ratios.py"), "--child", name, *map(str, args)]
    return json.loads(run(cmd, timeout).strip().splitlines()[-1])


def timer_overhead_ns(samples: int = 200_000) -> float:
    """The median cost of the timing itself, measured with the same statements as the loop."""
    clock = time.perf_counter_ns
    costs = [0] * samples
    for i in range(samples):
        t0 = clock()
        costs[i] = clock() - t0
    return float(statistics.median(costs))


def summarize_ns(costs: list[int], overhead: float) -> dict[str, Any]:
    costs.sort()
    n = len(costs)

    def pct(p: float) -> float:
        raw = costs[min(n - 1, round(p / 100 * (n - 1)))]
        return round(max(0.0, raw - overhead) / 1000, 3)

    return {
        "calls": n,
        "timer_overhead_ns": overhead,
        "p50_us": pct(50),
        "p99_us": pct(99),
        "p999_us": pct(99.9),
        "max_us": round(costs[-1] / 1000, 1),
    }


def child_emit_ours(n: int) -> dict[str, Any]:
    from comfyvn.core.event_log import SQLiteEventLog
    from comfyvn.core.hook_bus import HookBus

    with tempfile.TemporaryDirectory() as tmp:
        bus = HookBus(SQLiteEventLog(Path(tmp) / "events.sqlite3"))
        emit = bus.emit
        for _ in range(20_000):  # warm-up
            emit(EVENT, PAYLOAD)
        bus.flush(60)
        overhead = timer_overhead_ns()
        clock = time.perf_counter_ns
        costs = [0] * n
        for i in range(n):
            t0 = clock()
            emit(EVENT, PAYLOAD)
            costs[i] = clock() - t0
        bus.flush(120)
        bus.close()
    return summarize_ns(costs, overhead)


class _RefEmitter:
    """The ceiling for emit(): the same tuple appended to a deque under a lock, nothing else.

    The deque is bounded (10k, the size of our ring) as if something drained it: otherwise the
    reference would time the garbage collector scanning 200k live tuples, not the append."""

    def __init__(self, maxlen: int | None = 10_000) -> None:
        self._lock = threading.Lock()
        self._pending: deque[tuple[int, str, float, Any]] = deque(maxlen=maxlen)
        self._seq = 0

    def emit(self, event: str, payload: Any) -> int:
        with self._lock:
            self._seq += 1
            self._pending.append((self._seq, event, time.time(), payload))
            return self._seq


def child_emit_ref(n: int, bounded: str = "bounded") -> dict[str, Any]:
    ref = _RefEmitter(10_000 if bounded == "bounded" else None)
    emit = ref.emit
    for _ in range(20_000):
        emit(EVENT, PAYLOAD)
    overhead = timer_overhead_ns()
    clock = time.perf_counter_ns
    costs = [0] * n
    for i in range(n):
        t0 = clock()
        emit(EVENT, PAYLOAD)
        costs[i] = clock() - t0
    return summarize_ns(costs, overhead)


def _schema(path: Path) -> list[str]:
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT sql FROM sqlite_master WHERE tbl_name = 'events' AND sql IS NOT NULL"
        ).fetchall()
    finally:
        conn.close()
    return sorted(" ".join(r[0].replace("IF NOT EXISTS ", "").split()) for r in rows)


def child_durable_ours(n: int, retention: str = "default") -> dict[str, Any]:
    from comfyvn.core.event_log import RetentionPolicy, SQLiteEventLog
    from comfyvn.core.hook_bus import HookBus

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.sqlite3"
        if retention == "default":  # as bench_hooks.py and the server build it (100k events)
            bus = HookBus(SQLiteEventLog(path))
        else:  # COMFYVN_HISTORY_MAX_EVENTS=0 and _MAX_AGE=0: no pruning during the run
            bus = HookBus(SQLiteEventLog(path), retention=RetentionPolicy(None, None))
        emit = bus.emit
        began = time.perf_counter()
        for _ in range(n):
            emit(EVENT, PAYLOAD)
        last = bus.latest_seq
        bus.flush(300)  # returns once committed_seq >= the last seq emitted
        elapsed = time.perf_counter() - began
        assert bus.committed_seq >= last
        pruned = bus.prune_stats["removed"]
        bus.close()
        schema = _schema(path)
    return {"events": n, "seconds": elapsed, "pruned": pruned, "schema": schema}


def child_durable_ref(n: int) -> dict[str, Any]:
    import secrets
    import sqlite3

    dumps = json.dumps
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.sqlite3"
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(REF_SCHEMA)
        boot = secrets.token_hex(8)
        insert = "INSERT INTO events(seq, id, event, ts, data) VALUES (?, ?, ?, ?, ?)"
        began = time.perf_counter()
        for start in range(1, n + 1, 2000):
            rows = [
                (
                    seq,
                    f"evt_{boot}_{seq}",
                    EVENT,
                    time.time(),
                    dumps(PAYLOAD, separators=(",", ":"), default=str, allow_nan=False),
                )
                for seq in range(start, min(start + 2000, n + 1))
            ]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(insert, rows)
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - began
        conn.close()
        schema = _schema(path)
    return {"events": n, "seconds": elapsed, "schema": schema}


def _receiver(url: str, path: str) -> str:
    with urllib.request.urlopen(url + path, timeout=120) as resp:
        return resp.read().decode()


def child_webhook_ours(n: int, url: str, warmup: int) -> dict[str, Any]:
    from comfyvn.core.event_log import SQLiteEventLog
    from comfyvn.core.hook_bus import HookBus
    from comfyvn.webhooks.config import WebhookConfig
    from comfyvn.webhooks.manager import WebhookManager
    from comfyvn.webhooks.models import WebhookCreate

    with tempfile.TemporaryDirectory() as tmp:
        bus = HookBus(SQLiteEventLog(Path(tmp) / "events.sqlite3"))
        manager = WebhookManager(bus, WebhookConfig.from_env({}))
        manager.start()
        try:
            asyncio.run(manager.create(WebhookCreate(url=f"{url}/hook", events=[EVENT])))
            _receiver(url, f"/arm?n={warmup}")
            for _ in range(warmup):  # opens the worker's connections
                bus.emit(EVENT, PAYLOAD)
            _receiver(url, "/wait")
            bus.flush(60)
            _receiver(url, f"/arm?n={n}")
            began = time.time()
            for _ in range(n):
                bus.emit(EVENT, PAYLOAD)
            done_at = float(_receiver(url, "/wait"))
        finally:
            manager.stop()
            bus.close()
    return {"deliveries": n, "seconds": done_at - began}


def child_webhook_ref(n: int, url: str, warmup: int, concurrency: int) -> dict[str, Any]:
    import base64
    import hashlib
    import hmac
    import secrets

    import httpx

    key = secrets.token_bytes(32)
    boot = secrets.token_hex(8)
    data = json.dumps(PAYLOAD, separators=(",", ":"))

    def signed(seq: int) -> tuple[bytes, dict[str, str]]:
        """The body and headers our worker sends for one envelope, computed up front."""
        msg_id = f"evt_{boot}_{seq}"
        body = (
            f'{{"seq":{seq},"id":"{msg_id}","event":"{EVENT}","ts":{time.time()!r},"data":{data}}}'
        ).encode()
        stamp = int(time.time())
        digest = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
        return body, {
            "webhook-id": msg_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": "v1," + base64.b64encode(digest).decode(),
        }

    async def post_all(client: httpx.AsyncClient, items: list[Any]) -> None:
        it = iter(items)

        async def worker() -> None:
            for body, headers in it:
                resp = await client.post(f"{url}/hook", content=body, headers=headers)
                if resp.status_code != 204:
                    raise RuntimeError(f"receiver answered {resp.status_code}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    async def main() -> tuple[float, float]:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        headers = {"content-type": "application/json", "user-agent": "Reference-Webhooks/0.1.0"}
        async with httpx.AsyncClient(limits=limits, timeout=15.0, headers=headers) as client:
            _receiver(url, f"/arm?n={warmup}")
            await post_all(client, [signed(i) for i in range(1, warmup + 1)])
            _receiver(url, "/wait")
            items = [signed(i) for i in range(warmup + 1, warmup + n + 1)]
            _receiver(url, f"/arm?n={n}")
            began = time.time()
            await post_all(client, items)
            return began, float(_receiver(url, "/wait"))

    began, done_at = asyncio.run(main())
    return {"deliveries": n, "seconds": done_at - began}


CHILDREN: dict[str, Callable[..., dict[str, Any]]] = {
    "emit-ours": child_emit_ours,
    "emit-ref": child_emit_ref,
    "durable-ours": child_durable_ours,
    "durable-ref": child_durable_ref,
    "webhook-ours": child_webhook_ours,
    "webhook-ref": child_webhook_ref,
}


# -- server processes --------------------------------------------------------------------------
class Server:
    """A server process whose stdout announces its URL; stderr (the access log) to a file."""

    def __init__(self, cmd: list[str], marker: str, log_path: Path, env: dict[str, str]) -> None:
        self.log_file = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = popen(cmd, env=env, stdout=subprocess.PIPE, stderr=self.log_file)
        self.url = ""
        ready = threading.Event()

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                if marker in line and not self.url:
                    self.url = line.rsplit(" ", 1)[1].strip()
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(60) or not self.url:
            self.stop()
            raise RuntimeError(f"{cmd} did not start; see {log_path}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log_file.close()


def _env() -> dict[str, str]:
    # The outer COMFYVN_* settings must not leak into the server under test.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYVN_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@contextlib.contextmanager
def ours_server(tmp: Path) -> Iterator[tuple[Server, str]]:
    data = tmp / "data"
    cmd = [sys.executable, "-m", "comfyvn", "serve", "--port", "0", "--data-dir", str(data)]
    server = Server(cmd, "server ready at ", tmp / "ours.log", _env())
    try:
        yield server, (data / "api_token").read_text().strip()
    finally:
        server.stop()


@contextlib.contextmanager
def ref_server(tmp: Path, role: str) -> Iterator[Server]:
    cmd = [sys.executable, str(BENCH / "ratio_refs.py"), role]
    server = Server(cmd, "ready at ", tmp / f"ref-{role}.log", _env())
    try:
        yield server
    finally:
        server.stop()


def run_load(*args: Any, timeout: float = 300) -> dict[str, Any]:
    cmd = [sys.executable, str(BENCH / "ratio_load.py"), *map(str, args)]
    return json.loads(run(cmd, timeout).strip().splitlines()[-1])


# -- the figures -------------------------------------------------------------------------------
def interleave(rounds: int, *sides: Callable[[], Any]) -> list[list[Any]]:
    """ours, ref[, extra], ours, ref[, extra], ...: every side sees the same drift."""
    got: list[list[Any]] = [[] for _ in sides]
    for i in range(rounds):
        for side, out in zip(sides, got, strict=True):
            out.append(side())
        log(f"  round {i + 1}/{rounds} done")
    return got


def fig_emit(args: argparse.Namespace) -> dict[str, Any]:
    n = args.emit_events
    log(f"emit p99.9: {n} calls x {args.rounds} rounds each side")
    ours, ref, unbounded = interleave(
        args.rounds,
        lambda: run_child("emit-ours", n),
        lambda: run_child("emit-ref", n, "bounded"),
        lambda: run_child("emit-ref", n, "unbounded"),
    )
    med = statistics.median
    ours_p999 = med(r["p999_us"] for r in ours)
    unbounded_p999 = med(r["p999_us"] for r in unbounded)
    return {
        "emit_p999": figure(
            "emit_p999",
            f"emit() p99.9 latency, {n:,} in-process calls, vs deque.append under a Lock",
            "µs",
            [r["p999_us"] for r in ours],
            [r["p999_us"] for r in ref],
            calls=n,
            ours_p50_us=med(r["p50_us"] for r in ours),
            ref_p50_us=med(r["p50_us"] for r in ref),
            ours_p99_us=med(r["p99_us"] for r in ours),
            ref_p99_us=med(r["p99_us"] for r in ref),
            ours_max_us=med(r["max_us"] for r in ours),
            timer_overhead_ns=med(r["timer_overhead_ns"] for r in ours + ref),
            # The literal reference: an unbounded deque holding all 200k tuples. Its tail is the
            # garbage collector scanning that growing heap, which our drained deque never has.
            ref_unbounded_deque_p999_us=unbounded_p999,
            ratio_vs_unbounded_deque=_ratio(ours_p999, unbounded_p999),
        )
    }


def fig_durable(args: argparse.Namespace) -> dict[str, Any]:
    n = args.durable_events
    log(f"durable throughput: {n} events x {args.rounds} rounds each side")
    ours, ref, no_retention = interleave(
        args.rounds,
        lambda: run_child("durable-ours", n),
        lambda: run_child("durable-ref", n),
        lambda: run_child("durable-ours", n, "off"),
    )
    med = statistics.median
    no_retention_rate = med(n / r["seconds"] for r in no_retention)
    return {
        "durable_throughput": figure(
            "durable_throughput",
            f"Durable throughput, {n:,} emit() + flush vs raw sqlite3 executemany (WAL)",
            "events/s",
            [n / r["seconds"] for r in ours],
            [n / r["seconds"] for r in ref],
            events=n,
            ours_seconds=round(statistics.median(r["seconds"] for r in ours), 3),
            ref_seconds=round(statistics.median(r["seconds"] for r in ref), 3),
            ours_rows_pruned_by_retention=max(r["pruned"] for r in ours),
            # The same with retention off: the insert path alone, the exact work of the reference.
            ours_retention_off_events_per_s=round(no_retention_rate, 1),
            ratio_retention_off=_ratio(no_retention_rate, med(n / r["seconds"] for r in ref)),
            same_schema=all(r["schema"] == ref[0]["schema"] for r in ours + no_retention),
        )
    }


def fig_webhooks(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from comfyvn.webhooks.config import WebhookConfig

    cfg = WebhookConfig()
    concurrency = min(cfg.concurrency, cfg.per_endpoint)  # what one endpoint gets
    n, warmup = args.webhook_events, 50
    log(f"webhooks: {n} deliveries x {args.rounds} rounds each side, concurrency {concurrency}")
    with ref_server(tmp, "receiver") as receiver:
        url = receiver.url
        ours, ref = interleave(
            args.rounds,
            lambda: run_child("webhook-ours", n, url, warmup),
            lambda: run_child("webhook-ref", n, url, warmup, concurrency),
        )
    return {
        "webhook_throughput": figure(
            "webhook_throughput",
            f"Webhook deliveries/s to one receiver ({n:,}) vs bare httpx.AsyncClient loop",
            "deliveries/s",
            [n / r["seconds"] for r in ours],
            [n / r["seconds"] for r in ref],
            deliveries=n,
            concurrency=concurrency,
        )
    }


def fig_rest(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    n, clients = args.rest_requests, args.rest_clients
    log(f"REST: {n} requests from {clients} clients x {args.rounds} rounds each side")
    with ours_server(tmp / "rest") as (ours_srv, token), ref_server(tmp, "rest") as ref_srv:

        def load(server: Server) -> dict[str, Any]:
            return run_load(
                "rest", "--url", server.url, "--token", token, "--pid", server.pid,
                "--requests", n, "--clients", clients,
            )  # fmt: skip

        ours, ref = interleave(args.rounds, lambda: load(ours_srv), lambda: load(ref_srv))
    errors = sum(r["errors"] for r in ours + ref)
    if errors:
        raise RuntimeError(f"REST: {errors} requests were not answered 200; see {tmp}")
    med = statistics.median
    context = {
        "requests": n,
        "clients": clients,
        "errors": errors,
        "ours_requests_per_s": med(r["requests_per_s"] for r in ours),
        "ref_requests_per_s": med(r["requests_per_s"] for r in ref),
    }
    return {
        "rest_cpu": figure(
            "rest_cpu",
            f"REST POST /api/modder/hooks/test, {clients} clients: server CPU per request",
            "µs CPU",
            [r["server_cpu_us_per_request"] for r in ours],
            [r["server_cpu_us_per_request"] for r in ref],
            **context,
        ),
        "rest_p99": figure(
            "rest_p99",
            f"REST POST /api/modder/hooks/test, {clients} clients: p99 latency",
            "ms",
            [r["p99_ms"] for r in ours],
            [r["p99_ms"] for r in ref],
            ours_p50_ms=med(r["p50_ms"] for r in ours),
            ref_p50_ms=med(r["p50_ms"] for r in ref),
        ),
    }


def _health_seq(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/health", timeout=10) as resp:
            return int(json.loads(resp.read())["seq"])
    except Exception:
        return -1


def fanout_round(server: Server, token: str, args: argparse.Namespace) -> dict[str, Any]:
    """Readers connect and say READY; the producer (already connected) is told to go."""
    load = [sys.executable, str(BENCH / "ratio_load.py")]
    producer_cmd = [*load, "produce", "--url", server.url, "--token", token]
    producer = popen(
        [*producer_cmd, "--events", str(args.ws_events), "--rate", str(args.ws_rate)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    readers_cmd = [
        *load, "ws-readers", "--url", server.url, "--token", token, "--pid", server.pid,
        "--since", _health_seq(server.url), "--clients", args.ws_clients,
        "--events", args.ws_events,
    ]  # fmt: skip
    if args.ws_compression:
        readers_cmd.append("--compression")
    readers = popen(list(map(str, readers_cmd)), stdout=subprocess.PIPE)
    try:
        assert producer.stdout and producer.stdin and readers.stdout
        if producer.stdout.readline().strip() != "READY":
            raise RuntimeError("the producer did not start")
        if readers.stdout.readline().strip() != "READY":
            raise RuntimeError("the WebSocket readers did not connect")
        producer.stdin.write("go\n")
        producer.stdin.flush()
        emitted = json.loads(producer.stdout.readline())
        out, _ = readers.communicate(timeout=300)
        result = json.loads(out.strip().splitlines()[-1])
        result["producer_emit_per_s"] = emitted["emit_per_s"]
        result["producer_errors"] = emitted["errors"]
        return result
    finally:
        for proc in (producer, readers):
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


def fig_ws(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    clients, events = args.ws_clients, args.ws_events
    log(f"WebSocket fan-out: {clients} clients x {events} events x {args.rounds} rounds each side")
    with ours_server(tmp / "ws") as (ours_srv, token), ref_server(tmp, "ws") as ref_srv:
        ours, ref = interleave(
            args.rounds,
            lambda: fanout_round(ours_srv, token, args),
            lambda: fanout_round(ref_srv, token, args),
        )
    errors = sum(r["producer_errors"] for r in ours + ref)
    if errors:
        raise RuntimeError(f"WebSocket fan-out: {errors} emits were not answered 200")
    med = statistics.median
    complete = all(r["every_client_got_every_event_in_order"] for r in ours + ref)
    context = {
        "clients": clients,
        "events": events,
        "frames_per_round": clients * events,
        "producer_rate_per_s": args.ws_rate,
        "permessage_deflate": args.ws_compression,
        "every_client_got_every_event_in_order": complete,
        "ours_emit_per_s": med(r["producer_emit_per_s"] for r in ours),
        "ref_emit_per_s": med(r["producer_emit_per_s"] for r in ref),
    }
    return {
        "ws_cpu": figure(
            "ws_cpu",
            f"WebSocket fan-out, {clients} clients x {events:,} events: server CPU per frame",
            "µs CPU",
            [r["server_cpu_us_per_frame"] for r in ours],
            [r["server_cpu_us_per_frame"] for r in ref],
            **context,
        ),
        "ws_p99": figure(
            "ws_p99",
            f"WebSocket fan-out, {clients} clients x {events:,} events: end-to-end p99",
            "ms",
            [r["latency_p99_ms"] for r in ours],
            [r["latency_p99_ms"] for r in ref],
            ours_p50_ms=med(r["latency_p50_ms"] for r in ours),
            ref_p50_ms=med(r["latency_p50_ms"] for r in ref),
        ),
    }


FIGURES = ["durable", "rest", "ws", "webhooks", "emit"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(FIGURES)}")
    parser.add_argument("--durable-events", type=int, default=SPEC["durable_events"])
    parser.add_argument("--emit-events", type=int, default=SPEC["emit_events"])
    parser.add_argument("--rest-requests", type=int, default=10_000)
    parser.add_argument("--rest-clients", type=int, default=SPEC["rest_clients"])
    parser.add_argument("--ws-clients", type=int, default=SPEC["ws_clients"])
    parser.add_argument("--ws-events", type=int, default=SPEC["ws_events"])
    parser.add_argument(
        "--ws-rate", type=float, default=500.0, help="producer events/s (0: closed loop)"
    )
    parser.add_argument(
        "--ws-compression", action="store_true", help="clients offer permessage-deflate"
    )
    parser.add_argument("--webhook-events", type=int, default=2000)
    args = parser.parse_args()
    if args.child:
        name, *rest = args.child
        fn = CHILDREN[name]
        typed = [int(a) if a.isdigit() else a for a in rest]
        print(json.dumps(fn(*typed)))
        return
    wanted = FIGURES if not args.only else [f.strip() for f in args.only.split(",")]
    began = time.perf_counter()
    result: dict[str, Any] = {"bench": "ratios", "rounds": args.rounds}
    reduced = [
        f"{key}={getattr(args, key)} (spec {value})"
        for key, value in SPEC.items()
        if getattr(args, key) < value
    ]
    with tempfile.TemporaryDirectory(prefix="bench-ratios-") as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "rest").mkdir()
        (tmp / "ws").mkdir()
        if "emit" in wanted:
            result.update(fig_emit(args))
        if "durable" in wanted:
            result.update(fig_durable(args))
        if "webhooks" in wanted:
            result.update(fig_webhooks(args, tmp))
        if "rest" in wanted:
            result.update(fig_rest(args, tmp))
        if "ws" in wanted:
            result.update(fig_ws(args, tmp))
    result["reduced_sizes"] = ", ".join(reduced) or "none"
    result["wall_s"] = round(time.perf_counter() - began, 1)
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
