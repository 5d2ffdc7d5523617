"""Fake provider servers for the provider tests (no tests here): one real HTTP server on
127.0.0.1 plays any number of ComfyUI / RunPod / OpenAI-compatible / plain HTTP providers, each
under its own path prefix, with the response shapes of the real APIs."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

GIB = 1024**3


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict/list -> JSON; str -> text; callable(Seen) -> either
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    hang: bool = False  # never answer (until the fake stops)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default 5 drops SYNs when 50 checks connect at once


class FakeProviders:
    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Reply] = {}
        self.seen: list[Seen] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = Seen(self.command, self.path, dict(self.headers), body)
                with fake._lock:
                    fake.seen.append(seen)
                reply = fake.routes.get((self.command, self.path.split("?")[0]))
                if reply is None and self.command == "HEAD":
                    reply = fake.routes.get(("GET", self.path.split("?")[0]))
                if reply is None:
                    reply = Reply(404, {"error": f"no fake route for {self.command} {self.path}"})
                if reply.hang:
                    fake.release.wait(60)
                    return
                if reply.delay:
                    time.sleep(reply.delay)
                content = reply.body(seen) if callable(reply.body) else reply.body
                if isinstance(content, str):
                    data, ctype = content.encode(), "text/plain"
                elif content is None:
                    data, ctype = b"", "text/plain"
                else:
                    data, ctype = json.dumps(content).encode(), "application/json"
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = do_HEAD = _handle

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> FakeProviders:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def route(self, method: str, path: str, reply: Reply) -> None:
        self.routes[(method, path)] = reply

    def requests_to(self, prefix: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.path.startswith(prefix)]

    # -- shapes of the real APIs -----------------------------------------------------------
    def comfyui(
        self,
        prefix: str,
        *,
        vram_total: float = 24 * GIB,
        vram_free: float = 20 * GIB,
        running: int = 1,
        pending: int = 2,
        stats: Reply | None = None,
        queue: Reply | None = None,
        delay: float = 0.0,
        argv: list[str] | None = None,
    ) -> str:
        """``GET /system_stats`` and ``GET /queue`` as ComfyUI serves them."""
        body = {
            "system": {
                "os": "posix",
                "ram_total": 64 * GIB,
                "ram_free": 40 * GIB,
                "comfyui_version": "0.3.40",
                "python_version": "3.11.9",
                "pytorch_version": "2.5.1+cu124",
                "embedded_python": False,
                "argv": argv or ["main.py", "--listen", "127.0.0.1"],
            },
            "devices": [
                {
                    "name": "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync",
                    "type": "cuda",
                    "index": 0,
                    "vram_total": vram_total,
                    "vram_free": vram_free,
                    "torch_vram_total": vram_total / 2,
                    "torch_vram_free": vram_free / 4,
                }
            ],
        }
        item = [7, "prompt-id", {"3": {"class_type": "KSampler"}}, {}, ["9"]]
        queue_body = {"queue_running": [item] * running, "queue_pending": [item] * pending}
        self.route("GET", f"{prefix}/system_stats", stats or Reply(body=body, delay=delay))
        self.route("GET", f"{prefix}/queue", queue or Reply(body=queue_body, delay=delay))
        return self.url + prefix

    def runpod(
        self,
        prefix: str,
        *,
        balance: float | None = 42.5,
        spend: float = 0.5,
        limit: float = 80,
        reply: Reply | None = None,
        keys: tuple[str, ...] | None = None,
    ) -> str:
        """RunPod's GraphQL ``myself { clientBalance currentSpendPerHr spendLimit }``.

        With ``keys``, only a request with one of them as its Bearer key gets the account; any
        other gets RunPod's GraphQL error, echoing the key it was sent (as a careless proxy
        would), which the server's scrubber must remove."""
        body = {
            "data": {
                "myself": None
                if balance is None
                else {"clientBalance": balance, "currentSpendPerHr": spend, "spendLimit": limit}
            }
        }

        def answer(seen: Seen) -> Any:
            sent = seen.headers.get("Authorization", "").removeprefix("Bearer ")
            if keys is None or sent in keys:
                return body
            return {"errors": [{"message": f"Unauthorized: api key {sent} is not valid"}]}

        self.route("POST", f"{prefix}/graphql", reply or Reply(body=answer))
        return f"{self.url}{prefix}/graphql"

    def openai(
        self,
        prefix: str,
        *,
        headers: dict[str, str] | None = None,
        reply: Reply | None = None,
        models: list[str] | None = None,
    ) -> str:
        """``GET /v1/models`` with OpenAI's ``x-ratelimit-*`` headers; base_url ends in /v1."""
        body = {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 1686935002, "owned_by": "openai"}
                for m in (models or ["gpt-4o-mini", "text-embedding-3-small"])
            ],
        }
        self.route("GET", f"{prefix}/v1/models", reply or Reply(body=body, headers=headers or {}))
        return f"{self.url}{prefix}/v1"


def openai_limits(
    requests: tuple[int, int] = (5000, 4999), tokens: tuple[int, int] = (160000, 159976)
) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": str(requests[0]),
        "x-ratelimit-remaining-requests": str(requests[1]),
        "x-ratelimit-reset-requests": "12ms",
        "x-ratelimit-limit-tokens": str(tokens[0]),
        "x-ratelimit-remaining-tokens": str(tokens[1]),
        "x-ratelimit-reset-tokens": "6m0s",
    }


def closed_port_url() -> str:
    """A loopback URL nothing listens on."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
