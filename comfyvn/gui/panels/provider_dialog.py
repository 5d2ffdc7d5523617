"""The Add / Edit provider dialog of the Debug Integrations panel, built from the server's
templates (``GET /api/providers/templates``).

**Test** sends the form to ``POST /api/providers/test`` (Add) or ``POST /api/providers/{id}/test``
(Edit): one check, nothing stored. **Save** sends ``POST /api/providers`` or ``PUT
/api/providers/{id}`` and closes the dialog once the server accepted it; a refusal stays in the
dialog, naming the field. Both run on worker threads (:mod:`comfyvn.gui.workers`).

Secret fields are write-only password fields: an edit form shows only the server's masked hint
(empty keeps the stored secret, typed replaces it, "Remove the stored key" deletes an optional
one), and the dialog clears them when it closes, so a typed key lives in no widget afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..api import StudioApi, describe_failure
from ..provider_form import (
    GROUP_TITLES,
    FormError,
    create_body,
    describe_error,
    describe_test,
    display_text,
    initial_value,
    missing_required,
    parse_value,
    secret_hint,
    update_body,
)
from ..theme import status_icon
from ..workers import run_async

__all__ = ["PROVIDERS", "ProviderDialog"]

PROVIDERS = "/api/providers"
ERROR_STYLE = "color: #8a1c1f;"


class ProviderDialog(QDialog):
    """``provider`` is the masked entry of ``GET /api/providers`` to edit, or ``None`` to add.

    ``on_saved(action, provider)`` runs on the GUI thread once the server accepted a Save, even
    if the dialog was closed meanwhile; it must not hold the dialog."""

    tested = Signal(bool)  # after each Test: True with a result, False when refused or failed
    save_failed = Signal(str)

    def __init__(
        self,
        api: StudioApi,
        templates: list[dict[str, Any]],
        provider: dict[str, Any] | None = None,
        on_saved: Callable[[str, dict[str, Any]], None] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._api = api
        self._templates = [t for t in templates if isinstance(t, dict) and t.get("kind")]
        self._provider = provider
        self._on_saved = on_saved
        self._editors: dict[str, tuple[dict[str, Any], QWidget]] = {}
        self._remove_boxes: dict[str, QCheckBox] = {}
        self._template: dict[str, Any] = {}
        self._closed = False
        self._busy = False
        self.last_result: dict[str, Any] | None = None
        self.test_count = 0

        editing = provider is not None
        self.setWindowTitle(
            f"Edit provider · {provider.get('name') or provider.get('id')}"
            if editing
            else "Add provider"
        )
        self.template_combo = QComboBox()
        for template in self._templates:
            self.template_combo.addItem(str(template.get("label")), template.get("kind"))
        self.template_combo.setToolTip("What kind of provider to add: its fields follow")
        self.kind_label = QLabel()
        self.kind_label.setObjectName("cardTitle")
        top = QFormLayout()
        # Inside the group boxes' margins' width, so all label columns line up.
        top.setContentsMargins(12, 0, 12, 0)
        self.top_caption = QLabel("Kind" if editing else "Template")
        if editing:
            top.addRow(self.top_caption, self.kind_label)
            self.template_combo.hide()
        else:
            top.addRow(self.top_caption, self.template_combo)
        self.description = QLabel()
        self.description.setObjectName("info")
        self.description.setWordWrap(True)

        self.fields_host = QVBoxLayout()
        self.fields_host.setContentsMargins(0, 0, 0, 0)
        self._fields_widget: QWidget | None = None

        self.result_icon = QLabel()
        self.result_icon.setFixedWidth(18)
        self.result_icon.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignHCenter)
        self.result_label = QLabel("Test runs one check with these settings; nothing is saved.")
        self.result_label.setObjectName("testResult")
        self.result_label.setWordWrap(True)
        self.result_label.setTextFormat(Qt.TextFormat.PlainText)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        result_row = QHBoxLayout()
        result_row.addWidget(self.result_icon)
        result_row.addWidget(self.result_label, 1)

        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel
        )
        self.save_button = self.buttons.button(QDialogButtonBox.StandardButton.Save)
        self.save_button.setText("Save")
        self.save_button.setDefault(True)
        self.test_button = QPushButton("Test")
        self.test_button.setToolTip("Run one check with these settings without saving them")
        self.buttons.accepted.connect(self.save)
        self.buttons.rejected.connect(self.reject)
        self.test_button.clicked.connect(self.test)

        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.description)
        layout.addLayout(self.fields_host)
        layout.addLayout(result_row)
        bottom = QHBoxLayout()
        bottom.addWidget(self.test_button)
        bottom.addWidget(self.buttons, 1)
        layout.addLayout(bottom)

        if editing:
            kind = str(provider.get("kind"))
            template = next((t for t in self._templates if t.get("kind") == kind), None)
            self._use_template(template or {"kind": kind, "label": kind, "fields": []})
        else:
            self.template_combo.currentIndexChanged.connect(self._on_template_chosen)
            self._on_template_chosen(0)
        self.setMinimumWidth(560)

    # -- public ------------------------------------------------------------------------------
    @property
    def editing(self) -> bool:
        return self._provider is not None

    @property
    def kind(self) -> str:
        return str(self._template.get("kind", ""))

    @property
    def busy(self) -> bool:
        return self._busy

    def choose_template(self, kind: str) -> bool:
        index = self.template_combo.findData(kind)
        if index < 0:
            return False
        self.template_combo.setCurrentIndex(index)
        return True

    def editor(self, name: str) -> QWidget:
        """The widget of one template field (``name``, ``secrets.api_key``, ``config.method``)."""
        return self._editors[name][1]

    def field_names(self) -> list[str]:
        return list(self._editors)

    def set_value(self, name: str, value: Any) -> None:
        widget = self.editor(name)
        if isinstance(widget, QCheckBox):
            widget.setChecked(bool(value))
        elif isinstance(widget, QComboBox):
            widget.setCurrentText(str(value))
        elif isinstance(widget, QLineEdit):
            widget.setText(display_text(value))

    def remove_box(self, name: str) -> QCheckBox | None:
        return self._remove_boxes.get(name)

    def result_text(self) -> str:
        return self.result_label.text()

    def request(self) -> tuple[str, str, dict[str, Any]]:
        """(method, path, body) of Save; Test posts the same body to ``{path}/test`` (Add:
        ``/api/providers/test``). Raises :class:`FormError` naming what is missing or wrong."""
        fields = list(self._template.get("fields") or [])
        values: dict[str, Any] = {}
        problems: list[str] = []
        for name, (field, widget) in self._editors.items():
            try:
                values[name] = parse_value(field, _raw(widget))
            except FormError as exc:
                problems.append(str(exc))
        remove = {n.partition(".")[2] for n, box in self._remove_boxes.items() if box.isChecked()}
        stored = {  # secrets the server holds and keeps: an empty field means "keep it"
            name.partition(".")[2]
            for name, (field, _widget) in self._editors.items()
            if field.get("secret") and self._stored_hint(field) is not None
        } - remove
        missing = missing_required(fields, values, stored)
        if missing:
            problems.insert(0, f"required: {', '.join(missing)}")
        if problems:
            raise FormError("; ".join(problems))
        if self._provider is None:
            return "POST", PROVIDERS, create_body(self.kind, fields, values)
        body = update_body(self._provider, fields, values, remove)
        return "PUT", f"{PROVIDERS}/{quote(str(self._provider.get('id')), safe='')}", body

    def test(self) -> None:
        """One check of the form as it is, on a worker thread; the result shows in the dialog."""
        if self._busy:
            return
        try:
            method, path, body = self.request()
        except FormError as exc:
            self._show_problem(str(exc))
            self.tested.emit(False)
            return
        path = f"{PROVIDERS}/test" if method == "POST" else f"{path}/test"
        api = self._api
        self._set_busy(True, "Testing…")
        run_async(
            lambda: api.post(path, json=body),
            self._on_tested,
            self._on_test_failed,
            name="comfyvn-provider-test",
        )

    def save(self) -> None:
        """Send the form; the dialog closes once the server accepted it."""
        if self._busy:
            return
        try:
            method, path, body = self.request()
        except FormError as exc:
            self._show_problem(str(exc))
            self.save_failed.emit(str(exc))
            return
        api = self._api
        action = "edit" if self.editing else "add"
        on_saved = self._on_saved
        send = api.post if method == "POST" else api.put
        self._set_busy(True, "Saving…")

        def done(answer: Any) -> None:
            provider = answer.get("provider") if isinstance(answer, dict) else None
            if on_saved is not None:
                on_saved(action, provider or {})
            if not self._closed:
                self._busy = False
                self.accept()

        run_async(
            lambda: send(path, json=body),
            done,
            self._on_save_failed,
            name=f"comfyvn-provider-{action}",
        )

    # -- building the form -------------------------------------------------------------------
    def _on_template_chosen(self, index: int) -> None:
        if 0 <= index < len(self._templates):
            self._use_template(self._templates[index])

    def _use_template(self, template: dict[str, Any]) -> None:
        self._template = template
        self.kind_label.setText(f"{template.get('label')} ({template.get('kind')})")
        self.description.setText(str(template.get("description") or ""))
        if self._fields_widget is not None:
            self._forget_secrets()
            self._fields_widget.hide()
            self._fields_widget.deleteLater()
        self._editors, self._remove_boxes = {}, {}
        self.last_result = None
        self._set_result(None, "Test runs one check with these settings; nothing is saved.")
        box = QWidget()
        column = QVBoxLayout(box)
        column.setContentsMargins(0, 0, 0, 0)
        groups: dict[str, QFormLayout] = {}
        self._captions: list[QLabel] = []
        for field in template.get("fields") or []:
            group = str(field.get("group") or "general")
            if group not in groups:
                frame = QGroupBox(GROUP_TITLES.get(group, group.capitalize()))
                frame.setObjectName(f"group_{group}")
                form = QFormLayout(frame)
                form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
                groups[group] = form
                column.addWidget(frame)
            self._add_field(groups[group], field)
        # One label column across the groups, so the fields line up from box to box.
        captions = [self.top_caption, *self._captions]
        width = max(c.sizeHint().width() for c in captions)
        for caption in captions:
            caption.setMinimumWidth(width)
        self._fields_widget = box
        self.fields_host.addWidget(box)
        QTimer.singleShot(0, lambda: self._fit_height(shrink=True))

    def _fit_height(self, shrink: bool = False) -> None:
        """Tall enough for the wrapped texts at the current width (a dialog's size hint does
        not account for word-wrapped labels); ``shrink``: also no taller than that (a new
        template), else a size the user chose is kept when it is enough."""
        if self._closed:
            return
        layout = self.layout()
        needed = layout.totalHeightForWidth(self.width()) if layout.hasHeightForWidth() else -1
        needed = max(needed, layout.totalMinimumSize().height())
        if needed > self.height() or (shrink and 0 < needed < self.height()):
            self.resize(self.width(), needed)

    def _add_field(self, form: QFormLayout, field: dict[str, Any]) -> None:
        name = str(field["name"])
        kind = field.get("type")
        label = str(field.get("label") or name) + (" *" if field.get("required") else "")
        help_text = str(field.get("help") or "")
        value = initial_value(field, self._provider)
        widget: QWidget
        if kind == "boolean":
            widget = QCheckBox()
            widget.setChecked(bool(value))
        elif kind == "choice":
            widget = QComboBox()
            widget.addItems([str(c) for c in field.get("choices") or []])
            if value is not None:
                widget.setCurrentText(str(value))
        else:
            edit = QLineEdit(display_text(value))
            edit.setPlaceholderText(str(field.get("placeholder") or ""))
            if name == "id" and self.editing:
                edit.setReadOnly(True)
                help_text = "The id cannot be changed."
            if field.get("secret"):
                edit.setEchoMode(QLineEdit.EchoMode.Password)
                edit.setPlaceholderText(self._secret_placeholder(field))
                edit.setClearButtonEnabled(True)
            widget = edit
        widget.setObjectName(f"field_{name}")
        widget.setToolTip(help_text)
        self._editors[name] = (field, widget)
        caption = QLabel(label)
        caption.setToolTip(help_text)
        self._captions.append(caption)
        if field.get("secret"):
            holder = QWidget()
            row = QVBoxLayout(holder)
            row.setContentsMargins(0, 0, 0, 0)
            row.addWidget(widget)
            hint = self._stored_hint(field)
            if hint is not None and not field.get("required"):  # a required one is replaced
                remove = QCheckBox(f"Remove the stored key ({hint})")
                remove.setToolTip("Save deletes the stored secret; the provider then has none")
                remove.toggled.connect(lambda on, edit=widget: _removing(edit, on))
                self._remove_boxes[name] = remove
                row.addWidget(remove)
            note = QLabel(help_text)
            note.setObjectName("info")
            note.setWordWrap(True)
            row.addWidget(note)
            form.addRow(caption, holder)
        else:
            form.addRow(caption, widget)

    def _stored_hint(self, field: dict[str, Any]) -> str | None:
        if self._provider is None:
            return None
        secret = str(field["name"]).partition(".")[2]
        return secret_hint((self._provider.get("secrets") or {}).get(secret))

    def _secret_placeholder(self, field: dict[str, Any]) -> str:
        hint = self._stored_hint(field)
        if hint is not None:
            return f"stored: {hint} · leave empty to keep it"
        return "required" if field.get("required") else "optional"

    # -- results (GUI thread) ----------------------------------------------------------------
    def _on_tested(self, answer: Any) -> None:
        if self._closed:
            return
        self._set_busy(False)
        result = answer.get("result") if isinstance(answer, dict) else None
        if not isinstance(result, dict):
            self._show_problem("the server sent no test result")
            self.tested.emit(False)
            return
        self.last_result = result
        self.test_count += 1
        self._set_result(str(result.get("status") or "gray"), describe_test(result))
        self.tested.emit(True)

    def _on_test_failed(self, exc: BaseException) -> None:
        if self._closed:
            return
        self._set_busy(False)
        self._show_problem(f"Test not run: {self._failure(exc)}")
        self.tested.emit(False)

    def _on_save_failed(self, exc: BaseException) -> None:
        if self._closed:
            return
        self._set_busy(False)
        message = f"Not saved: {self._failure(exc)}"
        self._show_problem(message)
        self.save_failed.emit(message)

    def _failure(self, exc: BaseException) -> str:
        api = self._api
        return describe_error(exc, describe_failure(exc, api.conn.server, api.timeout_s))

    def _show_problem(self, text: str) -> None:
        self._set_result("red", text, error=True)

    def _set_result(self, status: str | None, text: str, *, error: bool = False) -> None:
        if status is None:
            self.result_icon.clear()
        else:
            self.result_icon.setPixmap(status_icon(status).pixmap(14, 14))
        self.result_label.setStyleSheet(ERROR_STYLE if error else "")
        self.result_label.setText(text)
        QTimer.singleShot(0, self._fit_height)  # a longer result may wrap onto more lines

    def _set_busy(self, busy: bool, text: str | None = None) -> None:
        self._busy = busy
        self.test_button.setEnabled(not busy)
        self.save_button.setEnabled(not busy)
        self.template_combo.setEnabled(not busy and not self.editing)
        if text is not None:
            self._set_result(None, text)

    # -- closing -----------------------------------------------------------------------------
    def _forget_secrets(self) -> None:
        for field, widget in self._editors.values():
            if field.get("secret") and isinstance(widget, QLineEdit):
                widget.clear()

    def done(self, result: int) -> None:
        self._closed = True
        self._forget_secrets()  # a typed key lives in no widget once the dialog closes
        super().done(result)


def _removing(edit: QWidget, on: bool) -> None:
    if on and isinstance(edit, QLineEdit):
        edit.clear()
    edit.setDisabled(on)


def _raw(widget: QWidget) -> Any:
    if isinstance(widget, QCheckBox):
        return widget.isChecked()
    if isinstance(widget, QComboBox):
        return widget.currentText()
    if isinstance(widget, QLineEdit):
        return widget.text()
    return None
