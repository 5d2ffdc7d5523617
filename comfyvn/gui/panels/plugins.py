"""Plugins: every plugin the server knows (folder or installed) with its status, source, hooks,
calls, errors and last error (or load error with file:line, and which version runs); below the
table the selected plugin's problems and log lines; Reload (every plugin, finding new and
removed files) and Reload selected, whose outcome shows in a status line.

Requests run on worker threads (see :mod:`comfyvn.gui.workers`); the GUI thread only builds
rows. The list is polled only while this tab is visible (and right after each reload). A
server that runs no plugin code answers with a reason, which the tab shows instead of an error.
"""

from __future__ import annotations

import html
import time
from typing import Any

from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Signal
from PySide6.QtGui import QBrush, QColor, QFontMetrics, QHideEvent, QResizeEvent, QShowEvent
from PySide6.QtWidgets import (
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSplitter,
    QTextBrowser,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from comfyvn.client.api import ApiError

from ..api import StudioApi, describe_failure
from ..formatting import (
    format_clock,
    plugin_error_text,
    plugin_issue,
    plugin_status,
    reload_summary,
)
from ..theme import STATUS_COLORS, dot_html, status_icon
from ..workers import run_async

__all__ = [
    "COLOUR_ROLE",
    "COLUMNS",
    "NAME_ROLE",
    "PLUGINS_PATH",
    "POLL_MS",
    "RELOAD_PATH",
    "STATUS_ROLE",
    "PluginsPanel",
]

PLUGINS_PATH = "/api/modder/hooks/plugins"
RELOAD_PATH = "/api/modder/hooks/plugins/reload"
POLL_MS = 3000
COLUMNS = ["Status", "Plugin", "Source", "Hooks", "Calls", "Errors"]
COL_STATUS, COL_NAME, COL_SOURCE, COL_HOOKS, COL_CALLS, COL_ERRORS = range(6)
COLUMN_WIDTHS = {COL_STATUS: 88, COL_NAME: 100, COL_SOURCE: 62, COL_CALLS: 46, COL_ERRORS: 56}
NAME_WIDTH_RANGE = (72, 170)  # the Plugin column fits the longest name within these bounds
MIN_HOOKS_WIDTH = 84  # narrower than this, the Hooks column hides (then Source)
NAME_ROLE = Qt.ItemDataRole.UserRole + 1  # the plugin's name, on its row and its issue line
STATUS_ROLE = Qt.ItemDataRole.UserRole + 2  # the host's status (loaded, failing, error...)
COLOUR_ROLE = Qt.ItemDataRole.UserRole + 3  # green, amber, red, gray
_TEXT_COLOURS = {"red": "#8a1c1f", "amber": "#7a5600", "gray": "#555b63", "green": "#1f6b36"}
_LEVEL_COLOURS = {"CRITICAL": "red", "ERROR": "red", "WARNING": "amber", "DEBUG": "gray"}


class PluginsPanel(QWidget):
    loaded = Signal(bool)  # after each listing: True with data, False when it failed
    reloaded = Signal(bool)  # after each reload answer: False when a plugin's new version failed

    def __init__(self, parent: QWidget | None = None, *, poll_ms: int = POLL_MS) -> None:
        super().__init__(parent)
        self._api: StudioApi | None = None
        self._not_connected = "connecting to the server…"
        self._body: dict[str, Any] = {}
        self._plugins: list[dict[str, Any]] = []
        self._generation = 0  # a new connection drops answers meant for the old one
        self._issued = 0  # requests numbered in order: an older listing never replaces a newer
        self._applied = 0
        self._in_flight = False
        self._again = False
        self._reloading = False
        self._visible = False
        self._picked = False  # a row was selected once: later listings keep the user's choice
        self._last_ok_at: float | None = None
        self._reload_line: tuple[str, str] | None = None  # (colour, text) of the last reload
        self._problem_line: tuple[str, str] | None = None  # failed listing or "no plugins run"
        self._log_for: str | None = None
        self._problems: list[str] = []
        self._name_width = COLUMN_WIDTHS[COL_NAME]
        self.load_count = 0  # completed listings (tests and the screenshot wait on it)
        self.failure_count = 0
        self.reload_count = 0
        self.last_error: str | None = None
        self.last_reload: dict[str, Any] | None = None
        self.reason: str | None = None  # the server's reason why no plugin code runs

        self.reload_button = QPushButton("Reload")
        self.reload_button.setToolTip(
            "Reload every plugin; picks up new and removed plugin files. A plugin whose new "
            "version fails keeps its previous version running."
        )
        self.reload_selected_button = QPushButton("Reload selected")
        self.reload_selected_button.setToolTip("Reload only the plugin selected below")
        controls = QHBoxLayout()
        controls.addWidget(self.reload_button)
        controls.addWidget(self.reload_selected_button)
        controls.addStretch(1)

        self.status_label = QLabel()
        self.status_label.setTextFormat(Qt.TextFormat.RichText)
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status_label.hide()

        self.tree = QTreeWidget()
        self.tree.setColumnCount(len(COLUMNS))
        self.tree.setHeaderLabels(COLUMNS)
        self.tree.setRootIsDecorated(False)
        self.tree.setItemsExpandable(False)
        self.tree.setIndentation(14)
        self.tree.setAllColumnsShowFocus(True)
        self.tree.setUniformRowHeights(False)
        self.tree.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.tree.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        header = self.tree.header()
        header.setStretchLastSection(False)
        header.setMinimumSectionSize(36)
        for col, width in COLUMN_WIDTHS.items():
            header.resizeSection(col, width)
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.Fixed)
        self._tree_viewport = self.tree.viewport()
        self._tree_viewport.installEventFilter(self)

        # Below the table: the selected plugin in one line, then its problems and log lines
        # (a text view, so long messages wrap and lines can be copied).
        self.caption = ElidedLabel()
        self.caption.setObjectName("info")
        self.log_view = QTextBrowser()
        self.log_view.setOpenLinks(False)
        self.log_view.setPlaceholderText("Select a plugin to see its problems and log lines")
        self._log_html = ""
        self._log_rows: list[tuple[str, str, str]] = []
        below = QWidget()
        below_layout = QVBoxLayout(below)
        below_layout.setContentsMargins(0, 4, 0, 0)
        below_layout.setSpacing(3)
        below_layout.addWidget(self.caption)
        below_layout.addWidget(self.log_view, 1)

        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.setChildrenCollapsible(False)
        splitter.addWidget(self.tree)
        splitter.addWidget(below)
        splitter.setStretchFactor(0, 2)
        splitter.setStretchFactor(1, 3)
        self.splitter = splitter

        self.footer = ElidedLabel()
        self.footer.setObjectName("info")

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addLayout(controls)
        layout.addWidget(self.status_label)
        layout.addWidget(splitter, 1)
        layout.addWidget(self.footer)

        self.poll_timer = QTimer(self)
        self.poll_timer.setInterval(max(100, poll_ms))
        self.poll_timer.timeout.connect(self._on_tick)
        self.reload_button.clicked.connect(lambda: self.reload())
        self.reload_selected_button.clicked.connect(self.reload_selected)
        self.tree.currentItemChanged.connect(self._on_current)
        self.tree.itemClicked.connect(self._on_clicked)
        self._render()
        self._update_buttons()

    # -- public ------------------------------------------------------------------------------
    def set_connection(self, api: StudioApi | None, problem: str | None = None) -> None:
        self._api = api
        self._generation += 1
        self._in_flight = self._reloading = self._again = False
        self._not_connected = problem or "connecting to the server…"
        if api is None:
            self._problem_line = ("red", f"Not connected: {self._not_connected}")
        else:
            self._problem_line = None
            if self._visible:
                self.refresh()
        self._show_status()
        self._render()
        self._update_buttons()
        self._update_polling()

    def shutdown(self) -> None:
        self.poll_timer.stop()
        self._generation += 1

    @property
    def polling(self) -> bool:
        return self.poll_timer.isActive()

    @property
    def busy(self) -> bool:
        """A listing or a reload is in flight."""
        return self._in_flight or self._reloading

    def plugins(self) -> list[dict[str, Any]]:
        return list(self._plugins)

    def selected_name(self) -> str | None:
        item = self.tree.currentItem()
        name = item.data(0, NAME_ROLE) if item is not None else None
        return str(name) if name else None

    def select(self, name: str) -> bool:
        for i in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(i)
            if item.data(0, NAME_ROLE) == name:
                self.tree.setCurrentItem(item)
                return True
        return False

    def refresh(self) -> None:
        """List the plugins off the GUI thread; at most one listing in flight."""
        api = self._api
        if api is None:
            return
        if self._in_flight:
            self._again = True
            return
        self._in_flight = True
        self._again = False
        self._issued += 1
        seq, generation = self._issued, self._generation
        run_async(
            lambda: api.get(PLUGINS_PATH),
            lambda body: self._on_listed(generation, seq, body),
            lambda exc: self._on_list_error(generation, exc),
            name="comfyvn-plugin-list",
        )

    def reload(self, name: str | None = None) -> None:
        """``POST …/plugins/reload`` (every plugin, or ``name``), then list again."""
        api = self._api
        if api is None or self._reloading:
            return
        self._reloading = True
        self._issued += 1
        seq, generation = self._issued, self._generation
        known = {str(p.get("name")) for p in self._plugins}
        params = {"name": name} if name else None
        self._reload_line = ("amber", f"Reloading {name or 'every plugin'}…")
        self._show_status()
        self._update_buttons()
        run_async(
            lambda: api.post(RELOAD_PATH, params=params),
            lambda body: self._on_reloaded(generation, seq, name, known, body),
            lambda exc: self._on_reload_error(generation, name, exc),
            name="comfyvn-plugin-reload",
        )

    def reload_selected(self) -> None:
        name = self.selected_name()
        if name:
            self.reload(name)

    # -- answers (GUI thread) ----------------------------------------------------------------
    def _on_listed(self, generation: int, seq: int, body: Any) -> None:
        if generation != self._generation:
            return
        self._in_flight = False
        if not isinstance(body, dict):
            self._on_list_error(generation, ValueError("the plugin list is not a JSON object"))
            return
        self._last_ok_at = time.time()
        self.last_error = None
        if self._problem_line is not None and self._problem_line[0] == "red":
            self._problem_line = None  # the earlier failure is over
        if seq > self._applied:
            self._apply(seq, body)
        self.load_count += 1
        self._update_footer()
        self.loaded.emit(True)
        self._maybe_again()

    def _on_list_error(self, generation: int, exc: BaseException) -> None:
        if generation != self._generation:
            return
        self._in_flight = False
        api = self._api
        message = describe_failure(exc, api.conn.server if api else "?", api and api.timeout_s)
        self.last_error = message
        kept = (
            f" Showing plugins as of {format_clock(self._last_ok_at)}."
            if self._last_ok_at and self._plugins
            else ""
        )
        self._problem_line = ("red", f"Listing plugins failed: {message}.{kept}")
        self._show_status()
        if not self._plugins:
            self._render()
        self.failure_count += 1
        self.loaded.emit(False)
        self._maybe_again()

    def _on_reloaded(
        self, generation: int, seq: int, name: str | None, known: set[str], body: Any
    ) -> None:
        if generation != self._generation:
            return
        self._reloading = False
        body = body if isinstance(body, dict) else {}
        ok, text = reload_summary(body, name, time.time(), known)
        self._reload_line = ("green" if ok else "red", text)
        self.last_reload = body
        self.reload_count += 1
        if seq > self._applied and "plugins" in body:
            self._apply(seq, body)
        self._show_status()
        self._update_buttons()
        self.reloaded.emit(ok)
        self.refresh()

    def _on_reload_error(self, generation: int, name: str | None, exc: BaseException) -> None:
        if generation != self._generation:
            return
        self._reloading = False
        self.reload_count += 1
        if isinstance(exc, ApiError) and exc.status == 409:
            # Not an error: this server runs no plugin code, and says why.
            self.reason = str(exc.detail)
            self._reload_line = ("gray", f"Nothing to reload: {self.reason}")
            self._render()
        else:
            api = self._api
            message = describe_failure(exc, api.conn.server if api else "?", api and api.timeout_s)
            self._reload_line = ("red", f"Reload of {name or 'every plugin'} failed: {message}")
        self._show_status()
        self._update_buttons()
        self.reloaded.emit(False)
        self.refresh()

    def _apply(self, seq: int, body: dict[str, Any]) -> None:
        self._applied = seq
        self._body = body
        enabled = body.get("enabled", True)
        self.reason = None if enabled else str(body.get("reason") or "no plugin code runs")
        if self.reason is not None:
            self._problem_line = ("gray", f"No plugins run on this server: {self.reason}")
        elif self._problem_line is not None and self._problem_line[0] == "gray":
            self._problem_line = None
        plugins = [p for p in body.get("plugins") or [] if isinstance(p, dict)]
        if plugins != self._plugins or not self.load_count:
            self._plugins = plugins
            self._render()
        self._show_status()
        self._update_footer()
        self._update_buttons()

    def _maybe_again(self) -> None:
        if self._again:
            self._again = False
            QTimer.singleShot(0, self.refresh)

    # -- rendering ---------------------------------------------------------------------------
    def _render(self) -> None:
        current = self.selected_name()
        scroll = self.tree.verticalScrollBar().value()
        self.tree.blockSignals(True)
        try:
            self.tree.clear()
            chosen: QTreeWidgetItem | None = None
            first_problem: QTreeWidgetItem | None = None
            for plugin in self._plugins:
                item = self._build_item(plugin)
                self.tree.addTopLevelItem(item)
                issue = plugin_issue(plugin)
                if issue is not None:
                    self._add_issue(item, plugin, *issue)
                if item.data(0, NAME_ROLE) == current:
                    chosen = item
                if first_problem is None and item.data(0, COLOUR_ROLE) != "green":
                    first_problem = item
            if chosen is None and not self._picked and self.tree.topLevelItemCount():
                # First listing: show what needs attention, else the first plugin.
                chosen = first_problem or self.tree.topLevelItem(0)
            if chosen is not None:
                self.tree.setCurrentItem(chosen)
                self._picked = True
            if not self._plugins:
                self._add_placeholder()
        finally:
            self.tree.blockSignals(False)
        self.tree.verticalScrollBar().setValue(scroll)
        self._measure_names()
        self._render_detail()
        self._update_buttons()

    def _fit_columns(self) -> None:
        """All six columns when the dock is wide; narrower, Hooks and then Source give way (the
        line under the table and the tooltips still name them)."""
        width = self.tree.viewport().width()
        widths = {**COLUMN_WIDTHS, COL_NAME: self._name_width}
        base = sum(widths.values()) - widths[COL_SOURCE]
        show_source = width >= base + widths[COL_SOURCE]
        show_hooks = width >= base + widths[COL_SOURCE] + MIN_HOOKS_WIDTH
        self.tree.setColumnHidden(COL_SOURCE, not show_source)
        self.tree.setColumnHidden(COL_HOOKS, not show_hooks)
        header = self.tree.header()
        stretch = COL_HOOKS if show_hooks else COL_NAME
        for col in (COL_NAME, COL_HOOKS):
            mode = (
                QHeaderView.ResizeMode.Stretch if col == stretch else QHeaderView.ResizeMode.Fixed
            )
            header.setSectionResizeMode(col, mode)
        if not show_hooks:
            header.resizeSection(COL_HOOKS, MIN_HOOKS_WIDTH)
        else:
            header.resizeSection(COL_NAME, self._name_width)

    def _measure_names(self) -> None:
        """The Plugin column's width: the longest (bold) name, within NAME_WIDTH_RANGE."""
        font = self.tree.font()
        font.setBold(True)
        metrics = QFontMetrics(font)
        longest = max(
            (metrics.horizontalAdvance(str(p.get("name", ""))) for p in self._plugins), default=0
        )
        low, high = NAME_WIDTH_RANGE
        width = min(high, max(low, longest + 16))  # + the cell's padding
        if width != self._name_width:
            self._name_width = width
            self._fit_columns()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self._tree_viewport and event.type() == QEvent.Type.Resize:
            self._fit_columns()
        return super().eventFilter(watched, event)

    def _placeholder_text(self) -> str:
        if self._api is None:
            return f"Not connected: {self._not_connected}"
        if self.reason is not None:
            return f"No plugins run: {self.reason}"
        if self.last_error and not self.load_count:
            return "No plugin list: see the message above"
        if self.load_count:
            root = self._body.get("root")
            return f"No plugins found{f' in {root}' if root else ''}"
        return "Loading plugins…"

    def _add_placeholder(self) -> None:
        text = self._placeholder_text()
        placeholder = QTreeWidgetItem([text])
        placeholder.setToolTip(0, text)
        placeholder.setFlags(Qt.ItemFlag.ItemIsEnabled)
        placeholder.setForeground(0, QBrush(QColor(_TEXT_COLOURS["gray"])))
        self.tree.addTopLevelItem(placeholder)
        placeholder.setFirstColumnSpanned(True)  # only takes once the item is in the tree

    def _build_item(self, plugin: dict[str, Any]) -> QTreeWidgetItem:
        name = str(plugin.get("name", "?"))
        colour, label = plugin_status(plugin.get("status"))
        hooks = [str(h) for h in plugin.get("hooks") or []]
        errors = plugin.get("errors") or 0
        item = QTreeWidgetItem(
            [
                label,
                name,
                str(plugin.get("source") or "—"),
                ", ".join(hooks) or "—",
                str(plugin.get("calls") or 0),
                str(errors),
            ]
        )
        item.setData(0, NAME_ROLE, name)
        item.setData(0, STATUS_ROLE, str(plugin.get("status")))
        item.setData(0, COLOUR_ROLE, colour)
        item.setIcon(COL_STATUS, status_icon(colour))
        item.setForeground(COL_STATUS, QBrush(QColor(STATUS_COLORS[colour]).darker(120)))
        font = item.font(COL_NAME)
        font.setBold(True)
        item.setFont(COL_NAME, font)
        details = _details(plugin, self._body.get("call_budget_s"))
        item.setToolTip(COL_NAME, details)
        item.setToolTip(COL_SOURCE, details)
        item.setToolTip(COL_HOOKS, "\n".join(hooks) or "no hook functions")
        item.setToolTip(COL_STATUS, _status_tip(plugin))
        for col in (COL_CALLS, COL_ERRORS):
            item.setTextAlignment(col, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if isinstance(errors, int) and errors > 0:
            item.setForeground(COL_ERRORS, QBrush(QColor(_TEXT_COLOURS["red"])))
        return item

    def _add_issue(
        self, item: QTreeWidgetItem, plugin: dict[str, Any], colour: str, text: str
    ) -> None:
        child = QTreeWidgetItem([f"⚠ {text}" if colour != "gray" else text])
        child.setData(0, NAME_ROLE, item.data(0, NAME_ROLE))
        child.setData(0, COLOUR_ROLE, colour)
        child.setFlags(Qt.ItemFlag.ItemIsEnabled)  # a click selects its plugin (_on_clicked)
        child.setForeground(0, QBrush(QColor(_TEXT_COLOURS.get(colour, "#555b63"))))
        error = plugin.get("error")
        child.setToolTip(0, plugin_error_text(error, full_path=True) if error else text)
        item.addChild(child)
        child.setFirstColumnSpanned(True)  # only takes once the item is in the tree
        item.setExpanded(True)

    def issue_text(self, name: str) -> str | None:
        """The line shown under a plugin's row (its error or last error), if any."""
        for i in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(i)
            if item.data(0, NAME_ROLE) == name:
                return item.child(0).text(0) if item.childCount() else None
        return None

    def _selected_plugin(self) -> dict[str, Any] | None:
        name = self.selected_name()
        return next((p for p in self._plugins if p.get("name") == name), None)

    def _render_detail(self) -> None:
        plugin = self._selected_plugin()
        if plugin is None:
            self.caption.set_full_text("Select a plugin to see its problems and log lines")
            self.caption.setToolTip("")
        else:
            self.caption.set_full_text(_caption(plugin))
            self.caption.setToolTip(_details(plugin, self._body.get("call_budget_s")))
        self._render_log(plugin)

    def _render_log(self, plugin: dict[str, Any] | None) -> None:
        """Problems first (amber), then the log lines, newest last; the view stays at the
        bottom if it was there, and is not rebuilt when nothing changed."""
        name = plugin.get("name") if plugin else None
        rows: list[tuple[str, str, str]] = []
        problems: list[str] = []
        if plugin is not None:
            problems = [str(p) for p in plugin.get("problems") or []]
            for line in plugin.get("log") or []:
                if isinstance(line, dict):
                    rows.append(
                        (
                            format_clock(line.get("ts"), millis=True),
                            str(line.get("level") or ""),
                            str(line.get("message") or ""),
                        )
                    )
        self._log_rows, self._problems = rows, problems
        text = "" if plugin is None else _log_html(str(name), problems, rows)
        if text == self._log_html:
            return
        bar = self.log_view.verticalScrollBar()
        same = name is not None and name == self._log_for
        at_bottom = not same or bar.value() >= bar.maximum() - 2
        scroll = bar.value()
        self._log_for, self._log_html = name, text
        self.log_view.setHtml(text)
        bar.setValue(bar.maximum() if at_bottom else scroll)

    def log_lines(self) -> list[tuple[str, str, str]]:
        """(time, level, message) of the selected plugin's log lines, as shown."""
        return list(self._log_rows)

    def problem_lines(self) -> list[str]:
        """The selected plugin's problems, as shown above its log lines."""
        return list(self._problems)

    def _show_status(self) -> None:
        line = self._problem_line or self._reload_line
        if line is None:
            self.status_label.hide()
            return
        colour, text = line
        style = "" if colour in ("green", "gray") else f' style="color:{_TEXT_COLOURS[colour]}"'
        self.status_label.setText(f"{dot_html(colour)} <span{style}>{html.escape(text)}</span>")
        self.status_label.setToolTip(text)
        self.status_label.show()

    def status_text(self) -> str:
        """The status line as plain text ("" when hidden)."""
        line = self._problem_line or self._reload_line
        return line[1] if line is not None else ""

    def _update_footer(self) -> None:
        body = self._body
        if not self.load_count and not self._plugins:
            self.footer.set_full_text("")
            return
        parts = [f"{len(self._plugins)} plugin(s)"]
        if self._last_ok_at is not None:
            parts.append(f"updated {format_clock(self._last_ok_at)}")
        if body.get("watching"):
            parts.append("reloads on file change")
        if body.get("enabled_installed"):
            parts.append("installed: " + ", ".join(map(str, body["enabled_installed"])))
        if body.get("root"):
            parts.append(f"folder {body['root']}")
        text = " · ".join(parts)
        self.footer.set_full_text(text)
        self.footer.setToolTip(text)

    def _update_buttons(self) -> None:
        can = self._api is not None and not self._reloading and self.reason is None
        self.reload_button.setEnabled(can)
        self.reload_selected_button.setEnabled(can and self.selected_name() is not None)

    # -- selection ---------------------------------------------------------------------------
    def _on_current(
        self, current: QTreeWidgetItem | None, previous: QTreeWidgetItem | None
    ) -> None:
        if current is not None and current.parent() is not None:
            # An issue line stands for its plugin; the Down key moves on past it.
            parent = current.parent()
            below = self.tree.itemBelow(current) if previous is parent else None
            self.tree.setCurrentItem(below or parent)
            return
        if current is not None:
            self._picked = True
        self._render_detail()
        self._update_buttons()

    def _on_clicked(self, item: QTreeWidgetItem, _column: int) -> None:
        if item.parent() is not None:
            self.tree.setCurrentItem(item.parent())

    # -- polling -----------------------------------------------------------------------------
    def _on_tick(self) -> None:
        if not self._in_flight and not self._reloading:
            self.refresh()

    def _update_polling(self) -> None:
        active = self._visible and self._api is not None
        if active and not self.poll_timer.isActive():
            self.poll_timer.start()
        elif not active and self.poll_timer.isActive():
            self.poll_timer.stop()

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self._visible = True
        self._update_polling()
        stale = self._last_ok_at is None or (
            time.time() - self._last_ok_at > self.poll_timer.interval() / 1000
        )
        if self._api is not None and stale and not self._in_flight:
            self.refresh()

    def hideEvent(self, event: QHideEvent) -> None:
        super().hideEvent(event)
        self._visible = False
        self._update_polling()


def _status_tip(plugin: dict[str, Any]) -> str:
    _, label = plugin_status(plugin.get("status"))
    running = plugin.get("running")
    if running == "previous":
        return f"{label}: its new version failed; the previous version is still running"
    if running == "current":
        return f"{label}: running"
    if plugin.get("status") == "available":
        return f"{label}: installed, not enabled (--plugin NAME or COMFYVN_PLUGINS)"
    return f"{label}: not running"


def _caption(plugin: dict[str, Any]) -> str:
    """One line above the log: which plugin, its source and hooks, where it lives."""
    parts = [str(plugin.get("name", "?")), str(plugin.get("source") or "?")]
    hooks = [str(h) for h in plugin.get("hooks") or []]
    parts.append(f"hooks: {', '.join(hooks)}" if hooks else "no hooks")
    where = plugin.get("path") or plugin.get("entry_point")
    if where:
        parts.append(str(where))
    return " · ".join(parts)


def _log_html(name: str, problems: list[str], rows: list[tuple[str, str, str]]) -> str:
    esc = html.escape
    amber, gray = _TEXT_COLOURS["amber"], _TEXT_COLOURS["gray"]
    out = ['<table width="100%" cellspacing="0" cellpadding="2">']
    out.append(
        f'<tr style="color:{gray}"><td nowrap><b>Time</b></td><td nowrap><b>Level</b></td>'
        "<td><b>Message</b></td></tr>"
    )
    for problem in problems:
        out.append(
            f'<tr style="color:{amber}"><td nowrap>—</td><td nowrap>PROBLEM</td>'
            f"<td>{esc(problem)}</td></tr>"
        )
    for n, (clock, level, message) in enumerate(rows):
        colour = _TEXT_COLOURS.get(_LEVEL_COLOURS.get(level, ""), "")
        shade = ' bgcolor="#f7f8fa"' if n % 2 else ""
        style = f' style="color:{colour}"' if colour else ""
        out.append(
            f"<tr{shade}{style}><td nowrap>{esc(clock)}</td><td nowrap>{esc(level)}</td>"
            f"<td>{esc(message)}</td></tr>"
        )
    out.append("</table>")
    if not rows:
        out.append(f'<p style="color:{gray}">No log lines from {esc(name)} yet.</p>')
    return "".join(out)


def _details(plugin: dict[str, Any], call_budget_s: Any) -> str:
    """Everything about the selected plugin, for the caption's tooltip."""
    _, label = plugin_status(plugin.get("status"))
    lines = [f"{plugin.get('name')}: {label} ({plugin.get('source')})"]
    if plugin.get("distribution") or plugin.get("version"):
        lines.append(
            f"distribution: {plugin.get('distribution') or '?'} {plugin.get('version') or ''}"
        )
    for key in ("path", "entry_point", "module"):
        if plugin.get(key):
            lines.append(f"{key}: {plugin[key]}")
    hooks = [str(h) for h in plugin.get("hooks") or []]
    lines.append(f"hooks: {', '.join(hooks) or 'none'}")
    lines.append(
        f"calls {plugin.get('calls') or 0} · errors {plugin.get('errors') or 0} · "
        f"listeners {plugin.get('listeners') or 0}"
    )
    running = plugin.get("running")
    if running is not None and plugin.get("loaded_at"):
        lines.append(f"{running} version loaded at {format_clock(plugin.get('loaded_at'))}")
    elif running is None:
        lines.append("not running")
    error = plugin.get("error")
    if error:
        phase = str(error.get("phase") or "load")
        lines.append(f"{phase} failed: {plugin_error_text(error, full_path=True)}")
    if plugin.get("last_error"):
        lines.append(f"last error: {plugin['last_error']}")
    busy = plugin.get("busy_for_s")
    if isinstance(busy, int | float):
        budget = f" (budget {call_budget_s:g} s)" if isinstance(call_budget_s, int | float) else ""
        lines.append(f"a hook call has run for {busy:g} s{budget}")
    if plugin.get("config_keys"):
        lines.append("config (plugins.toml): " + ", ".join(map(str, plugin["config_keys"])))
    return "\n".join(lines)


class ElidedLabel(QLabel):
    """One line of text that ends in "…" when the panel is too narrow, never wider."""

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._full = text
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.setTextFormat(Qt.TextFormat.PlainText)
        self._elide()

    def set_full_text(self, text: str) -> None:
        self._full = text
        self._elide()

    def full_text(self) -> str:
        return self._full

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        width = max(0, self.width() - 2)
        metrics = self.fontMetrics()
        super().setText(metrics.elidedText(self._full, Qt.TextElideMode.ElideRight, width))
