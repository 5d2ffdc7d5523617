"""The Studio's GUI thread under load, offscreen, against a real server subprocess.

- ``panel``: a Debug Integrations refresh of 50 providers (each answers in 300 ms, one in 2 s):
  wall time until the rows are shown, the GUI-thread time to build the rows, and the longest
  GUI event-loop stall measured by a 10 ms QTimer while the refresh ran.
- ``hooks_dock``: GUI-thread cost of appending envelopes to the Modder Hooks dock, and the time
  from the first of 300 API emits (4 threads) until the dock shows all of them.

Prints one JSON object. Usage: ``.venv/bin/python bench/bench_gui.py``
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PySide6.QtCore import QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from comfyvn.client.api import Connection  # noqa: E402
from comfyvn.gui.api import StudioApi  # noqa: E402
from comfyvn.gui.panels.debug_integrations import DebugIntegrationsPanel  # noqa: E402
from comfyvn.gui.panels.modder_hooks import ModderHooksPanel  # noqa: E402
from tests.support import ServerProcess, scene_enter_payload  # noqa: E402
from tests.test_providers_fakes import FakeProviders, Reply  # noqa: E402

PROVIDERS = 50
LATENCY_S = 0.3
SLOW_S = 2.0
EMITS = 300
SYNTHETIC = 5000


def wait_until(app: QApplication, condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        app.processEvents()
        time.sleep(0.002)


def bench_panel(app: QApplication, server: ServerProcess, fake: FakeProviders) -> dict:
    with server.client() as client:
        for n in range(PROVIDERS):
            delay = SLOW_S if n == 0 else LATENCY_S
            fake.route("GET", f"/p{n}/", Reply(200, "ok", delay=delay))
            body = {"id": f"p{n}", "kind": "http", "base_url": f"{fake.url}/p{n}"}
            client.post("/api/providers", json=body).raise_for_status()
    panel = DebugIntegrationsPanel()
    panel.auto_check.setChecked(False)
    panel.resize(1200, 600)
    panel.show()
    render_s: list[float] = []
    original = panel._render

    def timed_render() -> None:
        started = time.perf_counter()
        original()
        render_s.append(time.perf_counter() - started)

    panel._render = timed_render  # type: ignore[method-assign]
    longest = [0.0]
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        longest[0] = max(longest[0], now - last[0])
        last[0] = now

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)
    timer.start()
    started = time.perf_counter()
    panel.set_connection(StudioApi(Connection(server.url, server.token), 30.0))
    wait_until(app, lambda: panel.refresh_count >= 1, 60)
    wall = time.perf_counter() - started
    timer.stop()
    assert len(panel.rows()) == PROVIDERS
    panel.close()
    return {
        "providers": PROVIDERS,
        "slowest_provider_s": SLOW_S,
        "refresh_wall_s": round(wall, 3),
        "render_rows_ms_max": round(max(render_s) * 1000, 1),
        "gui_longest_stall_ms": round(longest[0] * 1000, 1),
    }


def bench_hooks(app: QApplication, server: ServerProcess) -> dict:
    panel = ModderHooksPanel()
    panel.resize(600, 600)
    panel.show()
    envelopes = [
        {"seq": i, "id": f"e{i}", "event": "on_scene_enter", "ts": time.time(), "data": {}}
        for i in range(SYNTHETIC)
    ]
    started = time.perf_counter()
    for i in range(0, SYNTHETIC, 50):
        panel._on_envelopes(envelopes[i : i + 50])
    synthetic_s = time.perf_counter() - started
    panel.clear()

    panel.set_connection(StudioApi(Connection(server.url, server.token), 30.0))
    wait_until(app, lambda: panel.stream_state == "live", 30)
    panel.clear()

    def emit(count: int) -> None:
        with server.client() as client:
            for n in range(count):
                body = {"event": "on_scene_enter", "payload": scene_enter_payload(f"n{n}")}
                client.post("/api/modder/hooks/test", json=body).raise_for_status()

    threads = [threading.Thread(target=emit, args=(EMITS // 4,)) for _ in range(4)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    wait_until(app, lambda: len(panel.envelopes()) >= EMITS, 60)
    shown_s = time.perf_counter() - started
    for thread in threads:
        thread.join()
    panel.shutdown()
    panel.close()
    return {
        "append_ms_per_1000": round(synthetic_s / SYNTHETIC * 1000 * 1000, 1),
        "api_emits": EMITS,
        "all_shown_after_s": round(shown_s, 3),
        "shown_per_s": round(EMITS / shown_s, 1),
    }


def main() -> None:
    app = QApplication.instance() or QApplication([])
    fake = FakeProviders().start()
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp), env={"COMFYVN_PROVIDER_TIMEOUT": "10"}).start()
        try:
            result = {
                "panel": bench_panel(app, server, fake),
                "hooks_dock": bench_hooks(app, server),
            }
        finally:
            server.stop()
    fake.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
