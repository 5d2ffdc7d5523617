"""``comfyvn hooks tail`` against the real server, across a server restart."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from comfyvn.client.api import ApiClient, ApiError, Connection

from .support import ROOT, ServerProcess, emit_scene


def test_tail_prints_envelopes_and_resumes_after_a_restart(server: ServerProcess) -> None:
    before = emit_scene(server, "before")["seq"]  # history up to --since is not printed
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "comfyvn",
            "hooks",
            "tail",
            "--server",
            server.url,
            "--token",
            server.token,
            "--topics",
            "on_scene_enter",
            "--count",
            "4",
            "--since",
            str(before),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    try:
        seqs = []
        # The tail may connect after this emit: --since makes it replay from there.
        seqs.append(emit_scene(server, "a")["seq"])
        first = json.loads(lines.get(timeout=20))
        seqs.append(emit_scene(server, "b")["seq"])
        second = json.loads(lines.get(timeout=20))
        server.restart()
        # Emitted right after the restart, likely before the tail has reconnected: it must
        # still get them, by resuming from the last seq it printed.
        seqs += [emit_scene(server, "c")["seq"], emit_scene(server, "d")["seq"]]
        rest = [json.loads(lines.get(timeout=30)) for _ in range(2)]
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    printed = [first, second, *rest]
    assert [p["seq"] for p in printed] == seqs
    assert before not in [p["seq"] for p in printed]
    assert [p["data"]["node"] for p in printed] == ["a", "b", "c", "d"]
    assert "reconnected" in proc.stderr.read()


def test_tail_with_a_bad_token_exits_with_a_message(server: ServerProcess) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "comfyvn",
            "hooks",
            "tail",
            "--server",
            server.url,
            "--token",
            "wrong",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "401" in result.stderr and "wrong" not in result.stderr


@pytest.fixture
def foreign_server() -> Iterator[str]:
    """A loopback HTTP server that is not ComfyVN: HTML pages, JSON lists, 404 for the rest."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            status, body, kind = {
                "/html": (200, b"<html>hello</html>", "text/html"),
                "/list": (500, b"[1, 2]", "application/json"),
            }.get(self.path, (404, b"not here", "text/plain"))
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_tail_gives_up_on_an_answer_retrying_cannot_change(foreign_server: str) -> None:
    """A 404 (wrong --server) is final: a message and exit 2, not retries forever."""
    result = subprocess.run(
        [sys.executable, "-m", "comfyvn", "hooks", "tail", "--server", foreign_server],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "404" in result.stderr and "check --server" in result.stderr


def test_api_client_names_answers_that_are_not_ours(foreign_server: str) -> None:
    with ApiClient(Connection(foreign_server, "t" * 20)) as client:
        with pytest.raises(ApiError, match="not JSON"):
            client.get("/html")
        with pytest.raises(ApiError) as listed:
            client.get("/list")
    assert listed.value.status == 500 and listed.value.detail == [1, 2]
