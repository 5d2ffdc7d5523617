"""The discovery file ``<data-dir>/server.json`` and the owner lock ``<data-dir>/server.lock``.

``comfyvn serve`` holds an exclusive ``flock`` on ``server.lock`` for its whole life (the kernel
drops it when the process ends, even after SIGKILL) and, once its socket is bound, writes
``server.json``: ``{url, pid, started_at, token_file, version}`` (0600, atomic rename). It
removes the file on a clean exit. A reader trusts the file only while the lock is held and the
pid in it is alive; anything else is a leftover of a crashed server and is ignored.

Pure standard library: the CLI and the Studio read this without loading any server code.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no owner lock, the file is trusted as is
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "LOCK_FILE",
    "SERVER_FILE",
    "ServerInfo",
    "lock_is_held",
    "pid_alive",
    "read_server_info",
    "remove_server_info",
    "write_server_info",
]

SERVER_FILE = "server.json"
LOCK_FILE = "server.lock"


@dataclass(frozen=True, slots=True)
class ServerInfo:
    url: str
    pid: int
    started_at: float | None = None
    token_file: str | None = None
    version: str | None = None
    path: Path | None = None  # the server.json it was read from

    @property
    def data_dir(self) -> Path | None:
        return self.path.parent if self.path is not None else None

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "pid": self.pid,
            "started_at": self.started_at,
            "token_file": self.token_file,
            "version": self.version,
        }


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    except OSError:
        return False
    return True


def lock_is_held(data_dir: Path) -> bool:
    """Whether some process holds ``server.lock`` (a server owns this data dir right now).

    Probes with a shared, non-blocking lock that is dropped at once; a server starting at that
    very moment retries its exclusive lock briefly, so the probe never makes it fail."""
    if fcntl is None:  # pragma: no cover
        return True
    try:
        fd = os.open(Path(data_dir) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _parse(path: Path) -> ServerInfo | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    url, pid = data.get("url"), data.get("pid")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return None
    if not isinstance(pid, int) or isinstance(pid, bool):
        return None
    started = data.get("started_at")
    token_file = data.get("token_file")
    version = data.get("version")
    return ServerInfo(
        url=url.rstrip("/"),
        pid=pid,
        started_at=float(started) if isinstance(started, int | float) else None,
        token_file=token_file if isinstance(token_file, str) else None,
        version=version if isinstance(version, str) else None,
        path=path,
    )


def read_server_info(data_dir: str | Path, *, live_only: bool = True) -> ServerInfo | None:
    """The server serving ``data_dir`` per its ``server.json``, or ``None``.

    With ``live_only`` (the default) a file whose pid is dead, or whose data dir lock nobody
    holds, is stale: a crashed server's leftover, ignored."""
    info = _parse(Path(data_dir) / SERVER_FILE)
    if info is None or not live_only:
        return info
    if not pid_alive(info.pid) or not lock_is_held(Path(data_dir)):
        return None
    return info


def write_server_info(data_dir: str | Path, info: ServerInfo) -> Path:
    """Atomically (temp file, fsync, rename), 0600 whatever the umask."""
    path = Path(data_dir) / SERVER_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(info.to_json(), indent=2) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return path


def remove_server_info(data_dir: str | Path, pid: int) -> None:
    """Remove ``server.json`` only if it is ``pid``'s own entry."""
    path = Path(data_dir) / SERVER_FILE
    info = _parse(path)
    if info is not None and info.pid == pid:
        with contextlib.suppress(OSError):
            path.unlink()
