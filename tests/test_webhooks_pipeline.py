"""The delivery pipeline in-process: queues fetched ahead, lanes per endpoint, attempts recorded
in batches. What it must keep: no delivery sent twice while it is claimed, one endpoint never
idling another, retries on their schedule, and a batch recording exactly what recording its
attempts one by one would."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfyvn.core.event_log import SQLiteEventLog
from comfyvn.core.hook_bus import HookBus
from comfyvn.webhooks import WebhookConfig, WebhookManager, worker
from comfyvn.webhooks.models import Attempt, Subscription, WebhookCreate, WebhookPatch
from comfyvn.webhooks.store import INSERT_DELIVERY_SQL, Outcome, WebhookStore

from .support import scene_enter_payload
from .test_webhooks_receiver import Receiver, Reply


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver().start()
    yield rec
    rec.stop()


@pytest.fixture(autouse=True)
def short_queues(monkeypatch: pytest.MonkeyPatch) -> None:
    """Queues of 8: a few dozen events make many refills and batches (the receiver, one thread
    per connection, takes a while per request)."""
    monkeypatch.setattr(worker, "PREFETCH", 8)


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[HookBus]:
    hook_bus = HookBus(SQLiteEventLog(tmp_path / "events.sqlite3"))
    yield hook_bus
    hook_bus.close()


def _manager(bus: HookBus, **config: object) -> WebhookManager:
    manager = WebhookManager(bus, WebhookConfig(**config))  # type: ignore[arg-type]
    manager.start()
    return manager


def _create(manager: WebhookManager, url: str) -> Subscription:
    return asyncio.run(manager.create(WebhookCreate(url=url, events=["on_scene_enter"])))


def _emit(bus: HookBus, count: int, prefix: str) -> list[str]:
    return [
        bus.emit("on_scene_enter", scene_enter_payload(f"{prefix}{i}")).id for i in range(count)
    ]


def _ids(receiver: Receiver, path: str) -> Counter[str]:
    return Counter(r.headers["webhook-id"] for r in receiver.at(path))


def test_a_slow_endpoint_never_idles_another(bus: HookBus, receiver: Receiver) -> None:
    """Every lane of the fast endpoint keeps sending while the slow one holds all of its own:
    60 deliveries (refills and recorded batches) arrive before the first slow reply, each
    exactly once, and all of them are recorded as delivered."""
    receiver.plan("/slow", then=Reply(200, delay=5.0))
    receiver.plan("/fast", then=Reply(200))
    manager = _manager(bus)
    try:
        _create(manager, receiver.url("/slow"))
        fast = _create(manager, receiver.url("/fast"))
        ids = _emit(bus, 60, "n")
        started = time.monotonic()
        receiver.wait_until(lambda: len(receiver.at("/fast")) >= 60, 20, "60 fast deliveries")
        assert time.monotonic() - started < 5.0  # no fast delivery waited for a slow reply
        assert not any(r.completed for r in receiver.at("/slow"))
        assert len(receiver.at("/slow")) == manager.config.per_endpoint  # its lanes, no more
        assert _ids(receiver, "/fast") == Counter(ids)  # every one, none twice
        deadline = time.monotonic() + 10
        while manager.counts(fast.id)["delivered"] < 60 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert manager.counts(fast.id) == {"pending": 0, "delivered": 60, "failed": 0}
    finally:
        manager.stop()


def test_a_retry_goes_out_on_its_schedule(bus: HookBus, receiver: Receiver) -> None:
    """The rows of a batch are claimed when fetched, so the next wake-up comes from the batch
    just recorded, not from the poll interval (5 s here)."""
    receiver.plan("/flaky", Reply(500), then=Reply(200))
    manager = _manager(bus, retry_schedule=(0, 0.3, 60), poll_s=5.0)
    try:
        _create(manager, receiver.url("/flaky"))
        [event_id] = _emit(bus, 1, "r")
        first, second = receiver.wait_for("/flaky", 2, timeout=10)
        assert 0.25 <= second.at - first.at < 2.0
        assert first.headers["webhook-id"] == second.headers["webhook-id"] == event_id
    finally:
        manager.stop()


def test_disabling_mid_stream_sends_the_rest_once_re_enabled(
    bus: HookBus, receiver: Receiver
) -> None:
    """Queued rows of a disabled endpoint go back to the table (still pending) and are sent
    after it is enabled again: all of them, none twice."""
    receiver.plan("/pause", then=Reply(200, delay=0.02))
    manager = _manager(bus)
    try:
        sub = _create(manager, receiver.url("/pause"))
        ids = _emit(bus, 60, "p")
        receiver.wait_until(lambda: len(receiver.at("/pause")) >= 12, 10, "the first deliveries")
        asyncio.run(manager.update(sub.id, WebhookPatch(enabled=False)))
        time.sleep(0.3)  # the sends under way finish
        paused = len(receiver.at("/pause"))
        time.sleep(0.3)
        assert len(receiver.at("/pause")) == paused < 60
        asyncio.run(manager.update(sub.id, WebhookPatch(enabled=True)))
        receiver.wait_until(lambda: len(receiver.at("/pause")) >= 60, 20, "every delivery")
        time.sleep(0.2)
        assert _ids(receiver, "/pause") == Counter(ids)
    finally:
        manager.stop()


def _store_with_rows(path: Path) -> WebhookStore:
    store = WebhookStore(path)
    for i in range(3):
        store.insert_subscription(
            Subscription(
                id=f"s{i}",
                url="http://127.0.0.1:9/x",
                events=("*",),
                secret="whsec_" + "A" * 40,
                enabled=True,
                description="",
                created_at=0.0,
                updated_at=0.0,
            )
        )
    with store._txn() as conn:
        conn.executemany(
            INSERT_DELIVERY_SQL,
            [
                (f"s{i % 3}", i, f"evt_{i}", "on_scene_enter", "{}", 0.0, 0.0, 0.0)
                for i in range(1, 61)
            ],
        )
    return store


def _tables(store: WebhookStore) -> tuple[list[tuple[object, ...]], ...]:
    return (
        store._query("SELECT * FROM webhook_deliveries ORDER BY id"),
        store._query(
            "SELECT delivery_id, attempt, started_at, latency_ms, status_code, error, response, "
            "outcome FROM webhook_attempts ORDER BY id"
        ),
        store._query(
            "SELECT id, enabled, disabled_reason, consecutive_failures, last_success_at, "
            "last_failure_at FROM webhook_subscriptions ORDER BY id"
        ),
    )


def test_a_batch_records_what_one_by_one_would(tmp_path: Path) -> None:
    """Attempt numbers, delivery states, and the subscription effects in order: a success after
    an exhausted delivery resets the count, 410 and N exhausted disable, a row deleted meanwhile
    gets no attempt."""
    rng = random.Random(7)
    effects = {"success": "delivered", "retry": "pending", "exhausted": "failed", "gone": "failed"}
    weights = [8, 4, 2, 1]
    batched, single = _store_with_rows(tmp_path / "a.db"), _store_with_rows(tmp_path / "b.db")
    at = 1000.0
    for _ in range(60):
        batch: list[tuple[int, str, str, float, float]] = []
        for delivery_id in rng.sample([*range(1, 61), 999], rng.randint(1, 10)):
            effect = rng.choices(list(effects), weights)[0]
            at += rng.random()
            batch.append((delivery_id, f"s{delivery_id % 3}", effect, at, rng.random() * 50))

        def outcomes(batch: list[tuple[int, str, str, float, float]] = batch) -> list[Outcome]:
            return [
                Outcome(
                    Attempt(
                        delivery_id=d,
                        webhook_id=sub_id,
                        started_at=started,
                        latency_ms=latency,
                        status_code=200 if effect == "success" else 500,
                        error=None if effect == "success" else 'HTTP 500 "é"',
                        response="ok",
                        outcome=effect,
                    ),
                    effects[effect],
                    d % 7,
                    started + 5 if effect == "retry" else None,
                    effect,  # type: ignore[arg-type]
                )
                for d, sub_id, effect, started, latency in batch
            ]

        disabled = batched.record(outcomes(), disable_after=2)
        assert disabled == [s for o in outcomes() for s in single.record([o], disable_after=2)]
        assert _tables(batched) == _tables(single)
        if rng.random() < 0.5:  # an operator re-enables one
            sub_id = rng.choice(["s0", "s1", "s2"])
            for store in (batched, single):
                store.update_subscription(sub_id, enabled=True, consecutive_failures=0)
    attempts = batched._query("SELECT delivery_id, attempt FROM webhook_attempts ORDER BY id")
    assert len(attempts) > 100
    numbers: dict[int, list[int]] = {}
    for delivery_id, number in attempts:
        numbers.setdefault(delivery_id, []).append(number)
    for delivery_id, count in batched._query("SELECT id, attempts FROM webhook_deliveries"):
        assert numbers.get(delivery_id, []) == list(range(1, count + 1))
