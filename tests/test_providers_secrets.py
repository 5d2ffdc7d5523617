"""Registered secrets never leave the server: not in any response body of any provider route
(including every error), not in a log line, not in the non-secret files, not in the CLI's
output, and never in a URL sent to a provider, even when a provider echoes the key back."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .support import ROOT, ServerProcess
from .test_providers_fakes import GIB, FakeProviders, Reply, Seen, closed_port_url

RUNPOD_KEY = "rpa_LEAK_" + secrets.token_hex(16)
OPENAI_KEY = "sk-leak-" + secrets.token_hex(16)
SHORT_KEY = "q" + secrets.token_hex(4)  # 9 characters: no hint at all
HTTP_KEY = "http-leak-" + secrets.token_hex(12)
ENV_KEY = "env-leak-" + secrets.token_hex(12)  # only in the server's environment
OTHER = "other-leak-" + secrets.token_hex(12)  # a non-api_key secret
ALL = [RUNPOD_KEY, OPENAI_KEY, SHORT_KEY, HTTP_KEY, ENV_KEY, OTHER]


def _auth(seen: Seen) -> str:
    return seen.headers.get("Authorization", "")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProviders]:
    fake = FakeProviders().start()
    # Providers that misbehave by echoing the key back in every way we parse.
    fake.runpod(
        "/rp-echo-500", reply=Reply(500, lambda s: f"internal error for {_auth(s)} ({_auth(s)})")
    )
    fake.runpod(
        "/rp-echo-gql",
        reply=Reply(200, lambda s: {"errors": [{"message": f"bad key {_auth(s)[7:]}"}]}),
    )
    fake.runpod("/rp-ok", balance=2.0)
    fake.openai(
        "/oa-echo-401",
        reply=Reply(401, lambda s: {"error": {"message": f"Incorrect API key: {_auth(s)[7:]}"}}),
    )
    fake.openai("/oa-echo-models", models=[OPENAI_KEY, "gpt-4o"])
    stats = {
        "system": {"comfyui_version": "0.3.40", "argv": ["main.py", "--token", SHORT_KEY]},
        "devices": [
            {"name": f"cuda:0 {ENV_KEY}", "type": "cuda", "vram_total": GIB, "vram_free": GIB}
        ],
    }
    fake.comfyui("/comfy-echo", stats=Reply(200, stats))
    fake.route("GET", "/http-echo/", Reply(503, lambda s: json.dumps(s.headers)))
    fake.route("GET", "/http-hang/", Reply(hang=True))
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir: Path = tmp_path_factory.mktemp("providers-secrets")
    env = {"COMFYVN_PROVIDER_TIMEOUT": "1", "COMFYVN_SECRET_LEAK_TEST": ENV_KEY}
    proc = ServerProcess(data_dir, env=env, extra_args=["--log-level", "DEBUG"]).start()
    yield proc
    proc.stop()


def test_no_secret_in_any_body_log_or_file(srv: ServerProcess, fake: FakeProviders) -> None:
    bodies: list[str] = []
    statuses: set[int] = set()

    with srv.client() as client:

        def call(method: str, path: str, expect: int, **kwargs: Any) -> httpx.Response:
            response = client.request(method, path, **kwargs)
            assert response.status_code == expect, (method, path, response.text)
            bodies.append(response.text)
            statuses.add(response.status_code)
            return response

        providers = [
            {
                "id": "rp-500",
                "kind": "runpod",
                "base_url": fake.url + "/rp-echo-500/graphql",
                "secrets": {"api_key": RUNPOD_KEY, "extra": OTHER},
            },
            {
                "id": "rp-gql",
                "kind": "runpod",
                "base_url": fake.url + "/rp-echo-gql/graphql",
                "secrets": {"api_key": RUNPOD_KEY},
            },
            {
                "id": "rp-env",
                "kind": "runpod",
                "base_url": fake.url + "/rp-ok/graphql",
                "secrets": {"api_key": "env:COMFYVN_SECRET_LEAK_TEST"},
            },
            {
                "id": "oa-401",
                "kind": "openai",
                "base_url": fake.url + "/oa-echo-401/v1",
                "secrets": {"api_key": OPENAI_KEY},
            },
            {
                "id": "oa-models",
                "kind": "openai",
                "base_url": fake.url + "/oa-echo-models/v1",
                "secrets": {"api_key": OPENAI_KEY},
            },
            {
                "id": "comfy",
                "kind": "comfyui",
                "base_url": fake.url + "/comfy-echo",
                "secrets": {"api_key": SHORT_KEY},
            },
            {
                "id": "http-echo",
                "kind": "http",
                "base_url": fake.url + "/http-echo",
                "secrets": {"api_key": HTTP_KEY},
            },
            {
                "id": "http-hang",
                "kind": "http",
                "base_url": fake.url + "/http-hang",
                "secrets": {"api_key": HTTP_KEY},
            },
            {
                "id": "down",
                "kind": "runpod",
                "base_url": closed_port_url() + "/graphql",
                "secrets": {"api_key": RUNPOD_KEY},
            },
            {"id": "echo", "kind": "echo", "secrets": {"api_key": HTTP_KEY}},
        ]
        for body in providers:
            call("POST", "/api/providers", 201, json=body)

        # Every error path, each carrying a secret in the request.
        call("POST", "/api/providers", 409, json=providers[0])
        call(
            "POST",
            "/api/providers",
            422,
            json={"id": "Bad Id", "kind": "echo", "secrets": {"api_key": RUNPOD_KEY}},
        )
        call(
            "POST",
            "/api/providers",
            422,
            json={"id": "x1", "kind": "echo", "config": {"token": OPENAI_KEY}},
        )
        for url in (
            f"http://user:{HTTP_KEY}@example.com",
            f"https://api.runpod.io/graphql?api_key={RUNPOD_KEY}",
            f"ftp://{OPENAI_KEY}",
        ):
            call("POST", "/api/providers", 422, json={"id": "x2", "kind": "http", "base_url": url})
        call(
            "POST",
            "/api/providers",
            422,
            json={"id": "x3", "kind": "echo", "secrets": {"api_key": RUNPOD_KEY + "\n"}},
        )
        call("POST", "/api/providers", 422, json={"id": "x4", "kind": RUNPOD_KEY})
        big = {"id": "x7", "kind": "echo", "secrets": {"api_key": OPENAI_KEY * 3000}}
        call("POST", "/api/providers", 413, json=big)
        call(
            "POST",
            "/api/providers",
            422,
            json={"id": "x5", "kind": "echo", "secrets": {"api_key": 12345}},
        )
        call(
            "POST",
            "/api/providers",
            422,
            content=f'{{"id": "x6", "secrets": {{"api_key": "{OPENAI_KEY}"',
            headers={"Content-Type": "application/json"},
        )
        call(
            "PUT",
            "/api/providers/rp-500",
            422,
            json={"id": "other", "secrets": {"api_key": ENV_KEY}},
        )
        call(
            "PUT",
            "/api/providers/rp-500",
            422,
            json={"base_url": f"http://{RUNPOD_KEY}:x@h", "secrets": {"api_key": OPENAI_KEY}},
        )
        call("PUT", "/api/providers/ghost", 404, json={"secrets": {"api_key": OPENAI_KEY}})
        call("PUT", "/api/providers/echo", 200, json={"secrets": {"api_key": OTHER}})
        call("PUT", "/api/providers/echo", 200, json={"secrets": {"api_key": HTTP_KEY}})

        # Reads and checks.
        call("GET", "/api/providers", 200)
        for body in providers:
            call("GET", f"/api/providers/{body['id']}", 200)
            call("GET", "/api/providers/quota", 200, params={"id": body["id"]})
        call("GET", "/api/providers/ghost", 404)
        call("GET", "/api/providers/quota", 404, params={"id": "ghost"})
        call("GET", "/api/providers/quota", 422)
        health = call("GET", "/api/providers/health", 200).json()
        call("GET", "/api/providers/health", 200, params={"id": "rp-500,oa-401"})
        call("GET", "/api/providers/health", 404, params={"id": "ghost"})
        call("GET", "/api/providers/status", 200)
        call("GET", "/api/providers/status", 404, params={"id": "ghost"})
        call("DELETE", "/api/providers/down", 200)
        call("DELETE", "/api/providers/down", 404)

    clean = {k: v for k, v in os.environ.items() if not k.startswith("COMFYVN_")}
    cli = [sys.executable, "-m", "comfyvn", "providers", "check", "--server", srv.url]
    for extra in ([], ["--json"]):
        done = subprocess.run(
            [*cli, "--token", srv.token, *extra],
            cwd=ROOT,
            env=clean,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        bodies.append(done.stdout + done.stderr)

    results = {r["provider_id"]: r for r in health["results"]}
    # The checks really exercised the echoing providers, and the echoes were scrubbed.
    assert results["rp-500"]["reason_code"] == "server_error"
    assert "[redacted]" in results["rp-500"]["error"]
    assert results["rp-gql"]["reason_code"] == "bad_response"
    assert "[redacted]" in results["rp-gql"]["error"]
    assert results["oa-401"]["reason_code"] == "auth_rejected"
    assert "[redacted]" in results["oa-401"]["error"]
    assert "[redacted]" in results["oa-models"]["details"]["sample"]
    assert "[redacted]" in results["comfy"]["details"]["devices"][0]["name"]
    assert results["rp-env"]["status"] == "amber"  # the env reference resolved (balance 2.0)
    assert results["http-hang"]["reason_code"] == "timeout"
    assert results["down"]["reason_code"] == "unreachable"
    assert statuses == {200, 201, 404, 409, 413, 422}

    srv.stop()  # flush every log line and file before grepping
    texts = {
        "responses": "\n".join(bodies),
        "server log": srv.log_text(),
        "providers.json": (srv.data_dir / "providers.json").read_text(),
        "provider_status.json": (srv.data_dir / "provider_status.json").read_text(),
    }
    assert "GET /api/providers/health" in texts["server log"]
    for where, text in texts.items():
        for secret in ALL:
            assert secret not in text, f"a secret leaked into {where}"

    # The stored secrets file has them (0600), the env-only key was never written anywhere.
    stored = (srv.data_dir / "provider_secrets.json").read_text()
    assert RUNPOD_KEY in stored and ENV_KEY not in stored

    # Keys went out in the Authorization header only, never in a URL.
    for seen in fake.seen:
        assert not any(secret in seen.path for secret in ALL), seen.path
    rp_seen = fake.requests_to("/rp-echo-500")
    assert rp_seen and rp_seen[0].headers["Authorization"] == f"Bearer {RUNPOD_KEY}"
    env_seen = fake.requests_to("/rp-ok")
    assert env_seen and env_seen[0].headers["Authorization"] == f"Bearer {ENV_KEY}"
