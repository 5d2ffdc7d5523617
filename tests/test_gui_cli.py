"""``comfyvn studio`` as a command: screenshots (server up, server down, no server given: it
starts one and stops it), server discovery, and every bad argument named with exit code 2."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PySide6.QtGui import QImage

from comfyvn.client.api import Connection
from comfyvn.gui.app import UsageError, options_from_args
from comfyvn.gui.formatting import format_quota, masked_config_lines
from comfyvn.gui.launcher import SERVER_FILE, LaunchError, discover, probe, write_server_file
from comfyvn.gui.options import StudioOptions, Timeouts

from .support import ROOT, ServerProcess
from .test_gui_support import studio_env
from .test_providers_fakes import closed_port_url

pytestmark = pytest.mark.gui


def studio(*args: str, timeout: float = 90, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "comfyvn", "studio", *args],
        cwd=ROOT,
        env=studio_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def png_size(path: Path) -> tuple[int, int]:
    image = QImage(str(path))
    assert not image.isNull(), f"{path} is not a readable PNG"
    return image.width(), image.height()


def test_screenshot_of_a_running_server(tmp_path: Path, server: ServerProcess) -> None:
    out = tmp_path / "system.png"
    done = studio(
        "--server", server.url, "--data-dir", str(server.data_dir),
        "--workspace", "system", "--screenshot", str(out), "--wait", "20",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert png_size(out) == (1280, 800)
    assert f"wrote {out}" in done.stdout
    assert "still loading" not in done.stderr  # it settled instead of timing out


def test_screenshot_with_the_server_down_still_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "down.png"
    done = studio(
        "--server", closed_port_url(), "--token", "t", "--data-dir", str(tmp_path),
        "--workspace", "system", "--screenshot", str(out), "--wait", "15",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert png_size(out) == (1280, 800)


def test_without_a_server_it_starts_one_and_stops_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh"
    out = tmp_path / "spawned.png"
    done = studio(
        "--data-dir", str(data_dir), "--screenshot", str(out), "--wait", "30",
        COMFYVN_STUDIO_PROBE_TIMEOUT="0.5",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert png_size(out) == (1280, 800)
    line = next(x for x in done.stderr.splitlines() if "started a local server" in x)
    pid = int(line.split("(pid ")[1].split(")")[0])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped (and reaped) before the command returned
    assert (data_dir / "api_token").exists()  # the data dir's own server made its token
    assert not (data_dir / SERVER_FILE).exists()  # its discovery entry is gone too


@pytest.mark.parametrize("how", ["flag", "env"])
def test_check_attaches_to_the_data_dirs_server_and_exits(server: ServerProcess, how: str) -> None:
    """``--check``, or ``COMFYVN_STUDIO_CHECK=1`` on an unchanged command line (the docs test
    runs the README's that way), attaches to the server already serving the data dir (never a
    second one), says so and exits 0: no window (offscreen by itself), saved layout untouched."""
    env = studio_env(**({"COMFYVN_STUDIO_CHECK": "1"} if how == "env" else {}))
    env.pop("QT_QPA_PLATFORM")  # --check needs no display and picks offscreen itself
    done = subprocess.run(
        [sys.executable, "-m", "comfyvn", "studio", "--data-dir", str(server.data_dir)]
        + (["--check"] if how == "flag" else []),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    where = f"{server.url} (server.json; data dir {server.data_dir.resolve()})"
    assert done.stdout.strip() == f"comfyvn studio: attached to {where}; hook stream live"
    assert "started a local server" not in done.stderr
    assert not (server.data_dir / "studio.ini").exists()


def test_check_without_a_server_starts_one_and_stops_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh"
    done = studio("--data-dir", str(data_dir), "--check", COMFYVN_STUDIO_PROBE_TIMEOUT="0.5")
    assert done.returncode == 0, done.stderr
    assert "(started by the Studio; data dir" in done.stdout
    line = next(x for x in done.stderr.splitlines() if "started a local server" in x)
    pid = int(line.split("(pid ")[1].split(")")[0])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not (data_dir / SERVER_FILE).exists()


def test_check_exits_1_when_the_stream_is_not_live_in_time(tmp_path: Path) -> None:
    done = studio(
        "--server", closed_port_url(), "--token", "t", "--data-dir", str(tmp_path),
        "--check", "--wait", "3",
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stdout == ""
    assert "check failed" in done.stderr and "not live after 3 s" in done.stderr


def test_check_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COMFYVN_STUDIO_CHECK", raising=False)
    assert options_from_args(_args()).check is False
    with pytest.raises(UsageError, match="exclude each other"):
        options_from_args(_args(check=True, screenshot="x.png"))
    monkeypatch.setenv("COMFYVN_STUDIO_CHECK", "maybe")
    with pytest.raises(UsageError, match="COMFYVN_STUDIO_CHECK"):
        options_from_args(_args())
    monkeypatch.setenv("COMFYVN_STUDIO_CHECK", "1")
    checked = options_from_args(_args())
    assert checked.check and not checked.remember_layout
    assert options_from_args(_args(screenshot="x.png")).check is False  # it ends by itself


def test_discovery_uses_the_data_dirs_server_and_skips_foreign_ones(
    tmp_path: Path, server: ServerProcess
) -> None:
    write_server_file(server.data_dir, server.url, 12345)
    found = discover(StudioOptions(data_dir=server.data_dir, timeouts=Timeouts(probe_s=2.0)))
    assert (found.conn.server, found.origin, found.local) == (server.url, SERVER_FILE, None)
    assert found.conn.token == server.token
    # The same server seen from another data dir: it answers, but refuses that dir's token.
    other = tmp_path / "other"
    other.mkdir()
    (other / "api_token").write_text("another-data-dirs-token\n")
    problem = probe(Connection(server.url, "another-data-dirs-token"), 2.0)
    assert problem is not None and "another data dir" in problem
    assert probe(Connection(closed_port_url(), "x"), 2.0).startswith("not reachable")


def _args(**kw: object) -> argparse.Namespace:
    base = {"server": None, "token": None, "data_dir": None, "workspace": None, "scene": None}
    return argparse.Namespace(**{**base, "screenshot": None, "wait": None, **kw})


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"screenshot": "shot.jpg"}, "writes a PNG"),
        ({"screenshot": "/no/such/folder/shot.png"}, "does not exist"),
        ({"screenshot": "tests/dir.png"}, "is a folder"),
        ({"wait": -1.0}, "--wait must be between"),
        ({"wait": 0.0}, "--wait must be between"),
        ({"wait": 601.0}, "--wait must be between"),
        ({"server": "127.0.0.1:8001"}, "--server must be an http"),
        ({"workspace": "bogus"}, "unknown workspace"),
    ],
)
def test_bad_arguments_are_named(
    kw: dict, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tests" / "dir.png").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)  # relative paths resolve here
    with pytest.raises(UsageError, match=message):
        options_from_args(_args(**kw))


def test_bad_arguments_exit_2_before_any_window(tmp_path: Path) -> None:
    done = studio("--screenshot", str(tmp_path / "missing" / "x.png"))
    assert done.returncode == 2
    assert "does not exist" in done.stderr
    bad_choice = studio("--workspace", "bogus")
    assert bad_choice.returncode == 2 and "invalid choice" in bad_choice.stderr


def test_unwritable_screenshot_folder_is_named(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):  # running as root: permissions do not apply
        pytest.skip("permissions are not enforced for this user")
    with pytest.raises(UsageError, match="not writable"):
        options_from_args(_args(screenshot=str(locked / "x.png")))


def test_formatting_shows_hints_never_values() -> None:
    provider = {
        "id": "oa",
        "base_url": "http://127.0.0.1:1/v1",
        "enabled": True,
        "config": {"models_path": "/v1/models"},
        "secrets": {
            "api_key": {"set": True, "source": "value", "hint": "****abcd"},
            "org": {"set": True, "source": "env", "env": "OA_ORG", "resolved": False},
            "old": {
                "set": True,
                "source": "env",
                "env": "PATH",
                "resolved": False,
                "refused": "not a COMFYVN_SECRET_* variable",
            },
        },
    }
    rows = dict(masked_config_lines(provider))
    assert rows["secrets.api_key"] == "****abcd"
    assert rows["secrets.org"] == "from $OA_ORG (NOT set in the server's environment)"
    assert rows["secrets.old"] == "from $PATH (refused: not a COMFYVN_SECRET_* variable)"
    assert json.dumps(rows).count("****") == 1
    assert format_quota("http", None, supported=False) == "—"
    assert format_quota("comfyui", None, True, "red") == "unavailable"
    quota = {"balance": 12.5, "spend_per_hr": 0.5, "hours_left": 25.0}
    assert format_quota("runpod", quota) == "balance $12.50 · $0.50/h · ~25 h left"


def test_installed_pyside_keeps_none_alive(qtbot) -> None:
    """PySide6 6.12.0 over-releases None on Python 3.11 (a crash after enough calls that
    return None); pyproject pins it out. This guards the environment the suite runs in."""
    from PySide6.QtWidgets import QTreeWidget

    tree = QTreeWidget()
    qtbot.addWidget(tree)
    before = sys.getrefcount(None)
    for _ in range(2000):
        tree.currentItem()
        tree.parentWidget()
    assert abs(sys.getrefcount(None) - before) < 100


def test_the_gui_never_imports_the_server_or_components() -> None:
    """The Studio talks HTTP/WebSocket only: loading it pulls in no server-side module."""
    code = (
        "import sys, comfyvn.cli, comfyvn.gui.app, comfyvn.gui.main_window;"
        "bad = ('comfyvn.server', 'comfyvn.scenario', 'comfyvn.assets', 'comfyvn.webhooks',"
        " 'comfyvn.providers', 'fastapi', 'uvicorn');"
        "print(sorted(m for m in sys.modules if m.startswith(bad)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=studio_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_sigterm_closes_the_studio_and_stops_its_server(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh"
    proc = subprocess.Popen(
        [sys.executable, "-m", "comfyvn", "studio", "--data-dir", str(data_dir)],
        cwd=ROOT,
        env=studio_env(COMFYVN_STUDIO_PROBE_TIMEOUT="0.5"),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = ""
        for line in proc.stderr:
            if "started a local server" in line:
                break
        pid = int(line.split("(pid ")[1].split(")")[0])
        proc.terminate()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not (data_dir / SERVER_FILE).exists()


def test_a_server_stopped_while_discovery_runs_is_never_started(tmp_path: Path) -> None:
    """The window closed (``stop_local_servers``) after discovery registered a server but
    before it spawned it: discovery must give up instead of leaving an orphan server."""
    data_dir = tmp_path / "closing"
    with pytest.raises(LaunchError, match="closing"):
        discover(
            StudioOptions(data_dir=data_dir, timeouts=Timeouts(probe_s=0.5)),
            register=lambda local: local.stop(),  # the Studio closes right now
        )
    assert not (data_dir / SERVER_FILE).exists()
    assert not (data_dir / "api_token").exists()  # no server ever ran for this data dir
