"""A WebSocket client that reads nothing while 5,000 events are emitted in the server process.

The server runs under uvicorn on a real loopback socket in this process, so the test can call
``emit()`` directly and time it, while the client speaks real WebSocket.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import uvicorn
from websockets.sync.client import connect

from comfyvn.core import modder_hooks
from comfyvn.core.settings import Settings
from comfyvn.server import create_app

from .support import scene_enter_payload


class ThreadedServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # not the main thread
        pass


def test_idle_websocket_client_does_not_slow_emit_and_receives_everything(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path / "data", port=0)
    app = create_app(settings)
    server = ThreadedServer(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    token = (settings.data_dir / "api_token").read_text().strip()
    try:
        url = f"ws://127.0.0.1:{port}/api/modder/hooks/ws?since=0&token={token}"
        with connect(url, max_size=None) as slow, connect(url) as other:
            assert json.loads(slow.recv(timeout=10))["ok"] is True
            assert json.loads(other.recv(timeout=10))["ok"] is True
            bus = modder_hooks.current_bus()
            start = time.perf_counter()
            for i in range(5000):
                bus.emit("on_scene_enter", scene_enter_payload(f"n{i}"))
            elapsed = time.perf_counter() - start
            # The other client is served while the slow one has not read a single frame.
            other_seqs = [json.loads(other.recv(timeout=10))["seq"] for _ in range(5000)]
            assert other_seqs == list(range(1, 5001))
            time.sleep(0.5)  # the slow client's socket buffers fill meanwhile
            seqs = []
            while len(seqs) < 5000:
                msg = json.loads(slow.recv(timeout=10))
                if "seq" in msg:
                    seqs.append(msg["seq"])
        assert seqs == list(range(1, 5001))
        assert elapsed < 2.0  # generous: emit is a queue append; blocking would take seconds
    finally:
        server.should_exit = True
        thread.join(20)
