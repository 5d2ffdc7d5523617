"""``comfyvn providers check --exit-code``: exit 1 when an enabled provider is red, and only
then (a disabled provider is gray and never counts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import ROOT, ServerProcess
from .test_providers_fakes import closed_port_url


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(Path(tmp_path_factory.mktemp("providers-exit-code"))).start()
    yield proc
    proc.stop()


def check(srv: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYVN_")}
    return subprocess.run(
        [sys.executable, "-m", "comfyvn", "providers", "check", *args,
         f"--server={srv.url}", f"--token={srv.token}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_exit_code_only_for_enabled_red_providers(srv: ServerProcess) -> None:
    with srv.client() as api:
        for body in (
            {"id": "ec-echo", "kind": "echo"},
            {"id": "ec-down", "kind": "comfyui", "base_url": closed_port_url()},
            {"id": "ec-off", "kind": "comfyui", "base_url": closed_port_url(), "enabled": False},
        ):
            assert api.post("/api/providers", json=body).status_code in (200, 201)

    green = check(srv, "--id", "ec-echo", "--exit-code")
    assert green.returncode == 0, green.stderr
    disabled = check(srv, "--id", "ec-echo", "--id", "ec-off", "--exit-code")
    assert disabled.returncode == 0, disabled.stdout + disabled.stderr
    assert "gray" in disabled.stdout

    red = check(srv, "--id", "ec-echo", "--id", "ec-down", "--exit-code")
    assert red.returncode == 1
    assert "ec-down" in red.stdout and "1 enabled provider(s) red: ec-down" in red.stderr
    red_json = check(srv, "--id", "ec-down", "--exit-code", "--json")
    assert red_json.returncode == 1
    assert json.loads(red_json.stdout)["results"][0]["status"] == "red"

    # Without the flag a red provider is still a successful check.
    assert check(srv, "--id", "ec-down").returncode == 0
