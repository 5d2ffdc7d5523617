"""Hostile input over the real server: every JSON the API parses, every class of bad document.

Each class (deep nesting, huge numbers, lone surrogates, NaN/Infinity, invalid UTF-8, oversize)
goes to every route that reads a JSON body, to the asset upload's ``meta`` field, to the
WebSocket's first message and to the SSE cursor. The answer is always a 4xx (WebSocket: a close
code of 1007/1008/1009 after an ``ok: false`` frame), and afterwards the server log holds no
unhandled exception and no 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from .support import ServerProcess, emit_scene, scene_enter_payload, wait_for

DEEP = 30_000
# Each entry: (name, raw JSON document). The documents are wrapped into each route's own shape
# below, so they reach the parser as a field the route expects, not only as the whole body.
HOSTILE_VALUES: list[tuple[str, bytes]] = [
    ("deep array", b"[" * DEEP + b"]" * DEEP),
    ("deep object", b'{"a":' * 2_000 + b"1" + b"}" * 2_000),
    ("5000-digit integer", b"1" * 5_000),
    ("70-digit integer", b"-" + b"9" * 70),
    ("lone surrogate", b'"\\ud800"'),
    ("lone low surrogate in a key", b'{"\\udc00": 1}'),
    ("NaN", b"NaN"),
    ("Infinity", b"-Infinity"),
    ("overflowing float", b"1e999"),
    ("overflowing mantissa", b"1" + b"0" * 400 + b".0"),
]
RAW_BODIES: list[tuple[str, bytes]] = [
    ("invalid UTF-8", b'{"event": "\xff\xfe"}'),
    ("encoded surrogate", b'{"event": "\xed\xa0\x80"}'),
    ("truncated", b'{"event": "on_scene_enter", "payload": {'),
    ("oversize", b'{"pad": "' + b"x" * (4 * 1024 * 1024) + b'"}'),
]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("hostile"), extra_args=["--demo"]).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def api(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.client() as client:
        yield client


@pytest.fixture(scope="module")
def ids(api: httpx.Client) -> dict[str, str]:
    """Real resources, so routes with a path parameter reach their body parser."""
    upload = api.post("/api/assets", files={"file": ("a.png", b"hostile")}, data={"type": "t"})
    assert upload.status_code in (200, 201), upload.text
    provider = api.post("/api/providers", json={"id": "hostile", "kind": "echo"})
    assert provider.status_code == 201, provider.text
    hook = api.post("/api/modder/hooks/webhooks", json={"url": "http://127.0.0.1:9/h"})
    assert hook.status_code == 201, hook.text
    return {
        "uid": upload.json()["asset"]["uid"],
        "provider": "hostile",
        "webhook": hook.json()["webhook"]["id"],
    }


def _routes(ids: dict[str, str]) -> list[tuple[str, str, bytes]]:
    """(method, path, template) for every route that reads a JSON body; ``@`` marks where the
    hostile value goes."""
    return [
        ("POST", "/api/modder/hooks/test", b'{"event": "on_scene_enter", "payload": @}'),
        (
            "POST",
            "/api/modder/hooks/test",
            b'{"event": "on_scene_enter", "payload": {"scene_id": "s", "variables": {"v": @}}}',
        ),
        ("POST", "/api/scenario/validate", b'{"scene": @}'),
        ("POST", "/api/scenario/run/step", b'{"scene": {"id": "s"}, "variables": {"v": @}}'),
        ("POST", "/api/assets", b'{"path": "x.png", "type": "t", "meta": {"m": @}}'),
        ("PATCH", f"/api/assets/{ids['uid']}", b'{"meta": {"m": @}}'),
        ("POST", "/api/providers", b'{"id": "p2", "kind": "echo", "config": {"c": @}}'),
        ("PUT", f"/api/providers/{ids['provider']}", b'{"name": @}'),
        ("POST", "/api/modder/hooks/webhooks", b'{"url": "http://127.0.0.1:9/", "events": @}'),
        ("PATCH", f"/api/modder/hooks/webhooks/{ids['webhook']}", b'{"description": @}'),
        ("POST", f"/api/modder/hooks/webhooks/{ids['webhook']}/rotate-secret", b"@"),
        ("POST", "/api/modder/hooks/plugins/reload", b"@"),
    ]


def _assert_clean_log(srv: ServerProcess) -> None:
    log = srv.log_text()
    for marker in ("Traceback", "Exception in ASGI application", '" 500', '" 502', '" 503'):
        assert marker not in log, f"{marker!r} in the server log:\n{log[-4000:]}"


def test_every_json_route_answers_4xx_to_every_hostile_value(
    srv: ServerProcess, api: httpx.Client, ids: dict[str, str]
) -> None:
    seen = 0
    for method, path, template in _routes(ids):
        bodies = [(name, template.replace(b"@", value)) for name, value in HOSTILE_VALUES]
        bodies += RAW_BODIES
        for name, body in bodies:
            response = api.request(
                method, path, content=body, headers={"Content-Type": "application/json"}
            )
            where = f"{method} {path} with {name}"
            assert 400 <= response.status_code < 500, f"{where}: {response.status_code}"
            detail = response.json()["detail"]
            assert detail, where
            seen += 1
    assert seen == len(_routes(ids)) * (len(HOSTILE_VALUES) + len(RAW_BODIES))
    _assert_clean_log(srv)


def test_refusals_name_the_problem(api: httpx.Client) -> None:
    def detail(body: bytes) -> str:
        response = api.post(
            "/api/modder/hooks/test", content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code in (413, 422), response.text
        return json.dumps(response.json()["detail"])

    assert "nests deeper than 64 levels" in detail(b"[" * DEEP + b"]" * DEEP)
    assert "more than 64 digits" in detail(b'{"a": ' + b"7" * 5000 + b"}")
    assert "lone surrogate" in detail(b'{"a": "\\ud800"}')
    assert "NaN is not allowed" in detail(b'{"a": NaN}')
    assert "finite" in detail(b'{"a": 1e999}')
    assert "not valid UTF-8" in detail(b'{"a": "\xff"}')
    assert "limit is" in detail(b"[" + b"0," * 200_000 + b"0]")


def test_valid_unicode_and_edge_numbers_still_pass(api: httpx.Client) -> None:
    """The bounds refuse the hostile, not the unusual: emoji (a surrogate pair), 64 digits,
    1e308 and 63 levels of nesting are accepted and come back intact."""
    nested: object = 1
    for _ in range(58):  # inside payload.variables.v: 63 levels in all
        nested = [nested]
    payload = scene_enter_payload(
        "emoji", variables={"face": "\U0001f600 caf\u00e9", "n": 10**63, "f": 1e308, "v": nested}
    )
    # json.dumps escapes the emoji as the pair \ud83d\ude00, which is valid JSON Unicode.
    body = json.dumps({"event": "on_scene_enter", "payload": payload})
    assert "\\ud83d\\ude00" in body
    response = api.post(
        "/api/modder/hooks/test", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text
    seq = response.json()["seq"]
    item = api.get("/api/modder/hooks/history", params={"since": seq - 1, "limit": 1}).json()
    assert item["items"][0]["data"]["variables"] == payload["variables"]


def test_asset_meta_field_refuses_each_hostile_value(srv: ServerProcess, api: httpx.Client) -> None:
    for name, value in HOSTILE_VALUES:
        for meta in (value, b'{"m": ' + value + b"}"):
            response = api.post(
                "/api/assets",
                files={"file": ("m.png", f"meta {name}".encode())},
                data={"type": "t", "meta": meta.decode("utf-8")},
            )
            assert response.status_code in (413, 422), f"meta {name}: {response.text[:200]}"
    # The files of refused uploads were not kept: only the fixture's asset (if any) is listed.
    listed = api.get("/api/assets", params={"q": "meta "}).json()
    assert listed["total"] == 0
    _assert_clean_log(srv)


def test_scenario_set_with_thousands_of_dotted_parts_is_refused_by_validate_and_step(
    api: httpx.Client,
) -> None:
    key = ".".join(["k"] * 5000)
    scene = {
        "id": "deepkey",
        "start": "a",
        "nodes": [
            {"id": "a", "choices": [{"id": "go", "label": "Go", "target": "b"}]},
            {"id": "b", "actions": [{"type": "set", "key": key, "value": 1}], "end": True},
        ],
    }
    for bad_key, problem in ((key, "9999 characters long"), (".".join(["k"] * 20), "20 parts")):
        scene["nodes"][1]["actions"][0]["key"] = bad_key
        report = api.post("/api/scenario/validate", json={"scene": scene}).json()
        assert report["valid"] is False
        assert any(problem in e["message"] for e in report["errors"]), report
        step = api.post("/api/scenario/run/step", json={"scene": scene})
        assert step.status_code == 422 and problem in step.text, step.text

    # Within the part limit, a set whose value would nest the variables too deeply for the state
    # to be sent back is refused by both as well.
    deep: object = 1
    for _ in range(58):  # as deep as the request body allows at this place
        deep = {"d": deep}
    scene["nodes"][1]["actions"] = [{"type": "set", "key": "a.b.c", "value": deep}]
    report = api.post("/api/scenario/validate", json={"scene": scene}).json()
    assert report["valid"] is False and "levels deep" in json.dumps(report["errors"])
    assert api.post("/api/scenario/run/step", json={"scene": scene}).status_code == 422


def test_every_state_the_runner_returns_can_be_sent_back(api: httpx.Client) -> None:
    """The deepest set validation allows: the state comes back and the next step accepts it."""
    deep: object = 1
    for _ in range(58):
        deep = {"d": deep}
    scene = {
        "id": "deepset",
        "start": "a",
        "nodes": [
            {"id": "a", "choices": [{"id": "go", "label": "Go", "target": "b"}]},
            {
                "id": "b",
                "actions": [{"type": "set", "key": "x.y", "value": deep}],
                "choices": [{"id": "on", "label": "On", "target": "c"}],
            },
            {"id": "c", "end": True},
        ],
    }
    assert api.post("/api/scenario/validate", json={"scene": scene}).json()["valid"] is True
    state = api.post("/api/scenario/run/step", json={"scene": scene}).json()["state"]
    state = api.post(
        "/api/scenario/run/step", json={"scene": scene, "state": state, "choice_id": "go"}
    )
    assert state.status_code == 200, state.text
    last = api.post(
        "/api/scenario/run/step",
        json={"scene": scene, "state": state.json()["state"], "choice_id": "on"},
    )
    assert last.status_code == 200 and last.json()["finished"] is True


def test_an_asset_path_too_long_for_the_os_is_a_client_error(
    srv: ServerProcess, api: httpx.Client
) -> None:
    for path in ("a" * 300 + ".png", "dir/" + "b" * 256, "/".join(["c" * 200] * 30)):
        response = api.post("/api/assets", json={"path": path, "type": "t"})
        assert response.status_code in (400, 422), response.text
        assert "bytes" in response.json()["detail"]
    log = srv.log_text()
    assert "ERROR" not in log and "File name too long" not in log, log[-3000:]


async def _first_message_outcome(url: str, message: str | bytes) -> tuple[dict, int | None]:
    async with websockets.connect(url, max_size=None) as ws:
        with contextlib.suppress(websockets.ConnectionClosed):  # a bad query closes at once
            await ws.send(message)
        first = json.loads(await asyncio.wait_for(ws.recv(), 10))
        try:
            await asyncio.wait_for(ws.recv(), 10)
        except websockets.ConnectionClosed as closed:
            return first, closed.rcvd.code if closed.rcvd else None
        raise AssertionError("the server kept a bad subscription open")


def test_websocket_first_message_hostile_documents_get_a_close_code(srv: ServerProcess) -> None:
    url = f"{srv.ws_url}/api/modder/hooks/ws?token={srv.token}"
    cases: list[tuple[str, str | bytes, int]] = [
        ("since 1e999", '{"since": 1e999}', 1008),
        ("since NaN", '{"since": NaN}', 1008),
        ("since 5000 digits", '{"since": ' + "9" * 5000 + "}", 1008),
        ("since float", '{"since": 1.5}', 1008),
        ("since bool", '{"since": true}', 1008),
        ("100,000 deep", "[" * 100_000 + "]" * 100_000, 1009),
        ("deep but small", '{"topics": ' + "[" * 20 + "]" * 20 + "}", 1008),
        ("lone surrogate", '{"topics": ["\\ud800"]}', 1007),
        ("binary invalid UTF-8", b"\xff\xfe{}", 1007),
        ("not JSON", "hello", 1008),
        ("huge", '{"topics": "' + "x" * 100_000 + '"}', 1009),
    ]
    for name, message, code in cases:
        first, closed = asyncio.run(_first_message_outcome(url, message))
        assert first["ok"] is False and first["error"], name
        assert closed == code, f"{name}: close code {closed}, expected {code}"
    for query in ("since=1e999", "since=-1", "since=" + "9" * 5000, "since=%F0%9F%98%80"):
        first, closed = asyncio.run(_first_message_outcome(f"{url}&{query}", "{}"))
        assert first["ok"] is False and closed == 1008, query
    _assert_clean_log(srv)


def test_sse_cursor_hostile_values_are_400(srv: ServerProcess, api: httpx.Client) -> None:
    for value in ("1e999", "-1", "9" * 5000, "1.5", "NaN", "\u00b2"):
        response = api.get(
            "/api/modder/hooks/subscribe",
            headers={"Last-Event-ID": value.encode()},
        )
        assert response.status_code == 400, (value, response.text)
    for value in ("1e999", "9" * 5000):
        response = api.get("/api/modder/hooks/subscribe", params={"since": value})
        assert response.status_code == 422, (value, response.text)
    _assert_clean_log(srv)


def test_query_tokens_are_accepted_on_the_stream_routes_only(
    srv: ServerProcess, api: httpx.Client
) -> None:
    assert api.post("/api/providers", json={"id": "ws", "kind": "echo"}).status_code == 201
    bare = httpx.Client(base_url=srv.url, timeout=10)
    for method, path in (
        ("DELETE", "/api/providers/ws"),
        ("GET", "/api/providers/ws"),
        ("GET", "/api/modder/hooks/history/subscribe"),
        ("GET", "/api/modder/hooks/ws/"),
        ("GET", "/api/providers"),
    ):
        response = bare.request(method, path, params={"token": srv.token})
        assert response.status_code == 401, (method, path, response.text)
    assert "ws" in [p["id"] for p in api.get("/api/providers").json()["providers"]]
    with bare.stream("GET", "/api/modder/hooks/subscribe", params={"token": srv.token}) as stream:
        assert stream.status_code == 200
    bare.close()


def test_data_dir_is_private(srv: ServerProcess, api: httpx.Client, ids: dict[str, str]) -> None:
    # Write something of every kind first: provider status, a sidecar, the event log.
    assert api.get("/api/providers/health").status_code == 200
    mode = srv.data_dir.stat().st_mode & 0o777
    assert mode == 0o700, oct(mode)
    loose = [
        f"{path.relative_to(srv.data_dir)} {oct(path.stat().st_mode & 0o777)}"
        for path in Path(srv.data_dir).rglob("*")
        if not path.is_symlink() and path.stat().st_mode & 0o077
    ]
    assert loose == []


def test_a_loose_data_dir_from_before_is_made_private(tmp_path: Path) -> None:
    data = tmp_path / "old"
    (data / "assets" / "t").mkdir(parents=True)
    (data / "providers.json").write_text('{"version": 1, "providers": []}')
    (data / "assets" / "t" / "x.png").write_bytes(b"x")
    for path in (data, data / "assets", data / "assets" / "t"):
        path.chmod(0o755)
    for path in (data / "providers.json", data / "assets" / "t" / "x.png"):
        path.chmod(0o644)
    server = ServerProcess(data).start()
    try:
        assert data.stat().st_mode & 0o777 == 0o700
        assert (data / "providers.json").stat().st_mode & 0o777 == 0o600
        assert (data / "assets" / "t" / "x.png").stat().st_mode & 0o777 == 0o600
        assert (data / "assets" / "t").stat().st_mode & 0o777 == 0o700
    finally:
        server.stop()


def test_url_passwords_never_reach_the_log(tmp_path: Path) -> None:
    """A webhook URL with user-info is delivered to (the receiver sees Basic auth), and the
    password appears in no log line, whichever logger writes it (DEBUG level: httpx/httpcore
    included), nor in any API answer."""
    import http.server
    import threading

    seen: list[str] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            seen.append(self.headers.get("authorization") or "")
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    password = "Sup3rS3cretPassw0rd"
    server = ServerProcess(tmp_path / "data", extra_args=["--log-level", "DEBUG"]).start()
    try:
        with server.client() as api:
            url = f"http://hookuser:{password}@127.0.0.1:{receiver.server_address[1]}/in?x=1"
            created = api.post("/api/modder/hooks/webhooks", json={"url": url})
            assert created.status_code == 201, created.text
            hook = created.json()["webhook"]["id"]
            emit_scene(server, "hall")
            wait_for(lambda: len(seen) >= 1)
            listed = api.get("/api/modder/hooks/webhooks").text
            deliveries = api.get(f"/api/modder/hooks/webhooks/{hook}/deliveries").text
        assert seen[0].startswith("Basic ")  # the credentials were used...
        for text in (server.log_text(), listed, deliveries):
            assert password not in text  # ...and never shown
        assert "hookuser:****@" in listed
    finally:
        server.stop()
        receiver.shutdown()
