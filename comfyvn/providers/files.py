"""Atomic JSON files: a reader never sees a half-written registry, even after a crash."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from comfyvn.core.json_input import FILE_LIMITS, JsonInputError
from comfyvn.core.json_input import read_json as read_guarded_json

__all__ = ["read_json", "write_json_atomic"]


def write_json_atomic(path: Path, data: Any, mode: int = 0o600) -> None:
    """Write to a sibling temp file created with ``mode`` (so a secret file is never readable
    by others, not even for a moment), fsync it, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def read_json(path: Path) -> Any:
    """The parsed file, or ``None`` when it does not exist. Raises ``ValueError`` if unparseable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return read_guarded_json(text, FILE_LIMITS, what=path.name)
    except JsonInputError as exc:
        raise ValueError(str(exc)) from None
