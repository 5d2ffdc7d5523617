"""Webhook delivery against a real server subprocess and a real receiver on 127.0.0.1."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from .support import ServerProcess
from .test_webhooks_receiver import (
    HOOKS,
    WEBHOOKS,
    Receiver,
    Reply,
    cleaning_client,
    create,
    deliveries,
    emit,
    wait_deliveries,
    wait_webhook,
)

ENV = {
    "COMFYVN_WEBHOOK_RETRY_SCHEDULE": "0,0.2,0.2",
    "COMFYVN_WEBHOOK_DISABLE_AFTER": "2",
    "COMFYVN_WEBHOOK_TIMEOUT": "3",
}


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver().start()
    yield rec
    rec.stop()


@pytest.fixture(scope="module")
def wh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(Path(tmp_path_factory.mktemp("webhooks")), env=ENV).start()
    yield proc
    proc.stop()


@pytest.fixture
def client(wh_server: ServerProcess) -> Iterator[httpx.Client]:
    yield from cleaning_client(wh_server)


def test_delivery_is_signed_per_standard_webhooks(client: httpx.Client, receiver: Receiver) -> None:
    hook = create(client, receiver.url("/sig"), events=["on_scene_enter"])
    secret = hook["secret"]
    assert secret.startswith("whsec_")
    ack = emit(client, "forest")
    [req] = receiver.wait_for("/sig", 1)
    # Verified by the reference library, not by our own code.
    envelope = Webhook(secret).verify(req.body, req.headers)
    assert envelope["id"] == ack["id"] and envelope["seq"] == ack["seq"]
    assert envelope["event"] == "on_scene_enter" and envelope["data"]["node"] == "forest"
    assert req.headers["webhook-id"] == ack["id"]
    assert req.headers["webhook-timestamp"].isdigit()
    assert req.headers["content-type"] == "application/json"
    # The body is the same envelope the history (and the WebSocket) carries.
    since = client.get(f"{HOOKS}/history", params={"since": ack["seq"] - 1, "limit": 1}).json()
    assert json.loads(req.body) == since["items"][0]
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 43 + "=").verify(req.body, req.headers)
    tampered = req.body.replace(b"forest", b"desert")
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(tampered, req.headers)
    [row] = wait_deliveries(client, hook["id"], lambda d: d and d[0]["status"] == "delivered")
    assert row["event_id"] == ack["id"] and row["attempts"] == 1 and row["last_status_code"] == 200


def test_client_supplied_secret_signs(client: httpx.Client, receiver: Receiver) -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    hook = create(client, receiver.url("/given"), secret=secret)
    assert hook["secret"] == secret
    ack = emit(client, "given")
    [req] = receiver.wait_for("/given", 1)
    assert Webhook(secret).verify(req.body, req.headers)["id"] == ack["id"]


def test_events_are_filtered_per_subscription(client: httpx.Client, receiver: Receiver) -> None:
    scenes = create(client, receiver.url("/f-scene"), events=["on_scene_enter"])
    both = create(client, receiver.url("/f-both"), events=["on_choice_render", "on_asset_removed"])
    every = create(client, receiver.url("/f-all"), events=["*"])
    acks = [
        emit(client, "a", "on_scene_enter"),
        emit(client, "b", "on_choice_render"),
        emit(client, "c", "on_asset_removed"),
        emit(client, "d", "on_scene_enter"),
    ]
    receiver.wait_for("/f-all", 4)
    receiver.wait_for("/f-scene", 2)
    receiver.wait_for("/f-both", 2)

    def ids(path: str) -> set[str]:
        return {r.envelope["id"] for r in receiver.at(path)}

    assert ids("/f-scene") == {acks[0]["id"], acks[3]["id"]}
    assert ids("/f-both") == {acks[1]["id"], acks[2]["id"]}
    assert ids("/f-all") == {a["id"] for a in acks}
    assert len(deliveries(client, scenes["id"])) == 2
    assert len(deliveries(client, both["id"])) == 2
    assert len(deliveries(client, every["id"])) == 4


def test_failing_receiver_gets_the_delivery_later(client: httpx.Client, receiver: Receiver) -> None:
    big = b"E" * 5000
    receiver.plan("/flaky", Reply(500, body=big), Reply(503, body=b"busy"), then=Reply(200))
    hook = create(client, receiver.url("/flaky"))
    ack = emit(client, "flaky")
    reqs = receiver.wait_for("/flaky", 3)
    assert [r.status for r in reqs] == [500, 503, 200]
    assert {r.headers["webhook-id"] for r in reqs} == {ack["id"]}  # the idempotency key
    [row] = wait_deliveries(client, hook["id"], lambda d: d and d[0]["status"] == "delivered")
    assert row["attempts"] == 3
    detail = client.get(f"{WEBHOOKS}/{hook['id']}/deliveries/{row['id']}").json()
    attempts = detail["attempts"]
    assert [a["status_code"] for a in attempts] == [500, 503, 200]
    assert [a["outcome"] for a in attempts] == ["retry", "retry", "delivered"]
    assert attempts[0]["error"] == "HTTP 500"
    assert attempts[0]["response"] == "E" * 1024  # the first 1 KiB of the response
    assert attempts[1]["response"] == "busy"
    assert all(a["latency_ms"] >= 0 for a in attempts)
    assert detail["delivery"]["envelope"]["id"] == ack["id"]
    # Filters on the delivery log.
    assert deliveries(client, hook["id"], status="pending") == []
    assert len(deliveries(client, hook["id"], status="delivered")) == 1


def test_retry_after_is_honoured(client: httpx.Client, receiver: Receiver) -> None:
    receiver.plan("/slowdown", Reply(429, headers={"Retry-After": "2"}), then=Reply(200))
    hook = create(client, receiver.url("/slowdown"))
    emit(client, "slow")
    first, second = receiver.wait_for("/slowdown", 2)
    # The schedule says 0.2 s; the receiver asked for 2 s and got at least that.
    assert second.at - first.at >= 1.9
    [row] = wait_deliveries(client, hook["id"], lambda d: d and d[0]["status"] == "delivered")
    assert row["attempts"] == 2


def test_410_disables_the_endpoint(client: httpx.Client, receiver: Receiver) -> None:
    receiver.plan("/gone", Reply(410, body=b"gone"), then=Reply(200))
    hook = create(client, receiver.url("/gone"))
    emit(client, "g1")
    receiver.wait_for("/gone", 1)
    disabled = wait_webhook(client, hook["id"], lambda h: not h["enabled"])
    assert "410" in disabled["disabled_reason"]
    [row] = wait_deliveries(client, hook["id"], lambda d: d and d[0]["status"] == "failed")
    assert row["attempts"] == 1
    # Disabled: new events are not queued for it and nothing more is sent.
    emit(client, "g2")
    assert len(deliveries(client, hook["id"])) == 1
    # An operator re-enables it; deliveries flow again.
    patched = client.patch(f"{WEBHOOKS}/{hook['id']}", json={"enabled": True}).json()["webhook"]
    assert patched["enabled"] is True and patched["disabled_reason"] is None
    emit(client, "g3")
    reqs = receiver.wait_for("/gone", 2)
    assert reqs[-1].envelope["data"]["node"] == "g3"


def test_consecutive_exhausted_deliveries_disable(client: httpx.Client, receiver: Receiver) -> None:
    receiver.plan("/down", then=Reply(500, body=b"down"))
    hook = create(client, receiver.url("/down"))
    emit(client, "x1")
    wait_deliveries(client, hook["id"], lambda d: len(d) == 1 and d[0]["status"] == "failed")
    assert client.get(f"{WEBHOOKS}/{hook['id']}").json()["webhook"]["enabled"] is True
    emit(client, "x2")
    disabled = wait_webhook(client, hook["id"], lambda h: not h["enabled"])
    assert "2 consecutive" in disabled["disabled_reason"]
    assert disabled["consecutive_failures"] == 2
    rows = deliveries(client, hook["id"])
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all(r["attempts"] == 3 for r in rows)  # the whole (shrunk) schedule was used
    assert len(receiver.at("/down")) == 6


def test_success_resets_the_failure_count(client: httpx.Client, receiver: Receiver) -> None:
    receiver.plan("/mixed", Reply(500), Reply(500), Reply(500), then=Reply(200))
    hook = create(client, receiver.url("/mixed"))
    emit(client, "m1")
    wait_webhook(client, hook["id"], lambda h: h["consecutive_failures"] == 1)
    emit(client, "m2")
    healthy = wait_webhook(client, hook["id"], lambda h: h["last_success_at"] is not None)
    assert healthy["consecutive_failures"] == 0 and healthy["enabled"] is True


def test_redeliver_and_ping(client: httpx.Client, receiver: Receiver) -> None:
    hook = create(client, receiver.url("/ops"), events=["on_scene_enter"])
    secret = hook["secret"]
    ack = emit(client, "ops")
    receiver.wait_for("/ops", 1)
    [row] = wait_deliveries(client, hook["id"], lambda d: d and d[0]["status"] == "delivered")

    again = client.post(f"{WEBHOOKS}/{hook['id']}/deliveries/{row['id']}/redeliver")
    assert again.status_code == 200, again.text
    body = again.json()
    assert body["delivered"] is True and body["attempt"]["status_code"] == 200
    assert body["delivery"]["attempts"] == 2 and body["delivery"]["status"] == "delivered"
    first, second = receiver.wait_for("/ops", 2)
    assert second.headers["webhook-id"] == first.headers["webhook-id"] == ack["id"]
    assert Webhook(secret).verify(second.body, second.headers)["id"] == ack["id"]

    ping = client.post(f"{WEBHOOKS}/{hook['id']}/ping").json()
    assert ping["delivered"] is True and ping["attempt"]["status_code"] == 200
    req = receiver.wait_for("/ops", 3)[-1]
    envelope = Webhook(secret).verify(req.body, req.headers)
    assert envelope["event"] == "ping" and envelope["data"]["webhook_id"] == hook["id"]
    assert ping["delivery"]["event"] == "ping" and ping["delivery"]["status"] == "delivered"

    # A ping to a failing receiver reports the failure instead of raising.
    receiver.plan("/ops", Reply(503, body=b"maintenance"))
    failed = client.post(f"{WEBHOOKS}/{hook['id']}/ping").json()
    assert failed["delivered"] is False
    assert failed["attempt"]["status_code"] == 503 and failed["attempt"]["error"] == "HTTP 503"
    assert failed["attempt"]["response"] == "maintenance"
    # Pings never disable or count against the endpoint.
    assert client.get(f"{WEBHOOKS}/{hook['id']}").json()["webhook"]["consecutive_failures"] == 0


def test_ping_to_a_dead_port_reports_the_connection_error(client: httpx.Client) -> None:
    hook = create(client, "http://127.0.0.1:9/nowhere")
    body = client.post(f"{WEBHOOKS}/{hook['id']}/ping").json()
    assert body["delivered"] is False and body["attempt"]["status_code"] is None
    assert "Connect" in body["attempt"]["error"]


def test_redirects_are_not_followed(client: httpx.Client, receiver: Receiver) -> None:
    receiver.plan("/moved", then=Reply(302, headers={"Location": receiver.url("/target")}))
    hook = create(client, receiver.url("/moved"))
    body = client.post(f"{WEBHOOKS}/{hook['id']}/ping").json()
    assert body["delivered"] is False and body["attempt"]["status_code"] == 302
    assert "redirect" in body["attempt"]["error"]
    assert receiver.at("/target") == []


def test_secret_rotation_signs_with_both_secrets(client: httpx.Client, receiver: Receiver) -> None:
    hook = create(client, receiver.url("/rot"))
    old = hook["secret"]
    rotated = client.post(f"{WEBHOOKS}/{hook['id']}/rotate-secret").json()["webhook"]
    new = rotated["secret"]
    assert new != old and new.startswith("whsec_")
    assert rotated["previous_secret_expires_at"] > time.time()
    emit(client, "rot")
    [req] = receiver.wait_for("/rot", 1)
    assert len(req.headers["webhook-signature"].split(" ")) == 2
    assert Webhook(old).verify(req.body, req.headers)["event"] == "on_scene_enter"
    assert Webhook(new).verify(req.body, req.headers)["event"] == "on_scene_enter"
    # With no grace period the old secret stops signing at once.
    client.post(f"{WEBHOOKS}/{hook['id']}/rotate-secret", json={"grace_seconds": 0})
    emit(client, "rot2")
    req2 = receiver.wait_for("/rot", 2)[-1]
    assert len(req2.headers["webhook-signature"].split(" ")) == 1
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(req2.body, req2.headers)


def test_secret_only_in_the_create_response(
    client: httpx.Client, receiver: Receiver, wh_server: ServerProcess
) -> None:
    created = client.post(WEBHOOKS, json={"url": receiver.url("/leak")})
    secret = created.json()["webhook"]["secret"]
    hook_id = created.json()["webhook"]["id"]
    emit(client, "leak")
    receiver.wait_for("/leak", 1)
    row = wait_deliveries(client, hook_id, lambda d: d and d[0]["status"] == "delivered")[0]
    responses = [
        client.get(WEBHOOKS),
        client.get(f"{WEBHOOKS}/{hook_id}"),
        client.get(HOOKS),
        client.patch(f"{WEBHOOKS}/{hook_id}", json={"description": "renamed"}),
        client.get(f"{WEBHOOKS}/{hook_id}/deliveries"),
        client.get(f"{WEBHOOKS}/{hook_id}/deliveries/{row['id']}"),
        client.post(f"{WEBHOOKS}/{hook_id}/deliveries/{row['id']}/redeliver"),
        client.post(f"{WEBHOOKS}/{hook_id}/ping"),
        client.post(WEBHOOKS, json={"url": receiver.url("/leak")}),  # 409 duplicate
        client.get("/openapi.json"),
    ]
    for response in responses:
        assert response.status_code < 500
        assert secret not in response.text, response.request.url
        assert secret[6:] not in response.text
    listed = next(h for h in client.get(WEBHOOKS).json()["items"] if h["id"] == hook_id)
    assert listed["secret"] == f"whsec_****{secret[-4:]}"
    catalogue = client.get(HOOKS).json()["webhooks"]
    assert [h["secret"] for h in catalogue if h["id"] == hook_id] == [listed["secret"]]
    rotated = client.post(f"{WEBHOOKS}/{hook_id}/rotate-secret").json()["webhook"]["secret"]
    assert secret not in client.get(WEBHOOKS).text and rotated not in client.get(WEBHOOKS).text
    deleted = client.delete(f"{WEBHOOKS}/{hook_id}")
    assert deleted.status_code == 200 and secret not in deleted.text
    assert secret not in wh_server.log_text() and rotated not in wh_server.log_text()


def test_a_hanging_receiver_never_slows_emits(client: httpx.Client, receiver: Receiver) -> None:
    for i in range(5):
        receiver.plan(f"/hang{i}", then=Reply(200, delay=3.0))
        create(client, receiver.url(f"/hang{i}"), events=["*"])
    started = time.monotonic()
    acks = [emit(client, f"h{i}") for i in range(20)]
    elapsed = time.monotonic() - started
    # 20 committed emits while 5 endpoints each hold every request for 3 s: if delivery were
    # on the emit path this would take minutes; the bound leaves a 10x margin over normal.
    assert elapsed < 6.0, elapsed
    assert len({a["seq"] for a in acks}) == 20
    receiver.wait_until(
        lambda: all(receiver.at(f"/hang{i}") for i in range(5)), 10, "the first hanging requests"
    )
