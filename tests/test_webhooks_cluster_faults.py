"""Webhooks on a shared bus when NATS state goes wrong underneath them: a stream that refuses
writes or disappears, a foreign message on the hook subjects, racing creates, odd ids.

Same setup as ``test_webhooks_cluster``: real ``nats-server -js``, real ``serve --bus`` nodes,
a real receiver. The bus state is poked directly with nats-py, as an operator would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from . import test_webhooks_cluster as cluster_module
from .nats_support import NatsServer
from .support import ServerProcess, emit_scene
from .test_webhooks_cluster import (
    ACK_WAIT,
    WEBHOOKS,
    ClusterReceiver,
    _emit_when_back,
    create,
    deliveries,
    start_nodes,
    wait_for,
)
from .test_webhooks_cluster import pytestmark as cluster_marks

pytestmark = cluster_marks


@pytest.fixture(scope="module")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats") / "store").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def receiver() -> Iterator[ClusterReceiver]:
    rec = ClusterReceiver()
    yield rec
    rec.stop()


@pytest.fixture
def pair(
    nats: NatsServer, receiver: ClusterReceiver, tmp_path: Path
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """A fresh two-node cluster (its own namespace) per test: these tests damage it."""
    a, b = start_nodes(nats, tmp_path, receiver)
    try:
        yield a, b
    finally:
        b.stop()
        a.stop()


def namespace(node: ServerProcess) -> str:
    args = node.extra_args
    return args[args.index("--bus-namespace") + 1]


def on_nats(nats: NatsServer, action: Callable[[Any, Any], Awaitable[Any]]) -> Any:
    """Run ``action(nc, jsm)`` on a NATS connection of the test's own."""
    import nats as nats_py

    async def run() -> Any:
        nc = await nats_py.connect(nats.url)
        try:
            return await action(nc, nc.jsm())
        finally:
            await nc.close()

    return asyncio.run(run())


def log_count(nodes: tuple[ServerProcess, ...], text: str) -> int:
    return sum(node.log_text().count(text) for node in nodes)


def test_a_stream_that_refuses_attempt_records_does_not_flood_the_receiver(
    nats: NatsServer, pair: tuple[ServerProcess, ServerProcess], receiver: ClusterReceiver
) -> None:
    a, b = pair
    ns = namespace(a)
    hook = create(a, receiver, "/refused", events=["on_scene_enter"])
    first = emit_scene(a, "before")
    receiver.wait_until(lambda: first["id"] in receiver.delivered_ids("/refused"), 30, "first")
    wait_for(lambda: deliveries(b, hook["id"])[0]["status"] == "delivered", 30, "its record")

    async def refuse(_nc: Any, jsm: Any) -> Any:
        from nats.js import api

        info = await jsm.stream_info(f"{ns}-webhook-attempts")
        config = info.config
        config.max_msgs = 1
        config.discard = api.DiscardPolicy.NEW
        await jsm.update_stream(config)
        return info.config

    on_nats(nats, refuse)
    ack = emit_scene(b, "refused")
    time.sleep(5)
    sent = [r for r in receiver.at("/refused") if r.webhook_id == ack["id"]]
    # Sent, its record refused, sent again at most once per backoff step (per node) in 5 s;
    # without a backoff: over a hundred.
    assert 1 <= len(sent) <= 6, len(sent)
    assert log_count((a, b), "delivery message") <= 4

    async def allow(_nc: Any, jsm: Any) -> None:
        from nats.js import api

        info = await jsm.stream_info(f"{ns}-webhook-attempts")
        config = info.config
        config.max_msgs = -1
        config.discard = api.DiscardPolicy.OLD
        await jsm.update_stream(config)

    on_nats(nats, allow)
    row = wait_for(
        lambda: (
            next((r for r in deliveries(a, hook["id"]) if r["event_id"] == ack["id"]), {}).get(
                "status"
            )
            == "delivered"
        ),
        30,
        "the record once the stream takes it",
    )
    assert row
    assert receiver.overlaps == []


def test_a_deleted_attempts_stream_is_made_again(
    nats: NatsServer, pair: tuple[ServerProcess, ServerProcess], receiver: ClusterReceiver
) -> None:
    a, b = pair
    ns = namespace(a)
    create(a, receiver, "/noattempts", events=["on_scene_enter"])
    on_nats(nats, lambda _nc, jsm: jsm.delete_stream(f"{ns}-webhook-attempts"))
    acks = [emit_scene(a if i % 2 else b, f"na{i}") for i in range(5)]
    want = {ack["id"] for ack in acks}
    receiver.wait_until(lambda: want <= receiver.delivered_ids("/noattempts"), 30, "every event")
    time.sleep(1)
    assert log_count((a, b), "delivery message") <= 4  # once per failing streak, not per try
    per_id = Counter(r.webhook_id for r in receiver.at("/noattempts"))
    assert max(per_id.values()) <= 6


def test_a_foreign_message_on_the_hook_subjects_is_skipped_alone(
    nats: NatsServer, pair: tuple[ServerProcess, ServerProcess], receiver: ClusterReceiver
) -> None:
    a, b = pair
    ns = namespace(a)
    create(a, receiver, "/foreign", events=["on_scene_enter"])
    before = [emit_scene(a, f"fb{i}") for i in range(3)]
    receiver.wait_until(
        lambda: {x["id"] for x in before} <= receiver.delivered_ids("/foreign"), 30, "before"
    )
    # One burst, so the foreign message shares the fan-out's batch with real events (written
    # in the bus's own form: id, timestamp, payload).
    ours = [f"evt_{secrets.token_hex(4)}_{i}" for i in range(6)]

    async def publish(nc: Any, _jsm: Any) -> None:
        js = nc.jetstream()
        subject = f"{ns}.hooks.on_scene_enter"
        acks = [await js.publish_async(subject, b"not an envelope")]
        for event_id in ours:
            body = f"{event_id}\n{time.time()!r}\n" + json.dumps({"scene": event_id})
            acks.append(await js.publish_async(subject, body.encode()))
        await asyncio.gather(*acks)

    on_nats(nats, publish)
    after = [emit_scene(b, f"fa{i}") for i in range(3)]
    want = {x["id"] for x in before + after} | set(ours)
    receiver.wait_until(lambda: want <= receiver.delivered_ids("/foreign"), 30, "every event")
    time.sleep(3)  # past an ack wait: nothing comes twice
    assert Counter(r.webhook_id for r in receiver.at("/foreign")) == dict.fromkeys(want, 1)
    assert "not a ComfyVN envelope" in a.log_text() + b.log_text()


def test_a_replaced_hooks_stream_keeps_delivering(
    nats: NatsServer, pair: tuple[ServerProcess, ServerProcess], receiver: ClusterReceiver
) -> None:
    a, b = pair
    ns = namespace(a)
    create(a, receiver, "/replaced", events=["on_scene_enter"])
    first = [emit_scene(a, f"r{i}") for i in range(5)]
    receiver.wait_until(
        lambda: {x["id"] for x in first} <= receiver.delivered_ids("/replaced"), 30, "first"
    )
    time.sleep(2.5)  # an upkeep round has seen the stream
    on_nats(nats, lambda _nc, jsm: jsm.delete_stream(f"{ns}-hooks"))
    later = [wait_for(lambda: _emit_when_back(b, "l0"), 30, "the bus to take emits again")]
    later += [emit_scene(a if i % 2 else b, f"l{i}") for i in range(1, 30)]
    want = {x["id"] for x in later}
    receiver.wait_until(lambda: want <= receiver.delivered_ids("/replaced"), 60, "later events")
    time.sleep(3)
    per_id = Counter(r.webhook_id for r in receiver.at("/replaced"))
    assert all(per_id[i] == 1 for i in want)


# -- a shared cluster for the tests that do not damage it --------------------------------------
@pytest.fixture(scope="module")
def cluster(
    nats: NatsServer, receiver: ClusterReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    root = tmp_path_factory.mktemp("shared")
    saved = dict(cluster_module.ENV)
    cluster_module.ENV["COMFYVN_WEBHOOK_MAX_SUBSCRIPTIONS"] = "6"
    try:
        a, b = start_nodes(nats, root, receiver)
    finally:
        cluster_module.ENV.clear()
        cluster_module.ENV.update(saved)
    try:
        yield a, b
    finally:
        b.stop()
        a.stop()


def delete_all(node: ServerProcess) -> None:
    with node.client() as client:
        for hook in client.get(WEBHOOKS).json()["items"]:
            assert client.delete(f"{WEBHOOKS}/{hook['id']}").status_code == 200


def post_at_once(nodes: list[ServerProcess], bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    """POST every body at the same moment, body i to nodes[i % len(nodes)]."""
    barrier = threading.Barrier(len(bodies))
    answers: list[httpx.Response | None] = [None] * len(bodies)

    def post(i: int) -> None:
        node = nodes[i % len(nodes)]
        with node.client() as client:
            barrier.wait()
            answers[i] = client.post(WEBHOOKS, json=bodies[i])

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(answer is not None for answer in answers)
    return [answer for answer in answers if answer is not None]


def test_concurrent_creates_on_two_nodes_make_one_webhook(
    cluster: tuple[ServerProcess, ServerProcess], receiver: ClusterReceiver
) -> None:
    a, b = cluster
    body = {"url": receiver.url("/twice"), "events": ["on_scene_enter"]}
    answers = post_at_once([a, b], [body] * 8)
    assert sorted(r.status_code for r in answers) == [201] + [409] * 7
    [made] = [r.json()["webhook"]["id"] for r in answers if r.status_code == 201]
    assert [h["id"] for h in get_items(b)] == [made]
    delete_all(a)


def test_concurrent_creates_keep_to_the_limit(
    cluster: tuple[ServerProcess, ServerProcess], receiver: ClusterReceiver
) -> None:
    a, b = cluster
    bodies = [{"url": receiver.url(f"/limit{i}"), "events": ["on_scene_enter"]} for i in range(10)]
    answers = post_at_once([a, b], bodies)
    assert Counter(r.status_code for r in answers) == {201: 6, 409: 4}
    assert len(get_items(a)) == 6
    delete_all(b)


def get_items(node: ServerProcess) -> list[dict[str, Any]]:
    with node.client() as client:
        return client.get(WEBHOOKS).json()["items"]


@pytest.mark.parametrize("bad_id", ["*", ">", "a b", "a.b"])
def test_ids_that_cannot_be_keys_are_404s(
    cluster: tuple[ServerProcess, ServerProcess], bad_id: str
) -> None:
    a, _ = cluster
    path = f"{WEBHOOKS}/{quote(bad_id, safe='')}"
    with a.client() as client:
        answers = [
            client.delete(path),
            client.patch(path, json={"description": "x"}),
            client.post(f"{path}/rotate-secret"),
            client.get(path),
        ]
    for answer in answers:
        assert answer.status_code == 404, answer.text
        assert repr(bad_id) in answer.json()["detail"]


def consumer_exists(nats: NatsServer, ns: str, name: str) -> bool:
    async def check(_nc: Any, jsm: Any) -> bool:
        from nats.js.errors import NotFoundError

        try:
            await jsm.consumer_info(f"{ns}-webhook-outbox", name)
        except NotFoundError:
            return False
        return True

    return bool(on_nats(nats, check))


def test_delete_is_repeatable_and_nothing_brings_the_queue_back(
    nats: NatsServer, cluster: tuple[ServerProcess, ServerProcess], receiver: ClusterReceiver
) -> None:
    a, b = cluster
    ns = namespace(a)
    hook = create(a, receiver, "/deleted", events=["on_scene_enter"])
    consumer = f"webhook-send-{hook['id']}"
    assert consumer_exists(nats, ns, consumer)
    with b.client() as client:
        assert client.delete(f"{WEBHOOKS}/{hook['id']}").status_code == 200
        again = client.delete(f"{WEBHOOKS}/{hook['id']}")
    assert again.status_code == 404 and hook["id"] in again.json()["detail"]
    time.sleep(3)  # lanes ended, upkeep ran: neither made its queue again
    assert not consumer_exists(nats, ns, consumer)

    # A delete cut short after the key went (the queue left behind) is finished by upkeep.
    other = create(b, receiver, "/halfdeleted", events=["on_scene_enter"])
    stray = f"webhook-send-{other['id']}"
    on_nats(nats, lambda nc, _jsm: _kv_delete(nc, f"{ns}-webhooks", other["id"]))
    wait_for(lambda: not consumer_exists(nats, ns, stray), 15, "the stray queue to go")


async def _kv_delete(nc: Any, bucket: str, key: str) -> None:
    kv = await nc.jetstream().key_value(bucket)
    await kv.delete(key)


def test_a_remade_delivery_queue_does_not_send_again(
    nats: NatsServer, cluster: tuple[ServerProcess, ServerProcess], receiver: ClusterReceiver
) -> None:
    """Deleted by hand, the queue is made again (upkeep) from the start of the outbox: the
    deliveries it hands out again were delivered, and their last attempt says so."""
    a, b = cluster
    ns = namespace(a)
    hook = create(a, receiver, "/remade", events=["on_scene_enter"])
    first = [emit_scene(a if i % 2 else b, f"m{i}") for i in range(4)]
    want = {x["id"] for x in first}
    receiver.wait_until(lambda: want <= receiver.delivered_ids("/remade"), 30, "first")
    consumer = f"webhook-send-{hook['id']}"
    on_nats(nats, lambda _nc, jsm: jsm.delete_consumer(f"{ns}-webhook-outbox", consumer))
    wait_for(lambda: consumer_exists(nats, ns, consumer), 15, "the queue to be made again")
    later = emit_scene(b, "after-remade")
    receiver.wait_until(lambda: later["id"] in receiver.delivered_ids("/remade"), 30, "later")
    time.sleep(ACK_WAIT + 1)
    per_id = Counter(r.webhook_id for r in receiver.at("/remade"))
    assert per_id == dict.fromkeys({*want, later["id"]}, 1)
    delete_all(a)


def test_stamps_from_several_nodes_only_move_forward() -> None:
    from comfyvn.webhooks.models import Subscription
    from comfyvn.webhooks.shared.effects import _stamped

    sub = Subscription("wh_1", "http://x", ("*",), "whsec_x", True, "", 0.0, 0.0)
    exhausted = dataclasses.replace(sub, consecutive_failures=1, last_failure_at=200.0)
    late_success = _stamped(exhausted, 100.0, None)  # started before the exhaustion
    assert late_success.consecutive_failures == 1
    assert late_success.last_success_at == 100.0
    newer = _stamped(exhausted, 300.0, None)
    assert newer.consecutive_failures == 0
    assert _stamped(newer, 250.0, 150.0).last_success_at == 300.0
    assert _stamped(newer, None, 150.0).last_failure_at == 200.0
    assert "whsec_x" not in repr(sub)


def test_distinct_attempts_get_distinct_message_ids() -> None:
    from comfyvn.webhooks.shared.deliveries import DeliveryLog
    from comfyvn.webhooks.shared.names import Names
    from comfyvn.webhooks.shared.records import AttemptRecord

    sent: list[str] = []

    class FakeJs:
        async def publish(self, subject: str, data: bytes, **kw: Any) -> None:
            sent.append(kw["headers"]["Nats-Msg-Id"])

    log = DeliveryLog(FakeJs(), None, Names("ns", "ns-hooks", "ns.hooks."), 0.0)

    def record(started_at: float) -> AttemptRecord:
        return AttemptRecord(7, 1, 0, "pending", None, started_at, 1.0, 503, None, None, "retry", 7)

    asyncio.run(log.record("wh_1", record(1.0)))
    asyncio.run(log.record("wh_1", record(2.0)))
    asyncio.run(log.record("wh_1", record(2.0)))  # the same record published again
    assert len(set(sent)) == 2 and sent[1] == sent[2]


def test_delete_by_url_works_on_the_stored_events() -> None:
    from comfyvn.webhooks.models import Subscription
    from comfyvn.webhooks.shared.manager import _without_event

    sub = Subscription("wh_1", "http://x", ("a", "b"), "whsec_x", True, "", 0.0, 0.0)
    left = [False]
    changed = _without_event("a", left)(sub)
    assert left == [True] and changed is not None and changed.events == ("b",)
    assert _without_event("b", left)(dataclasses.replace(sub, events=("b",))) is None
    assert left == [False]  # nothing left: the caller deletes it
