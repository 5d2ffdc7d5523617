"""Webhook routes: CRUD, the simple delete, and every bad input named in a 4xx (never a 500)."""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .support import ServerProcess
from .test_webhooks_receiver import (
    WEBHOOKS,
    Receiver,
    cleaning_client,
    create,
    deliveries,
    emit,
    wait_deliveries,
)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver().start()
    yield rec
    rec.stop()


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(Path(tmp_path_factory.mktemp("webhooks-api"))).start()
    yield proc
    proc.stop()


@pytest.fixture
def client(api_server: ServerProcess) -> Iterator[httpx.Client]:
    yield from cleaning_client(api_server)


@pytest.mark.parametrize(
    "url, message",
    [
        ("ftp://127.0.0.1/x", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("127.0.0.1:8080/hook", "only http and https"),
        ("http://", "no host"),
        ("http://exa mple.com/", "whitespace"),
        ("http://127.0.0.1:99999/", "invalid port"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://169.254.10.1/", "link-local"),
        ("http://metadata.google.internal/computeMetadata/v1/", "cloud metadata"),
        ("http://METADATA.google.internal./", "cloud metadata"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[fd00:ec2::254]/", "cloud metadata"),
        ("http://[::ffff:169.254.169.254]/", "cloud metadata"),
        ("http://100.100.100.200/", "cloud metadata"),
        ("http://2852039166/", "cloud metadata"),  # 169.254.169.254 as one decimal number
        ("http://0251.0376.0251.0376/", "cloud metadata"),  # ...in octal
        ("http://0xa9.0xfe.0xa9.0xfe/", "cloud metadata"),  # ...in hex
        ("http://[64:ff9b::a9fe:a9fe]/", "cloud metadata"),  # ...through NAT64
        ("http://[2002:a9fe:a9fe::1]/", "cloud metadata"),  # ...through 6to4
        ("http://0/", "not a unicast"),  # 0.0.0.0
        ("http://0.0.0.0:8080/", "not a unicast"),
        ("http://224.0.0.1/", "not a unicast"),
    ],
)
def test_refused_urls(client: httpx.Client, url: str, message: str) -> None:
    response = client.post(WEBHOOKS, json={"url": url})
    assert response.status_code == 400, response.text
    assert message in response.json()["detail"]
    assert client.get(WEBHOOKS).json()["items"] == []


def test_bad_bodies(client: httpx.Client, receiver: Receiver) -> None:
    url = receiver.url("/bad")
    short_key = "whsec_" + base64.b64encode(b"x" * 8).decode()
    cases: list[tuple[dict | bytes, int, str]] = [
        ({"url": url, "events": ["on_nope"]}, 400, "on_nope"),
        ({"url": url, "events": []}, 422, "events"),
        ({"url": url, "events": "on_scene_enter"}, 422, "events"),
        ({"url": url, "secret": "not-a-secret"}, 400, "whsec_"),
        ({"url": url, "secret": "whsec_!!!notbase64"}, 400, "base64"),
        ({"url": url, "secret": short_key}, 400, "24..64 bytes"),
        ({"url": url, "colour": "red"}, 422, "colour"),
        ({"events": ["*"]}, 422, "url"),
        ({"url": "http://127.0.0.1/" + "a" * 3000}, 422, "url"),
        ({"url": url, "description": "d" * 600}, 422, "description"),
        (b"{nope", 422, "json"),
        (b"", 422, "empty"),
        (b"[1, 2]", 422, ""),
    ]
    for body, status, message in cases:
        if isinstance(body, bytes):
            response = client.post(
                WEBHOOKS, content=body, headers={"content-type": "application/json"}
            )
        else:
            response = client.post(WEBHOOKS, json=body)
        assert response.status_code == status, (body, response.text)
        assert message.lower() in response.text.lower(), (body, response.text)
        assert "not-a-secret" not in response.text  # a refused secret is never echoed
    huge = {"url": url, "description": "x" * 20_000}
    assert client.post(WEBHOOKS, json=huge).status_code == 413
    assert client.get(WEBHOOKS).json()["items"] == []


def test_an_endless_body_is_refused_without_reading_it_all(api_server: ServerProcess) -> None:
    """A chunked body has no Content-Length; the limit is counted while it streams, so the
    413 comes as soon as it is crossed instead of after buffering whatever the client sends."""
    host, port = api_server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            (
                f"POST {WEBHOOKS} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Authorization: Bearer {api_server.token}\r\n"
                "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            ).encode()
        )
        chunk = b"x" * 40_000
        sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))  # never the final 0-chunk
        answer = b""
        while b"}" not in answer and (data := sock.recv(65536)):
            answer += data
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert b"limit" in answer


def test_validation_errors_name_the_body_field(client: httpx.Client) -> None:
    detail = client.post(WEBHOOKS, json={"events": ["*"]}).json()["detail"]
    assert detail == [{"loc": ["body", "url"], "msg": "Field required", "type": "missing"}]


def test_duplicate_is_a_conflict_naming_the_existing_hook(
    client: httpx.Client, receiver: Receiver
) -> None:
    first = create(client, receiver.url("/dup"), events=["on_scene_enter", "on_asset_saved"])
    again = client.post(
        WEBHOOKS,
        json={"url": receiver.url("/dup"), "events": ["on_asset_saved", "on_scene_enter"]},
    )
    assert again.status_code == 409 and first["id"] in again.json()["detail"]
    # Other events to the same URL are a different subscription.
    create(client, receiver.url("/dup"), events=["on_asset_removed"])


def test_unknown_ids_are_404(client: httpx.Client, receiver: Receiver) -> None:
    hook = create(client, receiver.url("/ids"))
    other = create(client, receiver.url("/ids-other"))
    emit(client, "ids")
    [row] = wait_deliveries(client, other["id"], lambda d: bool(d))
    missing = "wh_0000000000000000"
    for method, path in [
        ("GET", f"{WEBHOOKS}/{missing}"),
        ("PATCH", f"{WEBHOOKS}/{missing}"),
        ("DELETE", f"{WEBHOOKS}/{missing}"),
        ("GET", f"{WEBHOOKS}/{missing}/deliveries"),
        ("POST", f"{WEBHOOKS}/{missing}/ping"),
        ("POST", f"{WEBHOOKS}/{missing}/rotate-secret"),
        ("POST", f"{WEBHOOKS}/{missing}/deliveries/1/redeliver"),
        ("GET", f"{WEBHOOKS}/{hook['id']}/deliveries/999999"),
        # A delivery that belongs to another webhook is not found under this one.
        ("GET", f"{WEBHOOKS}/{hook['id']}/deliveries/{row['id']}"),
        ("POST", f"{WEBHOOKS}/{hook['id']}/deliveries/{row['id']}/redeliver"),
    ]:
        kwargs = {"json": {"description": "x"}} if method == "PATCH" else {}
        response = client.request(method, path, **kwargs)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["detail"]
    for params in ({"status": "bogus"}, {"limit": 0}, {"limit": 501}, {"before": 0}):
        response = client.get(f"{WEBHOOKS}/{hook['id']}/deliveries", params=params)
        assert response.status_code == 422, (params, response.text)
    response = client.get(f"{WEBHOOKS}/{hook['id']}/deliveries/abc")
    assert response.status_code == 422


def test_patch(client: httpx.Client, receiver: Receiver) -> None:
    hook = create(client, receiver.url("/p1"), events=["on_scene_enter"])
    path = f"{WEBHOOKS}/{hook['id']}"
    for body, status, message in [
        ({"url": "http://169.254.169.254/"}, 400, "metadata"),
        ({"events": ["on_nope"]}, 400, "on_nope"),
        ({"events": []}, 422, "events"),
        ({"secret": "whsec_x"}, 422, "secret"),  # secrets change only through rotate-secret
        ({"enabled": "maybe"}, 422, "enabled"),
    ]:
        response = client.patch(path, json=body)
        assert response.status_code == status, (body, response.text)
        assert message in response.text
    changed = client.patch(
        path, json={"url": receiver.url("/p2"), "events": ["*"], "description": "moved"}
    ).json()["webhook"]
    assert changed["url"] == receiver.url("/p2") and changed["events"] == ["*"]
    assert changed["description"] == "moved" and changed["updated_at"] >= hook["updated_at"]
    ack = emit(client, "p", "on_asset_removed")
    [req] = receiver.wait_for("/p2", 1)
    assert req.envelope["id"] == ack["id"] and receiver.at("/p1") == []
    off = client.patch(path, json={"enabled": False}).json()["webhook"]
    assert off["enabled"] is False and off["disabled_reason"] == "disabled by an operator"
    emit(client, "while-off")
    assert len(deliveries(client, hook["id"])) == 1


def test_delete_by_event_and_url(client: httpx.Client, receiver: Receiver) -> None:
    url = receiver.url("/simple")
    two = create(client, url, events=["on_scene_enter", "on_asset_saved"])
    everything = create(client, receiver.url("/simple-all"))
    bad = [
        ({"event": "on_scene_enter", "url": receiver.url("/unknown")}, 404),
        ({"event": "on_nope", "url": url}, 400),
        ({"event": "on_asset_removed", "url": url}, 404),
        ({"event": "on_scene_enter", "url": receiver.url("/simple-all")}, 409),
        ({"url": url}, 422),
    ]
    for body, status in bad:
        response = client.request("DELETE", WEBHOOKS, json=body)
        assert response.status_code == status, (body, response.text)
    response = client.request("DELETE", WEBHOOKS, json={"event": "on_scene_enter", "url": url})
    assert response.json() == {"ok": True, "deleted": [], "updated": [two["id"]]}
    assert client.get(f"{WEBHOOKS}/{two['id']}").json()["webhook"]["events"] == ["on_asset_saved"]
    response = client.request("DELETE", WEBHOOKS, json={"event": "on_asset_saved", "url": url})
    assert response.json()["deleted"] == [two["id"]]
    assert client.get(f"{WEBHOOKS}/{two['id']}").status_code == 404
    response = client.request(
        "DELETE", WEBHOOKS, json={"event": "*", "url": receiver.url("/simple-all")}
    )
    assert response.json()["deleted"] == [everything["id"]]
    assert client.get(WEBHOOKS).json()["items"] == []


def test_delivery_log_pages_newest_first(client: httpx.Client, receiver: Receiver) -> None:
    hook = create(client, receiver.url("/pages"), events=["on_scene_enter"])
    acks = [emit(client, f"pg{i}") for i in range(5)]
    wait_deliveries(client, hook["id"], lambda d: len(d) == 5)
    page = client.get(f"{WEBHOOKS}/{hook['id']}/deliveries", params={"limit": 2}).json()
    assert [d["event_id"] for d in page["items"]] == [acks[4]["id"], acks[3]["id"]]
    rest = client.get(
        f"{WEBHOOKS}/{hook['id']}/deliveries", params={"before": page["next_before"]}
    ).json()
    assert [d["event_id"] for d in rest["items"]] == [a["id"] for a in reversed(acks[:3])]
    assert rest["next_before"] is None
    counts = client.get(f"{WEBHOOKS}/{hook['id']}").json()["deliveries"]
    assert sum(counts.values()) == 5


def test_deleting_a_webhook_drops_its_queue(client: httpx.Client, receiver: Receiver) -> None:
    hook = create(client, "http://127.0.0.1:9/closed")  # nothing listens: stays pending
    emit(client, "queued")
    wait_deliveries(client, hook["id"], lambda d: bool(d))
    deleted = client.delete(f"{WEBHOOKS}/{hook['id']}").json()
    assert deleted == {"ok": True, "deleted": [hook["id"]], "updated": []}
    assert client.get(f"{WEBHOOKS}/{hook['id']}/deliveries").status_code == 404
