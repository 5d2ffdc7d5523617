"""Server-Sent Events over the real server: live events and resume with Last-Event-ID."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx

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
