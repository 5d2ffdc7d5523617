"""Atomic file writes and the staging area where content is hashed before it becomes an asset.

Every file the registry creates is written to a temporary name in the same folder (or in the
root's staging folder, same filesystem) and moved into place with ``os.replace``, so a crash
leaves either the old file or the new one, never a half-written one.

Several processes may share the staging folder (``serve --workers N``). A staging file is
``flock``-ed by its writer from before its first byte until it is moved into place or deleted,
so a process starting up removes only the files whose writer is gone (the kernel drops the lock
of a dead process), never another live process's upload.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from comfyvn.core.file_lock import HAVE_FLOCK, lock_fd, unlock_fd

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
# An unlocked *empty* staging file may be one whose writer has created it and not yet locked it
# (microseconds); it is removed only once it is older than this.
UNLOCKED_EMPTY_GRACE_S = 60.0


@dataclass(frozen=True, slots=True)
class StagedFile:
    """Content hashed into a temporary file, waiting to be moved into the assets tree."""

    path: Path
    sha256: str
    size: int
    head: bytes  # the first bytes, to pick an extension for nameless content
    # The writer's open file, whose flock marks the staged file as alive for other processes.
    holder: BinaryIO | None = field(default=None, repr=False, compare=False)

    def discard(self) -> None:
        """Delete the staged file (a no-op once :func:`install` moved it), then drop its lock."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if self.holder is not None:
            self.holder.close()


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
        try:
            lock_fd(fd)  # before the first byte: see clear_staging
            self._fh: BinaryIO | None = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise

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
        """Flush the temp file; empty content is refused and leaves nothing behind. The file
        stays open (and locked) in the :class:`StagedFile` until it is installed or discarded."""
        if self._fh is None:
            raise RuntimeError("staging writer is closed")
        fh, self._fh = self._fh, None
        try:
            fh.flush()
            if self.fsync:
                os.fsync(fh.fileno())
            if self.size == 0:
                raise AssetEmpty("file is empty; an asset needs at least one byte")
        except BaseException:
            self.path.unlink(missing_ok=True)
            fh.close()
            raise
        return StagedFile(self.path, self._hash.hexdigest(), self.size, self._head, holder=fh)

    def discard(self) -> None:
        """Delete the file first, then close it: its lock is never free while it exists."""
        self.path.unlink(missing_ok=True)
        if self._fh is not None:
            fh, self._fh = self._fh, None
            fh.close()


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
    """Remove leftovers of uploads interrupted by a crash; returns how many were removed.

    Other processes may be writing into the same folder: a file whose lock is held belongs to
    a live writer and stays. A writer locks its file before writing to it, so an unlocked file
    with content is a dead writer's; an unlocked empty one is left alone while it is young (its
    writer may be about to lock it)."""
    removed = 0
    if staging_dir.is_dir():
        for entry in staging_dir.iterdir():
            try:
                removed += _remove_if_dead(entry)
            except FileNotFoundError:  # another process removed it first
                pass
            except OSError as exc:  # left for a later start-up; not a reason to refuse this one
                log.warning("could not check %s: %s", entry, exc.strerror or exc)
    staging_dir.mkdir(parents=True, exist_ok=True)
    return removed


def _remove_if_dead(entry: Path) -> bool:
    info = entry.lstat()
    if stat.S_ISDIR(info.st_mode):  # nothing makes folders here: not a live upload
        shutil.rmtree(entry, ignore_errors=True)
        return True
    if not stat.S_ISREG(info.st_mode) or not HAVE_FLOCK:
        entry.unlink()
        return True
    fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not lock_fd(fd, blocking=False):
            return False  # a live writer's
        held = os.fstat(fd)
        if held.st_size == 0 and time.time() - held.st_mtime < UNLOCKED_EMPTY_GRACE_S:
            return False
        if os.stat(entry, follow_symlinks=False).st_ino != held.st_ino:
            return False  # replaced meanwhile: not the file we judged
        entry.unlink()  # while still locked, so no writer can be using it
        return True
    finally:
        with contextlib.suppress(OSError):
            unlock_fd(fd)
        os.close(fd)
