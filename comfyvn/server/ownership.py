"""One owner per data dir: ``comfyvn serve`` holds ``<data-dir>/server.lock`` for its lifetime.

The lock is an exclusive ``flock`` on an open file descriptor, so the kernel releases it when
the process ends however it ends (clean exit, crash, SIGKILL): there is nothing to clean up and
no stale lock to break by hand. The lock file itself stays (deleting it would let two servers
lock two different inodes); it holds the owner's pid for people and error messages.

A second ``comfyvn serve`` on the same data dir gets :class:`DataDirBusy`, whose message names
the running server's URL from ``server.json`` (or its pid while it is still starting).

Future shared-bus mode: several processes sharing one data dir would skip :func:`acquire`
(``serve(..., exclusive=False)``); nothing else here assumes a single owner.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from comfyvn.core.server_file import (
    LOCK_FILE,
    SERVER_FILE,
    ServerInfo,
    read_server_info,
    remove_server_info,
    write_server_info,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no exclusivity
    fcntl = None  # type: ignore[assignment]

__all__ = ["DataDirBusy", "DataDirLock", "acquire"]

# Readers probe the lock with a momentary shared lock (core.server_file.lock_is_held); retrying
# this long means such a probe can never make a starting server think the data dir is taken.
_CONTENTION_RETRY_S = 1.0


class DataDirBusy(RuntimeError):
    """Another process owns the data dir; the message says which server and where."""

    def __init__(self, data_dir: Path, info: ServerInfo | None, pid: int | None) -> None:
        self.data_dir = data_dir
        self.info = info
        self.pid = info.pid if info else pid
        if info is not None:
            who = f"the server at {info.url} (pid {info.pid})"
        elif pid is not None:
            who = f"another comfyvn serve (pid {pid}, still starting or not ready)"
        else:
            who = "another comfyvn serve"
        super().__init__(
            f"data dir {data_dir} is in use by {who}; use that server (the CLI and the Studio "
            f"find it through {data_dir / SERVER_FILE}), stop it, or pick another --data-dir"
        )


class DataDirLock:
    """The held lock; :meth:`release` (or process exit) gives the data dir up."""

    def __init__(self, data_dir: Path, fd: int | None) -> None:
        self.data_dir = data_dir
        self._fd = fd
        self._published = False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def publish(self, url: str, token_file: Path, version: str) -> Path:
        """Write ``server.json`` for this process: call once the socket is bound."""
        path = write_server_info(
            self.data_dir,
            ServerInfo(
                url=url,
                pid=os.getpid(),
                started_at=time.time(),
                token_file=str(token_file),
                version=version,
            ),
        )
        self._published = True
        return path

    def release(self) -> None:
        """Remove our ``server.json`` (only our own entry), then drop the lock."""
        if self._published:
            remove_server_info(self.data_dir, os.getpid())
            self._published = False
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> DataDirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lock_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 64).decode("ascii", "replace").strip()
        return int(raw) if raw else None
    return None


def acquire(data_dir: Path) -> DataDirLock:
    """Take the data dir's exclusive lock or raise :class:`DataDirBusy`. The data dir must exist.

    The descriptor is not inherited by child processes (``O_CLOEXEC``), so a tool the server
    spawns never keeps the data dir locked after the server is gone."""
    data_dir = Path(data_dir)
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    if fcntl is None:  # pragma: no cover
        return DataDirLock(data_dir, fd)
    deadline = time.monotonic() + _CONTENTION_RETRY_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                pid = _lock_pid(fd)
                os.close(fd)
                raise DataDirBusy(data_dir, read_server_info(data_dir), pid) from None
            time.sleep(0.05)
        except OSError:
            os.close(fd)
            raise
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    return DataDirLock(data_dir, fd)
