"""Provider onboarding in the Studio, against a real server and a fake RunPod GraphQL upstream on
127.0.0.1 that accepts only the keys it was told: Add from a template (Test, then Save), Edit
(an empty key field keeps the stored key, a typed one replaces it, "remove" deletes it), Remove
(confirmed), refusals that stay in the dialog, and a GUI thread that never waits for a Test.

The key typed into the Add dialog must end up in the secrets file and nowhere else: not in any
widget's text, tooltip, placeholder or tree item once the dialog is closed (while it is open,
only in the password field, which shows dots), not in any API response the Studio received, not
in any other file of the data dir or the Studio's settings, and not in the server's log.

Set ``COMFYVN_PROVIDER_ADD_SCREENSHOT=docs/images/studio_provider_add.png`` to make
``test_add_runpod_from_its_template_and_the_key_shows_nowhere`` write the docs picture (the
Add dialog filled for RunPod after a Test; ``docs/images/make_screenshots.py`` does).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractButton,
    QApplication,
    QComboBox,
    QLabel,
    QLineEdit,
    QMessageBox,
    QTreeWidget,
    QWidget,
)

from comfyvn.gui.panels.debug_integrations import ID_ROLE, STATUS_ROLE, DebugIntegrationsPanel
from comfyvn.gui.theme import apply_style

from .support import ServerProcess, wait_for
from .test_gui_network import StallMeter
from .test_gui_support import all_texts, make_window
from .test_providers_fakes import FakeProviders, Reply

pytestmark = pytest.mark.gui

# Distinctive keys: letters that appear in no label, so any piece of one found is a leak.
ADD_KEY = "rpa_ONBOARD_QzXkWv7JqKx2ZwVj9QkXz"
EDIT_KEY = "rpa_EDITKEY_WkZqJv4XwQz8KjVx1ZqWk"
WRONG_KEY = "rpa_WRONGKY_JxQzWk5VqZx3WjKv6XzQj"
SLOW_S = 3.0


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProviders]:
    fake = FakeProviders().start()
    fake.runpod("/rp", keys=(ADD_KEY, EDIT_KEY))
    fake.openai("/oa")
    fake.runpod("/slow", reply=Reply(body={"data": {"myself": None}}, delay=SLOW_S))
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("gui-providers") / "data",
        env={"COMFYVN_PROVIDER_TIMEOUT": "15", "COMFYVN_PROVIDER_ALLOW_HOSTS": "127.0.0.1"},
        extra_args=["--log-level", "DEBUG"],
    ).start()
    yield proc
    proc.stop()


@pytest.fixture
def api(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.client() as client:
        yield client


@pytest.fixture
def studio_style(qapp: QApplication) -> Iterator[None]:
    """The Studio's own style (as ``comfyvn studio`` sets it), for the picture; restored after."""
    sheet, style = qapp.styleSheet(), qapp.style().name()
    apply_style(qapp)
    yield
    qapp.setStyleSheet(sheet)
    qapp.setStyle(style)


def open_panel(qtbot, srv: ServerProcess, tmp_path: Path):
    win = make_window(srv, tmp_path / "studio.ini", workspace="system")
    qtbot.addWidget(win)
    panel: DebugIntegrationsPanel = win.debug_panel
    qtbot.waitUntil(lambda: win.api is not None, timeout=10_000)
    qtbot.waitUntil(
        lambda: panel.templates() is not None and panel.refresh_count >= 1, timeout=20_000
    )
    return win, panel


def dialog_requests(responses: list[str]) -> list[str]:
    """What a provider dialog sends (tests and saves); the window's own polling of /health and
    the hooks is not the dialog's and may land at any moment."""
    return [r for r in responses if r.split(" ", 1)[0] in {"POST", "PUT", "DELETE"}]


def capture_responses(win) -> list[str]:
    """Every answer the Studio's API client receives from now on, raw."""
    seen: list[str] = []

    def hook(response: httpx.Response) -> None:
        response.read()
        seen.append(f"{response.request.method} {response.request.url.path}\n{response.text}")

    win.api._client._http.event_hooks["response"].append(hook)
    return seen


def texts_of(widget: QWidget) -> list[str]:
    out = [
        widget.toolTip(),
        widget.windowTitle(),
        widget.statusTip(),
        widget.whatsThis(),
        widget.accessibleName(),
        widget.accessibleDescription(),
    ]
    if isinstance(widget, QLabel | QAbstractButton):
        out.append(widget.text())
    if isinstance(widget, QLineEdit):
        out.extend([widget.text(), widget.displayText(), widget.placeholderText()])
    if isinstance(widget, QComboBox):
        out.extend(widget.itemText(i) for i in range(widget.count()))
    if isinstance(widget, QTreeWidget):
        out.append(all_texts(widget))
        header = widget.headerItem()
        out.extend(header.text(c) for c in range(widget.columnCount()))
    text = getattr(widget, "toPlainText", None)
    if callable(text):
        out.append(text())
    return out


def holders(*needles: str) -> list[QWidget]:
    """Every widget in the application whose texts contain any of ``needles``."""
    return [
        w
        for w in QApplication.allWidgets()
        if any(n in t for t in texts_of(w) for n in needles if t)
    ]


def pieces(key: str) -> tuple[str, str]:
    """The key and the key without its last 4 characters (those may show as the masked hint)."""
    return key, key[:-4]


def files_holding(root: Path, *needles: str) -> list[str]:
    out = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if any(n.encode() in data for n in needles):
                out.append(str(path.relative_to(root)))
    return out


def row_of(panel: DebugIntegrationsPanel, provider_id: str):
    tree = panel.tree
    for i in range(tree.topLevelItemCount()):
        item = tree.topLevelItem(i)
        if item.data(0, ID_ROLE) == provider_id:
            return item
    return None


def status_of(panel: DebugIntegrationsPanel, provider_id: str) -> str | None:
    item = row_of(panel, provider_id)
    return item.data(0, STATUS_ROLE) if item is not None else None


def reason_of(panel: DebugIntegrationsPanel, provider_id: str) -> str:
    item = row_of(panel, provider_id)
    return item.text(5) if item is not None else ""


def click(qtbot, button: QAbstractButton) -> None:
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def test_add_runpod_from_its_template_and_the_key_shows_nowhere(
    qtbot, srv: ServerProcess, fake: FakeProviders, api: httpx.Client, tmp_path: Path, studio_style
) -> None:
    win, panel = open_panel(qtbot, srv, tmp_path)
    responses = capture_responses(win)
    assert panel.add_button.isEnabled()
    click(qtbot, panel.add_button)
    dialog = panel.provider_dialog
    assert dialog is not None and dialog.windowTitle() == "Add provider"
    combo = dialog.template_combo
    assert [combo.itemText(i) for i in range(combo.count())] == [
        "Local ComfyUI",
        "RunPod",
        "OpenAI-compatible",
        "Generic HTTP",
        "Echo (built-in test provider)",
    ]
    assert dialog.choose_template("runpod") and dialog.kind == "runpod"
    assert dialog.field_names() == [
        "name",
        "id",
        "base_url",
        "enabled",
        "secrets.api_key",
        "thresholds.latency_amber_ms",
        "thresholds.low_balance",
    ]
    assert dialog.editor("name").text() == "RunPod"  # the template's defaults
    assert dialog.editor("base_url").text() == "https://api.runpod.io/graphql"
    key_edit = dialog.editor("secrets.api_key")
    assert isinstance(key_edit, QLineEdit)
    assert key_edit.echoMode() == QLineEdit.EchoMode.Password
    assert key_edit.placeholderText() == "required"
    assert dialog.editor("thresholds.low_balance").placeholderText() == "5 (default)"

    # Without the key: refused in the dialog, nothing sent.
    sent_before = len(dialog_requests(responses))
    click(qtbot, dialog.save_button)
    assert dialog.result_text() == "required: API key" and dialog.isVisible()
    assert len(dialog_requests(responses)) == sent_before

    dialog.set_value("name", "RunPod account")
    dialog.set_value("base_url", f"{fake.url}/rp/graphql")
    qtbot.keyClicks(key_edit, ADD_KEY)
    assert key_edit.text() == ADD_KEY and ADD_KEY[:6] not in key_edit.displayText()

    with qtbot.waitSignal(dialog.tested, timeout=30_000) as tested:
        click(qtbot, dialog.test_button)
    assert tested.args == [True]
    assert dialog.result_text().startswith("OK · ")
    assert "RunPod account reachable: balance $42.50" in dialog.result_text()
    assert dialog.last_result["status"] == "green"
    assert api.get("/api/providers/runpod-account").status_code == 404  # a test saves nothing
    # While the dialog is open the key is in its password field only (which shows dots).
    assert holders(*pieces(ADD_KEY)) == [key_edit]

    qtbot.wait(200)  # let the result line settle before the picture
    picture = dialog.grab()
    out = Path(os.environ.get("COMFYVN_PROVIDER_ADD_SCREENSHOT") or tmp_path / "add.png")
    assert picture.save(str(out), "PNG")
    print(f"wrote {out} ({picture.width()}x{picture.height()})")

    with qtbot.waitSignal(panel.action_finished, timeout=30_000) as saved:
        click(qtbot, dialog.save_button)
    assert saved.args == ["add", True]
    qtbot.waitUntil(lambda: panel.provider_dialog is None, timeout=10_000)
    qtbot.waitUntil(lambda: status_of(panel, "runpod-account") == "green", timeout=30_000)
    assert panel.selected_id() == "runpod-account"  # the new row is selected
    item = row_of(panel, "runpod-account")
    assert item.text(1) == "RunPod account" and "balance $42.50" in item.text(4)
    assert "****" + ADD_KEY[-4:] in all_texts(panel.tree)  # the masked hint, nothing more
    qtbot.wait(300)  # anything still in flight lands

    # The key is nowhere but the secrets file.
    assert holders(*pieces(ADD_KEY)) == []
    assert any(r.startswith("POST /api/providers/test\n") for r in responses)
    assert any(r.startswith("POST /api/providers\n") for r in responses)
    assert any(r.startswith("GET /api/providers/health\n") for r in responses)
    assert [r.split("\n")[0] for r in responses if any(p in r for p in pieces(ADD_KEY))] == []
    assert files_holding(srv.data_dir, *pieces(ADD_KEY)) == ["provider_secrets.json"]
    assert files_holding(tmp_path, *pieces(ADD_KEY)) == []
    wait_for(lambda: "provider 'runpod-account' (runpod) added" in srv.log_text())
    log = srv.log_text()
    assert not any(p in log for p in pieces(ADD_KEY))
    # ...and it really was the key the upstream got, from the Test and the panel's checks.
    assert (
        sum(s.headers.get("Authorization") == f"Bearer {ADD_KEY}" for s in fake.requests_to("/rp/"))
        >= 2
    )


def test_edit_keeps_the_stored_key_unless_one_is_typed(
    qtbot, srv: ServerProcess, fake: FakeProviders, api: httpx.Client, tmp_path: Path
) -> None:
    body = {
        "id": "rp-edit",
        "name": "Render account",
        "kind": "runpod",
        "base_url": f"{fake.url}/rp/graphql",
        "secrets": {"api_key": EDIT_KEY},
    }
    assert api.post("/api/providers", json=body).status_code == 201
    secrets_file = srv.data_dir / "provider_secrets.json"
    win, panel = open_panel(qtbot, srv, tmp_path)
    responses = capture_responses(win)
    qtbot.waitUntil(lambda: panel.select("rp-edit"), timeout=20_000)
    assert panel.edit_button.isEnabled() and panel.remove_button.isEnabled()

    click(qtbot, panel.edit_button)
    dialog = panel.provider_dialog
    assert dialog is not None and dialog.windowTitle() == "Edit provider · Render account"
    assert not dialog.template_combo.isVisible()
    assert dialog.kind_label.text() == "RunPod (runpod)"
    assert dialog.editor("id").text() == "rp-edit" and dialog.editor("id").isReadOnly()
    key_edit = dialog.editor("secrets.api_key")
    assert key_edit.text() == ""  # write-only: never read back
    hint = "****" + EDIT_KEY[-4:]
    assert key_edit.placeholderText() == f"stored: {hint} · leave empty to keep it"

    with qtbot.waitSignal(dialog.tested, timeout=30_000):
        click(qtbot, dialog.test_button)
    assert dialog.result_text().startswith("OK · ")  # tested with the stored key
    dialog.set_value("name", "Render account (EU)")
    dialog.set_value("thresholds.low_balance", "50")
    with qtbot.waitSignal(dialog.tested, timeout=30_000):
        click(qtbot, dialog.test_button)
    assert dialog.result_text().startswith("Degraded · ")
    assert "low balance: $42.50 is under $50.00" in dialog.result_text()
    with qtbot.waitSignal(panel.action_finished, timeout=30_000) as saved:
        click(qtbot, dialog.save_button)
    assert saved.args == ["edit", True]
    qtbot.waitUntil(lambda: panel.provider_dialog is None, timeout=10_000)
    provider = api.get("/api/providers/rp-edit").json()["provider"]
    assert provider["name"] == "Render account (EU)"
    assert provider["threshold_overrides"] == {"low_balance": 50.0}
    assert provider["secrets"]["api_key"]["hint"] == hint  # kept
    assert EDIT_KEY in secrets_file.read_text()
    qtbot.waitUntil(lambda: status_of(panel, "rp-edit") == "amber", timeout=30_000)

    # A typed key replaces the stored one: Test says it is rejected, Save stores it anyway.
    dialog = panel.open_edit_dialog("rp-edit")
    assert dialog is not None
    qtbot.keyClicks(dialog.editor("secrets.api_key"), WRONG_KEY)
    with qtbot.waitSignal(dialog.tested, timeout=30_000):
        click(qtbot, dialog.test_button)
    assert dialog.result_text().startswith("Down · ")
    assert "RunPod rejected the API key" in dialog.result_text()
    assert "[redacted]" in dialog.result_text()  # the upstream echoed the key; scrubbed
    with qtbot.waitSignal(panel.action_finished, timeout=30_000):
        click(qtbot, dialog.save_button)
    qtbot.waitUntil(lambda: panel.provider_dialog is None, timeout=10_000)
    provider = api.get("/api/providers/rp-edit").json()["provider"]
    assert provider["secrets"]["api_key"]["hint"] == "****" + WRONG_KEY[-4:]
    assert WRONG_KEY in secrets_file.read_text() and EDIT_KEY not in secrets_file.read_text()
    qtbot.waitUntil(lambda: status_of(panel, "rp-edit") == "red", timeout=30_000)

    # RunPod's key is required: it can be replaced, not removed.
    dialog = panel.open_edit_dialog("rp-edit")
    assert dialog is not None and dialog.remove_box("secrets.api_key") is None
    dialog.reject()
    qtbot.waitUntil(lambda: panel.provider_dialog is None, timeout=10_000)

    # An optional key (OpenAI-compatible) can be removed: "Remove the stored key" deletes it.
    body = {
        "id": "oa-edit",
        "name": "Local LLM",
        "kind": "openai",
        "base_url": f"{fake.url}/oa/v1",
        "secrets": {"api_key": EDIT_KEY},
    }
    assert api.post("/api/providers", json=body).status_code == 201
    panel.refresh()
    qtbot.waitUntil(lambda: row_of(panel, "oa-edit") is not None, timeout=30_000)
    dialog = panel.open_edit_dialog("oa-edit")
    assert dialog is not None
    box = dialog.remove_box("secrets.api_key")
    assert box is not None and box.text() == f"Remove the stored key ({hint})"
    box.setChecked(True)
    assert not dialog.editor("secrets.api_key").isEnabled()
    with qtbot.waitSignal(panel.action_finished, timeout=30_000):
        click(qtbot, dialog.save_button)
    qtbot.waitUntil(lambda: panel.provider_dialog is None, timeout=10_000)
    assert api.get("/api/providers/oa-edit").json()["provider"]["secrets"] == {}
    assert EDIT_KEY not in secrets_file.read_text()
    qtbot.waitUntil(lambda: status_of(panel, "oa-edit") == "green", timeout=30_000)
    qtbot.wait(300)
    assert files_holding(srv.data_dir, *pieces(WRONG_KEY)) == ["provider_secrets.json"]
    for provider_id in ("rp-edit", "oa-edit"):
        assert api.delete(f"/api/providers/{provider_id}").status_code == 200
    wait_for(lambda: "provider 'oa-edit' removed" in srv.log_text())  # the log is read async
    for key in (EDIT_KEY, WRONG_KEY):
        assert holders(*pieces(key)) == []
        assert [r.split("\n")[0] for r in responses if any(p in r for p in pieces(key))] == []
        assert not any(p in srv.log_text() for p in pieces(key))
        assert files_holding(srv.data_dir, *pieces(key)) == []  # removed with their providers


def test_remove_asks_first(qtbot, srv: ServerProcess, api: httpx.Client, tmp_path: Path) -> None:
    body = {"id": "scratch", "name": "Scratch echo", "kind": "echo"}
    assert api.post("/api/providers", json=body).status_code == 201
    _win, panel = open_panel(qtbot, srv, tmp_path)
    qtbot.waitUntil(lambda: panel.select("scratch"), timeout=20_000)
    click(qtbot, panel.remove_button)
    box = panel.confirm_box
    assert isinstance(box, QMessageBox)
    assert box.text() == (
        "Remove the provider Scratch echo (echo, id scratch) and its stored secrets? "
        "This cannot be undone."
    )
    box.button(QMessageBox.StandardButton.Cancel).click()
    qtbot.wait(300)
    assert api.get("/api/providers/scratch").status_code == 200
    assert row_of(panel, "scratch") is not None

    panel.select("scratch")
    click(qtbot, panel.remove_button)
    with qtbot.waitSignal(panel.action_finished, timeout=20_000) as removed:
        panel.confirm_box.button(QMessageBox.StandardButton.Yes).click()
    assert removed.args == ["remove", True]
    assert api.get("/api/providers/scratch").status_code == 404
    qtbot.waitUntil(lambda: row_of(panel, "scratch") is None, timeout=20_000)


def test_refusals_stay_in_the_dialog_and_name_the_field(
    qtbot, srv: ServerProcess, api: httpx.Client, tmp_path: Path
) -> None:
    win, panel = open_panel(qtbot, srv, tmp_path)
    responses = capture_responses(win)
    listed = api.get("/api/providers").json()["providers"]
    dialog = panel.open_add_dialog()
    assert dialog is not None and dialog.choose_template("http")
    assert dialog.editor("config.method").currentText() == "GET"
    dialog.set_value("name", "Asset CDN")
    click(qtbot, dialog.save_button)
    assert dialog.result_text() == "required: Base URL"
    dialog.set_value("base_url", "http://127.0.0.1:9/cdn")
    dialog.set_value("thresholds.latency_amber_ms", "fast")
    dialog.set_value("config.accepted_status", "200, ok")
    click(qtbot, dialog.test_button)
    assert dialog.result_text() == (  # every problem at once, in the order of the form
        "Accepted status codes: list whole numbers separated by commas; "
        "Slow above (ms): 'fast' is not a number"
    )
    assert not dialog_requests(responses)  # nothing was sent
    dialog.set_value("thresholds.latency_amber_ms", "")
    dialog.set_value("config.accepted_status", "")
    dialog.set_value("base_url", "http://0xa9fea9fe/latest/meta-data")
    with qtbot.waitSignal(dialog.save_failed, timeout=20_000) as failed:
        click(qtbot, dialog.save_button)
    assert failed.args[0] == (
        "Not saved: the server refused it (422): base_url: base_url refused: "
        "0xa9fea9fe (169.254.169.254) is a cloud metadata address"
    )
    assert dialog.result_text() == failed.args[0]
    assert dialog.isVisible() and panel.provider_dialog is dialog
    with qtbot.waitSignal(dialog.tested, timeout=20_000) as tested:
        click(qtbot, dialog.test_button)
    assert tested.args == [False]
    assert dialog.result_text().startswith("Test not run: the server refused it (422): base_url")
    dialog.reject()
    qtbot.waitUntil(lambda: panel.provider_dialog is None, timeout=10_000)
    assert api.get("/api/providers").json()["providers"] == listed


def test_a_slow_test_never_blocks_the_gui_thread(
    qtbot, srv: ServerProcess, fake: FakeProviders, tmp_path: Path
) -> None:
    _win, panel = open_panel(qtbot, srv, tmp_path)
    dialog = panel.open_add_dialog()
    assert dialog is not None and dialog.choose_template("runpod")
    dialog.set_value("base_url", f"{fake.url}/slow/graphql")
    dialog.set_value("secrets.api_key", ADD_KEY)
    meter = StallMeter()
    meter.start()
    started = time.monotonic()
    with qtbot.waitSignal(dialog.tested, timeout=60_000):
        click(qtbot, dialog.test_button)
        assert dialog.busy  # on a worker thread
        assert not dialog.test_button.isEnabled() and not dialog.save_button.isEnabled()
        assert dialog.result_text() == "Testing…"
    took = time.monotonic() - started
    meter.stop()
    print(
        f"test against an upstream answering in {SLOW_S:g} s took {took:.2f} s; "
        f"longest GUI stall {meter.longest * 1000:.0f} ms over {meter.ticks} ticks"
    )
    assert took >= SLOW_S - 0.5  # the upstream really was slow
    assert meter.ticks > 50 and meter.longest < 1.0
    assert dialog.result_text().startswith("Down · ")
    assert "RunPod returned no account" in dialog.result_text()
    assert dialog.test_button.isEnabled() and dialog.save_button.isEnabled()
    dialog.reject()
    qtbot.waitUntil(lambda: panel.provider_dialog is None, timeout=10_000)
    assert holders(*pieces(ADD_KEY)) == []
