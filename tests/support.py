"""Test support: a real ``comfyvn serve`` subprocess on a free port, and payload helpers."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ServerProcess:
    """``comfyvn serve --port 0`` in a subprocess; the URL comes from its ready line."""

    data_dir: Path
    extra_args: list[str] = field(default_factory=list)
    port: int = 0  # 0: a free port on first start; a restart keeps the port it got
    rlimits: dict[int, tuple[int, int]] = field(default_factory=dict)  # resource.RLIMIT_*
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None
    url: str = ""
    output: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> ServerProcess:
        # The outer environment's COMFYVN_* settings must not leak into the server under test.
        env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYVN_")}
        env.update({"PYTHONUNBUFFERED": "1", **self.env})
        cmd = [
            sys.executable,
            "-m",
            "comfyvn",
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            *self.extra_args,
        ]
        limits = dict(self.rlimits)

        def apply_limits() -> None:
            for which, value in limits.items():
                resource.setrlimit(which, value)

        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=apply_limits if limits else None,
        )
        ready = threading.Event()

        def read() -> None:
            assert self.proc and self.proc.stdout
            for line in self.proc.stdout:
                self.output.append(line)
                if "server ready at " in line:
                    self.url = line.rsplit(" ", 1)[1].strip()
                    self.port = int(self.url.rsplit(":", 1)[1])
                    ready.set()
            ready.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        if not ready.wait(timeout) or not self.url:
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.output))
        return self

    @property
    def token(self) -> str:
        return (
            self.env.get("COMFYVN_API_TOKEN") or (self.data_dir / "api_token").read_text().strip()
        )

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[len("http") :]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=30.0, **kwargs)

    def log_text(self) -> str:
        return "".join(self.output)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._reader:
            self._reader.join(5)
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> ServerProcess:
        self.stop()
        self.url = ""
        return self.start()


def scene_enter_payload(node: str = "intro", **overrides: Any) -> dict[str, Any]:
    payload = {
        "scene_id": "demo",
        "node": node,
        "pov": "narrator",
        "variables": {"trust": 1},
        "history": [{"node": node, "choice": None}],
        "finished": False,
        "timestamp": time.time(),
    }
    payload.update(overrides)
    return payload


def emit_scene(server: ServerProcess, node: str) -> dict[str, Any]:
    """A real ``on_scene_enter`` through ``POST /api/modder/hooks/test``; the ack once committed."""
    with server.client() as client:
        response = client.post(
            "/api/modder/hooks/test",
            json={"event": "on_scene_enter", "payload": scene_enter_payload(node)},
        )
    assert response.status_code == 200, response.text
    return response.json()


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
