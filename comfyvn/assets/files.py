"""Atomic file writes and the staging area where content is hashed before it becomes an asset.

Every file the registry creates is written to a temporary name in the same folder (or in the
root's staging folder, same filesystem) and moved into place with ``os.replace``, so a crash
leaves either the old file or the new one, never a half-written one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import AssetEmpty, AssetPathError, AssetTooLarge

__all__ = [
    "StagedFile",
    "StagingWriter",
    "atomic_write_json",
    "clear_staging",
    "hash_file",
    "install",
    "removing",
]

log = logging.getLogger("comfyvn.assets")

FILE_MODE = 0o600  # assets are private to the server user, like the rest of the data dir
CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class StagedFile:
    """Content hashed into a temporary file, waiting to be moved into the assets tree."""

    path: Path
    sha256: str
    size: int
    head: bytes  # the first bytes, to pick an extension for nameless content

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _too_large(limit: int) -> AssetTooLarge:
    return AssetTooLarge(f"file exceeds the asset size limit of {limit} bytes")


class StagingWriter:
    """Write content in chunks, hashing as it goes; refuse it the moment it passes the limit."""

    def __init__(self, staging_dir: Path, max_bytes: int, *, fsync: bool = False) -> None:
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.size = 0
        self._hash = hashlib.sha256()
        self._head = b""
        fd, name = tempfile.mkstemp(dir=staging_dir, prefix="stage-", suffix=".part")
        self.path = Path(name)
        self._fh: BinaryIO | None = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        if self._fh is None:
            raise RuntimeError("staging writer is closed")
        self.size += len(data)
        if self.size > self.max_bytes:
            self.discard()
            raise _too_large(self.max_bytes)
        if len(self._head) < 16:
            self._head += data[: 16 - len(self._head)]
        self._hash.update(data)
        self._fh.write(data)

    def finish(self) -> StagedFile:
        """Close the temp file; empty content is refused and leaves nothing behind."""
        if self._fh is None:
            raise RuntimeError("staging writer is closed")
        fh, self._fh = self._fh, None
        try:
            fh.flush()
            if self.fsync:
                os.fsync(fh.fileno())
        finally:
            fh.close()
        if self.size == 0:
            self.path.unlink(missing_ok=True)
            raise AssetEmpty("file is empty; an asset needs at least one byte")
        return StagedFile(self.path, self._hash.hexdigest(), self.size, self._head)

    def discard(self) -> None:
        if self._fh is not None:
            fh, self._fh = self._fh, None
            fh.close()
        self.path.unlink(missing_ok=True)


def stage_stream(src: BinaryIO, staging_dir: Path, max_bytes: int, *, fsync: bool) -> StagedFile:
    writer = StagingWriter(staging_dir, max_bytes, fsync=fsync)
    try:
        while chunk := src.read(CHUNK):
            writer.write(chunk)
        return writer.finish()
    except BaseException:
        writer.discard()
        raise


def hash_file(path: Path, max_bytes: int) -> tuple[str, int, bytes]:
    """SHA-256, size and first bytes of a file registered in place (never copied)."""
    digest = hashlib.sha256()
    size = 0
    head = b""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:  # the user's file, not the data dir: a 400 that says why
        raise AssetPathError(f"cannot read {path.name!r}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        while chunk := fh.read(CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise _too_large(max_bytes)
            if not head:
                head = chunk[:16]
            digest.update(chunk)
    if size == 0:
        raise AssetEmpty(f"file {path.name!r} is empty; an asset needs at least one byte")
    return digest.hexdigest(), size, head


def install(staged: StagedFile, target: Path) -> None:
    """Move staged content to its final place in one atomic step."""
    target.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(staged.path, FILE_MODE)
    os.replace(staged.path, target)


def atomic_write_json(path: Path, obj: Any, *, fsync: bool = False) -> None:
    data = (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.chmod(name, FILE_MODE)
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise


@contextlib.contextmanager
def removing(paths: Iterable[Path]) -> Iterator[None]:
    """Delete the files at ``paths`` only if the block succeeds.

    Each file is first renamed to a hidden name in its own folder (atomic, same filesystem);
    if a rename or the block fails, every renamed file is put back, so a refused removal leaves
    the disk as it was. Missing paths and folders are skipped: they are not asset files.
    """
    moved: list[tuple[Path, Path]] = []
    try:
        for path in paths:
            if path.is_dir() and not path.is_symlink():
                continue
            hidden = path.with_name(f".{path.name}.{secrets.token_hex(4)}.removing")
            try:
                os.replace(path, hidden)
            except FileNotFoundError:
                continue
            moved.append((path, hidden))
        yield
    except BaseException:
        for path, hidden in reversed(moved):
            with contextlib.suppress(OSError):
                os.replace(hidden, path)
        raise
    for _, hidden in moved:
        try:
            os.unlink(hidden)
        except OSError as exc:  # the change is committed; a hidden leftover harms nothing
            log.warning("could not delete %s: %s", hidden, exc.strerror or exc)


def clear_staging(staging_dir: Path) -> int:
    """Remove leftovers of uploads interrupted by a crash; returns how many were removed."""
    removed = 0
    if staging_dir.is_dir():
        for entry in staging_dir.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
    staging_dir.mkdir(parents=True, exist_ok=True)
    return removed
