"""The docs cannot rot: runnable examples run against a real server, and the generated hook
reference matches the specs."""

from __future__ import annotations

import os
import re
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


@pytest.mark.parametrize(("where", "language", "code"), BLOCKS, ids=[b[0] for b in BLOCKS])
def test_runnable_example(
    docs_server: ServerProcess, tmp_path: Path, where: str, language: str, code: str
) -> None:
    env = {
        **os.environ,
        "COMFYVN_URL": docs_server.url,
        "TOKEN": docs_server.token,
        "COMFYVN_DATA_DIR": str(docs_server.data_dir),
        "COMFYVN_MOD_PLUGIN_ROOT": docs_server.env["COMFYVN_MOD_PLUGIN_ROOT"],
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    # Examples call `.venv/bin/comfyvn` as a reader in the repo would; point that at this venv.
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    if language == "sh":
        cmd = ["bash", "-euo", "pipefail", "-c", code]
    else:
        cmd = [sys.executable, "-c", code]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{where} failed:\n{output}"
    assert '{"detail":' not in result.stdout, f"{where} got an error response:\n{output}"


def test_hook_reference_matches_the_specs() -> None:
    doc = ROOT / "docs" / "dev_notes_modder_hooks.md"
    assert sync_reference(doc, write=False), (
        "docs/dev_notes_modder_hooks.md is stale: run 'comfyvn hooks docs --write'"
    )
    assert "`on_scene_enter`" in render_reference()
