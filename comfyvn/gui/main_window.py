"""The Studio main window: workspaces (Scenario, System), menus, docks and their saved layout."""

from __future__ import annotations

import os
import re
import sys
import threading
from typing import Any

from PySide6.QtCore import QByteArray, QSettings, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import (
    QAction,
    QActionGroup,
    QCloseEvent,
    QDesktopServices,
    QKeySequence,
    QShowEvent,
)
from PySide6.QtWidgets import (
    QDockWidget,
    QFrame,
    QLabel,
    QMainWindow,
    QMessageBox,
    QScrollArea,
    QSizePolicy,
    QStackedWidget,
    QToolBar,
    QWidget,
)

from comfyvn import __version__

from .api import StudioApi
from .launcher import Discovery, LocalServer, discover
from .options import WORKSPACES, StudioOptions
from .panels.debug_integrations import DebugIntegrationsPanel
from .panels.modder_hooks import ModderHooksTabs
from .panels.webhooks import WebhooksPanel
from .theme import dot_html
from .workers import run_async
from .workspaces.scenario import ScenarioWorkspace
from .workspaces.system import SystemOverview

__all__ = ["DEFAULT_SIZE", "SIZE_ENV", "StudioWindow", "initial_size"]

DEFAULT_SIZE = (1280, 800)
STATE_VERSION = 1
TITLES = {"scenario": "Scenario", "system": "System"}
HOOKS_DOCK_W, HOOKS_DOCK_MIN_W = 470, 340  # the docks' default sizes, and on small windows
DEBUG_DOCK_H, DEBUG_DOCK_MIN_H = 360, 240
SIZE_ENV = "COMFYVN_STUDIO_SIZE"
AUTO_REFRESH_NOTE = " · auto-refresh on"  # how the Debug Integrations footer marks polling


def initial_size() -> tuple[int, int] | None:
    """``COMFYVN_STUDIO_SIZE=WIDTHxHEIGHT`` (e.g. ``1024x700``): the window's size on opening,
    over the remembered one; for screenshots and small-screen checks. Ignored if malformed."""
    match = re.fullmatch(r"\s*(\d{3,5})\s*[xX]\s*(\d{3,5})\s*", os.environ.get(SIZE_ENV, ""))
    if match is None:
        return None
    return max(640, int(match[1])), max(480, int(match[2]))


class StudioWindow(QMainWindow):
    connection_changed = Signal(bool)  # True once connected, False when no server was found

    def __init__(self, options: StudioOptions, settings: QSettings | None = None) -> None:
        super().__init__()
        self.options = options
        self._settings = settings
        self._states: dict[str, QByteArray] = {}  # per-workspace layouts when not persisted
        self._spawned: list[LocalServer] = []
        self._spawn_lock = threading.Lock()
        self.api: StudioApi | None = None
        self.discovery: Discovery | None = None
        self.connect_problem: str | None = None
        self.connect_done = False
        self.workspace: str | None = None
        self._restored = False
        self.setWindowTitle("ComfyVN Studio")
        self.setObjectName("studioWindow")
        self.resize(*DEFAULT_SIZE)
        self.setDockOptions(
            QMainWindow.DockOption.AnimatedDocks | QMainWindow.DockOption.AllowTabbedDocks
        )

        self.scenario = ScenarioWorkspace()
        self.system = SystemOverview()
        self.stack = QStackedWidget()
        self.stack.addWidget(self.scenario)
        self.stack.addWidget(self.system)
        self.setCentralWidget(self.stack)

        self.debug_panel = DebugIntegrationsPanel(settings=settings)
        self.debug_dock = self._dock(
            "Debug Integrations", "debugIntegrationsDock", self.debug_panel
        )
        self.hooks_tabs = ModderHooksTabs(settings=settings)
        self.hooks_panel = self.hooks_tabs.stream_panel  # the "Stream" tab
        self.plugins_panel = self.hooks_tabs.plugins_panel  # the "Plugins" tab
        if options.hooks_tab:
            self.hooks_tabs.show_tab(options.hooks_tab)
        self.hooks_dock = self._dock("Modder Hooks", "modderHooksDock", self.hooks_tabs)
        self.webhooks_panel = WebhooksPanel()
        # scrolls rather than forcing its form's width and height onto a small window
        webhooks_scroll = QScrollArea()
        webhooks_scroll.setWidget(self.webhooks_panel)
        webhooks_scroll.setWidgetResizable(True)
        webhooks_scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.webhooks_dock = self._dock("Webhooks", "webhooksDock", webhooks_scroll)
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.debug_dock)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.hooks_dock)
        self.tabifyDockWidget(self.debug_dock, self.webhooks_dock)
        self.webhooks_dock.hide()
        self.webhooks_panel.set_exposed(False)
        self.debug_panel.summary_changed.connect(self.system.set_provider_summary)
        self.hooks_panel.stream_state_changed.connect(self._on_stream_state)
        self.debug_panel.refreshed.connect(self._on_providers_refreshed)
        # The panel writes "auto-refresh on" into its footer only after a check: keep it true.
        self.debug_panel.auto_check.toggled.connect(self._sync_auto_refresh_footer)
        self._stream_state = ""
        self._sized = False

        self._build_actions()
        self._build_menus()
        self._build_toolbar()
        self.statusBar().showMessage("Connecting…")
        if settings is not None:
            geometry = settings.value("window/geometry")
            if isinstance(geometry, QByteArray | bytes):
                self.restoreGeometry(QByteArray(geometry))
        size = initial_size()
        if size is not None:
            self.resize(*size)
        self.set_workspace(self._initial_workspace())

    # -- construction ------------------------------------------------------------------------
    def _dock(self, title: str, name: str, widget: QWidget) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(name)
        dock.setWidget(widget)
        dock.setAllowedAreas(Qt.DockWidgetArea.AllDockWidgetAreas)
        return dock

    def _build_actions(self) -> None:
        self.workspace_group = QActionGroup(self)
        self.workspace_group.setExclusive(True)
        self.workspace_actions: dict[str, QAction] = {}
        for n, name in enumerate(WORKSPACES, start=1):
            action = QAction(TITLES[name], self, checkable=True)
            action.setShortcut(QKeySequence(f"Ctrl+{n}"))
            action.setToolTip(f"Switch to the {TITLES[name]} workspace (Ctrl+{n})")
            action.triggered.connect(lambda _=False, ws=name: self.set_workspace(ws))
            self.workspace_group.addAction(action)
            self.workspace_actions[name] = action
        # Checkable like Webhooks: ticked while the dock shows; unticking it closes the dock.
        self.open_debug_action = self._dock_action(
            "Debug Integrations", "Ctrl+Shift+D", self.debug_dock
        )
        self.open_hooks_action = self._dock_action("Modder Hooks", "Ctrl+Shift+H", self.hooks_dock)
        self.open_plugins_action = QAction("Plugins", self)
        self.open_plugins_action.setShortcut(QKeySequence("Ctrl+Shift+P"))
        self.open_plugins_action.setToolTip("The Modder Hooks dock's Plugins tab")
        self.open_plugins_action.triggered.connect(self.open_plugins)
        # Checkable: ticked while the dock shows; unticking it closes the dock.
        self.webhooks_action = QAction("Webhooks", self, checkable=True)
        self.webhooks_action.setShortcut(QKeySequence("Ctrl+Shift+W"))
        self.webhooks_action.setToolTip("Webhook subscriptions and their recent deliveries")
        self.webhooks_action.triggered.connect(self.toggle_webhooks)
        self.webhooks_dock.visibilityChanged.connect(self.webhooks_action.setChecked)
        self.webhooks_dock.visibilityChanged.connect(self.webhooks_panel.set_exposed)
        self.refresh_action = QAction("Refresh Providers", self)
        self.refresh_action.setShortcut(QKeySequence("F5"))
        self.refresh_action.triggered.connect(self.debug_panel.refresh)
        self.api_docs_action = QAction("Open API Docs in Browser", self)
        self.api_docs_action.triggered.connect(self._open_api_docs)
        self.open_scene_action = QAction("Open Scene File…", self)
        self.open_scene_action.setShortcut(QKeySequence.StandardKey.Open)
        self.open_scene_action.triggered.connect(self._open_scene_file)
        self.quit_action = QAction("Quit", self)
        self.quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        self.quit_action.triggered.connect(self.close)
        self.reset_layout_action = QAction("Reset Layout", self)
        self.reset_layout_action.triggered.connect(self.reset_layout)

    def _dock_action(self, text: str, shortcut: str, dock: QDockWidget) -> QAction:
        action = QAction(text, self, checkable=True)
        action.setShortcut(QKeySequence(shortcut))
        action.setToolTip(f"Show or close the {text} dock ({shortcut})")
        action.triggered.connect(lambda show=True: self.toggle_dock(dock, action, show))
        dock.visibilityChanged.connect(action.setChecked)
        return action

    def _build_menus(self) -> None:
        bar = self.menuBar()
        file_menu = bar.addMenu("&File")
        file_menu.addAction(self.open_scene_action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)
        self.workspaces_menu = bar.addMenu("&Workspaces")
        for action in self.workspace_actions.values():
            self.workspaces_menu.addAction(action)
        self.workspaces_menu.addSeparator()
        self.workspaces_menu.addAction(self.reset_layout_action)
        self.system_menu = bar.addMenu("&System")
        self.system_menu.addAction(self.open_debug_action)
        self.system_menu.addAction(self.open_hooks_action)
        self.system_menu.addAction(self.open_plugins_action)
        self.system_menu.addAction(self.webhooks_action)
        self.system_menu.addSeparator()
        self.system_menu.addAction(self.refresh_action)
        self.system_menu.addAction(self.api_docs_action)
        help_menu = bar.addMenu("&Help")
        about = help_menu.addAction("About ComfyVN Studio")
        about.triggered.connect(self._about)

    def _build_toolbar(self) -> None:
        toolbar = QToolBar("Workspaces")
        toolbar.setObjectName("workspaceToolbar")
        toolbar.setMovable(False)
        toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        toolbar.addWidget(QLabel("  Workspace: "))
        for action in self.workspace_actions.values():
            toolbar.addAction(action)
        spacer = QWidget()
        spacer.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        toolbar.addWidget(spacer)
        self.connection_label = QLabel(f"{dot_html('amber')} connecting…  ")
        self.connection_label.setTextFormat(Qt.TextFormat.RichText)
        toolbar.addWidget(self.connection_label)
        self.addToolBar(Qt.ToolBarArea.TopToolBarArea, toolbar)

    def _initial_workspace(self) -> str:
        """``--workspace`` first, then the one open when the Studio last closed, then Scenario."""
        if self.options.workspace in WORKSPACES:
            return self.options.workspace
        saved = self._settings.value("workspace/current") if self._settings else None
        return str(saved) if saved in WORKSPACES else "scenario"

    # -- connection --------------------------------------------------------------------------
    def start(self) -> None:
        """Find or start the server on a worker thread, then hand it to every panel."""

        # The worker gets plain data only (see comfyvn.gui.workers), never the window.
        options, spawned, lock = self.options, self._spawned, self._spawn_lock

        def register(local: LocalServer) -> None:
            with lock:
                spawned.append(local)

        run_async(
            lambda: discover(options, register),
            self.attach,
            lambda exc: self.detach(str(exc) or type(exc).__name__),
            name="comfyvn-discover",
        )

    def attach(self, discovery: Discovery) -> None:
        self.discovery = discovery
        self.connect_done = True
        if discovery.local is not None:
            print(
                f"comfyvn studio: started a local server at {discovery.conn.server} "
                f"(pid {discovery.local.pid}) for {discovery.local.data_dir}; "
                "it stops when the Studio closes",
                file=sys.stderr,
                flush=True,
            )
        api = StudioApi(discovery.conn, self.options.timeouts.http_s)
        self.api = api
        self.debug_panel.set_connection(api)
        self.hooks_panel.set_connection(api, max_backoff_s=self.options.timeouts.reconnect_max_s)
        self.plugins_panel.set_connection(api)
        self.webhooks_panel.set_connection(api)
        self.scenario.set_connection(api)
        self.system.set_connection(api, discovery.origin)
        if self.options.scene:
            self.scenario.play_when_loaded(self.options.scene)
        self._show_connection("amber", "connecting")
        self.statusBar().showMessage(f"Server {discovery.conn.server} ({discovery.origin})")
        self.connection_changed.emit(True)

    def _show_connection(self, color: str, state: str) -> None:
        discovery = self.discovery
        if discovery is None:
            return
        token = "" if discovery.conn.token else ", no token found"
        self.connection_label.setText(
            f"{dot_html(color)} {discovery.conn.server} · {state} ({discovery.origin}{token})  "
        )

    def _on_stream_state(self, state: str, message: str) -> None:
        stream = self.hooks_panel.stream
        if state == "retry" and (stream is None or stream.connects == 0):
            color, words = "red", "unreachable, retrying"  # never got through yet
        else:
            color = {"live": "green", "retry": "amber", "connecting": "amber"}.get(state, "red")
            words = {"live": "connected", "retry": "reconnecting", "connecting": "connecting"}.get(
                state, "refused"
            )
        self._show_connection(color, words)
        self.connection_label.setToolTip(f"hook stream: {message}")
        if state != self._stream_state:
            # connected, lost or back again: the System cards must say so now, not on their timer
            self._stream_state = state
            if state in ("live", "retry", "error"):
                self.system.refresh()

    def _sync_auto_refresh_footer(self, on: bool) -> None:
        footer = self.debug_panel.footer
        text = footer.text().replace(AUTO_REFRESH_NOTE, "")
        if on and text.startswith("Checked "):  # the only footer that carries the note
            text += AUTO_REFRESH_NOTE
        footer.setText(text)

    def _on_providers_refreshed(self, ok: bool) -> None:
        if not ok and not self.debug_panel.rows():
            self.system.providers_value.setText("unknown: the provider list could not be read")

    def detach(self, problem: str) -> None:
        self.connect_problem = problem
        self.connect_done = True
        self.debug_panel.set_connection(None, problem)
        self.hooks_panel.set_connection(None, problem)
        self.plugins_panel.set_connection(None, problem)
        self.webhooks_panel.set_connection(None, problem)
        self.scenario.set_connection(None, problem)
        self.system.set_connection(None, "", problem)
        first_line = problem.splitlines()[0] if problem else "no server"
        self.connection_label.setText(f"{dot_html('red')} not connected  ")
        self.connection_label.setToolTip(problem)
        self.statusBar().showMessage(f"Not connected: {first_line}")
        self.connection_changed.emit(False)

    def stop_local_servers(self) -> None:
        """Blocking: SIGTERM (then SIGKILL) every server this Studio started."""
        with self._spawn_lock:
            spawned = list(self._spawned)
            self._spawned.clear()
        for local in spawned:
            local.stop()

    # -- workspaces and docks ----------------------------------------------------------------
    def set_workspace(self, name: str) -> None:
        if name not in WORKSPACES:
            raise ValueError(f"unknown workspace {name!r}; choose one of {', '.join(WORKSPACES)}")
        if name == self.workspace:
            if name == "system":
                self.open_dock(self.debug_dock)
            return
        if self.workspace is not None:
            self._save_workspace_state(self.workspace)
        self.workspace = name
        self.stack.setCurrentWidget(self.scenario if name == "scenario" else self.system)
        self._restored = self._restore_workspace_state(name)
        if not self._restored:
            self._default_layout(name)
        if name == "system":
            self.open_dock(self.debug_dock)  # entering System always opens the panel
        self.workspace_actions[name].setChecked(True)
        if self._settings is not None:
            self._settings.setValue("workspace/current", name)

    def open_dock(self, dock: QDockWidget) -> None:
        if dock.isFloating() and not dock.isVisible():
            dock.setFloating(False)
        dock.show()
        dock.raise_()

    def toggle_webhooks(self, show: bool = True) -> None:
        """The System menu's Webhooks item: opens (and raises) the dock, or closes it."""
        self.toggle_dock(self.webhooks_dock, self.webhooks_action, show)

    def toggle_dock(self, dock: QDockWidget, action: QAction, show: bool = True) -> None:
        """A checkable System menu item: opens (and raises) its dock, or closes it."""
        if show:
            self.open_dock(dock)
        else:
            dock.close()
        action.setChecked(dock.isVisible())

    def open_plugins(self) -> None:
        """The Modder Hooks dock, on its Plugins tab."""
        self.hooks_tabs.show_tab("plugins")
        self.open_dock(self.hooks_dock)

    def reset_layout(self) -> None:
        if self.workspace is not None:
            self._default_layout(self.workspace)
            if self.workspace == "system":
                self.open_dock(self.debug_dock)

    def _default_layout(self, name: str) -> None:
        for dock in (self.debug_dock, self.hooks_dock, self.webhooks_dock):
            dock.setFloating(False)
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.debug_dock)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.hooks_dock)
        self.tabifyDockWidget(self.debug_dock, self.webhooks_dock)  # a tab next to it
        self.hooks_dock.show()
        self.webhooks_dock.setVisible(name == "system")
        self.debug_dock.setVisible(name == "system")
        self._size_docks(name)

    def _size_docks(self, name: str) -> None:
        # 470 px at the default size; less on a small window, so the workspace keeps its room
        width = max(HOOKS_DOCK_MIN_W, min(HOOKS_DOCK_W, int(self.width() * 0.36)))
        self.resizeDocks([self.hooks_dock], [width], Qt.Orientation.Horizontal)
        if name == "system":
            height = max(DEBUG_DOCK_MIN_H, min(DEBUG_DOCK_H, int(self.height() * 0.42)))
            self.resizeDocks([self.debug_dock], [height], Qt.Orientation.Vertical)

    def _save_workspace_state(self, name: str) -> None:
        state = self.saveState(STATE_VERSION)
        self._states[name] = state
        if self._settings is not None:
            self._settings.setValue(f"workspace/{name}/state", state)

    def _restore_workspace_state(self, name: str) -> bool:
        state: Any = self._states.get(name)
        if state is None and self._settings is not None:
            state = self._settings.value(f"workspace/{name}/state")
        if not isinstance(state, QByteArray | bytes):
            return False
        return bool(self.restoreState(QByteArray(state), STATE_VERSION))

    def save_layout(self) -> None:
        if self.workspace is not None:
            self._save_workspace_state(self.workspace)
        if self._settings is not None:
            self._settings.setValue("window/geometry", self.saveGeometry())
            self._settings.sync()

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if not self._sized and self.workspace is not None and not self._restored:
            # dock sizes only take once the window has its real size
            QTimer.singleShot(0, lambda: self._size_docks(self.workspace or "scenario"))
        self._sized = True

    def closeEvent(self, event: QCloseEvent) -> None:
        self.save_layout()
        self.hooks_panel.shutdown()
        self.plugins_panel.shutdown()
        super().closeEvent(event)

    # -- menu actions ------------------------------------------------------------------------
    def _open_scene_file(self) -> None:
        self.set_workspace("scenario")
        self.scenario.open_file_dialog()

    def _open_api_docs(self) -> None:
        if self.api is not None:
            QDesktopServices.openUrl(QUrl(f"{self.api.conn.server}/docs"))

    def _about(self) -> None:
        server = self.api.conn.server if self.api else "not connected"
        QMessageBox.about(
            self,
            "About ComfyVN Studio",
            f"<b>ComfyVN Studio</b> {__version__}<br>Server: {server}<br>"
            "Talks to the studio server over HTTP and WebSocket only.",
        )

    # -- screenshot support ------------------------------------------------------------------
    def settled(self) -> bool:
        """True once what the current workspace shows has loaded (or failed to)."""
        if not self.connect_done:
            return False
        if self.api is None:
            return True
        debug = self.debug_panel
        if self.debug_dock.isVisible() and debug.refresh_count + debug.failure_count == 0:
            return False
        if self.hooks_dock.isVisible() and self.hooks_panel.stream_state == "connecting":
            return False
        hooks = self.webhooks_panel
        if hooks.shown and hooks.refresh_count + hooks.failure_count == 0:
            return False
        plugins = self.plugins_panel
        if plugins.isVisible() and plugins.load_count + plugins.failure_count == 0:
            return False
        if self.workspace == "scenario":
            if not self.scenario.loaded:
                return False
            if self.options.scene and self.scenario.last_turn is None:
                return self.scenario.banner.isVisible()  # a failed start counts as settled
        return True
