"""Atomic JSON files: a reader never sees a half-written registry, even after a crash.

Several server processes may share one data dir (``serve --workers N``, DESIGN.md 12): each
keeps what it read in memory together with the :class:`FileVersion` it read, and one ``stat``
tells whether another process has replaced the file since.
"""

from __future__ import annotations

import contextlib
import json
import os
import weakref
from pathlib import Path
from typing import Any

from comfyvn.core.json_input import FILE_LIMITS, JsonInputError
from comfyvn.core.json_input import read_json as read_guarded_json

__all__ = ["FileVersion", "parse_json", "read_json", "read_versioned", "write_json_atomic"]

# POSIX: a process keeps the file it read open, so its inode cannot be reused by a later file
# (an inode number alone could repeat, with the same size, within one timestamp tick). Windows
# cannot replace a file that is open, so there the version is only compared by its stat.
_KEEP_OPEN = os.name == "posix"


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


def parse_json(data: bytes | str | None, path: Path) -> Any:
    """``data`` read from ``path``, parsed (``None`` stays ``None``); ``ValueError`` if it is
    not UTF-8 JSON within the file limits."""
    if data is None:
        return None
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    try:
        return read_guarded_json(text, FILE_LIMITS, what=path.name)
    except JsonInputError as exc:
        raise ValueError(str(exc)) from None


def read_json(path: Path) -> Any:
    """The parsed file, or ``None`` when it does not exist. Raises ``ValueError`` if unparseable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return parse_json(text, path)


class FileVersion:
    """One version of a file (or its absence): :meth:`current` is one ``stat`` and tells
    whether ``path`` still is this version. Files here are only ever replaced whole
    (:func:`write_json_atomic`), so a new version is a new inode; size and mtime catch an
    edit in place. On POSIX the version holds its file open until :meth:`close` (or until it is
    garbage), which keeps the inode number from being reused by a later version."""

    __slots__ = ("__weakref__", "_close", "_key")

    def __init__(self, st: os.stat_result | None = None, fd: int | None = None) -> None:
        self._key = None if st is None else (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        self._close = weakref.finalize(self, os.close, fd) if fd is not None else None

    @classmethod
    def of(cls, path: Path) -> FileVersion:
        """The version ``path`` is now (or its absence); for a writer that holds the lock."""
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            return cls()
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        return cls._kept(st, fd)

    @classmethod
    def _kept(cls, st: os.stat_result, fd: int) -> FileVersion:
        if _KEEP_OPEN:
            return cls(st, fd)
        os.close(fd)
        return cls(st)

    def current(self, path: Path) -> bool:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return self._key is None
        return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size) == self._key

    def close(self) -> None:
        if self._close is not None:
            self._close()


def read_versioned(path: Path) -> tuple[bytes | None, FileVersion]:
    """The bytes of ``path`` (``None`` when it does not exist) and the version they were read
    from: both from one open file, so a replacement in between cannot go unnoticed."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None, FileVersion()
    try:
        st = os.fstat(fd)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    except BaseException:
        os.close(fd)
        raise
    return b"".join(chunks), FileVersion._kept(st, fd)
