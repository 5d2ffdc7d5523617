"""The docs cannot rot: runnable examples run against a real server, and the generated hook
reference matches the specs."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfyvn.core.hook_docs import render_reference, sync_reference

from .support import ROOT, ServerProcess

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(sh|python) runnable\n(.*?)^```", re.MULTILINE | re.DOTALL)


def runnable_blocks() -> Iterator[tuple[str, str, str]]:
    for path in DOCS:
        if not path.exists():
            continue
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            yield f"{path.relative_to(ROOT)}:{line}", match.group(1), match.group(2)


BLOCKS = list(runnable_blocks())


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # Dev mode with a plugin folder of its own: the plugin chapter's examples write into it.
    plugins = tmp_path_factory.mktemp("docs-plugins")
    server = ServerProcess(
        tmp_path_factory.mktemp("docs") / "data",
        extra_args=["--demo", "--dev"],
        env={"COMFYVN_MOD_PLUGIN_ROOT": str(plugins)},
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_there_are_runnable_examples() -> None:
    assert len(BLOCKS) >= 5


STUDIO = re.compile(r"comfyvn studio\b")
BLOCK_TIMEOUT_S = 60


@pytest.mark.parametrize(("where", "language", "code"), BLOCKS, ids=[b[0] for b in BLOCKS])
def test_runnable_example(
    docs_server: ServerProcess, tmp_path: Path, where: str, language: str, code: str
) -> None:
    runs_studio = bool(STUDIO.search(code))
    if runs_studio and importlib.util.find_spec("PySide6") is None:
        pytest.skip(f"{where} opens the Studio, which needs PySide6 (pip install -e '.[gui]')")
    env = {
        **os.environ,
        "COMFYVN_URL": docs_server.url,
        "TOKEN": docs_server.token,
        "COMFYVN_DATA_DIR": str(docs_server.data_dir),
        "COMFYVN_MOD_PLUGIN_ROOT": docs_server.env["COMFYVN_MOD_PLUGIN_ROOT"],
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        # `comfyvn studio` runs as written, as a check: it attaches as it would for a reader,
        # prints what it attached to and exits (documented with --check), with no window.
        "COMFYVN_STUDIO_CHECK": "1",
        "QT_QPA_PLATFORM": "offscreen",
    }
    # Examples call `.venv/bin/comfyvn` and name `var/studio` as a reader in a checkout would
    # (`make run` serves var/studio): point them at this venv and the docs server's data dir.
    # Each block runs in a shell of its own, so COMFYVN_URL and TOKEN come from `env` above
    # (the tour's `export` line runs too: it reads the token from var/studio/api_token).
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "studio").symlink_to(docs_server.data_dir)
    if language == "sh":
        cmd = ["bash", "-euo", "pipefail", "-c", code]
    else:
        cmd = [sys.executable, "-c", code]
    # In a session of its own: whatever the block started in the background (a tail, a
    # receiver, a server the Studio started) is killed with it and never outlives the test.
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{where} did not finish within {BLOCK_TIMEOUT_S} s:\n{stdout}{stderr}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    output = stdout + stderr
    assert proc.returncode == 0, f"{where} failed:\n{output}"
    assert '{"detail":' not in stdout, f"{where} got an error response:\n{output}"
    if runs_studio:
        # It attached to the server already serving the data dir, and started no other.
        data_dir = docs_server.data_dir.resolve()
        attached = f"attached to {docs_server.url} (server.json; data dir {data_dir})"
        assert attached in stdout, f"{where}: not attached to the docs server:\n{output}"
        assert "started a local server" not in output, output


def test_hook_reference_matches_the_specs() -> None:
    doc = ROOT / "docs" / "dev_notes_modder_hooks.md"
    assert sync_reference(doc, write=False), (
        "docs/dev_notes_modder_hooks.md is stale: run 'comfyvn hooks docs --write'"
    )
    assert "`on_scene_enter`" in render_reference()
