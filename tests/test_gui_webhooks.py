"""The Webhooks dock against a real server and a real receiver on 127.0.0.1: subscriptions with
their state, a failed attempt and then a successful one after Redeliver, userinfo masked in every
widget, a GUI thread that never blocks while the receiver hangs, the secret shown once, the
checkable System menu action, Enable/Disable and Delete (confirmed), polling only while visible.

Set ``COMFYVN_WEBHOOKS_SCREENSHOT=docs/images/studio_webhooks.png`` to make
``test_screenshot_with_a_healthy_and_a_failing_subscription`` write the docs picture
(``docs/images/make_screenshots.py`` does).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QAbstractButton,
    QDialog,
    QLabel,
    QLineEdit,
    QMessageBox,
    QTreeWidget,
    QWidget,
)

from comfyvn.gui.formatting import mask_userinfo, webhook_state
from comfyvn.gui.panels.webhooks import STATE_ROLE, WebhooksPanel

from .support import ServerProcess, emit_scene
from .test_gui_support import all_texts, make_window
from .test_webhooks_receiver import WEBHOOKS, Receiver, Reply

pytestmark = pytest.mark.gui

PASSWORD = "s3cretPW-do-not-show"
HANG_S = 4.0


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver().start()
    yield rec
    rec.stop()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # one try per delivery: a 500 fails it at once, so Redeliver is what fixes it
    proc = ServerProcess(
        tmp_path_factory.mktemp("gui-webhooks") / "data",
        env={"COMFYVN_WEBHOOK_RETRY_SCHEDULE": "0", "COMFYVN_WEBHOOK_TIMEOUT": "10"},
    ).start()
    yield proc
    proc.stop()


@pytest.fixture
def api(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.client() as client:
        for sub in client.get(WEBHOOKS).json()["items"]:
            client.delete(f"{WEBHOOKS}/{sub['id']}")
        yield client


def userinfo_url(receiver: Receiver, path: str) -> str:
    return f"http://hookuser:{PASSWORD}@127.0.0.1:{receiver.port}{path}"


def subscribe(api: httpx.Client, url: str, events: list[str], description: str = "") -> dict:
    response = api.post(WEBHOOKS, json={"url": url, "events": events, "description": description})
    assert response.status_code == 201, response.text
    return response.json()["webhook"]


def open_dock(qtbot, srv: ServerProcess, tmp_path: Path, workspace: str = "system"):
    win = make_window(srv, tmp_path / "studio.ini", workspace=workspace)
    qtbot.addWidget(win)
    qtbot.waitUntil(lambda: win.api is not None, timeout=10_000)
    if not win.webhooks_action.isChecked():  # behind the Debug Integrations tab in System
        win.webhooks_action.trigger()
    assert win.webhooks_action.isChecked() and win.webhooks_panel.shown
    return win


def every_text(root: QWidget) -> str:
    """What any widget under ``root`` (dialogs included) shows: texts, tooltips, titles."""
    out = [root.windowTitle()]
    widgets = [root, *root.findChildren(QWidget)]
    for widget in widgets:
        out.extend([widget.toolTip(), widget.windowTitle()])
        if isinstance(widget, QLabel | QAbstractButton):
            out.append(widget.text())
        elif isinstance(widget, QLineEdit):
            out.extend([widget.text(), widget.displayText()])
        elif isinstance(widget, QTreeWidget):
            out.append(all_texts(widget))
    return "\n".join(out)


def sub_rows(panel: WebhooksPanel) -> dict[str, tuple[str, str, str]]:
    tree = panel.subs_tree
    items = (tree.topLevelItem(i) for i in range(tree.topLevelItemCount()))
    return {
        str(item.text(1)): (item.data(0, STATE_ROLE), item.text(0), item.text(3)) for item in items
    }


def attempt_rows(panel: WebhooksPanel) -> list[list[str]]:
    tree = panel.attempts_tree
    return [
        [tree.topLevelItem(i).text(c) for c in range(tree.columnCount())]
        for i in range(tree.topLevelItemCount())
        if tree.topLevelItem(i).data(0, STATE_ROLE)
    ]


def test_formatting_masks_userinfo_and_names_states() -> None:
    text = f"POST http://u:{PASSWORD}@h:1/x failed; https://a:b@c/ too; http://plain/ ok"
    masked = mask_userinfo(text)
    assert PASSWORD not in masked and ":b@" not in masked
    assert "http://u:****@h:1/x" in masked and "https://a:****@c/" in masked
    assert "http://plain/" in masked
    assert webhook_state({"enabled": False, "disabled_reason": "410"}) == (
        "gray",
        "Disabled",
        "410",
    )
    colour, label, reason = webhook_state(
        {"enabled": True, "consecutive_failures": 2, "last_failure_at": 10.0}
    )
    assert (colour, label) == ("red", "Failing") and "2 failed deliveries in a row" in reason
    assert webhook_state({"enabled": True, "last_success_at": 5.0})[1] == "Enabled"


def test_failed_attempt_then_redeliver_succeeds_and_userinfo_is_masked(
    qtbot, srv: ServerProcess, receiver: Receiver, api: httpx.Client, tmp_path: Path
) -> None:
    receiver.plan(
        "/flaky", Reply(500, body=b"receiver exploded: db locked"), then=Reply(204, body=b"")
    )
    sub = subscribe(api, userinfo_url(receiver, "/flaky"), ["on_scene_enter"], "staging bot")
    assert PASSWORD not in sub["url"]
    emit_scene(srv, "harbour")
    receiver.wait_for("/flaky", 1)

    win = open_dock(qtbot, srv, tmp_path)
    panel = win.webhooks_panel
    qtbot.waitUntil(
        lambda: any(d["status"] == "failed" for d in panel.deliveries()), timeout=15_000
    )
    qtbot.waitUntil(lambda: len(attempt_rows(panel)) == 1, timeout=15_000)
    masked = f"http://hookuser:****@127.0.0.1:{receiver.port}/flaky"
    assert sub_rows(panel)[masked][1] == "Failing"
    assert "1 failed delivery in a row" in sub_rows(panel)[masked][2]
    failed = attempt_rows(panel)[0]
    assert failed[2] == "500" and failed[4] == "failed"
    assert failed[6] == "receiver exploded: db locked"
    assert failed[3].endswith(" ms") or failed[3].endswith(" s")  # latency
    assert panel.redeliver_button.isEnabled()

    with qtbot.waitSignal(panel.action_finished, timeout=20_000) as done:
        qtbot.mouseClick(panel.redeliver_button, Qt.MouseButton.LeftButton)
    assert done.args == ["redeliver", True]
    assert (
        panel.status_text().startswith("Redelivery of #")
        and "delivered, 204" in panel.status_text()
    )
    qtbot.waitUntil(lambda: len(attempt_rows(panel)) == 2, timeout=15_000)
    ok = attempt_rows(panel)[1]
    assert ok[2] == "204" and ok[4] == "delivered" and ok[5] == "—"
    qtbot.waitUntil(lambda: panel.deliveries()[0]["status"] == "delivered", timeout=15_000)
    qtbot.waitUntil(lambda: sub_rows(panel)[masked][1] == "Enabled", timeout=15_000)

    # An error in the form of a URL with userinfo is masked too (the banner, the status line).
    panel.status_label.setText(mask_userinfo(f"failed: {userinfo_url(receiver, '/x')}"))
    text = every_text(win)
    assert PASSWORD not in text
    assert masked in text


def test_gui_thread_never_blocks_while_the_receiver_hangs(
    qtbot, srv: ServerProcess, receiver: Receiver, api: httpx.Client, tmp_path: Path
) -> None:
    receiver.plan("/hang", then=Reply(200, body=b"late", delay=HANG_S))
    subscribe(api, userinfo_url(receiver, "/hang"), ["on_choice_render"])
    win = open_dock(qtbot, srv, tmp_path)
    panel = win.webhooks_panel
    qtbot.waitUntil(lambda: panel.selected_subscription() is not None, timeout=15_000)

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start()
    started = time.monotonic()
    with qtbot.waitSignal(panel.action_finished, timeout=30_000) as done:
        qtbot.mouseClick(panel.ping_button, Qt.MouseButton.LeftButton)
        assert panel.busy  # the ping runs on a worker thread
    took = time.monotonic() - started
    timer.stop()
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    stall = max(gaps, default=took)
    print(
        f"ping against a receiver hanging {HANG_S:g} s took {took:.2f} s; "
        f"longest GUI event-loop stall {stall * 1000:.0f} ms over {len(ticks)} ticks"
    )
    assert done.args == ["ping", True]
    assert took >= HANG_S - 0.5  # the receiver really hung
    assert len(ticks) > 50
    assert stall < 1.0
    assert "Ping: delivered, 200" in panel.status_text()


def test_new_subscription_shows_the_secret_once(
    qtbot, srv: ServerProcess, receiver: Receiver, api: httpx.Client, tmp_path: Path
) -> None:
    win = open_dock(qtbot, srv, tmp_path)
    panel = win.webhooks_panel
    qtbot.waitUntil(lambda: panel.refresh_count >= 1, timeout=15_000)
    dialog = panel.open_new_dialog()
    dialog.url_edit.setText(userinfo_url(receiver, "/new"))
    dialog.events_edit.setText("on_scene_enter, on_choice_render")
    dialog.description_edit.setText("from the dialog")
    dialog.accept()
    qtbot.waitUntil(lambda: panel.secret_dialog is not None, timeout=15_000)
    shown = panel.secret_dialog
    assert isinstance(shown, QDialog)
    secret = shown.secret_edit.text()
    assert secret.startswith("whsec_") and len(secret) > 20
    assert "will not be shown again" in shown.note.text()
    assert PASSWORD not in every_text(shown)
    qtbot.mouseClick(shown.copy_button, Qt.MouseButton.LeftButton)
    assert QGuiApplication.clipboard().text() == secret
    QGuiApplication.clipboard().clear()

    qtbot.waitUntil(lambda: len(panel.subscriptions()) == 1, timeout=15_000)
    created = panel.subscriptions()[0]
    assert created["events"] == ["on_scene_enter", "on_choice_render"]
    assert created["description"] == "from the dialog"
    assert created["secret"] != secret and secret[-4:] in created["secret"]  # masked hint only

    shown.close()
    qtbot.waitUntil(lambda: panel.secret_dialog is None, timeout=5_000)
    panel.refresh()
    qtbot.waitUntil(lambda: not panel.busy, timeout=15_000)
    text = every_text(win)
    assert secret not in text and PASSWORD not in text
    assert api.get(WEBHOOKS).json()["items"][0]["secret"] != secret  # the server masks it too


def test_menu_action_enable_disable_delete_and_polling(
    qtbot, srv: ServerProcess, receiver: Receiver, api: httpx.Client, tmp_path: Path
) -> None:
    subscribe(api, f"{receiver.url('/ok')}", ["*"])
    win = make_window(srv, tmp_path / "studio.ini", workspace="scenario")
    qtbot.addWidget(win)
    qtbot.waitUntil(lambda: win.api is not None, timeout=10_000)
    panel, action = win.webhooks_panel, win.webhooks_action
    assert action in win.system_menu.actions() and action.isCheckable()
    assert not win.webhooks_dock.isVisible() and not action.isChecked()
    assert not panel.polling and panel.refresh_count == 0  # hidden: no requests
    assert not panel.shown

    action.trigger()
    assert win.webhooks_dock.isVisible() and action.isChecked() and panel.polling
    qtbot.waitUntil(lambda: panel.refresh_count >= 1, timeout=15_000)
    action.trigger()  # the same action closes it
    assert not win.webhooks_dock.isVisible() and not action.isChecked() and not panel.polling

    win.set_workspace("system")  # available there: a tab next to Debug Integrations
    assert win.debug_dock.isVisible()
    assert win.webhooks_dock in win.tabifiedDockWidgets(win.debug_dock)
    assert not action.isChecked() and not panel.polling  # behind the Debug Integrations tab
    action.trigger()
    assert panel.isVisible() and action.isChecked() and panel.polling
    qtbot.waitUntil(lambda: panel.selected_subscription() is not None, timeout=15_000)

    with qtbot.waitSignal(panel.action_finished, timeout=15_000) as done:
        qtbot.mouseClick(panel.toggle_button, Qt.MouseButton.LeftButton)
    assert done.args == ["disable", True]
    qtbot.waitUntil(lambda: panel.toggle_button.text() == "Enable", timeout=15_000)
    state = next(iter(sub_rows(panel).values()))
    assert state[1] == "Disabled" and state[2] == "disabled by an operator"
    with qtbot.waitSignal(panel.action_finished, timeout=15_000) as done:
        qtbot.mouseClick(panel.toggle_button, Qt.MouseButton.LeftButton)
    assert done.args == ["enable", True]
    qtbot.waitUntil(lambda: panel.toggle_button.text() == "Disable", timeout=15_000)

    # Delete asks first; Cancel keeps it, Yes deletes it.
    qtbot.mouseClick(panel.delete_button, Qt.MouseButton.LeftButton)
    box = panel.confirm_box
    assert isinstance(box, QMessageBox) and "cannot be undone" in box.text()
    box.button(QMessageBox.StandardButton.Cancel).click()
    qtbot.wait(300)
    assert len(api.get(WEBHOOKS).json()["items"]) == 1
    qtbot.mouseClick(panel.delete_button, Qt.MouseButton.LeftButton)
    with qtbot.waitSignal(panel.action_finished, timeout=15_000) as done:
        panel.confirm_box.button(QMessageBox.StandardButton.Yes).click()
    assert done.args == ["delete", True]
    qtbot.waitUntil(lambda: not panel.subscriptions(), timeout=15_000)
    assert api.get(WEBHOOKS).json()["items"] == []
    assert "No webhook subscriptions yet" in all_texts(panel.subs_tree)

    # polling follows visibility: another tab in front stops it, raising the dock restarts it
    win.open_dock(win.debug_dock)
    qtbot.waitUntil(lambda: not panel.polling, timeout=5_000)
    assert not action.isChecked()
    action.trigger()
    qtbot.waitUntil(lambda: panel.polling, timeout=5_000)
    win.webhooks_dock.close()
    assert not panel.polling


def test_screenshot_with_a_healthy_and_a_failing_subscription(
    qtbot, srv: ServerProcess, receiver: Receiver, api: httpx.Client, tmp_path: Path
) -> None:
    receiver.plan("/discord-relay", then=Reply(204, body=b""))
    receiver.plan(
        "/ci/hooks",
        then=Reply(
            503,
            headers={"Content-Type": "application/json"},
            body=b'{"error": "upstream queue is full", "retry": false}',
        ),
    )
    subscribe(api, receiver.url("/discord-relay"), ["on_scene_enter"], "Discord relay")
    failing = subscribe(
        api,
        f"http://ci:{PASSWORD}@127.0.0.1:{receiver.port}/ci/hooks",
        ["on_scene_enter", "on_choice_render"],
        "CI notifier",
    )
    emit_scene(srv, "lighthouse")
    emit_scene(srv, "cliff")
    receiver.wait_for("/ci/hooks", 2)
    receiver.wait_for("/discord-relay", 2)

    win = open_dock(qtbot, srv, tmp_path)
    win.hooks_dock.hide()
    qtbot.wait(100)  # dock sizes only take once the window has laid out
    win.resizeDocks([win.webhooks_dock], [470], Qt.Orientation.Vertical)
    panel = win.webhooks_panel
    qtbot.waitUntil(lambda: len(panel.subscriptions()) == 2, timeout=15_000)
    assert panel.select_subscription(failing["id"])
    qtbot.waitUntil(lambda: len(attempt_rows(panel)) == 1, timeout=15_000)
    states = sorted(label for _, label, _ in sub_rows(panel).values())
    assert states == ["Enabled", "Failing"]
    qtbot.wait(400)
    assert PASSWORD not in every_text(win)
    pixmap = win.grab()
    assert (pixmap.width(), pixmap.height()) == (1280, 800)
    out = Path(os.environ.get("COMFYVN_WEBHOOKS_SCREENSHOT") or tmp_path / "webhooks.png")
    assert pixmap.save(str(out), "PNG")
    print(f"wrote {out}")
