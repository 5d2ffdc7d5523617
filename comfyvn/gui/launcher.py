"""Find the server of a data dir, or start one: no Qt here, so it runs on any worker thread.

Order when no ``--server`` (or ``COMFYVN_SERVER``) is given: the URL in ``<data-dir>/server.json``
(written by every ``comfyvn serve`` once it is ready, removed when it exits; a live one wins),
then http://127.0.0.1:8001 (``make run``).
A candidate counts only if it answers ``/health`` *and* accepts this data dir's token, so a
server of another data dir on the default port is never used by mistake. Otherwise the Studio
starts ``comfyvn serve --port 0 --data-dir DIR`` and stops it on exit. A server owns its data dir
(``server.lock``), so ``comfyvn studio --data-dir D`` attaches to the server already serving D
and never starts a second one on it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from comfyvn.client.api import DEFAULT_SERVER, Connection, resolve_connection
from comfyvn.core.server_file import (
    SERVER_FILE,
    ServerInfo,
    read_server_info,
    remove_server_info,
    write_server_info,
)

from .options import StudioOptions

__all__ = ["SERVER_FILE", "Discovery", "LaunchError", "LocalServer", "discover", "probe"]

READY_MARK = "server ready at "


class LaunchError(RuntimeError):
    """The Studio could neither find nor start a server; the message says why."""


@dataclass(slots=True)
class Discovery:
    conn: Connection
    origin: str  # for people: "--server", "server.json", "default URL", "started by the Studio"
    local: LocalServer | None = None


def probe(conn: Connection, timeout: float) -> str | None:
    """``None`` when the server is up and takes the token, else what is wrong with it."""
    try:
        with httpx.Client(base_url=conn.server, timeout=timeout) as client:
            health = client.get("/health")
            if health.status_code != 200:
                return f"/health answered {health.status_code}"
            headers = {"Authorization": f"Bearer {conn.token}"} if conn.token else {}
            auth = client.get("/api/modder/hooks/history", params={"limit": 1}, headers=headers)
    except httpx.HTTPError as exc:
        return f"not reachable ({type(exc).__name__})"
    if auth.status_code in (401, 403):
        return "runs, but refuses this data dir's token (another data dir's server)"
    if auth.status_code != 200:
        return f"API answered {auth.status_code}"
    return None


@dataclass
class LocalServer:
    """A ``comfyvn serve`` subprocess owned by the Studio.

    ``stop()`` may run on the GUI thread while ``start()`` is still on the discovery thread (the
    window closed during start-up); the lock and ``_stopped`` make sure a stopped server is
    never spawned afterwards, nor advertised in ``server.json``."""

    data_dir: Path
    proc: subprocess.Popen[str] | None = None
    url: str = ""
    output: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _stopped: bool = False

    def start(self, timeout: float) -> str:
        cmd = [
            sys.executable,
            "-m",
            "comfyvn",
            "serve",
            "--port",
            "0",
            "--data-dir",
            str(self.data_dir),
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("COMFYVN_PORT", None)
        with self._lock:
            if self._stopped:
                raise LaunchError("the Studio is closing; not starting a server")
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
            )
        proc = self.proc
        ready = threading.Event()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                if len(self.output) < 500:
                    self.output.append(line)
                if READY_MARK in line and not self.url:
                    self.url = line.rsplit(" ", 1)[1].strip()
                    ready.set()
            ready.set()  # the process ended (or closed stdout) without a ready line

        self._reader = threading.Thread(target=read, name="comfyvn-local-server", daemon=True)
        self._reader.start()
        started = ready.wait(timeout) and bool(self.url)
        with self._lock:
            if self._stopped:  # the Studio closed while its server was starting
                raise LaunchError("the Studio is closing; its server was stopped")
            if started:  # the server wrote its own server.json before its ready line
                return self.url
        tail = "".join(self.output[-8:]).strip()
        self.stop()
        why = f"it printed no ready line within {timeout:g} s"
        raise LaunchError(
            f"could not start 'comfyvn serve' for {self.data_dir}: {why}"
            + (f"\n{tail}" if tail else "")
        )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self, timeout: float = 15.0) -> None:
        with self._lock:
            self._stopped = True
            proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._reader is not None:
            self._reader.join(2)
        remove_server_file(self.data_dir, proc.pid)


def write_server_file(data_dir: Path, url: str, pid: int) -> None:
    """A ``server.json`` entry by hand (``comfyvn serve`` writes its own; tools and tests)."""
    write_server_info(data_dir, ServerInfo(url=url, pid=pid))


def read_server_file(data_dir: Path) -> str | None:
    """The URL of the data dir's live server, else whatever URL ``server.json`` names: the
    probe decides whether a leftover entry still answers with this data dir's token."""
    info = read_server_info(data_dir) or read_server_info(data_dir, live_only=False)
    return info.url if info is not None else None


def remove_server_file(data_dir: Path, pid: int) -> None:
    """Only ``pid``'s own entry (a server killed before it could remove its file)."""
    with contextlib.suppress(OSError):
        remove_server_info(data_dir, pid)


def discover(
    options: StudioOptions, register: Callable[[LocalServer], None] | None = None
) -> Discovery:
    """Blocking (probes, maybe a subprocess start): call it from a worker thread.

    ``register`` learns about a spawned server before it is started, so whoever owns the
    Studio's shutdown can stop it even if the window closes while it is still starting."""
    data_dir = options.resolved_data_dir()
    explicit = options.server or os.environ.get("COMFYVN_SERVER")
    if explicit:
        conn = resolve_connection(explicit, options.token, data_dir)
        return Discovery(conn, "--server" if options.server else "COMFYVN_SERVER")
    tried: list[str] = []
    candidates = [(read_server_file(data_dir), SERVER_FILE), (DEFAULT_SERVER, "default URL")]
    for url, origin in candidates:
        if not url or any(url in t for t in tried):
            continue
        conn = resolve_connection(url, options.token, data_dir)
        problem = probe(conn, options.timeouts.probe_s)
        if problem is None:
            return Discovery(conn, origin)
        tried.append(f"{url}: {problem}")
    local = LocalServer(data_dir)
    if register is not None:
        register(local)
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        url = local.start(options.timeouts.server_start_s)
    except LaunchError:
        # Another server took the data dir meanwhile (or was still starting): it owns the data
        # dir, so use it rather than fail.
        info = None if local._stopped else read_server_info(data_dir)
        if info is not None:
            conn = resolve_connection(info.url, options.token, data_dir)
            if probe(conn, options.timeouts.probe_s) is None:
                return Discovery(conn, SERVER_FILE)
        raise
    conn = resolve_connection(url, options.token, data_dir)
    return Discovery(conn, "started by the Studio", local)
