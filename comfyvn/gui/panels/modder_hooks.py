"""Modder Hooks: the live envelope stream (time, seq, event, summary), filterable by hook, with
pause and clear; selecting a row shows its JSON. The stream reconnects and resumes by seq.

The dock holds it as the "Stream" tab of :class:`ModderHooksTabs`, next to "Plugins"
(:mod:`.plugins`)."""

from __future__ import annotations

import itertools
import json
from typing import Any

from PySide6.QtCore import QRegularExpression, QSettings, QSortFilterProxyModel, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QStandardItem, QStandardItemModel
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QTableView,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ..api import StudioApi, describe_failure
from ..formatting import envelope_summary, format_clock
from ..hook_stream import HookStream
from ..options import HOOK_TABS
from ..theme import dot_html, mono_font
from ..workers import run_async
from .plugins import PluginsPanel

__all__ = ["ENVELOPE_ROLE", "HOOK_TABS", "MAX_ROWS", "ModderHooksPanel", "ModderHooksTabs"]

ENVELOPE_ROLE = Qt.ItemDataRole.UserRole + 1
MAX_ROWS = 5000
COLUMNS = ["Time", "Seq", "Event", "Summary"]
ALL_HOOKS = "All hooks"
_STATE_DOT = {"live": "green", "connecting": "amber", "retry": "amber", "error": "red"}


class ModderHooksPanel(QWidget):
    stream_state_changed = Signal(str, str)  # (connecting|live|retry|error, message)

    def __init__(self, parent: QWidget | None = None, settings: QSettings | None = None) -> None:
        super().__init__(parent)
        self._settings = settings
        self._stream: HookStream | None = None
        self._api: StudioApi | None = None
        self._paused: list[dict[str, Any]] = []
        # Envelopes stay Python-side, keyed by an int kept in the row: a dict stored in a Qt
        # item would be converted to a QVariantMap, and PySide mishandles None values in those.
        self._store: dict[int, dict[str, Any]] = {}
        self._keys = itertools.count()
        self.stream_state = "idle"
        self.stream_message = ""
        self.received = 0

        self.status_label = QLabel()
        self.status_label.setTextFormat(Qt.TextFormat.RichText)
        self.status_label.setWordWrap(True)
        self.filter_combo = QComboBox()
        self.filter_combo.addItem(ALL_HOOKS)
        self.filter_combo.setToolTip("Show only one hook")
        self.filter_combo.setMinimumContentsLength(10)
        self.pause_button = QPushButton("Pause")
        self.pause_button.setCheckable(True)
        self.pause_button.setToolTip("Freeze the list; new envelopes wait until you resume")
        self.clear_button = QPushButton("Clear")
        top = QHBoxLayout()
        top.addWidget(self.filter_combo)
        top.addWidget(self.pause_button)
        top.addWidget(self.clear_button)
        top.addStretch(1)

        self.model = QStandardItemModel(0, len(COLUMNS), self)
        self.model.setHorizontalHeaderLabels(COLUMNS)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setFilterKeyColumn(2)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(False)
        self.table.verticalHeader().hide()
        self.table.verticalHeader().setDefaultSectionSize(22)
        header = self.table.horizontalHeader()
        header.resizeSection(0, 88)
        header.resizeSection(1, 44)
        header.resizeSection(2, 136)
        # Summary takes what is left, down to 40 px: "stretch last section" would keep its
        # default 100 px and scroll sideways in a narrow dock
        header.setMinimumSectionSize(40)
        header.setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)

        self.detail = QPlainTextEdit()
        self.detail.setReadOnly(True)
        self.detail.setFont(mono_font())
        self.detail.setPlaceholderText("Select an envelope to see its JSON")
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.table)
        splitter.addWidget(self.detail)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 1)

        self.count_label = QLabel()
        self.count_label.setObjectName("info")
        self.count_label.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.status_label)
        layout.addLayout(top)
        layout.addWidget(splitter, 1)
        layout.addWidget(self.count_label)

        self.filter_combo.currentTextChanged.connect(self._on_filter)
        self.pause_button.toggled.connect(self._on_pause)
        self.clear_button.clicked.connect(self.clear)
        self.table.selectionModel().currentRowChanged.connect(self._on_current)
        self._set_status("connecting", "waiting for the server…")
        self._update_count()

    # -- connection --------------------------------------------------------------------------
    def set_connection(
        self, api: StudioApi | None, problem: str | None = None, *, max_backoff_s: float = 5.0
    ) -> None:
        self.shutdown()
        self._api = api
        if api is None:
            self._set_status("error", f"not connected: {problem or 'no server'}")
            return
        self._load_hook_names(api)
        self._stream = HookStream(
            api.conn,
            self._on_envelopes,
            self._set_status,
            max_backoff_s=max_backoff_s,
            timeout_s=min(api.timeout_s, 10.0),
        )
        self._stream.start()

    def shutdown(self) -> None:
        if self._stream is not None:
            self._stream.stop()
            self._stream = None

    @property
    def stream(self) -> HookStream | None:
        return self._stream

    def _load_hook_names(self, api: StudioApi) -> None:
        def loaded(body: dict[str, Any]) -> None:
            for hook in body.get("hooks") or []:
                self._add_hook_name(str(hook.get("name")))
            saved = self._settings.value("hooks/filter", ALL_HOOKS) if self._settings else None
            if saved and self.filter_combo.findText(str(saved)) >= 0:
                self.filter_combo.setCurrentText(str(saved))

        def failed(exc: BaseException) -> None:
            self.count_label.setText(
                f"Hook list unavailable: {describe_failure(exc, api.conn.server)}"
            )

        run_async(lambda: api.get("/api/modder/hooks"), loaded, failed, name="comfyvn-hook-list")

    def _add_hook_name(self, name: str) -> None:
        if name and self.filter_combo.findText(name) < 0:
            self.filter_combo.addItem(name)

    # -- envelopes ---------------------------------------------------------------------------
    def _on_envelopes(self, items: list[dict[str, Any]]) -> None:
        self.received += len(items)
        if self.pause_button.isChecked():
            self._paused.extend(items)
            del self._paused[:-MAX_ROWS]
            self._update_count()
            return
        self._append(items)

    def _append(self, items: list[dict[str, Any]]) -> None:
        bar = self.table.verticalScrollBar()
        at_bottom = bar.value() >= bar.maximum() - 2
        for env in items:
            key = next(self._keys)
            self._store[key] = env
            self.model.appendRow(self._row(env, key))
            if not env.get("gap"):
                self._add_hook_name(str(env.get("event", "")))
        excess = self.model.rowCount() - MAX_ROWS
        if excess > 0:
            for row in range(excess):
                self._store.pop(self.model.item(row, 0).data(ENVELOPE_ROLE), None)
            self.model.removeRows(0, excess)
        if at_bottom:
            self.table.scrollToBottom()
        self._update_count()

    @staticmethod
    def _row(env: dict[str, Any], key: int) -> list[QStandardItem]:
        gap = bool(env.get("gap"))
        cells = [
            QStandardItem(format_clock(env.get("ts"), millis=True) if not gap else ""),
            QStandardItem("" if gap else str(env.get("seq", ""))),
            QStandardItem("gap" if gap else str(env.get("event", ""))),
            QStandardItem(envelope_summary(env)),
        ]
        cells[0].setData(key, ENVELOPE_ROLE)
        cells[1].setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if gap:
            for cell in cells:
                cell.setForeground(QBrush(QColor("#8a1c1f")))
        return cells

    def envelopes(self, *, visible_only: bool = False) -> list[dict[str, Any]]:
        """The envelopes in the list (optionally only those the filter shows), oldest first."""
        if visible_only:
            keys = [
                self.proxy.index(r, 0).data(ENVELOPE_ROLE) for r in range(self.proxy.rowCount())
            ]
        else:
            keys = [self.model.item(r, 0).data(ENVELOPE_ROLE) for r in range(self.model.rowCount())]
        return [self._store[k] for k in keys]

    def clear(self) -> None:
        self.model.removeRows(0, self.model.rowCount())
        self._store.clear()
        self._paused.clear()
        self.detail.clear()
        self._update_count()

    # -- controls ----------------------------------------------------------------------------
    def set_filter(self, hook: str | None) -> None:
        name = hook or ALL_HOOKS
        if name != ALL_HOOKS:
            self._add_hook_name(name)
        self.filter_combo.setCurrentText(name)

    def _on_filter(self, text: str) -> None:
        if text == ALL_HOOKS or not text:
            self.proxy.setFilterRegularExpression("")
        else:
            # anchored: a hook name must match whole, not as a prefix of a longer one
            self.proxy.setFilterRegularExpression(f"^{QRegularExpression.escape(text)}$")
        if self._settings is not None:
            self._settings.setValue("hooks/filter", text)
        self._update_count()

    def _on_pause(self, paused: bool) -> None:
        self.pause_button.setText("Resume" if paused else "Pause")
        if not paused and self._paused:
            items, self._paused = self._paused, []
            self._append(items)
        self._update_count()

    def _on_current(self, current: Any, _previous: Any) -> None:
        key = current.siblingAtColumn(0).data(ENVELOPE_ROLE) if current.isValid() else None
        env = self._store.get(key) if key is not None else None
        self.detail.setPlainText(json.dumps(env, indent=2, sort_keys=False) if env else "")

    def _set_status(self, state: str, message: str) -> None:
        self.stream_state, self.stream_message = state, message
        dot = dot_html(_STATE_DOT.get(state, "gray"))
        self.status_label.setText(f"{dot} {message}")
        self.status_label.setToolTip(self._api.conn.ws_base if self._api else "")
        self.stream_state_changed.emit(state, message)

    def _update_count(self) -> None:
        shown, total = self.proxy.rowCount(), self.model.rowCount()
        text = f"{total} envelope(s)" if shown == total else f"{shown} of {total} envelope(s)"
        if self.pause_button.isChecked():
            text += f" · paused, {len(self._paused)} waiting"
        self.count_label.setText(text)


class ModderHooksTabs(QTabWidget):
    """The Modder Hooks dock: the live stream ("Stream") and the plugin host ("Plugins").

    The open tab is remembered in the settings (``hooks/tab``). The Plugins tab polls only
    while it is the open tab of a visible dock."""

    def __init__(self, parent: QWidget | None = None, settings: QSettings | None = None) -> None:
        super().__init__(parent)
        self._settings = settings
        self.setDocumentMode(True)
        self.stream_panel = ModderHooksPanel(settings=settings)
        self.plugins_panel = PluginsPanel()
        self.addTab(self.stream_panel, "Stream")
        self.addTab(self.plugins_panel, "Plugins")
        self.setTabToolTip(0, "Live hook envelopes from /api/modder/hooks/ws")
        self.setTabToolTip(1, "Plugins: status, hooks, calls, errors and log; reload them")
        saved = settings.value("hooks/tab", HOOK_TABS[0]) if settings is not None else None
        if saved in HOOK_TABS:
            self.show_tab(str(saved))
        self.currentChanged.connect(self._on_tab)

    @property
    def current_tab(self) -> str:
        return HOOK_TABS[max(0, self.currentIndex())]

    def show_tab(self, name: str) -> None:
        if name not in HOOK_TABS:
            raise ValueError(f"unknown Modder Hooks tab {name!r}; choose {', '.join(HOOK_TABS)}")
        self.setCurrentIndex(HOOK_TABS.index(name))

    def _on_tab(self, index: int) -> None:
        if self._settings is not None and 0 <= index < len(HOOK_TABS):
            self._settings.setValue("hooks/tab", HOOK_TABS[index])
