"""Debug Integrations: one row per compute provider with its health, latency, quota and masked
config, refreshed on demand or on a timer; Add / Edit / Remove providers from the server's
templates (:mod:`comfyvn.gui.panels.provider_dialog`, where Test runs one check before saving).

Every request runs on a worker thread (see :mod:`comfyvn.gui.workers`); the GUI thread only
builds rows. Polling runs only while the panel is visible. When the server is slow or gone the
panel keeps the last rows and says what went wrong in a banner.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QBrush, QColor, QHideEvent, QShowEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..api import StudioApi, describe_failure
from ..formatting import (
    STATUS_LABELS,
    SUMMARY_LABELS,
    format_clock,
    format_latency,
    format_quota,
    masked_config_lines,
    quota_lines,
)
from ..options import DEFAULT_REFRESH_S
from ..theme import STATUS_COLORS, mono_font, status_chips, status_icon
from ..workers import run_async
from .provider_dialog import PROVIDERS, ProviderDialog

__all__ = ["COLUMNS", "STATUS_ROLE", "DebugIntegrationsPanel", "ProviderRow"]

COLUMNS = ["Status", "Provider", "Kind", "Latency", "Quota", "Reason / last error", "Updated"]
COL_STATUS, COL_NAME, COL_KIND, COL_LATENCY, COL_QUOTA, COL_REASON, COL_UPDATED = range(7)
STATUS_ROLE = Qt.ItemDataRole.UserRole + 1
ID_ROLE = Qt.ItemDataRole.UserRole + 2


@dataclass(slots=True)
class ProviderRow:
    """What one row shows: the masked provider entry and its latest check result."""

    provider: dict[str, Any]
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return str(self.provider.get("id", self.result.get("provider_id", "")))

    @property
    def status(self) -> str:
        if not self.provider.get("enabled", True):
            return "gray"
        return str(self.result.get("status") or "gray")

    @property
    def bucket(self) -> str:
        """Its summary bucket: the status, with disabled providers counted apart."""
        if not self.provider.get("enabled", True):
            return "disabled"
        return self.status if self.status in SUMMARY_LABELS else "gray"


class DebugIntegrationsPanel(QWidget):
    refreshed = Signal(bool)  # after each fresh check: True with results, False on failure
    summary_changed = Signal(object)  # counts per SUMMARY_LABELS bucket (status, or disabled)
    action_finished = Signal(str, bool)  # (add | edit | remove, ok) once the server answered
    templates_loaded = Signal(bool)

    def __init__(self, parent: QWidget | None = None, settings: QSettings | None = None) -> None:
        super().__init__(parent)
        self._settings = settings
        self._api: StudioApi | None = None
        self._not_connected = "connecting to the server…"
        self._rows: list[ProviderRow] = []
        self._in_flight = False
        self._again = False
        self._generation = 0
        self._select_after_render: str | None = None
        self._last_ok_at: float | None = None
        self._visible = False
        self.refresh_count = 0  # completed fresh checks (tests and the screenshot wait on it)
        self.failure_count = 0
        self.last_error: str | None = None
        self._templates: list[dict[str, Any]] | None = None
        self._templates_loading = False
        self._after_templates: list[Callable[[], None]] = []
        self.provider_dialog: ProviderDialog | None = None
        self.confirm_box: QMessageBox | None = None

        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.setToolTip("Run fresh health checks on every provider now (F5)")
        self.refresh_button.clicked.connect(self.refresh)
        self.auto_check = QCheckBox("Auto-refresh")
        self.auto_check.setToolTip("Re-check every few seconds while this panel is visible")
        self.interval_spin = QSpinBox()
        self.interval_spin.setRange(1, 3600)
        self.interval_spin.setSuffix(" s")
        self.interval_spin.setPrefix("every ")
        self.add_button = QPushButton("Add provider…")
        self.add_button.setToolTip("Add a provider from a template (ComfyUI, RunPod, OpenAI, HTTP)")
        self.add_button.clicked.connect(self.open_add_dialog)
        self.edit_button = QPushButton("Edit…")
        self.edit_button.setToolTip("Change the selected provider (double-click a row)")
        self.edit_button.clicked.connect(self.open_edit_dialog)
        self.remove_button = QPushButton("Remove…")
        self.remove_button.setToolTip("Remove the selected provider and its stored secrets")
        self.remove_button.clicked.connect(self.confirm_remove)
        self.summary_label = QLabel()
        self.summary_label.setTextFormat(Qt.TextFormat.RichText)
        controls = QHBoxLayout()
        controls.addWidget(self.refresh_button)
        controls.addWidget(self.auto_check)
        controls.addWidget(self.interval_spin)
        controls.addSpacing(12)
        controls.addWidget(self.add_button)
        controls.addWidget(self.edit_button)
        controls.addWidget(self.remove_button)
        controls.addStretch(1)
        controls.addWidget(self.summary_label)

        self.banner = QLabel()
        self.banner.setObjectName("banner")
        self.banner.setWordWrap(True)
        self.banner.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.banner.hide()

        self.tree = QTreeWidget()
        self.tree.setColumnCount(len(COLUMNS))
        self.tree.setHeaderLabels(COLUMNS)
        self.tree.setAlternatingRowColors(True)
        self.tree.setUniformRowHeights(False)
        self.tree.setRootIsDecorated(True)
        self.tree.setAllColumnsShowFocus(True)
        header = self.tree.header()
        header.setStretchLastSection(False)
        for col, width in (
            (COL_STATUS, 118),
            (COL_NAME, 170),
            (COL_KIND, 76),
            (COL_LATENCY, 72),
            (COL_QUOTA, 300),
            (COL_UPDATED, 76),
        ):
            header.resizeSection(col, width)
        header.setSectionResizeMode(COL_REASON, QHeaderView.ResizeMode.Stretch)
        self.tree.currentItemChanged.connect(lambda *_: self._update_buttons())
        self.tree.itemDoubleClicked.connect(lambda *_: self.open_edit_dialog())

        self.footer = QLabel()
        self.footer.setObjectName("info")
        self.footer.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addLayout(controls)
        layout.addWidget(self.banner)
        layout.addWidget(self.tree, 1)
        layout.addWidget(self.footer)

        self.poll_timer = QTimer(self)
        self.poll_timer.timeout.connect(self._on_tick)
        self._load_settings()
        self.auto_check.toggled.connect(self._on_auto_toggled)
        self.interval_spin.valueChanged.connect(self._on_interval_changed)
        self._render()

    # -- public ------------------------------------------------------------------------------
    def set_connection(self, api: StudioApi | None, problem: str | None = None) -> None:
        """Start talking to a server (or show why there is none)."""
        self._api = api
        self._generation += 1
        self._in_flight = False
        self._not_connected = problem or "connecting to the server…"
        self._templates, self._templates_loading, self._after_templates = None, False, []
        if api is None:
            self._show_banner(f"Not connected: {self._not_connected}")
            self._render()
            self.refreshed.emit(False)
        else:
            self.banner.hide()
            self.refresh()
            self.load_templates()
        self._update_polling()
        self._update_buttons()

    @property
    def polling(self) -> bool:
        return self.poll_timer.isActive()

    @property
    def busy(self) -> bool:
        """A refresh is in flight."""
        return self._in_flight

    def rows(self) -> list[ProviderRow]:
        return list(self._rows)

    def templates(self) -> list[dict[str, Any]] | None:
        """The server's provider templates, once loaded (``None`` before)."""
        return None if self._templates is None else list(self._templates)

    def selected_id(self) -> str | None:
        """The provider of the selected row (a detail line counts as its provider's)."""
        item = self.tree.currentItem()
        while item is not None and item.parent() is not None:
            item = item.parent()
        provider_id = item.data(0, ID_ROLE) if item is not None else None
        return str(provider_id) if provider_id else None

    def select(self, provider_id: str) -> bool:
        for i in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(i)
            if item.data(0, ID_ROLE) == provider_id:
                self.tree.setCurrentItem(item)
                return True
        return False

    # -- add / edit / remove -----------------------------------------------------------------
    def load_templates(self, then: Callable[[], None] | None = None) -> None:
        """``GET /api/providers/templates`` off the GUI thread (once per connection); ``then``
        runs when they are there."""
        if then is not None:
            self._after_templates.append(then)
        api = self._api
        if api is None or self._templates_loading:
            return
        if self._templates is not None:
            self._run_after_templates()
            return
        self._templates_loading = True
        generation = self._generation
        run_async(
            lambda: api.get(f"{PROVIDERS}/templates"),
            lambda answer: self._on_templates(generation, answer),
            lambda exc: self._on_templates_error(generation, exc),
            name="comfyvn-provider-templates",
        )

    def _on_templates(self, generation: int, answer: Any) -> None:
        if generation != self._generation:
            return
        self._templates_loading = False
        templates = answer.get("templates") if isinstance(answer, dict) else None
        self._templates = [t for t in templates or [] if isinstance(t, dict)]
        self._update_buttons()
        self.templates_loaded.emit(True)
        self._run_after_templates()

    def _on_templates_error(self, generation: int, exc: BaseException) -> None:
        if generation != self._generation:
            return
        self._templates_loading = False
        self._after_templates = []  # asked again on the next click
        api = self._api
        message = describe_failure(exc, api.conn.server if api else "?", api and api.timeout_s)
        self.footer.setText(f"Could not load the provider templates: {message}")
        self.templates_loaded.emit(False)

    def _run_after_templates(self) -> None:
        waiting, self._after_templates = self._after_templates, []
        for then in waiting:
            then()

    def open_add_dialog(self) -> ProviderDialog | None:
        """The Add dialog (window-modal, never a nested event loop); ``None`` while the
        templates are still loading: the dialog opens once they are there."""
        if self._api is None:
            self._show_banner(f"Not connected: {self._not_connected}")
            return None
        if self._templates is None:
            self.footer.setText("Loading the provider templates…")
            self.load_templates(self.open_add_dialog)
            return None
        return self._open_dialog(None)

    def open_edit_dialog(self, provider_id: str | None = None) -> ProviderDialog | None:
        provider_id = provider_id or self.selected_id()
        row = next((r for r in self._rows if r.id == provider_id), None)
        if self._api is None or row is None:
            return None
        if self._templates is None:
            self.footer.setText("Loading the provider templates…")
            self.load_templates(lambda: self.open_edit_dialog(provider_id))
            return None
        return self._open_dialog(dict(row.provider))

    def _open_dialog(self, provider: dict[str, Any] | None) -> ProviderDialog | None:
        if self.provider_dialog is not None:  # one at a time
            self.provider_dialog.raise_()
            self.provider_dialog.activateWindow()
            return self.provider_dialog
        assert self._api is not None and self._templates is not None
        dialog = ProviderDialog(
            self._api, self._templates, provider, on_saved=self._on_saved, parent=self
        )
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.destroyed.connect(self._dialog_gone)
        self.provider_dialog = dialog
        dialog.open()
        return dialog

    def _dialog_gone(self, *_: Any) -> None:
        self.provider_dialog = None

    def _on_saved(self, action: str, provider: dict[str, Any]) -> None:
        name = provider.get("name") or provider.get("id") or "provider"
        verb = "Added" if action == "add" else "Saved"
        self.footer.setText(f"{verb} {name} ({provider.get('kind', '?')}); checking it…")
        if provider.get("id"):
            self._select_after_render = str(provider["id"])
        self.action_finished.emit(action, True)
        self.refresh()

    def confirm_remove(self) -> QMessageBox | None:
        provider_id = self.selected_id()
        row = next((r for r in self._rows if r.id == provider_id), None)
        if row is None or self._api is None:
            return None
        name = row.provider.get("name") or row.id
        box = QMessageBox(
            QMessageBox.Icon.Warning,
            "Remove provider",
            f"Remove the provider {name} ({row.provider.get('kind')}, id {row.id}) and its "
            "stored secrets? This cannot be undone.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
            self,
        )
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)

        def answered(button: int) -> None:
            if button == QMessageBox.StandardButton.Yes:
                self.remove_provider(row.id)

        box.finished.connect(answered)
        box.destroyed.connect(lambda: setattr(self, "confirm_box", None))
        self.confirm_box = box
        box.open()
        return box

    def remove_provider(self, provider_id: str) -> None:
        api = self._api
        if api is None:
            return
        path = f"{PROVIDERS}/{quote(provider_id, safe='')}"
        self.footer.setText(f"Removing {provider_id}…")

        def done(_answer: Any) -> None:
            self.footer.setText(f"Removed {provider_id}")
            self.action_finished.emit("remove", True)
            self.refresh()

        def failed(exc: BaseException) -> None:
            message = describe_failure(exc, api.conn.server, api.timeout_s)
            self.footer.setText(f"Remove failed: {message}")
            self.action_finished.emit("remove", False)
            self.refresh()

        run_async(lambda: api.delete(path), done, failed, name="comfyvn-provider-remove")

    def _update_buttons(self) -> None:
        connected = self._api is not None
        selected = connected and self.selected_id() is not None
        self.add_button.setEnabled(connected)
        self.edit_button.setEnabled(selected)
        self.remove_button.setEnabled(selected)

    def refresh(self) -> None:
        """Fresh checks of every provider, off the GUI thread; at most one request in flight."""
        if self._api is None:
            self._show_banner(f"Not connected: {self._not_connected}")
            return
        if self._in_flight:
            self._again = True
            return
        self._in_flight = True
        self._again = False
        api, generation = self._api, self._generation
        count = len(self._rows)
        first_load = not self._rows
        self.refresh_button.setEnabled(False)
        self.footer.setText(
            f"Checking {count} provider(s)…" if count else "Loading providers and checking them…"
        )

        def fresh(providers: dict[str, Any]) -> None:
            run_async(
                lambda: api.get("/api/providers/health"),
                lambda health: self._on_result(generation, providers, health),
                lambda exc: self._on_error(generation, exc),
                name="comfyvn-provider-health",
            )

        def listed(result: tuple[dict[str, Any], dict[str, Any] | None]) -> None:
            providers, status = result
            if status is not None:  # first load: the last known results while checks run
                self._on_partial(generation, providers, status)
            if generation == self._generation:
                fresh(providers)

        def list_job() -> tuple[dict[str, Any], dict[str, Any] | None]:
            providers = api.get("/api/providers")
            return providers, api.get("/api/providers/status") if first_load else None

        run_async(
            list_job,
            listed,
            lambda exc: self._on_error(generation, exc),
            name="comfyvn-provider-list",
        )

    # -- results (GUI thread) ----------------------------------------------------------------
    def _on_partial(self, generation: int, providers: dict, status: dict) -> None:
        if generation != self._generation or self._rows:
            return
        self._rows = self._merge(providers, status.get("results") or [])
        self._render()
        self.footer.setText(f"Showing last known results; checking {len(self._rows)} provider(s)…")

    def _on_result(self, generation: int, providers: dict, health: dict) -> None:
        if generation != self._generation:
            return
        self._finish()
        self._rows = self._merge(providers, health.get("results") or [])
        self._last_ok_at = time.time()
        self.last_error = None
        self.banner.hide()
        self.refresh_count += 1  # before rendering: an empty registry is "none yet", not loading
        self._render()
        elapsed = health.get("elapsed_ms")
        took = f" in {format_latency(elapsed)}" if isinstance(elapsed, int | float) else ""
        self.footer.setText(
            f"Checked {len(self._rows)} provider(s){took} at {format_clock(self._last_ok_at)}"
            + (" · auto-refresh on" if self.auto_check.isChecked() else "")
        )
        self.refreshed.emit(True)
        self._maybe_again()

    def _on_error(self, generation: int, exc: BaseException) -> None:
        if generation != self._generation:
            return
        self._finish()
        api = self._api
        message = describe_failure(exc, api.conn.server if api else "?", api and api.timeout_s)
        self.last_error = message
        kept = (
            f" Showing results from {format_clock(self._last_ok_at)}."
            if self._last_ok_at and self._rows
            else ""
        )
        self._show_banner(f"Refresh failed: {message}.{kept}")
        if not self._rows:
            self._render()
        self.footer.setText(f"Last attempt failed at {format_clock(time.time())}")
        self.failure_count += 1
        self.refreshed.emit(False)
        self._maybe_again()

    def _finish(self) -> None:
        self._in_flight = False
        self.refresh_button.setEnabled(True)

    def _maybe_again(self) -> None:
        if self._again:
            self._again = False
            QTimer.singleShot(0, self.refresh)

    @staticmethod
    def _merge(providers: dict, results: list[dict[str, Any]]) -> list[ProviderRow]:
        by_id = {r.get("provider_id"): r for r in results}
        return [
            ProviderRow(p, by_id.get(p.get("id"), {})) for p in providers.get("providers") or []
        ]

    # -- rendering ---------------------------------------------------------------------------
    def _show_banner(self, text: str) -> None:
        self.banner.setText(text)
        self.banner.show()

    def _render(self) -> None:
        expanded = {
            self.tree.topLevelItem(i).data(0, ID_ROLE)
            for i in range(self.tree.topLevelItemCount())
            if self.tree.topLevelItem(i).isExpanded()
        }
        current_id = self._select_after_render or self.selected_id()
        if any(row.id == self._select_after_render for row in self._rows):
            self._select_after_render = None
        scroll = self.tree.verticalScrollBar().value()
        self.tree.clear()
        counts = dict.fromkeys(SUMMARY_LABELS, 0)
        for row in self._rows:
            item = self._build_item(row)
            self.tree.addTopLevelItem(item)
            self._add_children(item, row)
            counts[row.bucket] += 1
            if row.id in expanded:
                item.setExpanded(True)
            if row.id == current_id:
                self.tree.setCurrentItem(item)
        self.tree.verticalScrollBar().setValue(scroll)
        if not self._rows:
            if self._api is None:
                text = f"Not connected: {self._not_connected}"
            elif self.last_error:
                text = "No provider data: see the message above"
            elif self.refresh_count:
                text = "No providers yet: add one with Add provider…"
            else:
                text = "Loading providers…"
            placeholder = QTreeWidgetItem([text])
            placeholder.setData(0, ID_ROLE, "")  # every row answers data(): see _render
            placeholder.setForeground(0, QBrush(QColor("#555b63")))
            self.tree.addTopLevelItem(placeholder)
            placeholder.setFirstColumnSpanned(True)  # only takes once the item is in the tree
        self.summary_label.setText(status_chips(counts))
        self._update_buttons()
        if self._rows or self.refresh_count:  # known, not merely "nothing loaded yet"
            self.summary_changed.emit(counts)

    def _build_item(self, row: ProviderRow) -> QTreeWidgetItem:
        provider, result = row.provider, row.result
        status = row.status
        kind = str(provider.get("kind", result.get("kind", "")))
        enabled = provider.get("enabled", True)
        label = "Disabled" if not enabled else STATUS_LABELS.get(status, status)
        if enabled and not result:
            label = "Not checked"
        reason = str(result.get("reason") or ("disabled" if not enabled else "never checked"))
        error = result.get("error")
        supported = bool(provider.get("supports_quota", False))
        item = QTreeWidgetItem(
            [
                label,
                str(provider.get("name") or row.id),
                kind,
                format_latency(result.get("latency_ms")),
                format_quota(kind, result.get("quota"), supported, result.get("status")),
                reason,
                format_clock(result.get("checked_at")),
            ]
        )
        item.setIcon(COL_STATUS, status_icon(status))
        item.setData(0, STATUS_ROLE, status)
        item.setData(0, ID_ROLE, row.id)
        item.setForeground(COL_STATUS, QBrush(QColor(STATUS_COLORS[status]).darker(120)))
        item.setToolTip(COL_NAME, f"id: {row.id}\nbase_url: {provider.get('base_url') or '—'}")
        tip = reason + (f"\nlast error: {error}" if error and error != reason else "")
        item.setToolTip(COL_REASON, tip)
        quota = result.get("quota") or {}
        if quota.get("summary"):
            item.setToolTip(COL_QUOTA, str(quota["summary"]))
        elif not supported:
            item.setToolTip(COL_QUOTA, f"{kind} providers report no quota")
        checked = result.get("checked_at")
        if checked:
            item.setToolTip(
                COL_UPDATED, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(checked))
            )
        if status == "red":
            item.setForeground(COL_REASON, QBrush(QColor("#8a1c1f")))
        font = item.font(COL_NAME)
        font.setBold(True)
        item.setFont(COL_NAME, font)
        return item

    def _add_children(self, item: QTreeWidgetItem, row: ProviderRow) -> None:
        lines = masked_config_lines(row.provider) + quota_lines(row.result.get("quota"))
        error = row.result.get("error")
        if error:
            lines.append(("last error", str(error)))
        width = max((len(k) for k, _ in lines), default=0) + 2
        font = mono_font()
        for key, value in lines:
            child = QTreeWidgetItem([f"{key.ljust(width)}{value}"])
            child.setFont(0, font)
            child.setForeground(0, QBrush(QColor("#3c4043")))
            child.setToolTip(0, f"{key}: {value}")
            item.addChild(child)
            child.setFirstColumnSpanned(True)  # only takes once the item is in the tree

    # -- polling -----------------------------------------------------------------------------
    def _on_tick(self) -> None:
        if not self._in_flight:
            self.refresh()

    def _on_auto_toggled(self, on: bool) -> None:
        self._save("debug/auto_refresh", on)
        self._update_polling()

    def _on_interval_changed(self, seconds: int) -> None:
        self._save("debug/interval_s", seconds)
        if self.poll_timer.isActive():
            self.poll_timer.start(seconds * 1000)

    def _update_polling(self) -> None:
        active = self.auto_check.isChecked() and self._visible and self._api is not None
        if active and not self.poll_timer.isActive():
            self.poll_timer.start(self.interval_spin.value() * 1000)
        elif not active and self.poll_timer.isActive():
            self.poll_timer.stop()

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self._visible = True
        self._update_polling()
        stale = self._last_ok_at is None or (
            time.time() - self._last_ok_at > self.interval_spin.value()
        )
        if self._api is not None and stale and not self._in_flight and self.auto_check.isChecked():
            self.refresh()

    def hideEvent(self, event: QHideEvent) -> None:
        super().hideEvent(event)
        self._visible = False
        self._update_polling()

    # -- settings ----------------------------------------------------------------------------
    def _load_settings(self) -> None:
        auto, interval = True, DEFAULT_REFRESH_S
        if self._settings is not None:
            auto = _as_bool(self._settings.value("debug/auto_refresh", True))
            try:
                interval = int(self._settings.value("debug/interval_s", DEFAULT_REFRESH_S))
            except (TypeError, ValueError):
                interval = DEFAULT_REFRESH_S
        self.auto_check.setChecked(auto)
        self.interval_spin.setValue(max(1, min(3600, interval)))

    def _save(self, key: str, value: Any) -> None:
        if self._settings is not None:
            self._settings.setValue(key, value)


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)
