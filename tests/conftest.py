"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import ServerProcess


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def server(data_dir: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(data_dir).start()
    try:
        yield proc
    finally:
        proc.stop()
