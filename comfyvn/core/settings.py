"""Server settings resolved from the command line and the environment.

Precedence: explicit argument, then ``COMFYVN_*`` environment variable, then default.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from .env import EnvError, env_flag, env_list, env_lists, env_names, env_number
from .file_lock import lock_fd

__all__ = [
    "DataDirError",
    "EnvError",
    "Settings",
    "ensure_token",
    "env_flag",
    "make_private",
    "prepare_data_dir",
    "read_token",
]

TOKEN_FILE = "api_token"

log = logging.getLogger("comfyvn.server")


def default_data_dir() -> Path:
    env = os.environ.get("COMFYVN_DATA_DIR")
    if env:
        return Path(env)
    return Path.home() / ".comfyvn"


@dataclass(slots=True)
class Settings:
    data_dir: Path = field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    port: int = 8001
    dev_mode: bool = field(default_factory=lambda: env_flag("COMFYVN_DEV_MODE"))
    demo: bool = False
    plugin_root: Path = field(
        default_factory=lambda: Path(os.environ.get("COMFYVN_MOD_PLUGIN_ROOT", "dev/modder_hooks"))
    )
    # Installed plugins (entry point group comfyvn.plugins) to load, by name: --plugin NAME.
    plugins: tuple[str, ...] = field(default_factory=lambda: env_list("COMFYVN_PLUGINS"))
    watch_plugins: bool = field(  # dev mode: reload a plugin when its file changes
        default_factory=lambda: env_flag("COMFYVN_PLUGIN_WATCH", default=True)
    )
    allowed_hosts: tuple[str, ...] = field(
        default_factory=lambda: tuple(
            h.strip() for h in os.environ.get("COMFYVN_ALLOWED_HOSTS", "").split(",") if h.strip()
        )
    )
    allowed_origins: tuple[str, ...] = field(
        default_factory=lambda: tuple(
            o.strip().rstrip("/")
            for o in os.environ.get("COMFYVN_ALLOWED_ORIGINS", "").split(",")
            if o.strip()
        )
    )
    # The outbound address policy (comfyvn.net) for every request the server makes: entries by
    # the variable that set them, so a refusal names it. The webhook names are kept as aliases.
    outbound_allow: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: env_lists("COMFYVN_OUTBOUND_ALLOW", "COMFYVN_WEBHOOK_ALLOW_HOSTS")
    )
    outbound_deny: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: env_lists("COMFYVN_OUTBOUND_DENY", "COMFYVN_WEBHOOK_DENY_HOSTS")
    )
    outbound_allow_loopback: bool = field(
        default_factory=lambda: env_flag("COMFYVN_WEBHOOK_ALLOW_LOOPBACK", True)
    )
    # Variables besides COMFYVN_SECRET_* that a provider's ``env:NAME`` secret may name. Parsed
    # here so a malformed list stops start-up with its name; the provider registry reads the
    # same variable through the same parser each time it checks a reference.
    secret_env_allow: tuple[str, ...] = field(
        default_factory=lambda: env_names("COMFYVN_SECRET_ENV_ALLOW")
    )
    ws_heartbeat_s: float = field(
        default_factory=lambda: env_number("COMFYVN_WS_HEARTBEAT", 20.0, minimum=0.01)
    )
    sse_keepalive_s: float = field(
        default_factory=lambda: env_number("COMFYVN_SSE_KEEPALIVE", 15.0, minimum=0.01)
    )
    send_timeout_s: float = field(
        # a stream client whose socket accepts nothing for this long is dropped (it may resume)
        default_factory=lambda: env_number("COMFYVN_SEND_TIMEOUT_S", 30.0, minimum=0.01)
    )
    ws_ping_s: float = field(
        # protocol-level pings; a peer that answers none within the same time is closed
        default_factory=lambda: env_number("COMFYVN_WS_PING", 20.0, minimum=0.01)
    )
    history_max_events: int | None = field(
        # 0 turns the bound off
        default_factory=lambda: (
            int(env_number("COMFYVN_HISTORY_MAX_EVENTS", 100_000, minimum=0, integer=True)) or None
        )
    )
    history_max_age_s: float | None = field(
        default_factory=lambda: (
            env_number("COMFYVN_HISTORY_MAX_AGE", 30 * 86400.0, minimum=0) or None
        )
    )
    commit_timeout_s: float = field(
        default_factory=lambda: env_number("COMFYVN_COMMIT_TIMEOUT", 10.0, minimum=0.01)
    )
    plugin_call_budget_s: float = field(
        default_factory=lambda: env_number("COMFYVN_PLUGIN_CALL_BUDGET", 5.0, minimum=0.01)
    )
    # The shared bus (DESIGN.md 12): empty means the embedded SQLite log of this data dir.
    bus_url: str = field(default_factory=lambda: os.environ.get("COMFYVN_BUS_URL", "").strip())
    bus_namespace: str = field(
        default_factory=lambda: os.environ.get("COMFYVN_BUS_NAMESPACE", "comfyvn").strip()
    )
    bus_buffer: int = field(
        # emits held in this process while NATS is unreachable; beyond it emit() refuses
        default_factory=lambda: int(
            env_number("COMFYVN_BUS_BUFFER", 10_000, minimum=1, integer=True)
        )
    )
    token: str | None = None

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser().resolve()
        self.plugin_root = Path(self.plugin_root).expanduser().resolve()

    @property
    def events_db(self) -> Path:
        return self.data_dir / "events.sqlite3"

    @property
    def token_path(self) -> Path:
        return self.data_dir / TOKEN_FILE


class DataDirError(OSError):
    """The data dir cannot be created or written; the message says which path and why."""


def prepare_data_dir(path: Path) -> None:
    """Create the data dir (0700) and prove it is writable before anything is started on it.

    A data dir left readable by others (an older version, a hand-made folder) is made private
    once, with every file in it: it holds the API token, provider config and the event log."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise DataDirError(f"cannot create data dir {path}: {exc.strerror or exc}") from None
    if not path.is_dir():
        raise DataDirError(f"data dir {path} exists but is not a directory")
    make_private(path)
    # A name of its own: the workers of ``serve --workers N`` prepare the same dir at once.
    probe = path / f".write-probe.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise DataDirError(f"data dir {path} is not writable: {exc.strerror or exc}") from None


def make_private(path: Path) -> None:
    """Directories 0700, files 0600, under ``path``; only walks when ``path`` itself is loose.

    Other processes may be using the data dir meanwhile (workers starting together): a file
    that vanishes during the walk (a temp file renamed or deleted) is skipped, not an error."""
    try:
        if path.stat().st_mode & 0o077 == 0:
            return
        for folder, _dirs, files in os.walk(path):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(folder, 0o700)
            for name in files:
                file = os.path.join(folder, name)
                with contextlib.suppress(FileNotFoundError):
                    if not os.path.islink(file):
                        os.chmod(file, os.stat(file).st_mode & 0o700)
    except OSError as exc:
        raise DataDirError(f"cannot make data dir {path} private: {exc.strerror or exc}") from None
    log.info("data dir %s was readable by others; made it 0700 (files 0600)", path)


def read_token(data_dir: Path) -> str | None:
    path = Path(data_dir) / TOKEN_FILE
    try:
        value = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return value or None


MIN_TOKEN_LENGTH = 16


def ensure_token(settings: Settings) -> str:
    """The API token: ``COMFYVN_API_TOKEN`` if set, else ``<data-dir>/api_token`` (0600).

    The file appears complete or not at all: written to a temp file of this call's own,
    fsync'd, then hard-linked into place, which (like ``O_EXCL``) fails if another process got
    there first; then that process's token is used. So N processes asking at once (the workers
    of ``serve --workers N``) all get the one token in the file, and a crash or a concurrent
    reader never sees an empty token. An empty file left by an older version is replaced once,
    under an ``flock`` on it, and re-read first by every process that waited for that lock.
    """
    if settings.token:
        return settings.token
    env = os.environ.get("COMFYVN_API_TOKEN", "").strip()
    if env:
        if len(env) < MIN_TOKEN_LENGTH:
            raise EnvError(f"COMFYVN_API_TOKEN must be at least {MIN_TOKEN_LENGTH} characters")
        return env
    path = settings.token_path
    existing = read_token(settings.data_dir)
    if existing:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
            log.warning("%s was readable by other users; set it to 0600", path)
        return existing
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    token = _new_token()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(token + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:  # another process's token, or an empty file of an older version
            return _adopt_or_repair(path, tmp, token)
        return token
    finally:
        tmp.unlink(missing_ok=True)


def _new_token() -> str:
    token = secrets.token_urlsafe(32)
    while token.startswith("-"):  # `--token -abc` reads as an option in many CLIs
        token = secrets.token_urlsafe(32)
    return token


def _adopt_or_repair(path: Path, tmp: Path, token: str) -> str:
    """``path`` exists: its token, or (when it is empty) ours put in its place by exactly one
    of the processes that find it empty (an ``flock`` on the empty file orders them)."""
    for _ in range(100):  # each turn ends in a return unless the file is swapped meanwhile
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # removed meanwhile: try to be the one that creates it
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
            continue
        try:
            lock_fd(fd)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                continue
            if current.st_ino != os.fstat(fd).st_ino:
                continue  # replaced while we waited: read the new one
            value = os.read(fd, 4096).decode("utf-8", "replace").strip()
            if value:
                return value
            os.replace(tmp, path)  # still the empty file, and we hold its lock: ours wins
            return token
        finally:
            os.close(fd)
    raise EnvError(f"{path} keeps changing; cannot settle on an API token")
