"""One ``comfyvn serve`` per data dir (``server.lock``), its discovery file ``server.json``, and
the Studio attaching to the server that already serves its data dir."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from comfyvn import __version__
from comfyvn.client.api import DEFAULT_SERVER, resolve_connection
from comfyvn.core.server_file import SERVER_FILE, lock_is_held, read_server_info
from comfyvn.gui.launcher import discover
from comfyvn.gui.options import StudioOptions, Timeouts

from .support import ROOT, ServerProcess


def serve_again(data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYVN_")}
    return subprocess.run(
        [sys.executable, "-m", "comfyvn", "serve", "--port", "0", "--data-dir", str(data_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("COMFYVN_SERVER", "COMFYVN_API_TOKEN", "COMFYVN_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)


def test_server_json_is_written_when_ready_and_removed_on_exit(data_dir: Path) -> None:
    srv = ServerProcess(data_dir).start()
    try:
        path = data_dir / SERVER_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        info = json.loads(path.read_text())
        assert info["url"] == srv.url and info["pid"] == srv.proc.pid  # type: ignore[union-attr]
        assert info["token_file"] == str((data_dir / "api_token").resolve())
        assert info["version"] == __version__ and info["started_at"] > 0
        assert lock_is_held(data_dir)
        live = read_server_info(data_dir)
        assert live is not None and live.url == srv.url
    finally:
        assert srv.stop() == 0
    assert not (data_dir / SERVER_FILE).exists()
    assert not lock_is_held(data_dir)
    assert (data_dir / "server.lock").exists()  # kept: only the flock on it means "in use"


def test_a_second_server_on_the_same_data_dir_exits_naming_the_first(data_dir: Path) -> None:
    first = ServerProcess(data_dir).start()
    try:
        second = serve_again(data_dir)
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"in use by the server at {first.url}" in second.stderr
        assert "server ready" not in second.stdout
        # The refused server touched nothing: the first still serves and still owns its file.
        with first.client() as client:
            assert client.get("/health").status_code == 200
        info = read_server_info(data_dir)
        assert info is not None and info.pid == first.proc.pid  # type: ignore[union-attr]
    finally:
        first.stop()


def test_after_sigkill_a_new_server_starts_normally(data_dir: Path, no_env: None) -> None:
    first = ServerProcess(data_dir).start()
    first_pid = first.proc.pid  # type: ignore[union-attr]
    first.kill()
    # The crashed server's file is left behind, but it is stale: nobody holds the lock.
    assert json.loads((data_dir / SERVER_FILE).read_text())["pid"] == first_pid
    assert read_server_info(data_dir) is None
    assert resolve_connection(data_dir=data_dir).server == DEFAULT_SERVER

    second = ServerProcess(data_dir).start()
    try:
        info = read_server_info(data_dir)
        assert info is not None and info.pid == second.proc.pid  # type: ignore[union-attr]
        assert info.url == second.url
        conn = resolve_connection(data_dir=data_dir)
        assert (conn.server, conn.token) == (second.url, second.token)
    finally:
        second.stop()


def test_a_stale_file_with_a_dead_pid_is_ignored(tmp_path: Path, no_env: None) -> None:
    data_dir = tmp_path / "stale"
    data_dir.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (data_dir / SERVER_FILE).write_text(json.dumps({"url": "http://127.0.0.1:1", "pid": gone.pid}))
    (data_dir / "api_token").write_text("stale-dir-token-0123456789\n")
    assert read_server_info(data_dir) is None
    assert read_server_info(data_dir, live_only=False) is not None
    conn = resolve_connection(data_dir=data_dir)
    assert (conn.server, conn.token) == (DEFAULT_SERVER, "stale-dir-token-0123456789")


def test_flags_and_environment_win_over_server_json(
    data_dir: Path, no_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv = ServerProcess(data_dir).start()
    try:
        assert resolve_connection(data_dir=data_dir).server == srv.url
        explicit = resolve_connection("http://127.0.0.1:9/", "-tok", data_dir)
        assert (explicit.server, explicit.token) == ("http://127.0.0.1:9", "-tok")
        with monkeypatch.context() as env:
            env.setenv("COMFYVN_SERVER", "http://127.0.0.1:10")
            env.setenv("COMFYVN_API_TOKEN", "env-token")
            by_env = resolve_connection(data_dir=data_dir)
        assert (by_env.server, by_env.token) == ("http://127.0.0.1:10", "env-token")
        # An explicit URL naming the discovered server gets that data dir's token.
        with monkeypatch.context() as env:
            env.setenv("COMFYVN_DATA_DIR", str(data_dir))
            named = resolve_connection(srv.url + "/")
        assert (named.server, named.token) == (srv.url, srv.token)
    finally:
        srv.stop()


def test_studio_attaches_to_the_server_of_its_data_dir(data_dir: Path, no_env: None) -> None:
    """What `comfyvn studio --data-dir D` runs first (no Qt needed): it finds the server already
    serving D through D/server.json and starts none of its own."""
    srv = ServerProcess(data_dir).start()
    try:
        found = discover(StudioOptions(data_dir=data_dir, timeouts=Timeouts(probe_s=5.0)))
        assert (found.conn.server, found.origin, found.local) == (srv.url, SERVER_FILE, None)
        assert found.conn.token == srv.token
    finally:
        srv.stop()


def test_sigterm_exit_code_and_cleanup_with_a_busy_attempt_in_between(data_dir: Path) -> None:
    """A refused second server must not remove the first one's file on its way out."""
    first = ServerProcess(data_dir).start()
    try:
        assert serve_again(data_dir).returncode == 2
        assert (data_dir / SERVER_FILE).exists()
        assert first.proc is not None
        first.proc.send_signal(signal.SIGTERM)
        assert first.proc.wait(30) == 0
    finally:
        first.stop()
    assert not (data_dir / SERVER_FILE).exists()
