"""The one error type components raise for a request they refuse.

Components (assets, providers, webhooks) know why they refuse something and which HTTP status
says it best, but must not import the server; the server answers every ``RefusedError`` the
same way, from one exception handler, instead of each route translating it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RefusedError"]


class RefusedError(Exception):
    """``status`` is the HTTP status to answer with; ``detail`` goes out as ``{"detail": ...}``."""

    status: int = 400

    def __init__(self, detail: Any, status: int | None = None) -> None:
        super().__init__(str(detail))
        self.detail = detail
        if status is not None:
            self.status = status
