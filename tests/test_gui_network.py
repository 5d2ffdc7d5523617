"""The Studio under bad networks: a provider that hangs 5 s never stalls the GUI thread, a dead
server or a wrong token is named in the panel, and the hook stream resumes by seq after the
server restarts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QTimer

from comfyvn.client.api import Connection
from comfyvn.gui.api import StudioApi
from comfyvn.gui.panels.debug_integrations import ID_ROLE, STATUS_ROLE, DebugIntegrationsPanel
from comfyvn.gui.panels.modder_hooks import ModderHooksPanel

from .support import ServerProcess, scene_enter_payload
from .test_gui_support import make_window
from .test_providers_fakes import FakeProviders, Reply, closed_port_url

pytestmark = pytest.mark.gui

HANG_S = 5.0


@pytest.fixture
def fake() -> Iterator[FakeProviders]:
    fake = FakeProviders().start()
    yield fake
    fake.stop()


class StallMeter:
    """A 10 ms QTimer on the GUI thread; the longest gap between its ticks is the longest
    time the GUI thread was busy (blocked) while it ran."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.ticks = 0
        self._last = time.perf_counter()
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.longest = max(self.longest, now - self._last)
        self._last = now
        self.ticks += 1

    def start(self) -> None:
        self._last = time.perf_counter()
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()


def test_refresh_against_a_hanging_provider_never_stalls_the_gui(
    qtbot,
    data_dir: Path,
    fake: FakeProviders,
) -> None:
    fake.route("GET", "/hang/health", Reply(body="late but fine", delay=HANG_S))
    server = ServerProcess(data_dir, env={"COMFYVN_PROVIDER_TIMEOUT": "20"}).start()
    try:
        with server.client() as client:
            body = {
                "id": "slowpoke",
                "name": "Hangs 5 s",
                "kind": "http",
                "base_url": f"{fake.url}/hang",
                "config": {"health_path": "/health"},
            }
            assert client.post("/api/providers", json=body).status_code == 201
        panel = DebugIntegrationsPanel()
        qtbot.addWidget(panel)
        panel.auto_check.setChecked(False)
        panel.show()
        meter = StallMeter()
        meter.start()
        started = time.perf_counter()
        panel.set_connection(StudioApi(Connection(server.url, server.token), 30.0))
        assert panel.busy  # the refresh is running on a worker thread
        qtbot.waitUntil(lambda: panel.refresh_count >= 1, timeout=30_000)
        elapsed = time.perf_counter() - started
        meter.stop()
    finally:
        server.stop()
    assert elapsed >= HANG_S * 0.9  # the refresh really waited on the provider...
    assert meter.ticks > 100  # ...while the GUI thread kept ticking
    assert meter.longest < 0.100, f"GUI thread stalled {meter.longest * 1000:.0f} ms"
    item = panel.tree.topLevelItem(0)
    assert item.data(0, ID_ROLE) == "slowpoke"
    assert item.data(0, STATUS_ROLE) == "amber"  # slow: above the 1000 ms latency threshold
    assert "slow" in item.text(5)


def test_dead_server_is_named_and_the_window_stays_responsive(qtbot, tmp_path: Path) -> None:
    dead = closed_port_url()
    panel = DebugIntegrationsPanel()
    qtbot.addWidget(panel)
    panel.show()
    with qtbot.waitSignal(panel.refreshed, timeout=10_000) as signal:
        panel.set_connection(StudioApi(Connection(dead, "whatever"), 5.0))
    assert signal.args == [False]
    assert panel.banner.isVisible()
    assert f"cannot reach the server at {dead}" in panel.banner.text()

    hooks = ModderHooksPanel()
    qtbot.addWidget(hooks)
    hooks.set_connection(StudioApi(Connection(dead, "whatever"), 5.0), max_backoff_s=0.5)
    qtbot.waitUntil(lambda: hooks.stream_state == "retry", timeout=10_000)
    assert "reconnecting" in hooks.stream_message
    hooks.shutdown()


def test_wrong_token_is_named(qtbot, server: ServerProcess) -> None:
    panel = DebugIntegrationsPanel()
    qtbot.addWidget(panel)
    with qtbot.waitSignal(panel.refreshed, timeout=10_000):
        panel.set_connection(StudioApi(Connection(server.url, "not-the-token"), 5.0))
    assert "refused the token (401)" in panel.banner.text()
    assert "not-the-token" not in panel.banner.text()

    hooks = ModderHooksPanel()
    qtbot.addWidget(hooks)
    hooks.set_connection(StudioApi(Connection(server.url, "not-the-token"), 5.0))
    qtbot.waitUntil(lambda: hooks.stream_state == "error", timeout=10_000)
    assert "refused the token" in hooks.stream_message
    hooks.shutdown()


def test_hook_stream_reconnects_and_resumes_by_seq(qtbot, server: ServerProcess) -> None:
    hooks = ModderHooksPanel()
    qtbot.addWidget(hooks)
    hooks.set_connection(StudioApi(Connection(server.url, server.token), 5.0), max_backoff_s=0.3)
    qtbot.waitUntil(lambda: hooks.stream_state == "live", timeout=10_000)

    def emit(node: str) -> int:
        with server.client() as client:
            response = client.post(
                "/api/modder/hooks/test",
                json={"event": "on_scene_enter", "payload": scene_enter_payload(node)},
            )
        assert response.status_code == 200, response.text
        return response.json()["seq"]

    first = emit("before-restart")
    qtbot.waitUntil(lambda: len(hooks.envelopes()) == 1, timeout=10_000)
    server.restart()  # same port, same data dir: seq continues
    # emitted before the stream is back (its backoff is at least 0.25 s): must be replayed
    second, third = emit("after-restart-1"), emit("after-restart-2")
    qtbot.waitUntil(lambda: len(hooks.envelopes()) >= 3, timeout=15_000)
    qtbot.wait(300)  # a duplicate would arrive now
    seqs = [e["seq"] for e in hooks.envelopes()]
    assert seqs == [first, second, third]
    assert hooks.stream is not None and hooks.stream.connects >= 2
    assert hooks.stream_state == "live"
    hooks.shutdown()


def test_window_without_server_says_why(qtbot, tmp_path: Path) -> None:
    """A dead --server: every part of the window reports it, none hangs."""
    dead = closed_port_url()
    server = ServerProcess(tmp_path)  # not started: only carries the URL and data dir
    server.url = dead
    (tmp_path / "api_token").write_text("unused-token\n")
    window = make_window(server, tmp_path / "studio.ini", workspace="system")
    qtbot.addWidget(window)
    qtbot.waitUntil(window.settled, timeout=15_000)
    assert "cannot reach the server" in window.debug_panel.banner.text()
    assert "cannot reach the server" in window.system.server_value.text()
    qtbot.waitUntil(lambda: "unreachable" in window.connection_label.text(), timeout=10_000)
