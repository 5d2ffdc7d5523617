"""The hook bus in-process: listeners, durability, subscribers that fall behind, retention."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfyvn.core.event_log import LogRow, RetentionPolicy, SQLiteEventLog
from comfyvn.core.hook_bus import BusClosedError, CommitTimeout, Gap, HookBus, UnknownHookError
from comfyvn.core.hook_specs import HOOK_SPECS

from .support import scene_enter_payload


def make_bus(path: Path, **kwargs) -> HookBus:
    return HookBus(SQLiteEventLog(path / "events.sqlite3"), **kwargs)


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[HookBus]:
    b = make_bus(tmp_path)
    try:
        yield b
    finally:
        b.close()


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_emit_assigns_increasing_seq_and_unique_ids(bus: HookBus) -> None:
    results = [bus.emit("on_scene_enter", scene_enter_payload(f"n{i}")) for i in range(50)]
    assert [r.seq for r in results] == list(range(1, 51))
    assert len({r.id for r in results}) == 50
    bus.flush()
    assert bus.committed_seq == 50


def test_unknown_hook_is_refused_with_the_known_names(bus: HookBus) -> None:
    with pytest.raises(UnknownHookError) as err:
        bus.emit("on_typo", {})
    assert "on_scene_enter" in str(err.value)
    with pytest.raises(UnknownHookError):
        bus.register_listener(lambda e, p: None, events=["on_typo"])


def test_listener_registration_and_unregistration(bus: HookBus) -> None:
    got: list[tuple[str, dict]] = []
    handle = bus.register_listener(lambda e, p: got.append((e, p)), events=["on_scene_enter"])
    bus.emit("on_scene_enter", scene_enter_payload("a"))
    bus.emit("on_asset_removed", {"uid": "x"})  # filtered out by the listener's events
    wait_until(lambda: len(got) == 1)
    assert got[0][0] == "on_scene_enter" and got[0][1]["node"] == "a"
    assert bus.unregister_listener(handle) is True
    assert bus.unregister_listener(handle) is False
    bus.emit("on_scene_enter", scene_enter_payload("b"))
    bus.flush()
    time.sleep(0.1)
    assert len(got) == 1


def test_failing_listener_is_counted_logged_and_isolated(
    bus: HookBus, caplog: pytest.LogCaptureFixture
) -> None:
    good: list[str] = []

    def broken(event: str, payload: dict) -> None:
        raise ValueError("plugin bug")

    bad = bus.register_listener(broken, name="broken")
    bus.register_listener(lambda e, p: good.append(p["node"]), name="good")
    with caplog.at_level(logging.WARNING, logger="comfyvn.hooks"):
        for i in range(3):
            bus.emit("on_scene_enter", scene_enter_payload(f"n{i}"))
        wait_until(lambda: len(good) == 3 and bad.errors == 3)
    assert good == ["n0", "n1", "n2"]
    assert bad.last_error == "ValueError: plugin bug"
    tracebacks = [r for r in caplog.records if r.exc_info and "broken" in r.getMessage()]
    assert len(tracebacks) == 1  # the traceback is logged once, later failures are one line
    stats = {s["name"]: s for s in bus.stats()["listeners"]}
    assert stats["broken"]["errors"] == 3 and stats["good"]["errors"] == 0


def test_slow_listener_does_not_delay_others(bus: HookBus) -> None:
    release = threading.Event()
    fast: list[int] = []
    bus.register_listener(lambda e, p: release.wait(10), name="slow")
    bus.register_listener(lambda e, p: fast.append(1), name="fast")
    for i in range(20):
        bus.emit("on_scene_enter", scene_enter_payload(f"n{i}"))
    wait_until(lambda: len(fast) == 20, timeout=5)  # while "slow" still sits in its first call
    release.set()


def test_listeners_get_copies(bus: HookBus) -> None:
    seen: list[dict] = []

    def mutate(event: str, payload: dict) -> None:
        payload["variables"]["trust"] = 999
        payload["history"].clear()
        seen.append(payload)

    bus.register_listener(mutate, name="mutator")
    second: list[dict] = []
    bus.register_listener(lambda e, p: second.append(p), name="reader")
    original = scene_enter_payload("n")
    bus.emit("on_scene_enter", original)
    wait_until(lambda: seen and second)
    assert second[0]["variables"]["trust"] == 1 and second[0]["history"]
    assert original["variables"]["trust"] == 1
    assert bus.history(limit=1)[0]["data"]["variables"]["trust"] == 1


def test_history_and_seq_survive_restart(tmp_path: Path) -> None:
    first = make_bus(tmp_path)
    ids = [first.emit("on_scene_enter", scene_enter_payload(f"n{i}")).id for i in range(10)]
    first.close()  # close commits what is pending
    second = make_bus(tmp_path)
    try:
        assert [e["id"] for e in second.history(limit=100)] == ids
        assert second.emit("on_scene_enter", scene_enter_payload("x")).seq == 11
    finally:
        second.close()


def test_retention_prunes_but_never_lowers_seq(tmp_path: Path) -> None:
    b = make_bus(tmp_path, retention=RetentionPolicy(max_events=5, max_age_s=None))
    for i in range(12):
        b.emit("on_scene_enter", scene_enter_payload(f"n{i}"))
    b.flush()
    assert b.log.prune(b.retention) == 7
    assert [e["seq"] for e in b.history(limit=100)] == [8, 9, 10, 11, 12]
    b.close()
    again = make_bus(tmp_path, retention=RetentionPolicy(max_events=5, max_age_s=None))
    try:
        assert again.emit("on_scene_enter", scene_enter_payload("y")).seq == 13
    finally:
        again.close()


def test_retention_by_age(tmp_path: Path) -> None:
    b = make_bus(tmp_path)
    try:
        b.emit("on_scene_enter", scene_enter_payload("old"))
        b.flush()
        removed = b.log.prune(
            RetentionPolicy(max_events=None, max_age_s=60), now=time.time() + 3600
        )
        assert removed == 1 and b.history() == []
    finally:
        b.close()


def test_idle_subscriber_does_not_slow_emit_and_gets_everything(tmp_path: Path) -> None:
    """5,000 events while a subscriber reads nothing; the ring holds 500, the rest is caught up
    from the log, in order, with nothing lost."""
    b = make_bus(tmp_path, ring_size=500)

    async def scenario() -> tuple[float, list[int]]:
        sub = b.subscribe()
        start = time.perf_counter()
        for i in range(5000):
            b.emit("on_scene_enter", scene_enter_payload(f"n{i}"))
        elapsed = time.perf_counter() - start
        await asyncio.to_thread(b.flush)
        seqs: list[int] = []
        while len(seqs) < 5000:
            for item in await asyncio.wait_for(sub.next_batch(), 10):
                assert not isinstance(item, Gap)
                seqs.append(item.seq)
        sub.close()
        return elapsed, seqs

    try:
        elapsed, seqs = asyncio.run(scenario())
    finally:
        b.close()
    assert seqs == list(range(1, 5001))
    # Generous bound (the benchmark measures the real cost): emit is a queue append, so 5,000
    # emits take milliseconds; a blocking subscriber would cost seconds.
    assert elapsed < 2.0


def test_subscriber_gets_explicit_gap_when_the_log_was_pruned(tmp_path: Path) -> None:
    b = make_bus(tmp_path, ring_size=10, retention=RetentionPolicy(max_events=20, max_age_s=None))

    async def scenario() -> list:
        sub = b.subscribe(since=0)
        for i in range(100):
            b.emit("on_scene_enter", scene_enter_payload(f"n{i}"))
        await asyncio.to_thread(b.flush)
        await asyncio.to_thread(b.log.prune, b.retention)
        items: list = []
        while not items or isinstance(items[-1], Gap) or items[-1].seq < 100:
            items.extend(await asyncio.wait_for(sub.next_batch(), 10))
        sub.close()
        return items

    try:
        items = asyncio.run(scenario())
    finally:
        b.close()
    assert isinstance(items[0], Gap) and (items[0].first, items[0].last) == (1, 80)
    assert items[0].to_dict() == {"gap": True, "from": 1, "to": 80}
    assert [i.seq for i in items[1:]] == list(range(81, 101))


def test_topic_filter_skips_other_events(bus: HookBus) -> None:
    async def scenario() -> list[str]:
        sub = bus.subscribe(topics=["on_asset_removed"])
        bus.emit("on_scene_enter", scene_enter_payload("a"))
        bus.emit("on_asset_removed", {"uid": "u"})
        batch = await asyncio.wait_for(sub.next_batch(), 10)
        sub.close()
        return [row.event for row in batch]

    assert asyncio.run(scenario()) == ["on_asset_removed"]


def test_every_spec_has_a_schema_and_descriptions() -> None:
    for spec in HOOK_SPECS.values():
        described = spec.describe()
        assert described["schema"]["properties"]
        assert all(described["payload"].values()), spec.name


# -- writer thread, waiters, shutdown ----------------------------------------------------------
def test_unserializable_payload_does_not_stop_the_writer(
    bus: HookBus, caplog: pytest.LogCaptureFixture
) -> None:
    """A tuple key, a circular reference or NaN (invalid JSON for browsers) becomes an error
    payload under its own seq; the events after it are committed as usual."""
    circular: dict = {}
    circular["self"] = circular
    bad = [{("tuple", 1): 1}, circular, {"x": float("nan")}]
    with caplog.at_level(logging.ERROR, logger="comfyvn.hooks"):
        for payload in bad:
            bus.emit("on_scene_enter", {**scene_enter_payload("bad"), "variables": payload})
        good = bus.emit("on_scene_enter", scene_enter_payload("good"))
        bus.flush(timeout=10)
    items = bus.history(limit=10)
    assert [i["seq"] for i in items] == [1, 2, 3, good.seq]
    assert all("could not be serialized" in i["data"]["error"] for i in items[:3])
    assert items[-1]["data"]["node"] == "good"
    assert "on_scene_enter (seq 1)" in caplog.text


def test_a_waiter_whose_loop_closed_does_not_stop_the_writer(bus: HookBus) -> None:
    """A caller on a short-lived loop (asyncio.run) times out while the log fails; when the log
    recovers, the writer must not die calling into that closed loop."""
    append = bus.log.append

    def failing(rows) -> None:
        raise OSError("disk full")

    bus.log.append = failing  # type: ignore[method-assign]
    seq = bus.emit("on_scene_enter", scene_enter_payload("a")).seq
    with pytest.raises(CommitTimeout, match="disk full"):
        asyncio.run(bus.wait_committed(seq, timeout=0.2))
    bus.log.append = append  # type: ignore[method-assign]
    bus.emit("on_scene_enter", scene_enter_payload("b"))
    bus.flush(timeout=10)
    assert [i["data"]["node"] for i in bus.history()] == ["a", "b"]
    assert bus._async_waiters == []  # the timed-out waiter was not left behind


def test_emit_after_close_is_refused(tmp_path: Path) -> None:
    b = make_bus(tmp_path)
    b.emit("on_scene_enter", scene_enter_payload("a"))
    b.close()
    with pytest.raises(BusClosedError, match="closed"):
        b.emit("on_scene_enter", scene_enter_payload("late"))
    again = make_bus(tmp_path)
    try:
        assert [i["seq"] for i in again.history()] == [1]
    finally:
        again.close()


def test_a_listener_raising_system_exit_keeps_receiving(bus: HookBus) -> None:
    calls: list[str] = []

    def quits(event: str, payload: dict) -> None:
        calls.append(payload["node"])
        raise SystemExit(1)  # a plugin calling sys.exit() from its hook

    handle = bus.register_listener(quits, name="quits")
    for node in ("a", "b", "c"):
        bus.emit("on_scene_enter", scene_enter_payload(node))
    wait_until(lambda: handle.errors == 3)
    assert calls == ["a", "b", "c"] and handle.last_error == "SystemExit: 1"


def test_an_unregistered_listener_never_runs_its_queued_events(bus: HookBus) -> None:
    """Unregistering (or reloading a plugin) while it is mid-call: once the call returns, the
    old listener does not go on through what was queued for it."""
    release = threading.Event()
    calls: list[str] = []

    def slow(event: str, payload: dict) -> None:
        calls.append(payload["node"])
        release.wait(10)

    handle = bus.register_listener(slow, name="slow")
    for i in range(5):
        bus.emit("on_scene_enter", scene_enter_payload(f"n{i}"))
    wait_until(lambda: calls == ["n0"])
    bus.flush()
    assert bus.unregister_listener(handle)
    release.set()
    handle._thread.join(10)
    assert not handle._thread.is_alive()
    assert calls == ["n0"]


# -- subscriptions reading the log -------------------------------------------------------------
def test_a_cancelled_catch_up_loses_nothing(tmp_path: Path) -> None:
    """A caller that gives up while the subscription reads the log (wait_for timing out, a
    stream closing) must find the same rows on its next call."""
    b = make_bus(tmp_path, ring_size=1)
    reading = threading.Event()
    release = threading.Event()
    read_since = b.log.read_since

    def slow_read(*args, **kwargs):
        rows = read_since(*args, **kwargs)
        reading.set()
        release.wait(10)
        return rows

    async def scenario() -> list[int]:
        sub = b.subscribe(since=0)
        for i in range(10):
            b.emit("on_scene_enter", scene_enter_payload(f"n{i}"))
        await asyncio.to_thread(b.flush)
        b.log.read_since = slow_read  # type: ignore[method-assign]
        first = asyncio.ensure_future(sub.next_batch())
        await asyncio.to_thread(reading.wait, 10)
        first.cancel()
        release.set()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        await asyncio.sleep(0.2)  # the worker thread finishes its read meanwhile
        b.log.read_since = read_since  # type: ignore[method-assign]
        got: list[int] = []
        while len(got) < 10:
            got += [row.seq for row in await asyncio.wait_for(sub.next_batch(), 10)]
        sub.close()
        return got

    try:
        assert asyncio.run(scenario()) == list(range(1, 11))
    finally:
        b.close()


def test_pruning_during_a_catch_up_is_an_explicit_gap(tmp_path: Path) -> None:
    """Retention pruning that lands between the subscription's look at the log and its read
    must be reported as a gap, never skipped silently."""
    policy = RetentionPolicy(max_events=5, max_age_s=None)
    b = make_bus(tmp_path, ring_size=1, retention=policy)
    read_since = b.log.read_since

    def read_after_prune(*args, **kwargs):
        b.log.prune(policy)
        return read_since(*args, **kwargs)

    async def scenario() -> list:
        sub = b.subscribe(since=0)
        for i in range(20):
            b.emit("on_scene_enter", scene_enter_payload(f"n{i}"))
        await asyncio.to_thread(b.flush)
        b.log.read_since = read_after_prune  # type: ignore[method-assign]
        items: list = []
        while not items or isinstance(items[-1], Gap) or items[-1].seq < 20:
            items += await asyncio.wait_for(sub.next_batch(), 10)
        sub.close()
        return items

    try:
        items = asyncio.run(scenario())
    finally:
        b.close()
    assert isinstance(items[0], Gap) and (items[0].first, items[0].last) == (1, 15)
    assert [i.seq for i in items[1:]] == list(range(16, 21))


def test_a_failing_rollback_does_not_hide_the_real_error(tmp_path: Path) -> None:
    """SQLite may roll back by itself (disk full); the error reported must still be the real
    one, not 'cannot rollback - no transaction is active'."""
    store = SQLiteEventLog(tmp_path / "events.sqlite3")

    def breaks(conn, rows) -> None:
        conn.execute("ROLLBACK")  # what SQLite does on its own after SQLITE_FULL
        raise OSError(28, "No space left on device")

    store.add_txn_hook(breaks)
    try:
        with pytest.raises(OSError, match="No space left"):
            store.append([LogRow(1, "evt_1", "on_scene_enter", 1.0, "{}")])
    finally:
        store.close()
