"""``comfyvn hooks tail`` against the real server, across a server restart."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO

import pytest

from comfyvn.client.api import ApiClient, ApiError, Connection

from .support import ROOT, ServerProcess, emit_scene, wait_for


class TailProcess:
    """``comfyvn hooks tail`` in a subprocess: stdout lines in a queue, stderr kept with the time
    each line came, so that a test waiting in vain says what the tail was doing (or why it
    exited) instead of only "no line"."""

    def __init__(self, args: list[str]) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "comfyvn", "hooks", "tail", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.errors: list[str] = []
        assert self.proc.stdout and self.proc.stderr
        self._readers = [
            threading.Thread(target=self._read_stdout, args=(self.proc.stdout,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(self.proc.stderr,), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self, out: IO[str]) -> None:
        for line in out:
            self.lines.put(line)

    def _read_stderr(self, err: IO[str]) -> None:
        for line in err:
            self.errors.append(f"[{time.monotonic() - self.started:6.2f}s] {line.rstrip()}")

    def stderr(self) -> str:
        return "\n".join(self.errors)

    def next_line(self, timeout: float, server: ServerProcess) -> dict:
        """The next envelope printed; fails at once (with the tail's stderr) if the tail exited,
        else after ``timeout`` (with its stderr and the server's log)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return json.loads(self.lines.get(timeout=0.1))
            except queue.Empty:
                pass
            if self.proc.poll() is not None:
                self.wait_output()  # lines printed before it exited are still coming
                if not self.lines.empty():
                    continue
                problem = f"the tail exited with code {self.proc.returncode}"
                break
            if time.monotonic() > deadline:
                problem = f"no line from the tail within {timeout:g} s"
                break
        raise AssertionError(
            f"{problem} ({time.monotonic() - self.started:.1f} s after it started)\n"
            f"--- tail stderr ---\n{self.stderr()}\n--- server log ---\n{server.log_text()}"
        )

    def wait_output(self) -> None:
        """After the process exited: wait until its stdout and stderr were read to the end."""
        for reader in self._readers:
            reader.join(5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.wait_output()


@pytest.mark.parametrize("token", [None, "-" + "x" * 42], ids=["generated-token", "dash-token"])
def test_tail_prints_envelopes_and_resumes_after_a_restart(
    data_dir: Path, token: str | None
) -> None:
    """A generated token starts with "-" once in 64 (``secrets.token_urlsafe``): passed as
    ``--token VALUE`` argparse reads it as an option and the tail exits with a usage error at
    once. That was this test's flake (no line within 20 s, whatever the load); the dash-token
    case pins it."""
    server = ServerProcess(data_dir, env={"COMFYVN_API_TOKEN": token} if token else {}).start()
    tail: TailProcess | None = None
    try:
        before = emit_scene(server, "before")["seq"]  # history up to --since is not printed
        tail = TailProcess(
            [
                f"--server={server.url}",
                f"--token={server.token}",
                "--topics=on_scene_enter",
                "--count=4",
                f"--since={before}",
            ]
        )
        seqs = []
        # The tail may connect after this emit: --since makes it replay from there.
        seqs.append(emit_scene(server, "a")["seq"])
        first = tail.next_line(20, server)
        seqs.append(emit_scene(server, "b")["seq"])
        second = tail.next_line(20, server)
        server.restart()
        # Emitted right after the restart, likely before the tail has reconnected: it must
        # still get them, by resuming from the last seq it printed.
        seqs += [emit_scene(server, "c")["seq"], emit_scene(server, "d")["seq"]]
        rest = [tail.next_line(30, server) for _ in range(2)]
        assert tail.proc.wait(timeout=20) == 0, tail.stderr()
        tail.wait_output()
    finally:
        if tail is not None:
            tail.stop()
        server.stop()
    printed = [first, second, *rest]
    assert [p["seq"] for p in printed] == seqs
    assert before not in [p["seq"] for p in printed]
    assert [p["data"]["node"] for p in printed] == ["a", "b", "c", "d"]
    assert "reconnected" in tail.stderr()


def test_tail_says_when_it_listens_and_exits_after_count(server: ServerProcess) -> None:
    """Once the tail printed "# connected" (stderr) nothing emitted afterwards is missed, so a
    script may start what it watches then (the README's tour does, with ``--count``); with
    ``--count N`` it exits 0 after N envelopes, stdout holding only those JSON lines."""
    before = emit_scene(server, "before")["seq"]
    tail = TailProcess(
        [f"--server={server.url}", f"--token={server.token}", "--topics=on_scene_enter",
         "--count", "2"]
    )  # fmt: skip
    try:
        wait_for(lambda: any("# connected" in line for line in tail.errors), timeout=20)
        acks = [emit_scene(server, node) for node in ("a", "b", "c")]
        printed = [tail.next_line(20, server) for _ in range(2)]
        assert tail.proc.wait(timeout=20) == 0, tail.stderr()
        tail.wait_output()
    finally:
        tail.stop()
    assert [p["seq"] for p in printed] == [a["seq"] for a in acks[:2]]
    assert tail.lines.empty()  # the third came after --count was reached: not printed
    assert tail.errors[0].endswith(
        f"# connected to {server.url}, printing envelopes after seq {before}"
    ), tail.stderr()


@pytest.mark.parametrize("count", ["0", "-1", "two"])
def test_tail_count_must_be_a_positive_number(count: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "comfyvn", "hooks", "tail", "--count", count],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--count" in result.stderr and "usage:" in result.stderr


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
