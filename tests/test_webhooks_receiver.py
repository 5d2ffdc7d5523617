"""A real HTTP receiver on 127.0.0.1 for the webhook tests (no tests of its own).

Each path has a plan: a queue of replies (status, headers, body, delay) used in order, then a
default. Every request is recorded with its headers and raw body, and marked ``completed`` once
the reply was fully written.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from .support import ServerProcess, scene_enter_payload

HOOKS = "/api/modder/hooks"
WEBHOOKS = f"{HOOKS}/webhooks"


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay: float = 0.0


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int
    completed: bool = False

    @property
    def envelope(self) -> dict[str, Any]:
        return json.loads(self.body)


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._plans: dict[str, list[Reply]] = {}
        self._defaults: dict[str, Reply] = {}
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                reply = receiver._next_reply(self.path)
                record = Received(
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                    time.monotonic(),
                    reply.status,
                )
                with receiver._cond:
                    receiver.requests.append(record)
                    receiver._cond.notify_all()
                if reply.delay:
                    time.sleep(reply.delay)
                self.send_response(reply.status)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)
                self.wfile.flush()
                with receiver._cond:
                    record.completed = True
                    receiver._cond.notify_all()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def plan(self, path: str, *replies: Reply, then: Reply | None = None) -> None:
        with self._cond:
            self._plans[path] = list(replies)
            if then is not None:
                self._defaults[path] = then

    def _next_reply(self, path: str) -> Reply:
        with self._cond:
            queue = self._plans.get(path)
            if queue:
                return queue.pop(0)
            return self._defaults.get(path, Reply())

    def at(self, path: str) -> list[Received]:
        with self._cond:
            return [r for r in self.requests if r.path == path]

    def wait_until(
        self, predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition"
    ) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}")
                self._cond.wait(min(left, 0.2))

    def wait_for(self, path: str, count: int, timeout: float = 20.0) -> list[Received]:
        self.wait_until(
            lambda: len([r for r in self.requests if r.path == path and r.completed]) >= count,
            timeout,
            f"{count} request(s) on {path}",
        )
        return self.at(path)


def emit(client: httpx.Client, node: str = "intro", event: str = "on_scene_enter") -> dict:
    payload = scene_enter_payload(node)
    if event == "on_choice_render":
        payload["choices"] = [{"id": "a", "label": "A", "target": "n2"}]
    elif event == "on_asset_removed":
        payload = {
            "uid": node,
            "type": "t",
            "path": "p",
            "deleted_files": False,
            "hook_event": event,
            "timestamp": time.time(),
        }
    response = client.post(f"{HOOKS}/test", json={"event": event, "payload": payload})
    assert response.status_code == 200, response.text
    return response.json()


def cleaning_client(server: ServerProcess) -> Iterator[httpx.Client]:
    """A client; every webhook created through it is deleted afterwards (tests share a server)."""
    with server.client() as c:
        yield c
        for hook in c.get(WEBHOOKS).json()["items"]:
            c.delete(f"{WEBHOOKS}/{hook['id']}")


def create(client: httpx.Client, url: str, **fields: Any) -> dict[str, Any]:
    response = client.post(WEBHOOKS, json={"url": url, **fields})
    assert response.status_code == 201, response.text
    return response.json()["webhook"]


def deliveries(client: httpx.Client, hook_id: str, **params: Any) -> list[dict[str, Any]]:
    response = client.get(f"{WEBHOOKS}/{hook_id}/deliveries", params=params)
    assert response.status_code == 200, response.text
    return response.json()["items"]


def wait_deliveries(
    client: httpx.Client,
    hook_id: str,
    predicate: Callable[[list[dict[str, Any]]], bool],
    timeout: float = 20.0,
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        items = deliveries(client, hook_id)
        if predicate(items):
            return items
        if time.monotonic() > deadline:
            raise AssertionError(f"delivery log never matched: {items}")
        time.sleep(0.05)


def wait_webhook(
    client: httpx.Client,
    hook_id: str,
    predicate: Callable[[dict[str, Any]], bool],
    timeout: float = 20.0,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        hook = client.get(f"{WEBHOOKS}/{hook_id}").json()["webhook"]
        if predicate(hook):
            return hook
        if time.monotonic() > deadline:
            raise AssertionError(f"webhook never matched: {hook}")
        time.sleep(0.05)
