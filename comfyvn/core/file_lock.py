"""Locks that hold across processes sharing one data dir (``serve --workers N``, DESIGN.md 12).

:class:`FileLock` is one exclusive lock for the threads of this process *and* every other
process that opens the same lock file: a ``threading.RLock`` first (``flock`` does not exclude
threads sharing one descriptor), then an exclusive ``flock`` on the file. It is re-entrant in
the thread that holds it. The kernel drops the ``flock`` when its holder dies however it dies,
so a crashed worker never leaves the lock taken; the lock file itself stays (deleting it would
let two processes lock two different inodes).

:func:`lock_fd` locks an already-open file, e.g. a staging file whose writer is alive for as
long as its lock is held (see ``comfyvn.assets.files``).

Without ``fcntl`` (not POSIX) only the thread lock applies: one process per data dir.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["HAVE_FLOCK", "FileLock", "lock_fd", "unlock_fd"]

HAVE_FLOCK = fcntl is not None


def lock_fd(fd: int, *, blocking: bool = True) -> bool:
    """Take an exclusive ``flock`` on ``fd``; ``False`` when ``blocking`` is off and another
    open file description holds it. Always ``True`` without ``fcntl``."""
    if fcntl is None:  # pragma: no cover
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def unlock_fd(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)


class FileLock:
    """Exclusive across threads and processes; ``with lock: ...`` or acquire/release.

    The lock file is opened at the outermost acquire and closed at the matching release, so
    nothing stays open between uses and a forked child never shares the holder's descriptor.
    Waiting is blocking, like the thread lock it extends: holders only keep it for a few file
    writes and one SQLite commit."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._thread_lock = threading.RLock()
        self._depth = 0  # acquisitions by the owning thread
        self._owner: int | None = None
        self._fd: int | None = None

    def acquire(self) -> None:
        self._thread_lock.acquire()
        try:
            if self._depth == 0:
                self._fd = _open_locked(self.path)
                self._owner = threading.get_ident()
            self._depth += 1
        except BaseException:
            self._thread_lock.release()
            raise

    def release(self) -> None:
        if self._depth <= 0 or self._owner != threading.get_ident():
            raise RuntimeError(f"release of {self.path} by a thread that does not hold it")
        self._depth -= 1
        try:
            if self._depth == 0:
                fd, self._fd, self._owner = self._fd, None, None
                if fd is not None:
                    os.close(fd)  # drops the flock
        finally:
            self._thread_lock.release()

    @property
    def held(self) -> bool:
        """Whether some thread of this process holds it (for assertions and logs)."""
        return self._depth > 0

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _open_locked(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        lock_fd(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd
