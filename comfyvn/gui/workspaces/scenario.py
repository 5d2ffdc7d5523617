"""The Scenario workspace: pick a scene (from the server's catalogue or a file), play it with
choice buttons, and watch its variables and history.

Every step is ``POST /api/scenario/run/step`` on a worker thread, so the server's hooks
(``on_scene_enter``, ``on_choice_render``) fire for real and show in the Modder Hooks dock.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..api import StudioApi, describe_failure
from ..formatting import format_value
from ..workers import run_async

__all__ = ["ScenarioWorkspace"]

RANDOM_SEED = -1


class ScenarioWorkspace(QWidget):
    turn_shown = Signal(object)  # the step answer just displayed
    scenes_loaded = Signal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._api: StudioApi | None = None
        self._scene: dict[str, Any] | None = None
        self._scene_source = ""
        self._state: dict[str, Any] | None = None
        self._busy = False
        self._pending_scene: str | None = None
        self._choice_buttons: list[QPushButton] = []
        # combo items carry only the scene id: dicts in Qt item data become QVariantMaps
        self._summaries: dict[str, dict[str, Any]] = {}
        self.last_turn: dict[str, Any] | None = None
        self.loaded = False  # the scene list arrived (or failed): the screenshot waits on it

        # -- scene bar
        self.scene_combo = QComboBox()
        # narrow minimums (long titles elide) so the bar fits next to the hooks dock at 1024 px
        self.scene_combo.setMinimumContentsLength(6)
        self.scene_combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.reload_button = QPushButton("↻")
        self.reload_button.setToolTip("Reload the server's scene list")
        self.reload_button.setFixedWidth(32)
        self.open_button = QPushButton("Open file…")
        self.pov_combo = QComboBox()
        self.pov_combo.setMinimumContentsLength(5)
        self.pov_combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(RANDOM_SEED, 2**31 - 1)
        self.seed_spin.setSpecialValueText("random")
        self.seed_spin.setValue(RANDOM_SEED)
        self.seed_spin.setToolTip("Seed for auto-picks; 'random' lets the server choose")
        # its hint is sized for 2147483647; "random" and everyday seeds need far less
        self.seed_spin.setMinimumWidth(
            self.seed_spin.fontMetrics().horizontalAdvance("random") + 44
        )
        self.start_button = QPushButton("Start")
        self.start_button.setDefault(True)
        self.auto_button = QPushButton("Auto-pick")
        self.auto_button.setToolTip("Let the seeded generator pick a choice by weight")
        bar = QHBoxLayout()
        for label, widget in (
            ("Scene", self.scene_combo),
            (None, self.reload_button),
            (None, self.open_button),
            ("POV", self.pov_combo),
            ("Seed", self.seed_spin),
        ):
            if label:
                bar.addWidget(QLabel(label))
            bar.addWidget(widget, 3 if widget is self.scene_combo else 0)

        self.banner = QLabel()
        self.banner.setObjectName("banner")
        self.banner.setWordWrap(True)
        self.banner.hide()

        # -- the node card
        card = QFrame()
        card.setObjectName("card")
        self.title_label = QLabel("No scene loaded")
        self.title_label.setObjectName("cardTitle")
        self.title_label.setWordWrap(True)
        self.node_label = QLabel()
        self.node_label.setObjectName("info")
        self.speaker_label = QLabel()
        self.speaker_label.setObjectName("speaker")
        self.text_label = QLabel("Pick a scene and press Start.")
        self.text_label.setObjectName("nodeText")
        self.text_label.setWordWrap(True)
        self.text_label.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.choices_box = QVBoxLayout()
        self.choices_box.setSpacing(6)
        self.end_label = QLabel()
        self.end_label.setObjectName("cardTitle")
        card_layout = QVBoxLayout(card)
        card_layout.setContentsMargins(18, 14, 18, 14)
        title_row = QHBoxLayout()
        title_row.addWidget(self.title_label, 1)
        title_row.addWidget(self.start_button)
        title_row.addWidget(self.auto_button)
        card_layout.addLayout(title_row)
        card_layout.addWidget(self.node_label)
        card_layout.addSpacing(8)
        card_layout.addWidget(self.speaker_label)
        card_layout.addWidget(self.text_label)
        card_layout.addSpacing(12)
        card_layout.addLayout(self.choices_box)
        card_layout.addWidget(self.end_label)
        card_layout.addStretch(1)

        # -- variables and history
        self.variables_tree = QTreeWidget()
        self.variables_tree.setHeaderLabels(["Variable", "Value"])
        self.variables_tree.setAlternatingRowColors(True)
        variables_header = self.variables_tree.header()
        variables_header.resizeSection(0, 120)
        variables_header.setMinimumSectionSize(50)
        # Value takes what is left (stretch-last-section would keep 100 px and scroll sideways)
        variables_header.setStretchLastSection(False)
        variables_header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.variables_tree.setMinimumWidth(170)
        self.history_list = QListWidget()
        self.history_list.setAlternatingRowColors(True)
        side = QSplitter(Qt.Orientation.Vertical)
        side.addWidget(_titled("Variables", self.variables_tree))
        side.addWidget(_titled("History", self.history_list))

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(card)
        splitter.addWidget(side)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        splitter.setChildrenCollapsible(False)  # a narrow window must not hide the variables

        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 8, 10, 8)
        layout.addLayout(bar)
        layout.addWidget(self.banner)
        layout.addWidget(splitter, 1)

        self.scene_combo.activated.connect(self._on_scene_picked)
        self.reload_button.clicked.connect(self.reload_scenes)
        self.open_button.clicked.connect(self.open_file_dialog)
        self.start_button.clicked.connect(self.start)
        self.auto_button.clicked.connect(lambda: self.choose(None))
        self._update_buttons()

    # -- connection and scene list -----------------------------------------------------------
    def set_connection(self, api: StudioApi | None, problem: str | None = None) -> None:
        self._api = api
        if api is None:
            self._error(f"Not connected: {problem or 'no server'}")
            self.loaded = True
            self._update_buttons()
            return
        self.banner.hide()
        self.reload_scenes()

    def reload_scenes(self) -> None:
        api = self._api
        if api is None:
            return
        run_async(
            lambda: api.get("/api/scenario/scenes"),
            self._on_scenes,
            lambda exc: self._on_scenes_failed(exc),
            name="comfyvn-scene-list",
        )

    def play_when_loaded(self, scene_id: str) -> None:
        """Select and start ``scene_id`` as soon as the catalogue has it (``--scene``)."""
        self._pending_scene = scene_id
        if self.loaded:
            self._start_pending()

    def _on_scenes(self, body: dict[str, Any]) -> None:
        items = body.get("items") or []
        self.banner.hide()
        current = self.scene_combo.currentData() if self.scene_combo.count() else ""
        self.scene_combo.clear()
        self._summaries = {str(s.get("id")): s for s in items}
        if not items:
            self.scene_combo.addItem("(the server has no scenes: open a file)", "")
        for summary in items:
            title = summary.get("title") or summary.get("id")
            self.scene_combo.addItem(f"{title}  [{summary.get('id')}]", str(summary.get("id")))
        if current:
            index = self.scene_combo.findData(current)
            if index >= 0:
                self.scene_combo.setCurrentIndex(index)
        self.loaded = True
        self.scenes_loaded.emit(items)
        if self._scene is None and items:
            self._on_scene_picked(self.scene_combo.currentIndex())
        self._start_pending()

    def _on_scenes_failed(self, exc: BaseException) -> None:
        self.loaded = True
        self._error(f"Could not list scenes: {self._why(exc)}")

    def _start_pending(self) -> None:
        wanted, self._pending_scene = self._pending_scene, None
        if not wanted:
            return
        index = self.scene_combo.findData(wanted) if wanted in self._summaries else -1
        if index >= 0:
            self.scene_combo.setCurrentIndex(index)
            self._fetch_scene(self._summaries[wanted], start=True)
            return
        self._error(f"The server has no scene {wanted!r}")

    def _on_scene_picked(self, index: int) -> None:
        summary = self._summaries.get(str(self.scene_combo.itemData(index) or ""))
        if summary is not None:
            self._fetch_scene(summary, start=False)

    def current_summary(self) -> dict[str, Any] | None:
        """The catalogue entry selected in the scene list."""
        if self.scene_combo.count() == 0:
            return None
        return self._summaries.get(str(self.scene_combo.currentData() or ""))

    def _fetch_scene(self, summary: dict[str, Any], *, start: bool) -> None:
        api = self._api
        if api is None:
            return
        scene_id = str(summary.get("id"))
        self._set_busy(True)

        def loaded(body: dict[str, Any]) -> None:
            self._set_busy(False)
            self._use_scene(body["scene"], f"server: {scene_id}", summary)
            if start:
                self.start()

        def failed(exc: BaseException) -> None:
            self._set_busy(False)
            self._error(f"Could not load scene {scene_id!r}: {self._why(exc)}")

        run_async(lambda: api.get(f"/api/scenario/scenes/{scene_id}"), loaded, failed)

    # -- files -------------------------------------------------------------------------------
    def open_file_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open scene", "", "Scene JSON (*.json)")
        if path:
            self.open_file(Path(path))

    def open_file(self, path: Path) -> bool:
        """Load a scene file from disk; the server validates it on Start."""
        try:
            scene = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            self._error(f"Cannot read {path}: {exc.strerror or exc}")
            return False
        except json.JSONDecodeError as exc:
            self._error(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}")
            return False
        if not isinstance(scene, dict):
            self._error(f"{path} does not hold a scene (a JSON object)")
            return False
        self.banner.hide()
        meta = scene.get("metadata") if isinstance(scene.get("metadata"), dict) else {}
        summary = {
            "id": scene.get("id"),
            "title": meta.get("title") or scene.get("id"),
            "povs": meta.get("povs") or [],
            "default_pov": meta.get("default_pov"),
        }
        self._use_scene(scene, f"file: {Path(path).name}", summary)
        return True

    def _use_scene(self, scene: dict[str, Any], source: str, summary: dict[str, Any]) -> None:
        self._scene, self._scene_source, self._state = scene, source, None
        self.last_turn = None
        self.start_button.setText("Start")
        self.pov_combo.clear()
        povs = [str(p) for p in summary.get("povs") or []]
        default = summary.get("default_pov")
        if default and default not in povs:
            povs.insert(0, str(default))
        for pov in povs or ["(scene default)"]:
            self.pov_combo.addItem(pov)
        if default:
            self.pov_combo.setCurrentText(str(default))
        self.title_label.setText(str(summary.get("title") or scene.get("id")))
        self.title_label.setToolTip(source)
        self.node_label.setText("")
        self.speaker_label.setText("")
        self.text_label.setText("Press Start to play.")
        self.end_label.setText("")
        self._set_choices([])
        self.variables_tree.clear()
        self.history_list.clear()
        self._update_buttons()

    # -- playing -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._scene is None:
            self._error("Load a scene first")
            return
        body: dict[str, Any] = {"scene": self._scene}
        if self.seed_spin.value() != RANDOM_SEED:
            body["seed"] = self.seed_spin.value()
        pov = self.pov_combo.currentText()
        if pov and not pov.startswith("("):
            body["pov"] = pov
        self._step(body)

    def choose(self, choice_id: str | None) -> None:
        if self._scene is None or self._state is None:
            return
        body: dict[str, Any] = {"scene": self._scene, "state": self._state}
        if choice_id is not None:
            body["choice_id"] = choice_id
        self._step(body)

    def _step(self, body: dict[str, Any]) -> None:
        api = self._api
        if api is None or self._busy:
            return
        self._set_busy(True)
        self.banner.hide()

        def failed(exc: BaseException) -> None:
            self._set_busy(False)
            self._error(f"Step failed: {self._why(exc)}")

        run_async(
            lambda: api.post("/api/scenario/run/step", json=body),
            self._show_turn,
            failed,
            name="comfyvn-scenario-step",
        )

    def _show_turn(self, turn: dict[str, Any]) -> None:
        self._set_busy(False)
        self._state = turn.get("state")
        self.last_turn = turn
        node = turn.get("node") or {}
        state = turn.get("state") or {}
        self.node_label.setText(
            f"node {node.get('id')} · {node.get('type', 'dialogue')} · POV {state.get('pov')}"
            f" · {self._scene_source}"
        )
        self.start_button.setText("Restart")
        self.speaker_label.setText(str(node.get("speaker") or ""))
        self.speaker_label.setVisible(bool(node.get("speaker")))
        self.text_label.setText(str(node.get("text") or ""))
        self._set_choices(turn.get("choices") or [])
        self.end_label.setText("— The end —" if turn.get("finished") else "")
        self._show_variables(state.get("variables") or {})
        self.history_list.clear()
        for entry in state.get("history") or []:
            choice = entry.get("choice")
            self.history_list.addItem(
                f"{entry.get('node')}  →  {choice}" if choice else str(entry.get("node"))
            )
        self.history_list.scrollToBottom()
        self._update_buttons()
        self.turn_shown.emit(turn)

    def _set_choices(self, choices: list[dict[str, Any]]) -> None:
        for button in self._choice_buttons:
            self.choices_box.removeWidget(button)
            button.deleteLater()
        self._choice_buttons = []
        for n, choice in enumerate(choices, start=1):
            choice_id = choice.get("id")
            button = QPushButton(f"{n}.  {choice.get('label', choice.get('id'))}")
            button.setObjectName("choice")
            button.setProperty("choice_id", choice.get("id"))
            button.setToolTip(f"choice {choice.get('id')} → {choice.get('target')}")
            button.clicked.connect(lambda _=False, cid=choice_id: self.choose(cid))
            self.choices_box.addWidget(button)
            self._choice_buttons.append(button)

    def choice_buttons(self) -> list[QPushButton]:
        return list(self._choice_buttons)

    def _show_variables(self, variables: dict[str, Any]) -> None:
        self.variables_tree.clear()

        def add(parent: QTreeWidget | QTreeWidgetItem, key: str, value: Any) -> None:
            shown = "" if isinstance(value, dict) and value else format_value(value)
            item = QTreeWidgetItem([key, shown])
            if isinstance(parent, QTreeWidget):
                parent.addTopLevelItem(item)
            else:
                parent.addChild(item)
            if isinstance(value, dict):
                for k, v in value.items():
                    add(item, str(k), v)
                item.setExpanded(True)

        for key, value in variables.items():
            add(self.variables_tree, str(key), value)

    # -- helpers -----------------------------------------------------------------------------
    def _set_busy(self, busy: bool) -> None:
        self._busy = busy
        self._update_buttons()

    def _update_buttons(self) -> None:
        ready = self._api is not None and not self._busy
        self.start_button.setEnabled(ready and self._scene is not None)
        running = self._state is not None and not (self.last_turn or {}).get("finished")
        self.auto_button.setEnabled(ready and running and bool(self._choice_buttons))
        for button in self._choice_buttons:
            button.setEnabled(ready)

    def _error(self, text: str) -> None:
        self.banner.setText(text)
        self.banner.show()

    def _why(self, exc: BaseException) -> str:
        api = self._api
        return describe_failure(exc, api.conn.server if api else "?", api and api.timeout_s)


def _titled(title: str, widget: QWidget) -> QWidget:
    box = QWidget()
    label = QLabel(title)
    label.setObjectName("cardTitle")
    layout = QVBoxLayout(box)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(label)
    layout.addWidget(widget, 1)
    return box
