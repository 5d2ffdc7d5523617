"""The Modder Hooks dock's Plugins tab against a real server in dev mode: statuses and colours,
issue lines with file:line, the selected plugin's log lines and problems, Reload and Reload
selected (transactional: the previous version keeps running), polling only while the tab is
visible, and a server that runs no plugins (its reason shown, no error box)."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QColor

from comfyvn.client.api import Connection
from comfyvn.gui.api import StudioApi
from comfyvn.gui.app import UsageError, options_from_args
from comfyvn.gui.formatting import plugin_error_text, plugin_issue, reload_summary
from comfyvn.gui.panels.plugins import COLOUR_ROLE, NAME_ROLE, STATUS_ROLE, PluginsPanel
from comfyvn.gui.theme import STATUS_COLORS

from .support import ServerProcess, emit_scene
from .test_gui_support import make_window

pytestmark = pytest.mark.gui

GOOD = """
    CTX = {}

    def setup(ctx):
        CTX["log"] = ctx.log
        ctx.log.info("good is ready")

    def on_scene_enter(payload):
        CTX["log"].info("entered %s", payload["node"])
"""
RAISES = """
    def on_scene_enter(payload):
        raise RuntimeError("boom")
"""
SYNTAX = "def on_scene_enter(payload)\n    pass\n"
TYPO = "def on_scene_entr(payload):\n    pass\n"
# status -> colour the tab must show
EXPECTED = {
    "good": ("loaded", "green"),
    "raises": ("failing", "amber"),
    "syntax": ("error", "red"),
    "typo": ("warning", "amber"),
}


def write_plugin(root: Path, name: str, body: str) -> None:
    (root / f"{name}.py").write_text(textwrap.dedent(body), encoding="utf-8")


def plugin_server(tmp: Path) -> ServerProcess:
    root = tmp / "plugins"
    root.mkdir()
    for name, body in (("good", GOOD), ("raises", RAISES), ("syntax", SYNTAX), ("typo", TYPO)):
        write_plugin(root, name, body)
    # --no-watch: what changes in the list comes from the Reload buttons, not the file watcher
    return ServerProcess(
        tmp / "data",
        extra_args=["--dev", "--no-watch"],
        env={"COMFYVN_MOD_PLUGIN_ROOT": str(root)},
    ).start()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = plugin_server(tmp_path_factory.mktemp("plugins"))
    emit_scene(proc, "forest")  # good logs it, raises raises
    yield proc
    proc.stop()


def open_plugins_tab(qtbot, srv: ServerProcess, tmp_path: Path, workspace: str = "scenario"):
    win = make_window(srv, tmp_path / "studio.ini", workspace=workspace)
    qtbot.addWidget(win)
    qtbot.waitUntil(lambda: win.api is not None, timeout=10_000)
    win.open_plugins()
    return win


def rows(panel: PluginsPanel) -> dict[str, object]:
    items = (panel.tree.topLevelItem(i) for i in range(panel.tree.topLevelItemCount()))
    return {item.data(0, NAME_ROLE): item for item in items}


def dot_color(item) -> str:
    return item.icon(0).pixmap(14, 14).toImage().pixelColor(7, 7).name()


def wait_for_statuses(qtbot, panel: PluginsPanel, expected: dict[str, str]) -> None:
    def ready() -> bool:
        by_name = {p["name"]: p["status"] for p in panel.plugins()}
        return all(by_name.get(name) == status for name, status in expected.items())

    qtbot.waitUntil(ready, timeout=15_000)


def test_tab_lists_every_plugin_with_status_colour_and_issue_line(
    qtbot, srv: ServerProcess, tmp_path: Path
) -> None:
    win = open_plugins_tab(qtbot, srv, tmp_path)
    panel = win.plugins_panel
    assert win.hooks_tabs.current_tab == "plugins" and panel.isVisible()
    wait_for_statuses(qtbot, panel, {n: s for n, (s, _) in EXPECTED.items()})

    items = rows(panel)
    assert set(items) == set(EXPECTED)
    for name, (status, colour) in EXPECTED.items():
        item = items[name]
        assert item.data(0, STATUS_ROLE) == status, name
        assert item.data(0, COLOUR_ROLE) == colour, name
        assert dot_color(item) == QColor(STATUS_COLORS[colour]).name(), name
        assert item.text(0) == status.capitalize()
    assert items["good"].text(2) == "folder" and items["good"].text(3) == "on_scene_enter"
    assert items["good"].text(4) == "1" and items["good"].text(5) == "0"  # calls, errors
    assert items["raises"].text(5) == "1"

    # The line under a row: the load error with file:line, or the last error a hook raised.
    syntax = panel.issue_text("syntax") or ""
    assert "syntax.py:1 SyntaxError" in syntax and "not running" in syntax
    assert "RuntimeError: boom" in (panel.issue_text("raises") or "")
    assert panel.issue_text("good") is None
    assert panel.status_text() == ""  # no reload yet, nothing failed to list
    assert "4 plugin(s)" in panel.footer.full_text()


def test_selecting_a_plugin_shows_its_log_lines_and_problems(
    qtbot, srv: ServerProcess, tmp_path: Path
) -> None:
    win = open_plugins_tab(qtbot, srv, tmp_path)
    panel = win.plugins_panel
    wait_for_statuses(qtbot, panel, {"good": "loaded", "raises": "failing"})
    # the first listing selects a plugin that needs attention
    assert panel.selected_name() in {"raises", "syntax", "typo"}

    assert panel.select("good")
    messages = [message for _, _, message in panel.log_lines()]
    assert "good is ready" in messages and "entered forest" in messages
    assert all(level == "INFO" for _, level, _ in panel.log_lines())
    text = panel.log_view.toPlainText()
    assert "good is ready" in text and "entered forest" in text
    assert panel.caption.full_text().startswith("good · folder · hooks: on_scene_enter")

    assert panel.select("raises")
    assert ("ERROR", "on_scene_enter raised RuntimeError: boom") in [
        (level, message) for _, level, message in panel.log_lines()
    ]
    assert "good is ready" not in panel.log_view.toPlainText()

    assert panel.select("typo")
    problems = panel.problem_lines()
    assert problems and "did you mean on_scene_enter" in problems[0]
    assert "PROBLEM" in panel.log_view.toPlainText()

    # clicking a plugin's issue line selects the plugin itself
    syntax_row = rows(panel)["syntax"]
    panel.tree.setCurrentItem(syntax_row.child(0))
    assert panel.selected_name() == "syntax"
    assert panel.tree.currentItem() is syntax_row


def test_reload_buttons_pick_up_new_files_and_keep_the_previous_version(
    qtbot, tmp_path: Path
) -> None:
    server = plugin_server(tmp_path)
    root = tmp_path / "plugins"
    try:
        win = open_plugins_tab(qtbot, server, tmp_path)
        panel = win.plugins_panel
        qtbot.waitUntil(lambda: panel.load_count >= 1, timeout=15_000)
        assert panel.reload_button.isEnabled()

        # Reload (all): a new file appears in the list; syntax still fails, nothing runs of it.
        write_plugin(root, "fresh", "def on_choice_render(payload):\n    pass\n")
        with qtbot.waitSignal(panel.reloaded, timeout=30_000) as reloaded:
            qtbot.mouseClick(panel.reload_button, Qt.MouseButton.LeftButton)
        assert reloaded.args == [False]  # syntax.py's import failed again
        assert "fresh" in rows(panel)
        assert rows(panel)["fresh"].data(0, STATUS_ROLE) == "loaded"
        status = panel.status_text()
        assert status.startswith("reload failed for syntax: syntax.py:1 SyntaxError"), status
        assert "(not running)" in status

        # Reload selected: good's new version is broken, so its previous version keeps running.
        write_plugin(root, "good", GOOD + "\n    def broken(:\n")
        assert panel.select("good")
        with qtbot.waitSignal(panel.reloaded, timeout=30_000) as reloaded:
            qtbot.mouseClick(panel.reload_selected_button, Qt.MouseButton.LeftButton)
        assert reloaded.args == [False]
        assert panel.last_reload is not None
        assert [r["name"] for r in panel.last_reload["results"]] == ["good"]
        status = panel.status_text()
        assert status.startswith("reload failed for good: good.py:"), status
        assert "SyntaxError" in status and status.endswith("(previous version still running)")
        good = rows(panel)["good"]
        assert good.data(0, STATUS_ROLE) == "error" and good.data(0, COLOUR_ROLE) == "red"
        issue = panel.issue_text("good") or ""
        assert issue.startswith("⚠ running previous version · good.py:") and "SyntaxError" in issue
        # the previous version still handles events
        emit_scene(server, "after-broken-edit")
        qtbot.waitUntil(
            lambda: any(m == "entered after-broken-edit" for _, _, m in panel.log_lines()),
            timeout=15_000,
        )

        write_plugin(root, "good", GOOD)  # fixed: the selected reload now succeeds
        with qtbot.waitSignal(panel.reloaded, timeout=30_000) as reloaded:
            panel.reload_selected()
        assert reloaded.args == [True]
        assert panel.status_text().startswith("Reloaded good at ")
        assert rows(panel)["good"].data(0, STATUS_ROLE) == "loaded"
        assert panel.issue_text("good") is None
    finally:
        server.stop()


def test_polls_only_while_the_dock_and_tab_are_visible(
    qtbot, srv: ServerProcess, tmp_path: Path
) -> None:
    win = make_window(srv, tmp_path / "studio.ini", workspace="scenario")
    qtbot.addWidget(win)
    qtbot.waitUntil(lambda: win.api is not None, timeout=10_000)
    panel = win.plugins_panel
    panel.poll_timer.setInterval(200)
    assert win.hooks_tabs.current_tab == "stream"
    assert not panel.polling and panel.load_count == 0  # hidden tab: not even a first listing

    win.hooks_tabs.show_tab("plugins")
    assert panel.polling
    qtbot.waitUntil(lambda: panel.load_count >= 3, timeout=10_000)  # keeps polling

    win.hooks_tabs.show_tab("stream")
    assert not panel.polling
    qtbot.waitUntil(lambda: not panel.busy, timeout=10_000)
    stopped = panel.load_count
    qtbot.wait(800)  # four intervals
    assert panel.load_count == stopped

    win.hooks_tabs.show_tab("plugins")
    assert panel.polling
    win.hooks_dock.hide()  # a hidden dock stops it too
    assert not panel.polling
    win.open_plugins_action.trigger()
    assert panel.polling and win.hooks_dock.isVisible()


def test_the_open_tab_is_remembered(qtbot, tmp_path: Path) -> None:
    settings_path = tmp_path / "studio.ini"
    first = make_window(None, settings_path, workspace="scenario", connect=False)
    qtbot.addWidget(first)
    first.hooks_tabs.show_tab("plugins")
    first.close()
    assert QSettings(str(settings_path), QSettings.Format.IniFormat).value("hooks/tab") == (
        "plugins"
    )
    second = make_window(None, settings_path, connect=False)
    qtbot.addWidget(second)
    assert second.hooks_tabs.current_tab == "plugins"
    second.close()


def test_a_server_without_plugins_shows_its_reason_not_an_error(
    qtbot, server: ServerProcess
) -> None:
    panel = PluginsPanel()
    qtbot.addWidget(panel)
    panel.show()
    with qtbot.waitSignal(panel.loaded, timeout=10_000) as loaded:
        panel.set_connection(StudioApi(Connection(server.url, server.token), 10.0))
    assert loaded.args == [True]
    assert panel.reason is not None and "dev mode is off" in panel.reason
    assert panel.status_text().startswith("No plugins run on this server: dev mode is off")
    placeholder = panel.tree.topLevelItem(0)
    assert placeholder.text(0).startswith("No plugins run: dev mode is off")
    assert not panel.reload_button.isEnabled()

    # The reload endpoint's 409 is shown the same way (in the tab, no message box).
    with qtbot.waitSignal(panel.reloaded, timeout=10_000) as reloaded:
        panel.reason = None  # as if the button were still enabled
        panel.reload()
    assert reloaded.args == [False]
    assert "dev mode is off" in (panel.reason or "")
    qtbot.waitUntil(lambda: not panel.busy, timeout=10_000)
    assert panel.status_text().startswith("No plugins run on this server")
    assert panel.last_error is None
    panel.shutdown()


def test_dead_server_is_named_in_the_tab(qtbot) -> None:
    panel = PluginsPanel()
    qtbot.addWidget(panel)
    panel.show()
    with qtbot.waitSignal(panel.loaded, timeout=10_000) as loaded:
        panel.set_connection(StudioApi(Connection("http://127.0.0.1:9", "x"), 5.0))
    assert loaded.args == [False]
    assert "cannot reach the server at http://127.0.0.1:9" in panel.status_text()
    panel.shutdown()


# -- formatting (no Qt, no server) -----------------------------------------------------------
def test_error_text_puts_file_and_line_first() -> None:
    error = {
        "message": "/plugins/demo.py:3: SyntaxError: invalid syntax",
        "file": "/plugins/demo.py",
        "line": 3,
        "phase": "import",
    }
    assert plugin_error_text(error) == "demo.py:3 SyntaxError: invalid syntax"
    assert (
        plugin_error_text(error, full_path=True) == "/plugins/demo.py:3 SyntaxError: invalid syntax"
    )
    assert plugin_error_text({"message": "setup did not finish", "file": None}) == (
        "setup did not finish"
    )
    assert plugin_issue({"status": "loaded", "error": None}) is None
    assert plugin_issue({"status": "error", "error": error, "running": "previous"}) == (
        "red",
        "running previous version · demo.py:3 SyntaxError: invalid syntax",
    )
    assert plugin_issue({"status": "failing", "last_error": "KeyError: 'x'"}) == (
        "amber",
        "last error: KeyError: 'x'",
    )


def test_reload_summary() -> None:
    error = {"message": "/p/demo.py:3: SyntaxError: bad", "file": "/p/demo.py", "line": 3}
    failed = {
        "ok": False,
        "results": [
            {"name": "ok1", "ok": True, "status": "loaded", "running": "current"},
            {"name": "demo", "ok": False, "status": "error", "running": "previous", "error": error},
        ],
    }
    assert reload_summary(failed, None, 0.0) == (
        False,
        "reload failed for demo: demo.py:3 SyntaxError: bad (previous version still running)",
    )
    fine = {
        "ok": True,
        "results": [
            {"name": "a", "ok": True, "status": "loaded"},
            {"name": "new", "ok": True, "status": "loaded"},
            {"name": "gone", "ok": True, "status": "removed"},
        ],
    }
    ok, text = reload_summary(fine, None, 0.0, known={"a", "gone"})
    assert ok and text.startswith("Reloaded 2 plugin(s) at ")
    assert text.endswith("; new: new; removed: gone")


def test_the_tab_to_open_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    args = argparse.Namespace(server=None, token=None, data_dir=None, workspace=None)
    monkeypatch.delenv("COMFYVN_STUDIO_HOOKS_TAB", raising=False)
    assert options_from_args(args).hooks_tab is None
    monkeypatch.setenv("COMFYVN_STUDIO_HOOKS_TAB", "plugins")
    assert options_from_args(args).hooks_tab == "plugins"
    monkeypatch.setenv("COMFYVN_STUDIO_HOOKS_TAB", "bogus")
    with pytest.raises(UsageError, match="unknown Modder Hooks tab 'bogus'"):
        options_from_args(args)
