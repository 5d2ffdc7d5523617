"""Server-Sent Events over the real server: live events and resume with Last-Event-ID."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from comfyvn.core.settings import Settings
from comfyvn.server import create_app

from .support import ServerProcess, emit_scene


def sse_events(lines: Iterator[str]) -> Iterator[dict]:
    """Parse the text/event-stream framing into {id, event, data} dicts."""
    event: dict = {}
    for line in lines:
        if line == "":
            if event:
                yield event
            event = {}
        elif line.startswith(":"):
            continue
        else:
            key, _, value = line.partition(":")
            event[key] = value.removeprefix(" ")


def test_sse_receives_a_test_event(server: ServerProcess) -> None:
    url = f"{server.url}/api/modder/hooks/subscribe"
    with httpx.stream(
        "GET", url, params={"topics": "on_scene_enter", "token": server.token}, timeout=15
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.iter_lines())
        hello = next(events)
        assert hello["event"] == "hello" and json.loads(hello["data"])["ok"] is True
        threading.Thread(target=emit_scene, args=(server, "cave")).start()
        message = next(events)
    envelope = json.loads(message["data"])
    assert message["id"] == str(envelope["seq"])
    assert envelope["event"] == "on_scene_enter" and envelope["data"]["node"] == "cave"


def test_sse_resumes_with_last_event_id(server: ServerProcess) -> None:
    acks = [emit_scene(server, f"n{i}") for i in range(5)]
    headers = {**server.headers, "Last-Event-ID": str(acks[1]["seq"])}
    url = f"{server.url}/api/modder/hooks/subscribe"
    with httpx.stream("GET", url, headers=headers, timeout=15) as response:
        events = sse_events(response.iter_lines())
        assert next(events)["event"] == "hello"
        got = [json.loads(next(events)["data"])["id"] for _ in range(3)]
    assert got == [a["id"] for a in acks[2:]]


def test_sse_errors(server: ServerProcess) -> None:
    url = f"{server.url}/api/modder/hooks/subscribe"
    assert httpx.get(url, params={"topics": "on_scene_enter"}).status_code == 401
    unknown = httpx.get(url, params={"topics": "on_nope"}, headers=server.headers)
    assert unknown.status_code == 400 and "on_nope" in unknown.json()["detail"]
    bad_id = httpx.get(url, headers={**server.headers, "Last-Event-ID": "abc"})
    assert bad_id.status_code == 400 and "Last-Event-ID" in bad_id.json()["detail"]
    assert httpx.get(url, params={"since": -1}, headers=server.headers).status_code == 422


def test_a_stream_that_never_starts_leaves_no_subscription(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client leaves before the response starts (the first send fails): the subscription
    must not outlive the request."""
    monkeypatch.setenv("COMFYVN_DATA_DIR", str(tmp_path / "data"))  # the lifespan exports it
    settings = Settings(data_dir=tmp_path / "data", port=0, token="t" * 32)
    app = create_app(settings)

    async def scenario() -> int:
        async with app.router.lifespan_context(app):
            scope = {
                "type": "http",
                "asgi": {"version": "3.0", "spec_version": "2.4"},
                "http_version": "1.1",
                "method": "GET",
                "scheme": "http",
                "path": "/api/modder/hooks/subscribe",
                "raw_path": b"/api/modder/hooks/subscribe",
                "query_string": b"",
                "root_path": "",
                "headers": [(b"host", b"127.0.0.1"), (b"authorization", b"Bearer " + b"t" * 32)],
                "client": ("127.0.0.1", 1),
                "server": ("127.0.0.1", 8001),
                "state": {},
            }

            async def receive() -> dict:
                await asyncio.sleep(30)
                return {"type": "http.disconnect"}

            async def send(message: dict) -> None:
                raise OSError("the client went away")

            with contextlib.suppress(Exception):
                await app(scope, receive, send)
            gc.collect()
            await asyncio.sleep(0.1)
            return app.state.services.bus.subscriber_count()

    assert asyncio.run(scenario()) == 0


def test_a_standard_sse_client_dispatches_on_the_hook_name(server: ServerProcess) -> None:
    """httpx-sse parses the stream as a browser's EventSource would: the event name is the
    hook (so ``addEventListener("on_scene_enter", ...)`` fires), ``id`` is the seq."""
    from httpx_sse import connect_sse

    emit_scene(server, "hall")
    seen: dict[str, list[dict]] = {}
    with (
        httpx.Client(timeout=15) as client,
        connect_sse(
            client,
            "GET",
            f"{server.url}/api/modder/hooks/subscribe",
            params={"since": 0, "token": server.token},
        ) as source,
    ):
        for sse in source.iter_sse():
            seen.setdefault(sse.event, []).append({"id": sse.id, "data": sse.json()})
            if "on_scene_enter" in seen:
                break
    assert seen["hello"][0]["data"]["ok"] is True
    (entered,) = seen["on_scene_enter"]
    assert (
        entered["data"]["event"] == "on_scene_enter" and entered["data"]["data"]["node"] == "hall"
    )
    assert entered["id"] == str(entered["data"]["seq"])
