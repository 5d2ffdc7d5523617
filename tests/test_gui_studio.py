"""The Studio window against a real server subprocess with fake providers of every colour:
panel rows and dots, quota, masking, workspaces and menus, polling, the hooks dock, layout."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QColor

from comfyvn.gui.panels.debug_integrations import (
    COL_KIND,
    COL_LATENCY,
    COL_QUOTA,
    ID_ROLE,
    STATUS_ROLE,
)
from comfyvn.gui.theme import STATUS_COLORS

from .support import ServerProcess, scene_enter_payload
from .test_gui_support import (
    EXPECTED,
    OPENAI_SECRET,
    RUNPOD_SECRET,
    all_texts,
    make_window,
    register_providers,
)
from .test_providers_fakes import FakeProviders

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProviders]:
    fake = FakeProviders().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, fake: FakeProviders) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("studio"),
        extra_args=["--demo"],
        env={"COMFYVN_PROVIDER_TIMEOUT": "3"},
    ).start()
    with proc.client() as client:
        register_providers(client, fake)
    yield proc
    proc.stop()


@pytest.fixture
def api(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.client() as client:
        yield client


@pytest.fixture
def window(qtbot, srv: ServerProcess, tmp_path: Path, request: pytest.FixtureRequest):
    workspace = getattr(request, "param", "system")
    win = make_window(srv, tmp_path / "studio.ini", workspace=workspace)
    qtbot.addWidget(win)
    qtbot.waitUntil(lambda: win.api is not None, timeout=10_000)
    return win


def top_items(tree) -> dict[str, object]:
    items = (tree.topLevelItem(i) for i in range(tree.topLevelItemCount()))
    return {item.data(0, ID_ROLE): item for item in items}


def dot_color(item) -> str:
    image = item.icon(0).pixmap(14, 14).toImage()
    return image.pixelColor(7, 7).name()


def test_rows_and_colours_match_the_api(qtbot, window, api: httpx.Client) -> None:
    panel = window.debug_panel
    qtbot.waitUntil(lambda: panel.refresh_count >= 1, timeout=15_000)
    results = api.get("/api/providers/status").json()["results"]
    from_api = {r["provider_id"]: r["status"] for r in results}
    assert from_api == {pid: colour for pid, (_, colour) in EXPECTED.items()}

    items = top_items(panel.tree)
    assert set(items) == set(EXPECTED)
    for pid, (kind, colour) in EXPECTED.items():
        item = items[pid]
        assert item.data(0, STATUS_ROLE) == colour, pid
        assert dot_color(item) == QColor(STATUS_COLORS[colour]).name(), pid
        assert item.text(COL_KIND) == kind
    assert items["comfy-main"].text(COL_LATENCY).endswith("ms")
    assert items["echo-off"].text(0) == "Disabled"
    summary = panel.summary_label.text()
    assert "2 OK" in summary and "1 Degraded" in summary and "1 Down" in summary
    # Every enabled provider was just checked: the disabled one is counted as such, in the
    # panel and on the System page, never as "Not checked".
    card = window.system.providers_value.text()
    for text in (summary, card):
        assert "1 Disabled" in text and "Not checked" not in text, text


def test_quota_fields_for_providers_that_have_them(qtbot, window) -> None:
    panel = window.debug_panel
    qtbot.waitUntil(lambda: panel.refresh_count >= 1, timeout=15_000)
    items = top_items(panel.tree)
    comfy = items["comfy-main"].text(COL_QUOTA)
    assert "VRAM 20.0/24.0 GiB free" in comfy and "1 running, 2 pending" in comfy
    runpod = items["runpod-low"].text(COL_QUOTA)
    assert "balance $2.00" in runpod and "$0.40/h" in runpod and "h left" in runpod
    assert "req 4999/5000 left" in items["openai-main"].text(COL_QUOTA)
    assert items["http-down"].text(COL_QUOTA) == "—"  # http reports no quota
    assert "low balance" in items["runpod-low"].text(5)


def test_only_masked_values_reach_the_panel(qtbot, window) -> None:
    panel = window.debug_panel
    qtbot.waitUntil(lambda: panel.refresh_count >= 1, timeout=15_000)
    openai = top_items(panel.tree)["openai-main"]
    openai.setExpanded(True)
    children = [openai.child(i).text(0) for i in range(openai.childCount())]
    secret_line = next(line for line in children if line.startswith("secrets.api_key"))
    assert secret_line.split()[-1] == "****" + OPENAI_SECRET[-4:]
    assert any(line.startswith("base_url") and "/oa/v1" in line for line in children)
    everything = all_texts(panel.tree) + panel.banner.text() + panel.footer.text()
    for secret in (OPENAI_SECRET, RUNPOD_SECRET):
        assert secret not in everything
        assert secret[4:-4] not in everything


@pytest.mark.parametrize("window", ["scenario"], indirect=True)
def test_entering_system_opens_the_dock_and_menus_open_docks(window) -> None:
    assert window.workspace == "scenario"
    assert not window.debug_dock.isVisible()
    assert window.hooks_dock.isVisible()
    window.workspace_actions["system"].trigger()
    assert window.stack.currentWidget() is window.system
    assert window.debug_dock.isVisible()

    window.debug_dock.close()  # closed by hand, then System entered again: opens again
    window.workspace_actions["scenario"].trigger()
    window.workspace_actions["system"].trigger()
    assert window.debug_dock.isVisible()

    entries = [a.text() for a in window.system_menu.actions()]
    assert "Debug Integrations" in entries and "Modder Hooks" in entries
    workspaces = [a.text() for a in window.workspaces_menu.actions()]
    assert "Scenario" in workspaces and "System" in workspaces
    window.debug_dock.close()
    window.hooks_dock.close()
    window.open_debug_action.trigger()
    window.open_hooks_action.trigger()
    assert window.debug_dock.isVisible() and window.hooks_dock.isVisible()


def test_auto_refresh_toggle_starts_and_stops_polling(
    qtbot,
    window,
    fake: FakeProviders,
) -> None:
    panel = window.debug_panel
    qtbot.waitUntil(lambda: panel.refresh_count >= 1 and not panel.busy, timeout=15_000)
    assert panel.auto_check.isChecked() and panel.interval_spin.value() == 15  # defaults
    assert panel.polling
    panel.auto_check.setChecked(False)
    assert not panel.polling
    panel.interval_spin.setValue(1)

    start, hits = panel.refresh_count, len(fake.requests_to("/comfy/system_stats"))
    panel.auto_check.setChecked(True)
    assert panel.polling
    qtbot.waitUntil(lambda: panel.refresh_count >= start + 2, timeout=10_000)
    assert len(fake.requests_to("/comfy/system_stats")) >= hits + 2  # real checks, not cached

    panel.auto_check.setChecked(False)
    assert not panel.polling
    qtbot.waitUntil(lambda: not panel.busy, timeout=10_000)
    stopped = panel.refresh_count
    qtbot.wait(2500)  # 2.5 intervals: nothing may poll
    assert panel.refresh_count == stopped

    panel.auto_check.setChecked(True)
    assert panel.polling
    window.debug_dock.hide()  # hidden dock: polling stops
    assert not panel.polling
    window.open_debug_action.trigger()
    assert panel.polling


@pytest.mark.parametrize("window", ["scenario"], indirect=True)
def test_hooks_dock_shows_scene_enter_while_the_scenario_plays(qtbot, window) -> None:
    scenario, hooks = window.scenario, window.hooks_panel
    qtbot.waitUntil(lambda: hooks.stream_state == "live", timeout=10_000)
    qtbot.waitUntil(lambda: scenario.start_button.isEnabled(), timeout=10_000)
    summary = scenario.current_summary()
    assert summary is not None and summary["id"] == "lighthouse"

    qtbot.mouseClick(scenario.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: scenario.last_turn is not None, timeout=10_000)
    assert "storm batters" in scenario.text_label.text()

    def entered(node: str) -> bool:
        return any(
            e.get("event") == "on_scene_enter"
            and e["data"]["scene_id"] == "lighthouse"
            and e["data"]["node"] == node
            for e in hooks.envelopes()
        )

    qtbot.waitUntil(lambda: entered("arrival"), timeout=10_000)
    labels = {b.property("choice_id"): b for b in scenario.choice_buttons()}
    assert set(labels) == {"open_door", "peek"}  # POV mara sees only her choices
    qtbot.mouseClick(labels["open_door"], Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: entered("kitchen"), timeout=10_000)
    assert scenario.speaker_label.text() == "Theo"
    trust = scenario.variables_tree.findItems("trust", Qt.MatchFlag.MatchExactly, 0)[0]
    assert trust.text(1) == "1"
    assert scenario.history_list.count() == 2
    assert scenario.history_list.item(0).text() == "arrival  →  open_door"


def test_hooks_dock_filter_pause_clear_and_json(
    qtbot,
    window,
    api: httpx.Client,
) -> None:
    hooks = window.hooks_panel
    qtbot.waitUntil(lambda: hooks.stream_state == "live", timeout=10_000)
    hooks.clear()
    scene = api.get("/api/scenario/scenes/lighthouse").json()["scene"]
    assert api.post("/api/scenario/run/step", json={"scene": scene}).status_code == 200
    qtbot.waitUntil(lambda: len(hooks.envelopes()) >= 2, timeout=10_000)
    events = [e["event"] for e in hooks.envelopes()]
    assert events == ["on_scene_enter", "on_choice_render"]

    hooks.set_filter("on_choice_render")
    shown = hooks.envelopes(visible_only=True)
    assert [e["event"] for e in shown] == ["on_choice_render"]
    hooks.table.selectRow(0)
    assert json.loads(hooks.detail.toPlainText()) == shown[0]
    hooks.set_filter(None)
    assert len(hooks.envelopes(visible_only=True)) == 2

    hooks.pause_button.click()
    received = hooks.received
    emitted = api.post(
        "/api/modder/hooks/test",
        json={"event": "on_scene_enter", "payload": scene_enter_payload("paused")},
    ).json()
    qtbot.waitUntil(lambda: hooks.received > received, timeout=10_000)
    assert len(hooks.envelopes()) == 2  # frozen while paused
    hooks.pause_button.click()
    assert hooks.envelopes()[-1]["seq"] == emitted["seq"]

    hooks.clear()
    assert hooks.envelopes() == []
    api.post(
        "/api/modder/hooks/test",
        json={"event": "on_scene_enter", "payload": scene_enter_payload("after-clear")},
    )
    qtbot.waitUntil(lambda: len(hooks.envelopes()) == 1, timeout=10_000)
    assert hooks.envelopes()[0]["data"]["node"] == "after-clear"


def test_dock_layout_is_remembered_between_runs(qtbot, tmp_path: Path) -> None:
    settings_path = tmp_path / "studio.ini"
    first = make_window(None, settings_path, workspace="system", connect=False)
    qtbot.addWidget(first)
    first.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, first.hooks_dock)
    first.debug_panel.interval_spin.setValue(42)
    first.resize(1100, 700)
    first.close()
    assert QSettings(str(settings_path), QSettings.Format.IniFormat).contains(
        "workspace/system/state"
    )

    second = make_window(None, settings_path, connect=False)  # no --workspace: the last one
    qtbot.addWidget(second)
    assert second.workspace == "system"
    assert second.dockWidgetArea(second.hooks_dock) == Qt.DockWidgetArea.LeftDockWidgetArea
    assert second.debug_dock.isVisible()
    # the offscreen platform's small virtual screen clamps the width; the height shows the
    # saved geometry was restored (the default is 800)
    assert second.height() == 700
    assert second.debug_panel.interval_spin.value() == 42
    second.close()
