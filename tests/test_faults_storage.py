"""Storage faults: an unusable data dir, and writes that start failing while the server runs."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from .support import ROOT, ServerProcess, scene_enter_payload

pytestmark = pytest.mark.fault


def test_data_dir_under_a_regular_file_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "comfyvn",
            "serve",
            "--port",
            "0",
            "--data-dir",
            str(blocker / "data"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "cannot create data dir" in result.stderr and "Not a directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_writes_failing_mid_run_give_503_and_lose_nothing_committed(data_dir: Path) -> None:
    """RLIMIT_FSIZE makes every write past 2 MiB fail (EFBIG) — root ignores file modes, not
    this. The server keeps running, answers 503 naming the problem, and every event it
    acknowledged before is still there after a restart without the limit."""
    limit = 2 * 1024 * 1024
    server = ServerProcess(
        data_dir,
        env={"COMFYVN_COMMIT_TIMEOUT": "1"},
        rlimits={resource.RLIMIT_FSIZE: (limit, limit)},
    ).start()
    acked: list[str] = []
    refused = None
    try:
        with server.client() as client:
            for i in range(60):
                payload = scene_enter_payload(f"n{i}", variables={"blob": "x" * 100_000})
                response = client.post(
                    "/api/modder/hooks/test", json={"event": "on_scene_enter", "payload": payload}
                )
                if response.status_code == 200:
                    acked.append(response.json()["id"])
                    continue
                refused = response
                break
            assert refused is not None, "the size limit was never reached"
            assert refused.status_code == 503
            assert "not committed" in refused.json()["detail"]
            health = httpx.get(f"{server.url}/health").json()
            assert health["ok"] is False and health["event_log_error"]
            assert server.proc is not None and server.proc.poll() is None  # no crash
    finally:
        server.stop()
    assert len(acked) >= 5
    server.rlimits = {}
    server.start()
    try:
        with server.client() as client:
            items = client.get("/api/modder/hooks/history", params={"since": 0, "limit": 1000})
            ids = [item["id"] for item in items.json()["items"]]
        assert ids[: len(acked)] == acked
    finally:
        server.stop()


def test_asset_upload_that_cannot_be_written_is_a_503_and_leaves_nothing(data_dir: Path) -> None:
    limit = 2 * 1024 * 1024
    server = ServerProcess(data_dir, rlimits={resource.RLIMIT_FSIZE: (limit, limit)}).start()
    try:
        with server.client() as client:
            big = client.post(
                "/api/assets",
                files={"file": ("big.bin", b"x" * (3 * 1024 * 1024))},
                data={"type": "misc.blob"},
            )
            assert big.status_code == 503
            assert "File too large" in big.json()["detail"]
            small = client.post(
                "/api/assets", files={"file": ("ok.bin", b"y" * 1000)}, data={"type": "misc.blob"}
            )
            assert small.status_code == 201  # the server keeps working
            listing = client.get("/api/assets").json()
        assert listing["total"] == 1
        stored = [p for p in (data_dir / "assets").rglob("*") if p.is_file()]
        assert all(p.stat().st_size < limit for p in stored)  # no partial big file left
        assert not any("big" in p.name for p in stored)
    finally:
        server.stop()


def test_a_damaged_event_log_stops_start_up_with_a_clear_error(data_dir: Path) -> None:
    (data_dir / "events.sqlite3").write_bytes(b"\x00garbage, not a database" * 2000)
    result = subprocess.run(
        [sys.executable, "-m", "comfyvn", "serve", "--port", "0", "--data-dir", str(data_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2  # exits once, with the reason: no crash loop, no traceback
    assert "events.sqlite3 cannot be opened" in result.stderr
    assert "move it" in result.stderr and "Traceback" not in result.stderr
    assert (data_dir / "events.sqlite3").read_bytes().startswith(b"\x00garbage")  # untouched
