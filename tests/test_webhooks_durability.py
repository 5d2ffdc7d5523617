"""At-least-once across SIGKILL: every acknowledged event reaches the receiver after a restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import ServerProcess
from .test_webhooks_receiver import WEBHOOKS, Receiver, Reply, create, deliveries, emit


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver().start()
    yield rec
    rec.stop()


def _acknowledged_ok(receiver: Receiver, path: str) -> set[str]:
    """Event ids the receiver answered with a 2xx, the reply fully written."""
    return {
        r.headers["webhook-id"] for r in receiver.at(path) if r.completed and 200 <= r.status < 300
    }


def test_sigkill_mid_stream_loses_no_delivery(tmp_path: Path, receiver: Receiver) -> None:
    env = {"COMFYVN_WEBHOOK_RETRY_SCHEDULE": "0,0.3,0.3,0.3,0.3,0.3,0.3,0.3,0.3,0.3"}
    # Slow, and failing at first: deliveries are certainly in flight or queued at the kill.
    receiver.plan("/durable", *[Reply(500, delay=0.2)] * 6, then=Reply(200, delay=0.2))
    receiver.plan("/durable-scenes", then=Reply(200, delay=0.2))
    server = ServerProcess(tmp_path / "data", env=env).start()
    try:
        with server.client() as client:
            hook = create(client, receiver.url("/durable"))
            scenes = create(client, receiver.url("/durable-scenes"), events=["on_scene_enter"])
            acks = [emit(client, f"k{i}") for i in range(40)]
            acks += [emit(client, f"r{i}", "on_asset_removed") for i in range(5)]
        before_kill = _acknowledged_ok(receiver, "/durable")
        server.kill()
        # Per-endpoint concurrency is 4 and each reply takes 0.2 s, so at most ~20 a second
        # can have completed: far fewer than 45 (this is what makes the kill "mid-stream").
        assert len(before_kill) < len(acks)

        server.start()
        want = {a["id"] for a in acks}
        receiver.wait_until(
            lambda: want <= _acknowledged_ok(receiver, "/durable"), 40, "every event on /durable"
        )
        scene_want = {a["id"] for a in acks[:40]}
        receiver.wait_until(
            lambda: scene_want <= _acknowledged_ok(receiver, "/durable-scenes"),
            40,
            "every scene event on /durable-scenes",
        )
        # Filtering held across the restart: no asset event went to the scenes-only hook.
        assert _acknowledged_ok(receiver, "/durable-scenes") == scene_want
        with server.client() as client:
            rows = deliveries(client, hook["id"], limit=100)
            assert {r["event_id"] for r in rows} == want
            assert len(rows) == len(want)  # one delivery per event, however many attempts
            assert {r["event_id"] for r in deliveries(client, scenes["id"], limit=100)} == (
                scene_want
            )
            assert client.get(f"{WEBHOOKS}/{hook['id']}").json()["webhook"]["enabled"] is True
    finally:
        server.stop()
