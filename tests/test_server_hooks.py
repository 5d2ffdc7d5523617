"""The hook surface over a real server subprocess: REST, WebSocket, restart, security."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from .support import ServerProcess, scene_enter_payload


def emit(client: httpx.Client, node: str = "intro", event: str = "on_scene_enter") -> dict:
    response = client.post(
        "/api/modder/hooks/test", json={"event": event, "payload": scene_enter_payload(node)}
    )
    assert response.status_code == 200, response.text
    return response.json()


def recv_json(ws, timeout: float = 10.0) -> dict:
    """Next non-heartbeat frame."""
    while True:
        msg = json.loads(ws.recv(timeout=timeout))
        if not msg.get("ping"):
            return msg


def test_health_needs_no_token(server: ServerProcess) -> None:
    response = httpx.get(f"{server.url}/health")
    assert response.status_code == 200
    assert response.json()["ok"] is True


def test_token_file_is_private(server: ServerProcess) -> None:
    mode = (server.data_dir / "api_token").stat().st_mode & 0o777
    assert mode == 0o600


def test_api_requires_token(server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}/api/modder/hooks").status_code == 401
    bad = httpx.get(f"{server.url}/api/modder/hooks", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    assert "token" in bad.json()["detail"]
    # Plain routes do not take the token from the query string; only streams do.
    query = httpx.get(f"{server.url}/api/modder/hooks", params={"token": server.token})
    assert query.status_code == 401


def test_foreign_host_is_refused(server: ServerProcess) -> None:
    response = httpx.get(f"{server.url}/health", headers={"Host": "attacker.example"})
    assert response.status_code == 400
    assert "attacker.example" in response.json()["detail"]


def test_list_hooks_describes_payloads(server: ServerProcess) -> None:
    with server.client() as client:
        body = client.get("/api/modder/hooks").json()
    names = [h["name"] for h in body["hooks"]]
    for required in (
        "on_scene_enter",
        "on_choice_render",
        "on_asset_saved",
        "on_asset_registered",
        "on_asset_meta_updated",
        "on_asset_removed",
        "on_asset_sidecar_written",
    ):
        assert required in names
    scene = next(h for h in body["hooks"] if h["name"] == "on_scene_enter")
    assert scene["payload"]["node"]
    assert scene["schema"]["properties"]["scene_id"]["type"] == "string"
    assert body["plugin_host"]["enabled"] is False
    assert body["history"] == []


def test_test_emit_errors(server: ServerProcess) -> None:
    with server.client() as client:
        unknown = client.post("/api/modder/hooks/test", json={"event": "on_nope", "payload": {}})
        assert unknown.status_code == 400
        assert "on_nope" in unknown.json()["detail"]
        bad = client.post(
            "/api/modder/hooks/test", json={"event": "on_scene_enter", "payload": {"node": 3}}
        )
        assert bad.status_code == 422
        locs = [e["loc"] for e in bad.json()["detail"]]
        assert ["payload", "scene_id"] in locs
        big = {"event": "on_scene_enter", "payload": scene_enter_payload(pad="x" * 300_000)}
        assert client.post("/api/modder/hooks/test", json=big).status_code == 413
        not_json = client.post(
            "/api/modder/hooks/test", content=b"{nope", headers={"content-type": "application/json"}
        )
        assert not_json.status_code == 422
        empty = client.post("/api/modder/hooks/test", content=b"")
        assert empty.status_code == 422
        # None of the refused requests became an event.
        assert client.get("/api/modder/hooks/history").json()["items"] == []


def test_history_query_errors(server: ServerProcess) -> None:
    with server.client() as client:
        assert client.get("/api/modder/hooks/history", params={"limit": 0}).status_code == 422
        assert client.get("/api/modder/hooks/history", params={"limit": 1001}).status_code == 422
        assert client.get("/api/modder/hooks/history", params={"since": -1}).status_code == 422
        bad_event = client.get("/api/modder/hooks/history", params={"event": "on_x"})
        assert bad_event.status_code == 400


def test_emit_reaches_websocket_and_history_survives_restart(server: ServerProcess) -> None:
    with connect(
        f"{server.ws_url}/api/modder/hooks/ws?topics=on_scene_enter",
        additional_headers=server.headers,
    ) as ws:
        hello = recv_json(ws)
        assert hello["ok"] is True and hello["subscribed"] == ["on_scene_enter"]
        with server.client() as client:
            ack = emit(client, "forest")
        envelope = recv_json(ws)
    assert envelope["seq"] == ack["seq"] and envelope["id"] == ack["id"]
    assert envelope["event"] == "on_scene_enter" and envelope["data"]["node"] == "forest"
    assert isinstance(envelope["ts"], float)

    server.restart()
    with server.client() as client:
        items = client.get("/api/modder/hooks/history").json()["items"]
        assert [i["id"] for i in items] == [ack["id"]]
        # seq keeps growing after a restart and is never reused.
        assert emit(client, "river")["seq"] == ack["seq"] + 1


def test_reconnect_with_since_gets_exactly_the_missed_envelopes(server: ServerProcess) -> None:
    with server.client() as client:
        first = [emit(client, f"n{i}") for i in range(3)]
        seen = first[-1]["seq"]
        missed = [emit(client, f"m{i}") for i in range(5)]
    url = f"{server.ws_url}/api/modder/hooks/ws?since={seen}&token={server.token}"
    with connect(url) as ws:
        assert recv_json(ws)["ok"] is True
        got = [recv_json(ws) for _ in missed]
        with server.client() as client:
            live = emit(client, "live")
        after = recv_json(ws)
    assert [g["seq"] for g in got] == [m["seq"] for m in missed]
    assert after["seq"] == live["seq"]
    assert "[redacted]" in server.log_text() or "token=" not in server.log_text()
    assert server.token not in server.log_text()


def test_subscription_by_first_message_and_default(server: ServerProcess) -> None:
    with server.client() as client:
        old = emit(client, "old")
    with connect(f"{server.ws_url}/api/modder/hooks/ws", additional_headers=server.headers) as ws:
        ws.send(json.dumps({"topics": ["on_scene_enter"], "since": old["seq"] - 1}))
        assert recv_json(ws)["subscribed"] == ["on_scene_enter"]
        assert recv_json(ws)["seq"] == old["seq"]
    with connect(f"{server.ws_url}/api/modder/hooks/ws", additional_headers=server.headers) as ws:
        hello = recv_json(ws)  # nothing sent: all hooks, live from now
        assert "on_asset_saved" in hello["subscribed"] and hello["seq"] == old["seq"]
        with server.client() as client:
            new = emit(client, "new")
        assert recv_json(ws)["seq"] == new["seq"]


@pytest.mark.parametrize(
    "query, message",
    [
        ("topics=on_nope", "on_nope"),
        ("since=abc", "since"),
        ("since=-4", "since"),
        ("since=99999999999999999999", "since"),
    ],
)
def test_bad_subscription_closes_1008(server: ServerProcess, query: str, message: str) -> None:
    with connect(
        f"{server.ws_url}/api/modder/hooks/ws?{query}", additional_headers=server.headers
    ) as ws:
        error = json.loads(ws.recv(timeout=5))
        assert error["ok"] is False and message in error["error"]
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
        assert ws.close_code == 1008


def test_websocket_security(server: ServerProcess) -> None:
    with pytest.raises(InvalidStatus) as no_token:
        connect(f"{server.ws_url}/api/modder/hooks/ws")
    assert no_token.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as foreign:
        connect(
            f"{server.ws_url}/api/modder/hooks/ws",
            additional_headers=server.headers,
            origin="http://evil.example",
        )
    assert foreign.value.response.status_code == 403
    same_origin = server.url
    with connect(
        f"{server.ws_url}/api/modder/hooks/ws?topics=on_scene_enter",
        additional_headers=server.headers,
        origin=same_origin,
    ) as ws:
        assert recv_json(ws)["ok"] is True


def test_sigterm_commits_and_history_filters(server: ServerProcess) -> None:
    with server.client() as client:
        acks = [emit(client, f"n{i}") for i in range(30)]
        client.post(
            "/api/modder/hooks/test",
            json={
                "event": "on_asset_removed",
                "payload": {
                    "uid": "u",
                    "type": "t",
                    "path": "p",
                    "deleted_files": False,
                    "hook_event": "on_asset_removed",
                    "timestamp": time.time(),
                },
            },
        )
    assert server.stop() == 0
    server.start()
    with server.client() as client:
        latest = client.get("/api/modder/hooks/history", params={"limit": 5}).json()
        assert [i["seq"] for i in latest["items"]] == list(range(27, 32))
        since = client.get("/api/modder/hooks/history", params={"since": 10, "limit": 3}).json()
        assert [i["seq"] for i in since["items"]] == [11, 12, 13] and since["next_since"] == 13
        only = client.get("/api/modder/hooks/history", params={"event": "on_asset_removed"}).json()[
            "items"
        ]
        assert [i["event"] for i in only] == ["on_asset_removed"]
    assert acks[-1]["seq"] == 30


@pytest.mark.parametrize(
    "first",
    [b"\x00\x01binary", "not json", "[1, 2]", '{"topics": 5}', '{"since": [1]}'],
)
def test_bad_first_message_closes_1008_without_a_server_error(
    server: ServerProcess, first: str | bytes
) -> None:
    with connect(f"{server.ws_url}/api/modder/hooks/ws", additional_headers=server.headers) as ws:
        ws.send(first)
        error = json.loads(ws.recv(timeout=5))
        assert error["ok"] is False and error["error"]
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
        assert ws.close_code == 1008
    assert "Traceback" not in server.log_text()


def test_first_message_may_be_a_binary_frame(server: ServerProcess) -> None:
    with connect(f"{server.ws_url}/api/modder/hooks/ws", additional_headers=server.headers) as ws:
        ws.send(json.dumps({"topics": ["on_scene_enter"]}).encode())
        assert recv_json(ws)["subscribed"] == ["on_scene_enter"]
