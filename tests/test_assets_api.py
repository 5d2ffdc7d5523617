"""Asset routes over a real server subprocess: uploads, WebSocket, every 4xx, demo content."""

from __future__ import annotations

import hashlib
import json
import select
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.sync.client import connect

from comfyvn.core.hook_specs import HOOK_SPECS

from .support import ServerProcess

MAX_BYTES = 4096


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("assets-api") / "data"
    data.mkdir()
    proc = ServerProcess(data, env={"COMFYVN_ASSET_MAX_BYTES": str(MAX_BYTES)}).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def client(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.client() as c:
        yield c


def root(srv: ServerProcess) -> Path:
    return srv.data_dir / "assets"


def upload(
    client: httpx.Client,
    data: bytes,
    asset_type: str = "character.portrait",
    meta: Any = None,
    name: str = "pic.png",
) -> httpx.Response:
    form = {"type": asset_type}
    if meta is not None:
        form["meta"] = meta if isinstance(meta, str) else json.dumps(meta)
    return client.post("/api/assets", files={"file": (name, data)}, data=form)


def snapshot(srv: ServerProcess, client: httpx.Client) -> tuple[set[str], int, int]:
    """Files under the assets root, asset count and latest event seq: what a refusal must keep."""
    base = root(srv)
    files = {p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()}
    total = client.get("/api/assets").json()["total"]
    history = client.get("/api/modder/hooks/history", params={"limit": 1}).json()
    return files, total, history["next_since"]


def events_since(client: httpx.Client, seq: int) -> list[dict[str, Any]]:
    items = client.get("/api/modder/hooks/history", params={"since": seq, "limit": 100}).json()
    for item in items["items"]:
        HOOK_SPECS[item["event"]].payload_model.model_validate(item["data"])
    return items["items"]


def recv_json(ws: Any, timeout: float = 10.0) -> dict[str, Any]:
    while True:
        msg = json.loads(ws.recv(timeout=timeout))
        if not msg.get("ping"):
            return msg


def test_websocket_sees_on_asset_saved_for_an_http_upload(srv: ServerProcess) -> None:
    with connect(
        f"{srv.ws_url}/api/modder/hooks/ws?topics=on_asset_saved", additional_headers=srv.headers
    ) as ws:
        assert recv_json(ws)["ok"] is True
        with srv.client() as client:
            response = upload(client, b"ws-bytes", meta={"tags": ["ws"]}, name="hero.png")
        assert response.status_code == 201, response.text
        envelope = recv_json(ws)
    asset = response.json()["asset"]
    assert envelope["event"] == "on_asset_saved"
    HOOK_SPECS["on_asset_saved"].payload_model.model_validate(envelope["data"])
    assert envelope["data"]["uid"] == asset["uid"] and envelope["data"]["path"] == asset["path"]
    assert envelope["data"]["meta"] == {"tags": ["ws"]} and envelope["data"]["bytes"] == 8
    # The response came after all three events were committed: the last one is its seq.
    assert envelope["seq"] == response.json()["seq"] - 1


def test_upload_then_read_patch_download_delete(srv: ServerProcess, client: httpx.Client) -> None:
    start = snapshot(srv, client)[2]
    created = upload(client, b"\x89PNG\r\n\x1a\nfake", meta={"title": "Mira"}, name="mira.png")
    assert created.status_code == 201
    body = created.json()
    asset = body["asset"]
    uid = asset["uid"]
    assert body["created"] is True and body["resaved"] is False
    assert uid == hashlib.sha256(b"\x89PNG\r\n\x1a\nfake").hexdigest()[:32]
    assert asset["path"] == f"character/portrait/mira-{uid[:12]}.png"
    assert asset["media_type"] == "image/png" and asset["url"] == f"/api/assets/{uid}/file"
    sidecar = json.loads((root(srv) / asset["sidecar"]).read_text())
    assert sidecar["uid"] == uid and sidecar["meta"] == {"title": "Mira"}

    events = events_since(client, start)
    assert [e["event"] for e in events] == [
        "on_asset_sidecar_written",
        "on_asset_saved",
        "on_asset_registered",
    ]
    assert events[-1]["seq"] == body["seq"]

    again = upload(client, b"\x89PNG\r\n\x1a\nfake", meta={"tags": ["again"]}, name="copy.png")
    assert again.status_code == 200 and again.json()["resaved"] is True
    assert again.json()["asset"]["meta"] == {"title": "Mira", "tags": ["again"]}

    got = client.get(f"/api/assets/{uid}").json()["asset"]
    assert got["meta"] == {"title": "Mira", "tags": ["again"]}
    file = client.get(f"/api/assets/{uid}/file")
    assert file.content == b"\x89PNG\r\n\x1a\nfake"
    assert file.headers["content-type"] == "image/png"
    assert file.headers["x-content-type-options"] == "nosniff"

    patched = client.patch(f"/api/assets/{uid}", json={"meta": {"title": None, "mood": "calm"}})
    assert patched.status_code == 200
    assert patched.json()["asset"]["meta"] == {"tags": ["again"], "mood": "calm"}
    updated = [
        e for e in events_since(client, body["seq"]) if e["event"] == "on_asset_meta_updated"
    ]
    assert updated[-1]["data"]["changes"] == {"title": None, "mood": "calm"}
    assert updated[-1]["seq"] == patched.json()["seq"]

    listed = client.get("/api/assets", params={"tag": "again"}).json()
    assert [i["uid"] for i in listed["items"]] == [uid] and listed["total"] == 1
    assert client.get("/api/assets", params={"q": "calm", "type": "character"}).json()["total"] == 1

    removed = client.delete(f"/api/assets/{uid}", params={"delete_files": "true"})
    assert removed.status_code == 200 and removed.json()["deleted_files"] is True
    last = events_since(client, patched.json()["seq"])[-1]
    assert last["event"] == "on_asset_removed" and last["seq"] == removed.json()["seq"]
    assert not (root(srv) / asset["path"]).exists()
    assert not (root(srv) / asset["sidecar"]).exists()
    assert client.get(f"/api/assets/{uid}").status_code == 404


def test_register_a_file_already_under_the_root(srv: ServerProcess, client: httpx.Client) -> None:
    target = root(srv) / "imports" / "theme.ogg"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"OggS-music")
    response = client.post(
        "/api/assets", json={"path": "imports/theme.ogg", "type": "audio.bgm", "meta": {"loop": 1}}
    )
    assert response.status_code == 201, response.text
    asset = response.json()["asset"]
    assert (
        asset["path"] == "imports/theme.ogg" and asset["sidecar"] == "imports/theme.ogg.asset.json"
    )
    assert (root(srv) / "imports" / "theme.ogg.asset.json").is_file()
    absolute = client.post("/api/assets", json={"path": str(target), "type": "audio.bgm"})
    assert absolute.status_code == 200 and absolute.json()["asset"]["uid"] == asset["uid"]


def test_eight_threads_upload_over_http(srv: ServerProcess) -> None:
    barrier = threading.Barrier(8)
    results: list[tuple[int, str]] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        with srv.client() as client:
            barrier.wait()
            for i in range(3):
                for data in (b"same over http", f"thread {n} file {i}".encode()):
                    r = upload(client, data, asset_type="load.test")
                    with lock:
                        results.append((r.status_code, r.json()["asset"]["uid"]))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 48
    assert sorted(code for code, _ in results).count(201) == 1 + 24
    with srv.client() as client:
        listed = client.get("/api/assets", params={"type": "load.test", "limit": 100}).json()
    assert listed["total"] == 25 == len({uid for _, uid in results})


# -- every refusal: a clear 4xx, and nothing written --------------------------------------------
def _outside(srv: ServerProcess) -> Path:
    secret = srv.data_dir.parent / "outside.txt"
    secret.write_text("not an asset")
    link = root(srv) / "escape.txt"
    if not link.is_symlink():
        link.symlink_to(secret)
    (root(srv) / "a-dir").mkdir(exist_ok=True)
    return secret


BAD_JSON = [
    ({"path": "../outside.txt", "type": "t"}, 400, "must not contain '..'"),
    ({"path": "x/../../outside.txt", "type": "t"}, 400, "must not contain '..'"),
    ({"path": "OUTSIDE", "type": "t"}, 400, "outside the assets root"),
    ({"path": "escape.txt", "type": "t"}, 400, "resolves outside the assets root"),
    ({"path": "nope.png", "type": "t"}, 400, "no file at"),
    ({"path": "a-dir", "type": "t"}, 400, "not a regular file"),
    ({"path": "x.png", "type": "Not Valid"}, 422, "not a valid bucket"),
    ({"path": "x.png", "type": "a/b"}, 422, "not a valid bucket"),
    ({"path": "x.png", "type": "t", "meta": [1]}, 422, "dict"),
    ({"path": "x.png", "type": "t", "meta": {"tags": "x"}}, 422, "tags"),
    ({"type": "t"}, 422, "path"),
    ({"path": "x.png", "type": "t", "extra": 1}, 422, "extra"),
]


@pytest.mark.parametrize("body, status, message", BAD_JSON)
def test_bad_registration_is_refused(
    srv: ServerProcess, client: httpx.Client, body: dict[str, Any], status: int, message: str
) -> None:
    secret = _outside(srv)
    (root(srv) / "x.png").write_bytes(b"exists")
    if body.get("path") == "OUTSIDE":
        body = {**body, "path": str(secret)}
    before = snapshot(srv, client)
    response = client.post("/api/assets", json=body)
    assert response.status_code == status, response.text
    assert message in json.dumps(response.json()["detail"])
    assert snapshot(srv, client) == before


BAD_UPLOADS = [
    ({"data": b"", "type": "t"}, 400, "empty"),
    ({"data": b"x" * (MAX_BYTES + 1), "type": "t"}, 413, str(MAX_BYTES)),
    ({"data": b"ok", "type": "Bad"}, 422, "not a valid bucket"),
    ({"data": b"ok", "type": "t", "meta": "{nope"}, 422, "not valid JSON"),
    ({"data": b"ok", "type": "t", "meta": "[1, 2]"}, 422, "JSON object"),
    ({"data": b"ok", "type": "t", "meta": '{"tags": [1]}'}, 422, "tags"),
    ({"data": b"ok", "type": "t", "meta": json.dumps({"p": "x" * 70_000})}, 413, "meta"),
]


@pytest.mark.parametrize("case, status, message", BAD_UPLOADS)
def test_bad_upload_is_refused(
    srv: ServerProcess, client: httpx.Client, case: dict[str, Any], status: int, message: str
) -> None:
    before = snapshot(srv, client)
    response = upload(client, case["data"], case["type"], case.get("meta"))
    assert response.status_code == status, response.text
    assert message in json.dumps(response.json()["detail"])
    assert snapshot(srv, client) == before
    assert list((root(srv) / ".staging").iterdir()) == []


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0und") -> bytes:
    out = b""
    for name, filename, value in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += value + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


RAW_BODIES = [
    (_multipart([("type", None, b"t")]), 422, "'file' is required"),
    (_multipart([("file", "a.png", b"ok")]), 422, "type"),
    (_multipart([("file", "a", b"1"), ("file", "b", b"2"), ("type", None, b"t")]), 422, "one"),
    (_multipart([("file", "a", b"1"), ("type", None, b"t"), ("typo", None, b"x")]), 422, "typo"),
    (_multipart([("file", "a", b"1"), ("type", None, b"t"), ("type", None, b"u")]), 422, "once"),
    (_multipart([("file", "a", b"1"), ("type", None, b"t")])[:-10], 400, "closing boundary"),
    (b"this is not multipart at all", 400, "multipart"),
]


@pytest.mark.parametrize("body, status, message", RAW_BODIES)
def test_malformed_multipart_is_refused(
    srv: ServerProcess, client: httpx.Client, body: bytes, status: int, message: str
) -> None:
    before = snapshot(srv, client)
    response = client.post(
        "/api/assets", content=body, headers={"content-type": "multipart/form-data; boundary=b0und"}
    )
    assert response.status_code == status, response.text
    assert message in json.dumps(response.json()["detail"])
    assert snapshot(srv, client) == before
    assert list((root(srv) / ".staging").iterdir()) == []


def test_other_bad_requests(srv: ServerProcess, client: httpx.Client) -> None:
    before = snapshot(srv, client)
    text = client.post("/api/assets", content=b"hi", headers={"content-type": "text/plain"})
    assert text.status_code == 415 and "multipart/form-data" in text.json()["detail"]
    no_boundary = client.post(
        "/api/assets", content=b"x", headers={"content-type": "multipart/form-data"}
    )
    assert no_boundary.status_code == 400 and "boundary" in no_boundary.json()["detail"]
    not_json = client.post(
        "/api/assets", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 422
    empty = client.post("/api/assets", content=b"", headers={"content-type": "application/json"})
    assert empty.status_code == 422 and "empty" in empty.json()["detail"]
    huge = client.post("/api/assets", json={"path": "x" * 300_000, "type": "t"})
    assert huge.status_code == 413
    unknown = "0" * 32
    for method, uid in [
        ("GET", unknown),
        ("GET", f"{unknown}/file"),
        ("DELETE", unknown),
        ("GET", "not-even-hex"),
    ]:
        response = client.request(method, f"/api/assets/{uid}")
        assert response.status_code == 404
        assert f"no asset with uid '{uid.split('/')[0]}'" in response.json()["detail"]
    assert client.patch(f"/api/assets/{unknown}", json={"meta": {"a": 1}}).status_code == 404
    for params in (
        {"limit": 0},
        {"limit": 1001},
        {"offset": -1},
        {"offset": 2**63},  # beyond SQLite's integers: was an OverflowError, a 500
        {"type": "Bad Type"},
    ):
        assert client.get("/api/assets", params=params).status_code == 422
    assert client.delete(
        f"/api/assets/{unknown}", params={"delete_files": "maybe"}
    ).status_code == (422)
    assert snapshot(srv, client) == before


def test_bad_patches(srv: ServerProcess, client: httpx.Client) -> None:
    uid = upload(client, b"patch me").json()["asset"]["uid"]
    before = snapshot(srv, client)
    for body, status in [
        ({"meta": [1]}, 422),
        ({"meta": {"tags": 3}}, 422),
        ({"nope": {}}, 422),
        ({}, 422),
        ({"meta": {"p": "x" * 70_000}}, 413),
    ]:
        response = client.patch(f"/api/assets/{uid}", json=body)
        assert response.status_code == status, (body, response.text)
    empty = client.patch(f"/api/assets/{uid}", content=b"")
    assert empty.status_code == 422
    assert snapshot(srv, client) == before


def test_conflicts_are_409(srv: ServerProcess, client: httpx.Client) -> None:
    upload(client, b"typed once", asset_type="ui.icon")
    before = snapshot(srv, client)
    other = upload(client, b"typed once", asset_type="ui.badge")
    assert other.status_code == 409 and "'ui.icon'" in other.json()["detail"]
    edited = root(srv) / "edited.txt"
    edited.write_bytes(b"version 1")
    first = client.post("/api/assets", json={"path": "edited.txt", "type": "doc"})
    assert first.status_code == 201
    edited.write_bytes(b"version 2")
    before = snapshot(srv, client)
    second = client.post("/api/assets", json={"path": "edited.txt", "type": "doc"})
    assert second.status_code == 409 and "changed" in second.json()["detail"]
    assert snapshot(srv, client) == before


def _raw_upload_head(srv: ServerProcess, extra: str) -> tuple[socket.socket, bytes]:
    parts = urlsplit(srv.url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    head = (
        f"POST /api/assets HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: Bearer {srv.token}\r\n"
        f"Content-Type: multipart/form-data; boundary=XyZ\r\n{extra}\r\n"
    )
    sock.sendall(head.encode())
    part = b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n\r\n'
    return sock, part


def _read_response(sock: socket.socket) -> bytes:
    """Status line, headers and the whole (small) body of one HTTP/1.1 response."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def test_declared_oversize_upload_is_refused_before_reading(srv: ServerProcess) -> None:
    sock, _ = _raw_upload_head(srv, f"Content-Length: {10**12}\r\n")
    with sock:
        response = _read_response(sock)  # answered without waiting for a single body byte
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b"4096" in response


def test_streamed_oversize_upload_is_cut_off_early(srv: ServerProcess) -> None:
    """A chunked upload with no length is refused once the file part passes the limit, long
    before the (here 256 MiB) body would be done: it is never buffered whole."""
    sock, part = _raw_upload_head(srv, "Transfer-Encoding: chunked\r\n")
    block = b"\0" * 65536
    chunk = f"{len(block):x}\r\n".encode() + block + b"\r\n"
    sent, response = 0, b""
    with sock:
        sock.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        while sent < 256 * 1024 * 1024:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break
            sent += len(block)
        response = _read_response(sock)
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b"exceeds the asset size limit of 4096 bytes" in response
    assert sent < 64 * 1024 * 1024
    assert list((root(srv) / ".staging").iterdir()) == []


def test_demo_assets_load_once_and_survive_restart(data_dir: Path) -> None:
    server = ServerProcess(data_dir, extra_args=["--demo"]).start()
    try:
        with server.client() as client:
            demo = client.get("/api/assets", params={"tag": "demo"}).json()
            assert demo["total"] >= 3
            seq = client.get("/api/modder/hooks/history", params={"limit": 1}).json()["next_since"]
            first = demo["items"][0]
            png = client.get(first["url"])
            assert png.status_code == 200 and png.content.startswith(b"\x89PNG\r\n\x1a\n")
        server.restart()
        with server.client() as client:
            again = client.get("/api/assets", params={"tag": "demo"}).json()
            assert [i["uid"] for i in again["items"]] == [i["uid"] for i in demo["items"]]
            latest = client.get("/api/modder/hooks/history", params={"limit": 1}).json()
            assert latest["next_since"] == seq  # restarting adds no demo events
    finally:
        server.stop()


def test_path_held_by_another_asset_and_symlinked_bucket_are_4xx(
    srv: ServerProcess, client: httpx.Client
) -> None:
    first = upload(client, b"content one", asset_type="held.one").json()["asset"]
    (root(srv) / first["path"]).unlink()  # its file went missing
    held = root(srv) / "held" / "b.bin"
    held.write_bytes(b"content two")
    other = client.post("/api/assets", json={"path": "held/b.bin", "type": "held.one"})
    assert other.status_code == 201
    held.write_bytes(b"content one")
    sidecar = (root(srv) / other.json()["asset"]["sidecar"]).read_text()
    before = snapshot(srv, client)
    again = client.post("/api/assets", json={"path": "held/b.bin", "type": "held.one"})
    assert again.status_code == 409, again.text  # was an IntegrityError: a 500
    assert other.json()["asset"]["uid"] in again.json()["detail"]
    assert (root(srv) / other.json()["asset"]["sidecar"]).read_text() == sidecar

    outside = srv.data_dir.parent / "bucket-outside"
    outside.mkdir(exist_ok=True)
    (root(srv) / "linked").symlink_to(outside)
    escaped = upload(client, b"escape attempt", asset_type="linked.bucket")
    assert escaped.status_code == 400 and "outside the assets root" in escaped.json()["detail"]
    assert list(outside.iterdir()) == []
    assert snapshot(srv, client) == before
