"""The System workspace's central view: which server the Studio talks to and how it is doing.

Provider details live in the Debug Integrations dock, the event stream and the plugins in the
Modder Hooks dock's tabs, webhook deliveries in the Webhooks dock; this page shows the one-glance
summary (server, event log, plugins, provider colours).
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QHideEvent, QShowEvent
from PySide6.QtWidgets import QFrame, QGridLayout, QLabel, QVBoxLayout, QWidget

from ..api import StudioApi, describe_failure
from ..theme import dot_html, status_chips
from ..workers import run_async

__all__ = ["SystemOverview"]

REFRESH_MS = 10_000


class SystemOverview(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._api: StudioApi | None = None
        self._origin = ""
        self._in_flight = False
        self._again = False
        self.server_value = self._value()
        self.log_value = self._value()
        self.plugins_value = self._value()
        self.providers_value = self._value()
        self.providers_value.setTextFormat(Qt.TextFormat.RichText)
        self.server_value.setTextFormat(Qt.TextFormat.RichText)
        grid = QGridLayout()
        grid.setSpacing(10)
        grid.addWidget(self._card("Server", self.server_value), 0, 0)
        grid.addWidget(self._card("Providers", self.providers_value), 0, 1)
        grid.addWidget(self._card("Event log", self.log_value), 1, 0)
        grid.addWidget(self._card("Dev plugins", self.plugins_value), 1, 1)
        grid.setColumnStretch(0, 1)
        grid.setColumnStretch(1, 1)
        heading = QLabel("System")
        heading.setStyleSheet("font-size: 16pt; font-weight: 600;")
        hint = QLabel(
            "Provider health is in the Debug Integrations dock; live hook envelopes and each "
            "plugin's status and log are in the Modder Hooks dock's Stream and Plugins tabs; "
            "webhook subscriptions and their recent deliveries are in the Webhooks dock "
            "(System menu)."
        )
        hint.setObjectName("info")
        hint.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(14, 10, 14, 10)
        layout.addWidget(heading)
        layout.addWidget(hint)
        layout.addLayout(grid)
        layout.addStretch(1)
        self.server_value.setText("connecting…")
        self.providers_value.setText("waiting for the first check…")
        self._timer = QTimer(self)
        self._timer.timeout.connect(self.refresh)

    @staticmethod
    def _value() -> QLabel:
        label = QLabel("—")
        label.setWordWrap(True)
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        return label

    @staticmethod
    def _card(title: str, value: QLabel) -> QFrame:
        card = QFrame()
        card.setObjectName("card")
        heading = QLabel(title)
        heading.setObjectName("cardTitle")
        layout = QVBoxLayout(card)
        layout.setContentsMargins(12, 8, 12, 10)
        layout.addWidget(heading)
        layout.addWidget(value)
        layout.addStretch(1)
        return card

    def set_connection(
        self, api: StudioApi | None, origin: str, problem: str | None = None
    ) -> None:
        self._api, self._origin = api, origin
        if api is None:
            self.server_value.setText(f"{dot_html('red')} not connected: {problem or 'no server'}")
            return
        self.refresh()
        if self.isVisible():
            self._timer.start(REFRESH_MS)

    def set_provider_summary(self, counts: dict[str, int]) -> None:
        total = sum(counts.values())
        if not total:
            self.providers_value.setText("no providers registered")
            return
        self.providers_value.setText(f"{total} provider(s): {status_chips(counts)}")

    def refresh(self) -> None:
        """Re-read the cards now; one asked for while a read is in flight runs right after it
        (the connection may have changed meanwhile: the answer on its way can be stale)."""
        api = self._api
        if api is None:
            return
        if self._in_flight:
            self._again = True
            return
        self._in_flight, self._again = True, False

        def job() -> tuple[dict[str, Any], dict[str, Any]]:
            return api.get("/health"), api.get("/api/modder/hooks/plugins")

        run_async(job, self._on_result, self._on_error, name="comfyvn-system-overview")

    def _finish(self) -> bool:
        """End a read; True when another was asked for meanwhile (and has now started)."""
        self._in_flight = False
        if self._again:
            self.refresh()
            return True
        return False

    def _on_result(self, result: tuple[dict[str, Any], dict[str, Any]]) -> None:
        if self._finish():
            return
        health, plugins = result
        api = self._api
        url = api.conn.server if api else "?"
        state = "green" if health.get("ok") else "red"
        self.server_value.setText(
            f"{dot_html(state)} {url} · v{health.get('version')} · {self._origin}"
            + (" · dev mode" if health.get("dev_mode") else "")
        )
        error = health.get("event_log_error")
        self.log_value.setText(
            f"committed up to seq {health.get('seq')}"
            + (f" · write error: {error}" if error else " · healthy")
        )
        if plugins.get("enabled"):
            loaded = plugins.get("plugins") or []
            states: dict[str, int] = {}
            for plugin in loaded:
                states[str(plugin.get("status"))] = states.get(str(plugin.get("status")), 0) + 1
            breakdown = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
            self.plugins_value.setText(
                f"{len(loaded)} plugin(s) in {plugins.get('root')}"
                + (f": {breakdown}" if breakdown else "")
            )
        else:
            self.plugins_value.setText(str(plugins.get("reason") or "dev mode is off"))

    def _on_error(self, exc: BaseException) -> None:
        if self._finish():
            return
        api = self._api
        message = describe_failure(exc, api.conn.server if api else "?", api and api.timeout_s)
        self.server_value.setText(f"{dot_html('red')} {message}")

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if self._api is not None:
            self._timer.start(REFRESH_MS)

    def hideEvent(self, event: QHideEvent) -> None:
        super().hideEvent(event)
        self._timer.stop()
