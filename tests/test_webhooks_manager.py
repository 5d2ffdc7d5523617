"""The webhook manager in-process: its subscription snapshot under concurrent reloads, and
operator calls that must not block the server's event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfyvn.core.event_log import SQLiteEventLog
from comfyvn.core.hook_bus import HookBus
from comfyvn.webhooks import WebhookConfig, WebhookError, WebhookManager
from comfyvn.webhooks.models import Subscription, WebhookCreate
from comfyvn.webhooks.worker import parse_retry_after


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[WebhookManager]:
    bus = HookBus(SQLiteEventLog(tmp_path / "events.sqlite3"))
    mgr = WebhookManager(bus, WebhookConfig())
    try:
        yield mgr
    finally:
        mgr.stop()
        mgr.store.close()
        bus.close()


def _create(manager: WebhookManager, path: str) -> Subscription:
    body = WebhookCreate(url=f"http://127.0.0.1:9/{path}")
    return asyncio.run(manager.create(body))


def _reload_reading_now(manager: WebhookManager) -> tuple[threading.Event, threading.Thread]:
    """A reload (as the worker does) that has read the table and waits for ``go`` to publish."""
    read_done, go = threading.Event(), threading.Event()
    real_list = manager.store.list_subscriptions

    def slow_list() -> list[Subscription]:
        subs = real_list()
        if threading.current_thread().name == "stale-reload":
            read_done.set()
            go.wait(10)
        return subs

    manager.store.list_subscriptions = slow_list  # type: ignore[method-assign]
    stale = threading.Thread(target=manager.reload, name="stale-reload")
    stale.start()
    assert read_done.wait(10)
    return go, stale


def test_a_stale_reload_cannot_hide_a_new_subscription(manager: WebhookManager) -> None:
    """The worker reloads the snapshot after every batch of attempts. A reload that read the
    table just before a create must not publish that older list after the create's own reload:
    the new subscription would be missing from the outbox and silently get no events."""
    go, stale = _reload_reading_now(manager)
    created: list[Subscription] = []
    creator = threading.Thread(target=lambda: created.append(_create(manager, "new")))
    creator.start()
    creator.join(1.0)  # done at once when reloads race; held back when they are ordered
    go.set()
    stale.join(10)
    creator.join(10)
    [sub] = created
    assert manager.get(sub.id).id == sub.id
    assert manager.outbox.target_count == 1


def test_a_stale_reload_cannot_revive_a_deleted_subscription(manager: WebhookManager) -> None:
    sub = _create(manager, "old")
    go, stale = _reload_reading_now(manager)
    deleter = threading.Thread(target=lambda: asyncio.run(manager.delete(sub.id)))
    deleter.start()
    deleter.join(1.0)
    go.set()
    stale.join(10)
    deleter.join(10)
    with pytest.raises(WebhookError):
        manager.get(sub.id)
    assert manager.outbox.target_count == 0


def test_redeliver_reads_the_log_off_the_event_loop(manager: WebhookManager) -> None:
    """The store's lock can be held for a while (a commit waiting on the bus writer); the
    route's event loop must keep serving other requests meanwhile."""
    sub = _create(manager, "busy")
    released = threading.Event()

    async def scenario() -> bool:
        manager.store._lock.acquire()
        timer = threading.Timer(2.0, lambda: (released.set(), manager.store._lock.release()))
        timer.start()
        task = asyncio.create_task(manager.redeliver(sub.id, 12345))
        for _ in range(5):
            await asyncio.sleep(0.01)
        loop_was_free = not released.is_set()
        with pytest.raises(WebhookError) as err:
            await task
        assert err.value.status == 404
        timer.join()
        return loop_was_free

    assert asyncio.run(scenario()), "redeliver blocked the event loop on the store lock"


@pytest.mark.parametrize("value", ["²", "٣", "1.5", "soon", "-3", ""])
def test_odd_retry_after_values_are_ignored(value: str) -> None:
    # Unicode digits pass str.isdigit() but not float(): that once made an attempt an
    # "internal error" instead of the receiver's own status.
    assert parse_retry_after(value, 0.0) is None


def test_retry_after_forms() -> None:
    assert parse_retry_after(" 120 ", 0.0) == 120.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:00 GMT", 30.0) == 30.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT", 30.0) == 0.0


def test_ping_and_redeliver_without_a_running_worker_are_503(manager: WebhookManager) -> None:
    """During shutdown (or before start) the worker refuses work: a 503 that says so, not a 500."""
    sub = _create(manager, "stopped")
    with pytest.raises(WebhookError) as err:
        asyncio.run(manager.ping(sub.id))
    assert err.value.status == 503 and "not running" in err.value.detail
