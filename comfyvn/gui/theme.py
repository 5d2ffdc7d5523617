"""Colours, status dots and the application style sheet, in one place."""

from __future__ import annotations

from functools import cache

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QFont, QFontDatabase, QIcon, QPainter, QPixmap
from PySide6.QtWidgets import QApplication

from .formatting import SUMMARY_LABELS

__all__ = ["STATUS_COLORS", "apply_style", "dot_html", "mono_font", "status_chips", "status_icon"]

STATUS_COLORS = {
    "green": "#2e9d4f",
    "amber": "#e0a100",
    "red": "#d0393e",
    "gray": "#9aa0a6",
}

STYLE = """
QMainWindow, QDockWidget { background: #f6f7f9; }
QDockWidget::title { background: #e8eaee; padding: 5px 8px; font-weight: 600; }
QToolBar { spacing: 6px; padding: 4px; border-bottom: 1px solid #dadde3; background: #ffffff; }
QToolBar QToolButton { padding: 4px 12px; border-radius: 4px; }
QToolBar QToolButton:checked { background: #3b6fd8; color: white; }
QTreeWidget, QTableView, QPlainTextEdit, QListWidget {
    background: #ffffff; border: 1px solid #dadde3; alternate-background-color: #f7f8fa;
}
QTreeWidget::item { padding: 3px 0; }
QHeaderView::section {
    background: #eef0f3; padding: 4px 6px; border: none; border-right: 1px solid #dadde3;
    font-weight: 600;
}
QLabel#banner {
    background: #fdecea; color: #8a1c1f; border: 1px solid #f5c2c0; border-radius: 4px;
    padding: 6px 8px;
}
QLabel#info { color: #555b63; }
QFrame#card {
    background: #ffffff; border: 1px solid #dadde3; border-radius: 6px;
}
QLabel#cardTitle { color: #555b63; font-weight: 600; }
QLabel#nodeText { font-size: 15pt; }
QLabel#speaker { font-size: 12pt; font-weight: 700; color: #3b6fd8; }
QPushButton#choice {
    text-align: left; padding: 8px 12px; border: 1px solid #b9c6e4; border-radius: 5px;
    background: #eef3fd;
}
QPushButton#choice:hover { background: #dfe8fb; }
QPushButton#choice:disabled { color: #9aa0a6; background: #f1f2f4; }
"""


@cache
def status_icon(status: str, size: int = 14) -> QIcon:
    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    color = QColor(STATUS_COLORS.get(status, STATUS_COLORS["gray"]))
    painter.setPen(color.darker(130))
    painter.setBrush(color)
    painter.drawEllipse(QRectF(1.5, 1.5, size - 3, size - 3))
    painter.end()
    return QIcon(pixmap)


def dot_html(status: str) -> str:
    return f'<span style="color:{STATUS_COLORS.get(status, STATUS_COLORS["gray"])}">●</span>'


def status_chips(counts: dict[str, int]) -> str:
    """``● 3 OK  ● 1 Down …`` for the panel and the System page, in one place so they agree.
    A narrow card wraps between chips, never inside one (``● 1`` / ``Disabled``)."""
    return "&nbsp; ".join(
        f'<span style="white-space:nowrap">{dot_html(bucket)} {counts[bucket]} {label}</span>'
        for bucket, label in SUMMARY_LABELS.items()
        if counts.get(bucket)
    )


def mono_font() -> QFont:
    font = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
    font.setPointSize(max(font.pointSize(), 9))
    return font


def apply_style(app: QApplication) -> None:
    app.setStyle("Fusion")
    app.setStyleSheet(STYLE)
