"""Studio rough edges found in a real X window, each against a real server subprocess: the
System cards after a server restart, the dock menu items' check marks, the Debug Integrations
footer after Auto-refresh is unticked, and the window at 1024x700."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtGui import QFont
from PySide6.QtWidgets import QWidget

from comfyvn.gui.main_window import SIZE_ENV, initial_size
from comfyvn.gui.theme import dot_html
from comfyvn.gui.workspaces import system as system_module

from .support import ServerProcess, emit_scene
from .test_gui_support import make_window

pytestmark = pytest.mark.gui

SMALL = (1024, 700)
GREEN, RED = dot_html("green"), dot_html("red")


@pytest.fixture
def window(qtbot, server: ServerProcess, tmp_path: Path, request: pytest.FixtureRequest):
    workspace = getattr(request, "param", "system")
    win = make_window(server, tmp_path / "studio.ini", workspace=workspace)
    qtbot.addWidget(win)
    qtbot.waitUntil(lambda: win.api is not None, timeout=10_000)
    yield win
    win.close()


def test_system_cards_follow_the_stream_through_a_server_restart(
    qtbot, server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cards' own timer must play no part: only the connection changes may refresh them.
    monkeypatch.setattr(system_module, "REFRESH_MS", 600_000)
    win = make_window(server, tmp_path / "studio.ini", workspace="system")
    qtbot.addWidget(win)
    system, hooks = win.system, win.hooks_panel
    qtbot.waitUntil(lambda: hooks.stream_state == "live", timeout=15_000)
    qtbot.waitUntil(lambda: "committed up to seq" in system.log_value.text(), timeout=10_000)
    assert GREEN in system.server_value.text()
    seq = emit_scene(server, "before-restart")["seq"]
    assert f"seq {seq}" not in system.log_value.text()  # nothing refreshed the card yet

    server.stop()
    qtbot.waitUntil(lambda: hooks.stream_state == "retry", timeout=15_000)
    qtbot.waitUntil(lambda: RED in system.server_value.text(), timeout=10_000)

    server.start()  # the same port and data dir
    qtbot.waitUntil(lambda: "live again" in hooks.stream_message, timeout=20_000)
    qtbot.waitUntil(lambda: GREEN in system.server_value.text(), timeout=10_000)
    qtbot.waitUntil(lambda: f"seq {seq} " in system.log_value.text(), timeout=10_000)
    assert "connected" in win.connection_label.text()
    win.close()


def test_dock_menu_items_are_checked_while_their_dock_shows(qtbot, window) -> None:
    for dock, action in (
        (window.debug_dock, window.open_debug_action),
        (window.hooks_dock, window.open_hooks_action),
    ):
        assert action in window.system_menu.actions()
        assert action.isCheckable()
        qtbot.waitUntil(dock.isVisible, timeout=5_000)
        assert action.isChecked()
        action.trigger()  # unticking it closes the dock
        assert not dock.isVisible() and not action.isChecked()
        action.trigger()  # ticking it opens the dock again
        assert dock.isVisible() and action.isChecked()
        dock.close()  # closed another way: the tick follows
        assert not action.isChecked()
        dock.show()
        assert action.isChecked()


def test_footer_follows_the_auto_refresh_toggle(qtbot, window) -> None:
    panel = window.debug_panel
    qtbot.waitUntil(lambda: panel.refresh_count >= 1 and not panel.busy, timeout=15_000)
    assert panel.auto_check.isChecked()
    assert panel.footer.text().startswith("Checked ")
    assert "auto-refresh on" in panel.footer.text()
    panel.auto_check.setChecked(False)
    assert "auto-refresh on" not in panel.footer.text()
    assert panel.footer.text().startswith("Checked ")  # the rest of the footer stays
    panel.auto_check.setChecked(True)
    assert panel.footer.text().count("auto-refresh on") == 1


def _clipped(root: QWidget) -> list[str]:
    """Visible controls narrower or lower than their minimum size hint."""
    names = {
        "scene combo": "scene_combo",
        "POV combo": "pov_combo",
        "seed": "seed_spin",
        "variables": "variables_tree",
        "history": "history_list",
        "hooks table": "table",
        "hook filter": "filter_combo",
    }
    out = []
    for label, attr in names.items():
        widget = getattr(root, attr, None)
        if widget is None or not widget.isVisible():
            continue
        hint, size = widget.minimumSizeHint(), widget.size()
        if size.width() < hint.width() or size.height() < hint.height():
            out.append(f"{label}: {size.toTuple()} < {hint.toTuple()}")
    return out


@pytest.mark.parametrize("workspace", ["scenario", "system"])
def test_workspaces_fit_1024x700(
    qtbot, server: ServerProcess, tmp_path: Path, workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SIZE_ENV, "1024x700")
    win = make_window(server, tmp_path / "studio.ini", workspace=workspace)
    qtbot.addWidget(win)
    qtbot.waitUntil(win.settled, timeout=20_000)
    qtbot.wait(200)
    hint = win.minimumSizeHint()
    assert hint.width() <= SMALL[0] - 100 and hint.height() <= SMALL[1] - 60, hint
    assert win.size().toTuple() == SMALL  # the window did not widen itself
    clipped = _clipped(win.scenario) + _clipped(win.hooks_panel)
    assert not clipped, clipped
    assert win.hooks_panel.table.width() >= 280
    assert win.hooks_panel.table.horizontalScrollBar().maximum() == 0  # no sideways scrolling
    assert win.scenario.variables_tree.horizontalScrollBar().maximum() == 0
    if workspace == "system":
        assert win.debug_dock.height() <= 0.5 * SMALL[1]  # the hooks list keeps some rows
    if workspace == "scenario":
        assert win.scenario.scene_combo.width() >= 150
        assert win.scenario.variables_tree.width() >= 150
    # a desktop's fonts run larger than the offscreen platform's: 20% more must still fit
    font = QFont(win.font())
    font.setPointSizeF(font.pointSizeF() * 1.2)
    win.setFont(font)
    qtbot.wait(50)
    hint = win.minimumSizeHint()
    assert hint.width() <= SMALL[0] and hint.height() <= SMALL[1], hint
    win.close()


def test_studio_size_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, expected in (
        ("1024x700", SMALL),
        (" 1366 X 768 ", (1366, 768)),
        ("100x100", (640, 480)),
        ("big", None),
        ("", None),
    ):
        monkeypatch.setenv(SIZE_ENV, value)
        assert initial_size() == expected
