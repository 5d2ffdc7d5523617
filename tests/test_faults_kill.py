"""SIGKILL of the server in the middle of a scenario run: nothing acknowledged is lost."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from comfyvn.scenario.catalog import DEMO_DIR, read_scene_file

from .support import ServerProcess

pytestmark = pytest.mark.fault


def play_until_killed(server: ServerProcess, acked: list[dict[str, Any]], stop: threading.Event):
    """Auto-play the demo scene over and over; record every step the server acknowledged."""
    scene = read_scene_file(DEMO_DIR / "lighthouse.json")
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=10) as client:
        state = None
        run = 0
        while not stop.is_set():
            body: dict[str, Any] = {"scene": scene, "seed": run}
            if state is not None:
                body["state"] = state
            try:
                response = client.post("/api/scenario/run/step", json=body)
            except httpx.HTTPError:
                return  # the server is gone
            assert response.status_code == 200, response.text
            answer = response.json()
            acked.append({"run": run, "node": answer["node"]["id"]})
            state = None if answer["finished"] else answer["state"]
            run += state is None


def test_sigkill_during_a_scenario_run_keeps_every_acknowledged_event(data_dir: Path) -> None:
    server = ServerProcess(data_dir).start()
    acked: list[dict[str, Any]] = []
    stop = threading.Event()
    player = threading.Thread(target=play_until_killed, args=(server, acked, stop))
    player.start()
    deadline = time.monotonic() + 30
    while len(acked) < 60 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.kill()  # SIGKILL mid-run: no shutdown hook, no final flush
    stop.set()
    player.join(30)
    assert len(acked) >= 60, "the player made too little progress to test anything"

    server.start()
    try:
        with server.client() as client:
            items = []
            since = 0
            while True:
                page = client.get(
                    "/api/modder/hooks/history", params={"since": since, "limit": 1000}
                ).json()
                items += page["items"]
                if not page["items"]:
                    break
                since = page["next_since"]
    finally:
        server.stop()
    seqs = [item["seq"] for item in items]
    assert seqs == list(range(1, len(seqs) + 1))  # complete: no hole up to the last commit
    entered = [item["data"]["node"] for item in items if item["event"] == "on_scene_enter"]
    # Every acknowledged step's node entry is in the history, in order (a step that was in
    # flight at the kill may be there too, but nothing acknowledged is missing).
    assert entered[: len(acked)] == [step["node"] for step in acked]
