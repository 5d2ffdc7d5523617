"""Webhooks: the subscriptions, their recent deliveries and every attempt, like a "Recent
Deliveries" page, with Redeliver, Send ping, Enable/Disable, Delete and New subscription.

Every request runs on a worker thread (see :mod:`comfyvn.gui.workers`); the GUI thread only
builds rows, so a receiver that hangs during a ping or a redelivery never freezes the Studio.
The panel polls (every ~2 s) only while it is visible, refreshes after each action and follows
new deliveries of the selected subscription. URLs arrive masked from the server and are masked
again here (:func:`comfyvn.gui.formatting.mask_userinfo`) before any widget shows them. A new
subscription's secret is shown once, in a dialog, and kept nowhere else.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QBrush, QColor, QGuiApplication, QHideEvent, QShowEvent
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QSplitter,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..api import StudioApi, describe_failure
from ..formatting import format_clock, format_latency, mask_userinfo, webhook_state
from ..theme import STATUS_COLORS, mono_font, status_icon
from ..workers import run_async

__all__ = [
    "ID_ROLE",
    "POLL_MS",
    "STATE_ROLE",
    "NewSubscriptionDialog",
    "SecretDialog",
    "WebhooksPanel",
]

WEBHOOKS = "/api/modder/hooks/webhooks"
POLL_MS = 2000
DELIVERY_LIMIT = 30
ID_ROLE = Qt.ItemDataRole.UserRole + 1
STATE_ROLE = Qt.ItemDataRole.UserRole + 2
SUB_COLUMNS = ["State", "URL", "Events", "Reason / health"]
DELIVERY_COLUMNS = ["#", "Event", "Status", "Code", "Latency", "Tries", "Updated"]
ATTEMPT_COLUMNS = ["Try", "Time", "Code", "Latency", "Outcome", "Error", "Response"]
DELIVERY_COLOURS = {"delivered": "green", "pending": "amber", "failed": "red"}
SNIPPET = 120


def _one_line(text: Any, limit: int = SNIPPET) -> str:
    flat = " ".join(mask_userinfo(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _code(value: Any) -> str:
    return "—" if value is None else str(value)


class NewSubscriptionDialog(QDialog):
    """URL, events and description; the panel sends them when the dialog is accepted."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("New webhook subscription")
        self.url_edit = QLineEdit()
        self.url_edit.setPlaceholderText("https://example.com/hooks/comfyvn")
        self.events_edit = QLineEdit("*")
        self.events_edit.setToolTip(
            "Comma-separated hook names (on_scene_enter, on_choice_render, …) or * for all"
        )
        self.description_edit = QLineEdit()
        self.description_edit.setPlaceholderText("optional: what receives these")
        form = QFormLayout()
        form.addRow("URL", self.url_edit)
        form.addRow("Events", self.events_edit)
        form.addRow("Description", self.description_edit)
        note = QLabel("The server generates a signing secret and shows it once.")
        note.setObjectName("info")
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Create")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(note)
        layout.addWidget(buttons)
        self.resize(520, self.sizeHint().height())

    def values(self) -> tuple[str, list[str], str]:
        events = [e.strip() for e in self.events_edit.text().split(",") if e.strip()] or ["*"]
        return self.url_edit.text().strip(), events, self.description_edit.text().strip()


class SecretDialog(QDialog):
    """The one place the Studio shows a signing secret; closing it forgets the secret."""

    def __init__(self, secret: str, url: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Webhook signing secret")
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        heading = QLabel(f"Subscription created for {mask_userinfo(url)}")
        heading.setWordWrap(True)
        self.secret_edit = QLineEdit(secret)
        self.secret_edit.setReadOnly(True)
        self.secret_edit.setFont(mono_font())
        self.secret_edit.setMinimumWidth(460)
        self.copy_button = QPushButton("Copy")
        self.copy_button.clicked.connect(self.copy)
        row = QHBoxLayout()
        row.addWidget(self.secret_edit, 1)
        row.addWidget(self.copy_button)
        self.note = QLabel(
            "Store this secret now: it will not be shown again. The server keeps only what "
            "signs the deliveries; rotate the secret if you lose it."
        )
        self.note.setWordWrap(True)
        self.note.setObjectName("info")
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(heading)
        layout.addLayout(row)
        layout.addWidget(self.note)
        layout.addWidget(buttons)

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.secret_edit.text())
        self.copy_button.setText("Copied")

    def done(self, result: int) -> None:
        self.secret_edit.clear()  # the secret lives nowhere once the dialog closes
        super().done(result)


class WebhooksPanel(QWidget):
    refreshed = Signal(bool)  # after each poll: True with data, False on failure
    action_finished = Signal(str, bool)  # (action, ok) after Redeliver, ping, enable, delete, new

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._api: StudioApi | None = None
        self._not_connected = "connecting to the server…"
        self._generation = 0
        self._in_flight = False
        self._again = False
        self._visible = False
        # A dock behind another tab stays "visible" (Qt moves it off-screen): the main window
        # reports the dock's real visibility here, and polling needs both.
        self._exposed = True
        self._actions = 0  # actions in flight
        self._subs: list[dict[str, Any]] = []
        self._deliveries: list[dict[str, Any]] = []
        self._attempts: list[dict[str, Any]] = []
        self._sub_id: str | None = None
        self._delivery_id: int | None = None
        self._follow = True  # the newest delivery stays selected as new ones arrive
        self._rendering = False
        self.refresh_count = 0
        self.failure_count = 0
        self.last_error: str | None = None
        self.new_dialog: NewSubscriptionDialog | None = None
        self.secret_dialog: SecretDialog | None = None
        self.confirm_box: QMessageBox | None = None

        self.new_button = QPushButton("New subscription…")
        self.new_button.clicked.connect(self.open_new_dialog)
        self.ping_button = QPushButton("Send ping")
        self.ping_button.setToolTip("POST a signed 'ping' event to the selected subscription now")
        self.ping_button.clicked.connect(self.send_ping)
        self.toggle_button = QPushButton("Disable")
        self.toggle_button.clicked.connect(self.toggle_enabled)
        self.delete_button = QPushButton("Delete…")
        self.delete_button.clicked.connect(self.confirm_delete)
        self.redeliver_button = QPushButton("Redeliver")
        self.redeliver_button.setToolTip("Send the selected delivery again now")
        self.redeliver_button.clicked.connect(self.redeliver)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.clicked.connect(self.refresh)
        controls = QHBoxLayout()
        for button in (
            self.new_button,
            self.ping_button,
            self.toggle_button,
            self.delete_button,
            self.redeliver_button,
        ):
            controls.addWidget(button)
        controls.addStretch(1)
        controls.addWidget(self.refresh_button)

        self.banner = QLabel()
        self.banner.setObjectName("banner")
        self.banner.setWordWrap(True)
        self.banner.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.banner.hide()
        self.status_label = QLabel()
        self.status_label.setObjectName("info")
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.subs_tree = self._tree(SUB_COLUMNS, {0: 96, 1: 330, 2: 260})
        self.subs_tree.header().setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        self.subs_tree.currentItemChanged.connect(self._on_sub_selected)
        self.deliveries_tree = self._tree(
            DELIVERY_COLUMNS, {0: 44, 1: 128, 2: 92, 3: 48, 4: 64, 5: 44, 6: 70}
        )
        self.deliveries_tree.currentItemChanged.connect(self._on_delivery_selected)
        self.attempts_tree = self._tree(
            ATTEMPT_COLUMNS, {0: 36, 1: 70, 2: 64, 3: 64, 4: 74, 5: 150}
        )
        self.attempts_tree.header().setSectionResizeMode(6, QHeaderView.ResizeMode.Stretch)
        self.deliveries_caption = QLabel("Recent deliveries")
        self.deliveries_caption.setObjectName("cardTitle")
        self.attempts_caption = QLabel("Attempts")
        self.attempts_caption.setObjectName("cardTitle")

        subs_box = QWidget()
        subs_layout = QVBoxLayout(subs_box)
        subs_layout.setContentsMargins(0, 0, 0, 0)
        subs_caption = QLabel("Subscriptions")
        subs_caption.setObjectName("cardTitle")
        subs_layout.addWidget(subs_caption)
        subs_layout.addWidget(self.subs_tree, 1)
        deliveries_box = QWidget()
        deliveries_layout = QVBoxLayout(deliveries_box)
        deliveries_layout.setContentsMargins(0, 0, 0, 0)
        deliveries_layout.addWidget(self.deliveries_caption)
        deliveries_layout.addWidget(self.deliveries_tree, 1)
        attempts_box = QWidget()
        attempts_layout = QVBoxLayout(attempts_box)
        attempts_layout.setContentsMargins(0, 0, 0, 0)
        attempts_layout.addWidget(self.attempts_caption)
        attempts_layout.addWidget(self.attempts_tree, 1)
        lower = QSplitter(Qt.Orientation.Horizontal)
        lower.addWidget(deliveries_box)
        lower.addWidget(attempts_box)
        lower.setStretchFactor(0, 2)
        lower.setStretchFactor(1, 3)
        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.addWidget(subs_box)
        self.splitter.addWidget(lower)
        self.splitter.setStretchFactor(0, 2)
        self.splitter.setStretchFactor(1, 3)
        self.splitter.setChildrenCollapsible(False)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addLayout(controls)
        layout.addWidget(self.banner)
        layout.addWidget(self.splitter, 1)
        layout.addWidget(self.status_label)

        self.poll_timer = QTimer(self)
        self.poll_timer.setInterval(POLL_MS)
        self.poll_timer.timeout.connect(self._on_tick)
        self._render()

    @staticmethod
    def _tree(columns: list[str], widths: dict[int, int]) -> QTreeWidget:
        tree = QTreeWidget()
        tree.setColumnCount(len(columns))
        tree.setHeaderLabels(columns)
        tree.setRootIsDecorated(False)
        tree.setAlternatingRowColors(True)
        tree.setAllColumnsShowFocus(True)
        tree.setUniformRowHeights(True)
        header = tree.header()
        header.setStretchLastSection(True)
        for col, width in widths.items():
            header.resizeSection(col, width)
        return tree

    # -- public ------------------------------------------------------------------------------
    def set_connection(self, api: StudioApi | None, problem: str | None = None) -> None:
        self._api = api
        self._generation += 1
        self._in_flight = False
        self._not_connected = problem or "connecting to the server…"
        if api is None:
            self._show_banner(f"Not connected: {self._not_connected}")
        else:
            self.banner.hide()
            if self.shown:
                self.refresh()
        self._update_polling()
        self._render()

    @property
    def polling(self) -> bool:
        return self.poll_timer.isActive()

    @property
    def shown(self) -> bool:
        """On screen: visible and, in a dock, not hidden behind another tab."""
        return self._visible and self._exposed

    def set_exposed(self, exposed: bool) -> None:
        """The dock's ``visibilityChanged``: False while another tab covers it."""
        was = self.shown
        self._exposed = exposed
        self._update_polling()
        if self.shown and not was and self._api is not None and not self._in_flight:
            self.refresh()

    @property
    def busy(self) -> bool:
        return self._in_flight or self._actions > 0

    def subscriptions(self) -> list[dict[str, Any]]:
        return list(self._subs)

    def deliveries(self) -> list[dict[str, Any]]:
        return list(self._deliveries)

    def attempts(self) -> list[dict[str, Any]]:
        return list(self._attempts)

    def selected_subscription(self) -> dict[str, Any] | None:
        return next((s for s in self._subs if s.get("id") == self._sub_id), None)

    def selected_delivery_id(self) -> int | None:
        return self._delivery_id

    def select_subscription(self, sub_id: str) -> bool:
        for i in range(self.subs_tree.topLevelItemCount()):
            item = self.subs_tree.topLevelItem(i)
            if item.data(0, ID_ROLE) == sub_id:
                self.subs_tree.setCurrentItem(item)
                return True
        return False

    def select_delivery(self, delivery_id: int) -> bool:
        for i in range(self.deliveries_tree.topLevelItemCount()):
            item = self.deliveries_tree.topLevelItem(i)
            if item.data(0, ID_ROLE) == delivery_id:
                self.deliveries_tree.setCurrentItem(item)
                return True
        return False

    def status_text(self) -> str:
        return self.status_label.text()

    def refresh(self) -> None:
        """List subscriptions, then the selected one's deliveries and the selected delivery's
        attempts, all in one worker job; at most one in flight."""
        api = self._api
        if api is None:
            return
        if self._in_flight:
            self._again = True
            return
        self._in_flight = True
        self._again = False
        generation, sub_id, delivery_id = self._generation, self._sub_id, self._delivery_id
        follow = self._follow

        def job() -> dict[str, Any]:
            listed = api.get(WEBHOOKS)
            ids = [s.get("id") for s in listed.get("items") or []]
            chosen = sub_id if sub_id in ids else (ids[0] if ids else None)
            out: dict[str, Any] = {"subs": listed.get("items") or [], "sub_id": chosen}
            if chosen is None:
                return out
            base = f"{WEBHOOKS}/{quote(str(chosen), safe='')}"
            items = api.get(f"{base}/deliveries", params={"limit": DELIVERY_LIMIT}).get("items")
            out["deliveries"] = items or []
            ids_d = [d.get("id") for d in out["deliveries"]]
            want = delivery_id if chosen == sub_id and delivery_id in ids_d else None
            if want is None or follow:
                want = ids_d[0] if ids_d else None
            out["delivery_id"] = want
            if want is not None:
                out["attempts"] = api.get(f"{base}/deliveries/{want}").get("attempts") or []
            return out

        run_async(
            job,
            lambda result: self._on_result(generation, result),
            lambda exc: self._on_error(generation, exc),
            name="comfyvn-webhooks",
        )

    # -- actions -----------------------------------------------------------------------------
    def open_new_dialog(self) -> NewSubscriptionDialog:
        dialog = NewSubscriptionDialog(self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.accepted.connect(lambda: self.create_subscription(*dialog.values()))
        self.new_dialog = dialog
        dialog.destroyed.connect(lambda: setattr(self, "new_dialog", None))
        dialog.open()  # window-modal, never a nested event loop
        return dialog

    def create_subscription(self, url: str, events: list[str], description: str = "") -> None:
        body = {"url": url, "events": events, "description": description}
        self._act(
            "create",
            lambda api: api.post(WEBHOOKS, json=body),
            self._on_created,
            f"Creating a subscription for {mask_userinfo(url)}…",
        )

    def _on_created(self, result: dict[str, Any]) -> None:
        webhook = result.get("webhook") or {}
        self._sub_id = str(webhook.get("id"))
        self._delivery_id = None
        self._follow = True
        secret = str(webhook.get("secret") or "")
        self.status_label.setText(f"Created {mask_userinfo(webhook.get('url'))}")
        if secret:
            dialog = SecretDialog(secret, str(webhook.get("url") or ""), self)
            self.secret_dialog = dialog
            dialog.destroyed.connect(lambda: setattr(self, "secret_dialog", None))
            dialog.open()

    def send_ping(self) -> None:
        sub = self.selected_subscription()
        if sub is None:
            return
        path = f"{self._sub_path(sub)}/ping"
        self._act(
            "ping",
            lambda api: api.post(path),
            lambda result: self._on_sent("Ping", result),
            f"Pinging {mask_userinfo(sub.get('url'))}…",
        )

    def redeliver(self) -> None:
        sub, delivery_id = self.selected_subscription(), self._delivery_id
        if sub is None or delivery_id is None:
            return
        path = f"{self._sub_path(sub)}/deliveries/{delivery_id}/redeliver"
        self._act(
            "redeliver",
            lambda api: api.post(path),
            lambda result: self._on_sent(f"Redelivery of #{delivery_id}", result),
            f"Redelivering #{delivery_id}…",
        )

    def _on_sent(self, what: str, result: dict[str, Any]) -> None:
        attempt = result.get("attempt") or {}
        delivery = result.get("delivery") or {}
        if delivery.get("id") is not None:
            self._delivery_id = int(delivery["id"])
            self._follow = False
        took = format_latency(attempt.get("latency_ms"))
        if result.get("delivered"):
            text = f"{what}: delivered, {attempt.get('status_code')} in {took}"
        else:
            why = attempt.get("error") or f"answered {_code(attempt.get('status_code'))}"
            text = f"{what} failed after {took}: {_one_line(why)}"
        self.status_label.setText(text)

    def toggle_enabled(self) -> None:
        sub = self.selected_subscription()
        if sub is None:
            return
        enable = not sub.get("enabled", True)
        path = self._sub_path(sub)
        word = "Enabling" if enable else "Disabling"
        self._act(
            "enable" if enable else "disable",
            lambda api: api.patch(path, json={"enabled": enable}),
            lambda result: self.status_label.setText(
                f"{'Enabled' if enable else 'Disabled'} {mask_userinfo(sub.get('url'))}"
            ),
            f"{word} {mask_userinfo(sub.get('url'))}…",
        )

    def confirm_delete(self) -> QMessageBox | None:
        sub = self.selected_subscription()
        if sub is None:
            return None
        box = QMessageBox(
            QMessageBox.Icon.Warning,
            "Delete webhook subscription",
            f"Delete the subscription for {mask_userinfo(sub.get('url'))} and its delivery "
            "log? This cannot be undone.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
            self,
        )
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        sub_id = str(sub.get("id"))

        def answered(button: int) -> None:
            if button == QMessageBox.StandardButton.Yes:
                self.delete_subscription(sub_id)

        box.finished.connect(answered)
        box.destroyed.connect(lambda: setattr(self, "confirm_box", None))
        self.confirm_box = box
        box.open()
        return box

    def delete_subscription(self, sub_id: str) -> None:
        sub = next((s for s in self._subs if s.get("id") == sub_id), {"id": sub_id})
        path = self._sub_path(sub)
        url = mask_userinfo(sub.get("url") or sub_id)

        def done(result: dict[str, Any]) -> None:
            if self._sub_id == sub_id:
                self._sub_id, self._delivery_id, self._follow = None, None, True
            self.status_label.setText(f"Deleted {url}")

        self._act("delete", lambda api: api.delete(path), done, f"Deleting {url}…")

    @staticmethod
    def _sub_path(sub: dict[str, Any]) -> str:
        return f"{WEBHOOKS}/{quote(str(sub.get('id')), safe='')}"

    def _act(self, name: str, call: Any, on_done: Any, working: str) -> None:
        api = self._api
        if api is None:
            self._show_banner(f"Not connected: {self._not_connected}")
            return
        self._actions += 1
        self.status_label.setText(working)
        self._update_buttons()

        def done(result: Any) -> None:
            self._actions -= 1
            on_done(result)
            self._update_buttons()
            self.action_finished.emit(name, True)
            self.refresh()

        def failed(exc: BaseException) -> None:
            self._actions -= 1
            message = describe_failure(exc, api.conn.server, api.timeout_s)
            self.status_label.setText(f"{name.capitalize()} failed: {mask_userinfo(message)}")
            self._update_buttons()
            self.action_finished.emit(name, False)
            self.refresh()

        run_async(lambda: call(api), done, failed, name=f"comfyvn-webhooks-{name}")

    # -- results (GUI thread) ----------------------------------------------------------------
    def _on_result(self, generation: int, result: dict[str, Any]) -> None:
        if generation != self._generation:
            return
        self._in_flight = False
        self.banner.hide()
        self.last_error = None
        self._subs = list(result.get("subs") or [])
        chosen = result.get("sub_id")
        gone = self._sub_id is None or self.selected_subscription() is None
        if chosen != self._sub_id and gone:
            self._sub_id, self._delivery_id, self._follow = chosen, None, True
        if chosen == self._sub_id:
            self._deliveries = list(result.get("deliveries") or [])
            want = result.get("delivery_id")
            if self._follow or self._delivery_id is None or self._delivery_id == want:
                self._delivery_id = want
                self._attempts = list(result.get("attempts") or [])
        self._render()
        self.refresh_count += 1
        self.refreshed.emit(True)
        self._maybe_again()

    def _on_error(self, generation: int, exc: BaseException) -> None:
        if generation != self._generation:
            return
        self._in_flight = False
        api = self._api
        message = describe_failure(exc, api.conn.server if api else "?", api and api.timeout_s)
        self.last_error = mask_userinfo(message)
        self._show_banner(f"Refresh failed: {self.last_error}")
        self.failure_count += 1
        self._render()
        self.refreshed.emit(False)
        self._maybe_again()

    def _maybe_again(self) -> None:
        if self._again:
            self._again = False
            QTimer.singleShot(0, self.refresh)

    # -- selection ---------------------------------------------------------------------------
    def _on_sub_selected(self, current: QTreeWidgetItem | None, _previous: Any) -> None:
        if self._rendering or current is None:
            return
        sub_id = current.data(0, ID_ROLE)
        if not sub_id or sub_id == self._sub_id:
            return
        self._sub_id, self._delivery_id, self._follow = sub_id, None, True
        self._deliveries, self._attempts = [], []
        self._render()
        self.refresh()

    def _on_delivery_selected(self, current: QTreeWidgetItem | None, _previous: Any) -> None:
        if self._rendering or current is None:
            return
        delivery_id = current.data(0, ID_ROLE)
        if delivery_id is None or delivery_id == self._delivery_id:
            return
        self._delivery_id = int(delivery_id)
        newest = self._deliveries[0].get("id") if self._deliveries else None
        self._follow = self._delivery_id == newest
        self._attempts = []
        self._render()
        self.refresh()

    # -- rendering ---------------------------------------------------------------------------
    def _show_banner(self, text: str) -> None:
        self.banner.setText(mask_userinfo(text))
        self.banner.show()

    def _render(self) -> None:
        self._rendering = True
        try:
            self._render_subs()
            self._render_deliveries()
            self._render_attempts()
        finally:
            self._rendering = False
        self._update_buttons()

    def _placeholder(self, tree: QTreeWidget, text: str) -> None:
        item = QTreeWidgetItem([text])
        item.setForeground(0, QBrush(QColor("#555b63")))
        item.setFlags(Qt.ItemFlag.NoItemFlags)
        tree.addTopLevelItem(item)
        item.setFirstColumnSpanned(True)

    def _render_subs(self) -> None:
        tree = self.subs_tree
        scroll = tree.verticalScrollBar().value()
        tree.clear()
        for sub in self._subs:
            colour, label, reason = webhook_state(sub)
            events = ", ".join(str(e) for e in sub.get("events") or [])
            url = mask_userinfo(sub.get("url"))
            item = QTreeWidgetItem([label, url, "all hooks" if events == "*" else events, reason])
            item.setIcon(0, status_icon(colour))
            item.setData(0, ID_ROLE, sub.get("id"))
            item.setData(0, STATE_ROLE, label.lower())
            item.setForeground(0, QBrush(QColor(STATUS_COLORS[colour]).darker(120)))
            if label != "Enabled":
                item.setForeground(3, QBrush(QColor("#8a1c1f" if colour == "red" else "#6b5200")))
            description = mask_userinfo(sub.get("description") or "")
            item.setToolTip(
                1,
                f"{url}\nid: {sub.get('id')}\nsecret: {sub.get('secret') or '—'}"
                + (f"\n{description}" if description else ""),
            )
            item.setToolTip(3, reason)
            font = item.font(1)
            font.setBold(True)
            item.setFont(1, font)
            tree.addTopLevelItem(item)
            if sub.get("id") == self._sub_id:
                tree.setCurrentItem(item)
        if not self._subs:
            if self._api is None:
                text = f"Not connected: {self._not_connected}"
            elif self.last_error:
                text = "No subscription data: see the message above"
            elif self.refresh_count:
                text = "No webhook subscriptions yet: add one with New subscription…"
            else:
                text = "Loading subscriptions…"
            self._placeholder(tree, mask_userinfo(text))
        tree.verticalScrollBar().setValue(scroll)

    def _render_deliveries(self) -> None:
        tree = self.deliveries_tree
        tree.clear()
        sub = self.selected_subscription()
        if sub is None:
            self.deliveries_caption.setText("Recent deliveries")
            return
        self.deliveries_caption.setText(f"Recent deliveries · {_one_line(sub.get('url'), 70)}")
        for delivery in self._deliveries:
            status = str(delivery.get("status"))
            item = QTreeWidgetItem(
                [
                    str(delivery.get("id")),
                    str(delivery.get("event")),
                    status.capitalize(),
                    _code(delivery.get("last_status_code")),
                    format_latency(delivery.get("last_latency_ms")),
                    str(delivery.get("attempts")),
                    format_clock(delivery.get("updated_at")),
                ]
            )
            item.setIcon(2, status_icon(DELIVERY_COLOURS.get(status, "gray")))
            item.setData(0, ID_ROLE, delivery.get("id"))
            item.setData(0, STATE_ROLE, status)
            tip = f"event id: {delivery.get('event_id')}"
            if delivery.get("last_error"):
                tip += f"\nlast error: {mask_userinfo(delivery['last_error'])}"
            if delivery.get("next_attempt_at"):
                tip += f"\nnext attempt: {format_clock(delivery['next_attempt_at'])}"
            for col in range(len(DELIVERY_COLUMNS)):
                item.setToolTip(col, tip)
            tree.addTopLevelItem(item)
            if delivery.get("id") == self._delivery_id:
                tree.setCurrentItem(item)
        if not self._deliveries:
            self._placeholder(tree, "No deliveries yet: Send ping to try the receiver")

    def _render_attempts(self) -> None:
        tree = self.attempts_tree
        tree.clear()
        if self._delivery_id is None:
            self.attempts_caption.setText("Attempts")
            return
        self.attempts_caption.setText(f"Attempts of delivery #{self._delivery_id}")
        for attempt in self._attempts:
            ok = bool(attempt.get("ok"))
            error = attempt.get("error") or ""
            response = attempt.get("response") or ""
            item = QTreeWidgetItem(
                [
                    str(attempt.get("attempt")),
                    format_clock(attempt.get("started_at")),
                    _code(attempt.get("status_code")),
                    format_latency(attempt.get("latency_ms")),
                    str(attempt.get("outcome") or ""),
                    _one_line(error) or "—",
                    _one_line(response) or "—",
                ]
            )
            item.setIcon(2, status_icon("green" if ok else "red"))
            item.setData(0, STATE_ROLE, "ok" if ok else "failed")
            if error:
                item.setToolTip(5, mask_userinfo(error))
                item.setForeground(5, QBrush(QColor("#8a1c1f")))
            if response:
                item.setToolTip(6, mask_userinfo(response))
                item.setFont(6, mono_font())
            tree.addTopLevelItem(item)
        if not self._attempts:
            self._placeholder(tree, "Loading attempts…" if self._in_flight else "No attempts yet")

    def _update_buttons(self) -> None:
        sub = self.selected_subscription()
        connected = self._api is not None
        has_sub = connected and sub is not None
        self.new_button.setEnabled(connected)
        self.refresh_button.setEnabled(connected)
        self.ping_button.setEnabled(has_sub)
        self.delete_button.setEnabled(has_sub)
        self.toggle_button.setEnabled(has_sub)
        self.toggle_button.setText("Enable" if sub and not sub.get("enabled", True) else "Disable")
        self.redeliver_button.setEnabled(has_sub and self._delivery_id is not None)

    # -- polling -----------------------------------------------------------------------------
    def _on_tick(self) -> None:
        if not self._in_flight:
            self.refresh()

    def _update_polling(self) -> None:
        active = self.shown and self._api is not None
        if active and not self.poll_timer.isActive():
            self.poll_timer.start()
        elif not active and self.poll_timer.isActive():
            self.poll_timer.stop()

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self._visible = True
        self._update_polling()
        if self.shown and self._api is not None and not self._in_flight:
            self.refresh()

    def hideEvent(self, event: QHideEvent) -> None:
        super().hideEvent(event)
        self._visible = False
        self._update_polling()
