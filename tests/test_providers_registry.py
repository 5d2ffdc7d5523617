"""The provider registry over a real server: CRUD, every bad input as a 4xx that names the
problem (and leaves the files untouched), masking rules, the 0600 secrets file, persistence,
demo content, a damaged registry file, and ``comfyvn providers check``."""

from __future__ import annotations

import json
import os
import pty
import re
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .support import ROOT, ServerProcess
from .test_providers_fakes import closed_port_url

LONG_SECRET = "sk-registry-test-0123456789wxyz"  # 30 chars: hint ****wxyz
SHORT_SECRET = "Zq8Xw2Lm5"  # 9 chars: no hint


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("providers-registry")).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def api(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.client() as client:
        yield client


def files(data_dir: Path) -> tuple[bytes | None, bytes | None]:
    def read(name: str) -> bytes | None:
        path = data_dir / name
        return path.read_bytes() if path.exists() else None

    return read("providers.json"), read("provider_secrets.json")


# -- CRUD ----------------------------------------------------------------------------------------
def test_crud_round_trip(api: httpx.Client, srv: ServerProcess) -> None:
    body = {
        "id": "my-runpod",
        "name": "My RunPod",
        "kind": "runpod",
        "base_url": "https://api.runpod.io/graphql",
        "config": {"region": "eu"},
        "secrets": {"api_key": LONG_SECRET},
        "thresholds": {"low_balance": 10},
    }
    created = api.post("/api/providers", json=body)
    assert created.status_code == 201, created.text
    provider = created.json()["provider"]
    assert provider["id"] == "my-runpod" and provider["name"] == "My RunPod"
    assert provider["secrets"] == {"api_key": {"set": True, "source": "value", "hint": "****wxyz"}}
    assert provider["thresholds"]["low_balance"] == 10
    assert provider["thresholds"]["latency_amber_ms"] == 1000
    assert provider["threshold_overrides"] == {"low_balance": 10.0}
    assert provider["supports_quota"] is True

    listed = api.get("/api/providers").json()
    assert "my-runpod" in [p["id"] for p in listed["providers"]]
    assert {k["kind"] for k in listed["kinds"]} == {"comfyui", "runpod", "openai", "http", "echo"}
    assert listed["default_thresholds"]["low_balance"] == 5.0
    assert api.get("/api/providers/my-runpod").json()["provider"] == provider

    updated = api.put("/api/providers/my-runpod", json={"name": "Renamed", "enabled": False})
    assert updated.status_code == 200, updated.text
    after = updated.json()["provider"]
    assert (after["name"], after["enabled"]) == ("Renamed", False)
    assert after["secrets"] == provider["secrets"], "omitted secrets are kept"
    assert after["config"] == {"region": "eu"}

    assert api.delete("/api/providers/my-runpod").json() == {"ok": True, "deleted": "my-runpod"}
    assert api.get("/api/providers/my-runpod").status_code == 404
    stored = json.loads((srv.data_dir / "provider_secrets.json").read_text())
    assert "my-runpod" not in stored["secrets"]


def test_id_is_derived_from_name_when_absent(api: httpx.Client) -> None:
    first = api.post("/api/providers", json={"name": "Studio GPU #1", "kind": "echo"})
    second = api.post("/api/providers", json={"name": "Studio GPU #1", "kind": "echo"})
    assert first.json()["provider"]["id"] == "studio-gpu-1"
    assert second.json()["provider"]["id"] == "studio-gpu-1-2"


def test_kind_defaults(api: httpx.Client) -> None:
    body = api.post("/api/providers", json={"id": "defaults-oa", "kind": "openai"}).json()
    assert body["provider"]["base_url"] == "https://api.openai.com/v1"
    echo = api.post("/api/providers", json={"id": "defaults-echo", "kind": "echo"}).json()
    assert echo["provider"]["base_url"] is None


# -- bad input -----------------------------------------------------------------------------------
BAD_POSTS: list[tuple[str, Any, int, str]] = [
    ("duplicate id", {"id": "dup", "kind": "echo"}, 409, "already exists"),
    ("bad slug", {"id": "Bad Slug!", "kind": "echo"}, 422, "id must be a slug"),
    ("unknown kind", {"id": "k1", "kind": "azure"}, 422, "'comfyui', 'runpod'"),
    ("missing kind", {"id": "k2"}, 422, "Field required"),
    ("non-http url", {"id": "u1", "kind": "http", "base_url": "ftp://x"}, 422, "http://"),
    ("no host", {"id": "u2", "kind": "http", "base_url": "http://"}, 422, "with a host"),
    ("http needs url", {"id": "u3", "kind": "http"}, 422, "base_url is required"),
    (
        "userinfo",
        {"id": "u4", "kind": "http", "base_url": "http://me:pw@example.com"},
        422,
        "must not carry credentials",
    ),
    (
        "query",
        {"id": "u5", "kind": "runpod", "base_url": "https://api.runpod.io/graphql?api_key=x"},
        422,
        "must not have a query",
    ),
    ("bad port", {"id": "u6", "kind": "http", "base_url": "http://h:99999"}, 422, "port"),
    (
        "credential in config",
        {"id": "c1", "kind": "echo", "config": {"api_key": "x"}},
        422,
        "look like credentials",
    ),
    (
        "bad accepted_status",
        {"id": "c2", "kind": "http", "base_url": "http://h", "config": {"accepted_status": [99]}},
        422,
        "outside 100..599",
    ),
    (
        "bad health_path",
        {"id": "c3", "kind": "http", "base_url": "http://h", "config": {"health_path": "x"}},
        422,
        "must start with '/'",
    ),
    ("empty secret", {"id": "s1", "kind": "echo", "secrets": {"api_key": "  "}}, 422, "empty"),
    (
        "bad env ref",
        {"id": "s2", "kind": "echo", "secrets": {"api_key": "env:1BAD"}},
        422,
        "env:VARIABLE_NAME",
    ),
    (
        "control chars",
        {"id": "s3", "kind": "echo", "secrets": {"api_key": "abc\ndef"}},
        422,
        "control characters",
    ),
    ("bad secret name", {"id": "s4", "kind": "echo", "secrets": {"Api-Key": "x"}}, 422, "name"),
    (
        "masked on create",
        {"id": "s5", "kind": "echo", "secrets": {"api_key": {"set": True, "hint": "****abcd"}}},
        422,
        "masked value",
    ),
    (
        "ratio > 1",
        {"id": "t1", "kind": "echo", "thresholds": {"vram_free_amber_ratio": 2}},
        422,
        "1",
    ),
    ("unknown threshold", {"id": "t2", "kind": "echo", "thresholds": {"nope": 1}}, 422, "Extra"),
    ("unknown field", {"id": "f1", "kind": "echo", "colour": "red"}, 422, "Extra"),
    ("no id or name", {"kind": "echo"}, 422, "give an 'id'"),
    ("not an object", [1, 2], 422, "valid dictionary"),
]


@pytest.mark.parametrize(
    ("label", "body", "code", "message"), BAD_POSTS, ids=[b[0] for b in BAD_POSTS]
)
def test_bad_posts_name_the_problem(
    api: httpx.Client, srv: ServerProcess, label: str, body: Any, code: int, message: str
) -> None:
    if label == "duplicate id":
        assert api.post("/api/providers", json=body).status_code == 201
    before = files(srv.data_dir)
    response = api.post("/api/providers", json=body)
    assert response.status_code == code, response.text
    assert message in json.dumps(response.json()["detail"]), response.text
    assert files(srv.data_dir) == before, "a refused request writes nothing"


def test_bad_json_and_empty_body(api: httpx.Client) -> None:
    headers = {"Content-Type": "application/json"}
    response = api.post("/api/providers", content=b"{not json", headers=headers)
    assert response.status_code == 422
    assert "JSON" in json.dumps(response.json()["detail"])
    assert api.post("/api/providers", content=b"", headers=headers).status_code == 422


def test_bad_puts(api: httpx.Client, srv: ServerProcess) -> None:
    api.post("/api/providers", json={"id": "put-target", "kind": "echo"})
    before = files(srv.data_dir)
    mismatch = api.put("/api/providers/put-target", json={"id": "other"})
    assert mismatch.status_code == 422 and "does not match" in mismatch.text
    to_http = api.put("/api/providers/put-target", json={"kind": "http"})
    assert to_http.status_code == 422 and "base_url is required" in to_http.text
    bad_url = api.put("/api/providers/put-target", json={"base_url": "file:///etc/passwd"})
    assert bad_url.status_code == 422
    assert api.put("/api/providers/nope", json={"name": "x"}).status_code == 404
    assert api.delete("/api/providers/nope").status_code == 404
    assert files(srv.data_dir) == before
    ok = api.put("/api/providers/put-target", json={"kind": "http", "base_url": "http://h:1/"})
    assert ok.status_code == 200 and ok.json()["provider"]["base_url"] == "http://h:1"


def test_oversized_body_is_413(api: httpx.Client, srv: ServerProcess) -> None:
    before = files(srv.data_dir)
    big = {"id": "big", "kind": "echo", "config": {"notes": "x" * 70_000}}
    response = api.post("/api/providers", json=big)
    assert response.status_code == 413, response.text
    assert response.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while streaming
        yield b'{"id": "big", "kind": "echo", "config": {"notes": "'
        for _ in range(70):
            yield b"x" * 1024
        yield b'"}}'

    streamed = api.post(
        "/api/providers", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert streamed.status_code == 413, streamed.text
    assert files(srv.data_dir) == before


def test_unwritable_registry_is_503_and_changes_nothing(
    api: httpx.Client, srv: ServerProcess
) -> None:
    assert srv.proc is not None
    # The server writes through ".providers.json.<pid>.tmp"; a directory there makes it fail.
    blocker = srv.data_dir / f".providers.json.{srv.proc.pid}.tmp"
    blocker.mkdir()
    before = files(srv.data_dir)
    try:
        body = {"id": "blocked", "kind": "echo", "secrets": {"api_key": LONG_SECRET}}
        response = api.post("/api/providers", json=body)
        assert response.status_code == 503, response.text
        assert "could not save the provider registry" in response.json()["detail"]
        assert LONG_SECRET not in response.text
        assert api.get("/api/providers/blocked").status_code == 404
        assert files(srv.data_dir)[0] == before[0]
        secrets = json.loads(files(srv.data_dir)[1] or b'{"secrets": {}}')["secrets"]
        assert "blocked" not in secrets, "secrets written first are rolled back"
    finally:
        blocker.rmdir()
    assert api.post("/api/providers", json=body).status_code == 201


# -- masking and the secrets file ---------------------------------------------------------------
def test_masking_rules(api: httpx.Client, srv: ServerProcess) -> None:
    body = {
        "id": "masking",
        "kind": "echo",
        "secrets": {
            "api_key": LONG_SECRET,
            "short_one": SHORT_SECRET,
            "twelve": "abcdefgh1234",
            "from_env": "env:COMFYVN_SECRET_TEST_UNSET_VARIABLE",
        },
    }
    response = api.post("/api/providers", json=body)
    secrets = response.json()["provider"]["secrets"]
    assert secrets == {
        "api_key": {"set": True, "source": "value", "hint": "****wxyz"},
        "from_env": {
            "set": True,
            "source": "env",
            "env": "COMFYVN_SECRET_TEST_UNSET_VARIABLE",
            "resolved": False,
        },
        "short_one": {"set": True, "source": "value", "hint": None},
        "twelve": {"set": True, "source": "value", "hint": "****1234"},
    }
    assert LONG_SECRET not in response.text and SHORT_SECRET not in response.text
    assert str(len(LONG_SECRET)) not in json.dumps(secrets)

    path = srv.data_dir / "provider_secrets.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["secrets"]["masking"]["api_key"] == LONG_SECRET
    assert LONG_SECRET not in (srv.data_dir / "providers.json").read_text()


def test_put_merges_secrets(api: httpx.Client, srv: ServerProcess) -> None:
    secrets = {"api_key": LONG_SECRET, "other": "other-secret-value-1"}
    api.post("/api/providers", json={"id": "merge", "kind": "echo", "secrets": secrets})
    masked = api.get("/api/providers/merge").json()["provider"]
    # The GUI sends the masked form back unchanged: the stored value is kept.
    resent = api.put("/api/providers/merge", json={"secrets": masked["secrets"]})
    assert resent.json()["provider"]["secrets"] == masked["secrets"]
    changed = api.put(
        "/api/providers/merge",
        json={"secrets": {"api_key": "new-key-abcdefgh-9999", "other": None}},
    ).json()["provider"]
    assert changed["secrets"] == {"api_key": {"set": True, "source": "value", "hint": "****9999"}}
    stored = json.loads((srv.data_dir / "provider_secrets.json").read_text())["secrets"]["merge"]
    assert stored == {"api_key": "new-key-abcdefgh-9999"}


def test_registry_and_secrets_survive_restart(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path).start()
    try:
        with server.client() as client:
            body = {"id": "keep", "kind": "openai", "secrets": {"api_key": LONG_SECRET}}
            assert client.post("/api/providers", json=body).status_code == 201
        server.restart()
        with server.client() as client:
            provider = client.get("/api/providers/keep").json()["provider"]
        assert provider["secrets"]["api_key"]["hint"] == "****wxyz"
        mode = stat.S_IMODE((tmp_path / "provider_secrets.json").stat().st_mode)
        assert mode == 0o600
    finally:
        server.stop()


def test_loose_secrets_file_is_tightened(tmp_path: Path) -> None:
    (tmp_path / "providers.json").write_text(
        json.dumps({"version": 1, "providers": [{"id": "a", "name": "a", "kind": "echo"}]})
    )
    secrets = tmp_path / "provider_secrets.json"
    secrets.write_text(json.dumps({"version": 1, "secrets": {"a": {"api_key": "x" * 20}}}))
    os.chmod(secrets, 0o644)
    server = ServerProcess(tmp_path).start()
    try:
        assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
        assert "set it to 0600" in server.log_text()
    finally:
        server.stop()


def test_damaged_registry_is_set_aside_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "providers.json").write_text("{ this is not json")
    server = ServerProcess(tmp_path).start()
    try:
        with server.client() as client:
            assert client.get("/api/providers").json()["providers"] == []
        backups = list(tmp_path.glob("providers.json.bad-*"))
        assert len(backups) == 1 and backups[0].read_text() == "{ this is not json"
        assert "not valid JSON" in server.log_text()
    finally:
        server.stop()


def test_invalid_entries_are_skipped_and_kept_aside(tmp_path: Path) -> None:
    entries = [{"id": "good", "name": "g", "kind": "echo"}, {"id": "BAD", "kind": "nope"}]
    (tmp_path / "providers.json").write_text(json.dumps({"version": 1, "providers": entries}))
    server = ServerProcess(tmp_path).start()
    try:
        with server.client() as client:
            ids = [p["id"] for p in client.get("/api/providers").json()["providers"]]
        assert ids == ["good"]
        assert "skipped 1 invalid provider" in server.log_text()
        assert len(list(tmp_path.glob("providers.json.bad-*"))) == 1
    finally:
        server.stop()


# -- demo ---------------------------------------------------------------------------------------
def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_demo_providers_and_no_overwrite(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, extra_args=["--demo"]).start()
    try:
        with server.client() as client:
            results = {
                r["provider_id"]: r for r in client.get("/api/providers/health").json()["results"]
            }
            assert set(results) == {"local-comfyui", "echo"}
            assert results["echo"]["status"] == "green"
            if not _port_open(8188):  # red unless a ComfyUI really runs here: the honest answer
                assert results["local-comfyui"]["status"] == "red"
                assert results["local-comfyui"]["reason_code"] == "unreachable"
            assert client.delete("/api/providers/echo").status_code == 200
            mine = {"id": "mine", "kind": "echo"}
            assert client.post("/api/providers", json=mine).status_code == 201
        server.restart()
        with server.client() as client:
            ids = [p["id"] for p in client.get("/api/providers").json()["providers"]]
        assert ids == ["local-comfyui", "mine"], "the demo never overwrites a user's registry"
    finally:
        server.stop()


# -- CLI ----------------------------------------------------------------------------------------
def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COMFYVN_")}
    return subprocess.run(
        [sys.executable, "-m", "comfyvn", "providers", "check", *args],
        cwd=ROOT,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_check_table(api: httpx.Client, srv: ServerProcess) -> None:
    api.post("/api/providers", json={"id": "cli-echo", "kind": "echo"})
    api.post(
        "/api/providers", json={"id": "cli-down", "kind": "comfyui", "base_url": closed_port_url()}
    )
    done = _cli(
        "--server", srv.url, "--data-dir", str(srv.data_dir), "--id", "cli-echo", "--id", "cli-down"
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["ID", "KIND", "STATUS", "LATENCY", "QUOTA", "REASON"]
    assert re.match(r"cli-echo\s+echo\s+green\s+\d+ ms\s+-\s+built-in echo", lines[1])
    assert re.match(r"cli-down\s+comfyui\s+red\s+\d+ ms\s+-\s+cannot connect", lines[2])
    assert "\033[" not in done.stdout, "no colour when stdout is not a terminal"
    assert "2 provider(s): 1 green, 1 red" in done.stdout

    as_json = _cli("--server", srv.url, "--token", srv.token, "--id", "cli-echo", "--json")
    assert json.loads(as_json.stdout)["results"][0]["status"] == "green"


def test_cli_colours_on_a_terminal(api: httpx.Client, srv: ServerProcess) -> None:
    api.post("/api/providers", json={"id": "cli-tty", "kind": "echo"})
    leader, follower = pty.openpty()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COMFYVN_")}
    cmd = [sys.executable, "-m", "comfyvn", "providers", "check", "--server", srv.url]
    proc = subprocess.Popen(
        [*cmd, "--token", srv.token, "--id", "cli-tty"],
        cwd=ROOT,
        env=clean,
        stdout=follower,
        stderr=subprocess.PIPE,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(30)
    os.close(leader)
    out = b"".join(chunks).decode()
    assert proc.returncode == 0
    assert "\033[32mgreen" in out


def test_cli_errors(srv: ServerProcess) -> None:
    down = _cli("--server", closed_port_url(), "--token", "x")
    assert down.returncode == 1
    assert "cannot reach the ComfyVN server" in down.stderr
    bad_token = _cli("--server", srv.url, "--token", "wrong-token")
    assert bad_token.returncode == 1 and "refused the API token" in bad_token.stderr
    unknown = _cli("--server", srv.url, "--token", srv.token, "--id", "ghost")
    assert unknown.returncode == 1 and "'ghost'" in unknown.stderr
