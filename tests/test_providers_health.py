"""Health, status and quota over a real server, against real local fakes of ComfyUI, RunPod,
an OpenAI-compatible API and plain HTTP: every colour and reason, quota normalization, 429, a
hanging provider bounded by the timeout, and concurrency."""

from __future__ import annotations

import concurrent.futures
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from comfyvn.providers.config import ProviderSettings

from .support import ServerProcess
from .test_providers_fakes import GIB, FakeProviders, Reply, closed_port_url, openai_limits

TIMEOUT_S = 1.5  # COMFYVN_PROVIDER_TIMEOUT for this module's server
HISTORY = 4  # COMFYVN_PROVIDER_HISTORY
RUNPOD_KEY = "rpa_health_test_key_0123456789"
_ids = itertools.count()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProviders]:
    fake = FakeProviders().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir: Path = tmp_path_factory.mktemp("providers-health")
    env = {
        "COMFYVN_PROVIDER_TIMEOUT": str(TIMEOUT_S),
        "COMFYVN_PROVIDER_HISTORY": str(HISTORY),
        "COMFYVN_SECRET_RUNPOD_KEY": RUNPOD_KEY,
        "COMFYVN_PROVIDER_ALLOW_HOSTS": "127.0.0.1,*.allowed.invalid",
    }
    proc = ServerProcess(data_dir, env=env).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def api(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.client() as client:
        yield client


def add(api: httpx.Client, kind: str, base_url: str | None = None, **fields: Any) -> str:
    provider_id = fields.pop("id", None) or f"{kind}-{next(_ids)}"
    body = {"id": provider_id, "kind": kind, **fields}
    if base_url is not None:
        body["base_url"] = base_url
    response = api.post("/api/providers", json=body)
    assert response.status_code == 201, response.text
    return provider_id


def check(api: httpx.Client, provider_id: str) -> dict[str, Any]:
    response = api.get("/api/providers/health", params={"id": provider_id})
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    assert result["provider_id"] == provider_id
    assert result["reason"], "every result names its reason"
    assert result["checked_at"] is not None
    assert result["ok"] is (result["status"] in ("green", "amber"))
    return result


# -- ComfyUI -------------------------------------------------------------------------------------
def test_comfyui_green_with_normalized_quota(api: httpx.Client, fake: FakeProviders) -> None:
    url = fake.comfyui("/comfy-green", vram_total=24 * GIB, vram_free=18 * GIB, pending=3)
    result = check(api, add(api, "comfyui", url))
    assert (result["status"], result["reason_code"]) == ("green", "ok")
    assert result["quota"] == {
        "summary": "queue 1 running / 3 pending, VRAM 18.0/24.0 GiB free",
        "queue_running": 1,
        "queue_pending": 3,
        "queue_amber": 10,
        "vram_total": 24 * GIB,
        "vram_free": 18 * GIB,
        "vram_free_ratio": 0.75,
        "devices": 1,
    }
    assert result["details"]["comfyui_version"] == "0.3.40"
    assert result["details"]["devices"][0]["type"] == "cuda"
    assert result["error"] is None
    assert isinstance(result["latency_ms"], float)


@pytest.mark.parametrize(
    ("setup", "status", "code", "reason_part"),
    [
        ({"pending": 12}, "amber", "queue_long", "12 pending (amber at 10)"),
        ({"vram_free": 1 * GIB}, "amber", "vram_low", "4% free"),
        ({"queue": Reply(500, "boom")}, "amber", "degraded", "/queue failed"),
        ({"stats": Reply(500, "Internal Server Error")}, "red", "server_error", "500"),
        ({"stats": Reply(200, {"hello": "world"})}, "red", "bad_response", "devices"),
        ({"stats": Reply(200, "<html>not json</html>")}, "red", "bad_response", "JSON"),
        ({"stats": Reply(404, "Not Found")}, "red", "http_error", "404"),
        ({"stats": Reply(302, None, {"Location": "/login"})}, "red", "redirected", "/login"),
    ],
)
def test_comfyui_colours(
    api: httpx.Client,
    fake: FakeProviders,
    setup: dict[str, Any],
    status: str,
    code: str,
    reason_part: str,
) -> None:
    prefix = f"/comfy-{code}-{next(_ids)}"
    result = check(api, add(api, "comfyui", fake.comfyui(prefix, **setup)))
    assert (result["status"], result["reason_code"]) == (status, code), result
    assert reason_part in result["reason"]


def test_comfyui_both_ambers_are_named(api: httpx.Client, fake: FakeProviders) -> None:
    url = fake.comfyui("/comfy-two-ambers", pending=15, vram_free=0.5 * GIB)
    result = check(api, add(api, "comfyui", url))
    assert result["status"] == "amber"
    assert "queue is long" in result["reason"] and "VRAM nearly full" in result["reason"]


def test_comfyui_thresholds_are_per_provider(api: httpx.Client, fake: FakeProviders) -> None:
    url = fake.comfyui("/comfy-thresholds", pending=3, vram_free=12 * GIB)
    relaxed = check(api, add(api, "comfyui", url))
    strict = check(
        api,
        add(api, "comfyui", url, thresholds={"queue_amber": 2, "vram_free_amber_ratio": 0.6}),
    )
    assert relaxed["status"] == "green"
    assert (strict["status"], strict["reason_code"]) == ("amber", "queue_long")
    assert "VRAM nearly full" in strict["reason"]


def test_unreachable_is_red(api: httpx.Client) -> None:
    result = check(api, add(api, "comfyui", closed_port_url()))
    assert (result["status"], result["reason_code"]) == ("red", "unreachable")
    assert "cannot connect to 127.0.0.1:" in result["reason"]
    assert result["error"]


# -- RunPod --------------------------------------------------------------------------------------
def test_runpod_green_quota_and_bearer_key(api: httpx.Client, fake: FakeProviders) -> None:
    url = fake.runpod("/runpod-green", balance=42.5, spend=0.5, limit=80)
    provider_id = add(api, "runpod", url, secrets={"api_key": RUNPOD_KEY})
    result = check(api, provider_id)
    assert (result["status"], result["reason_code"]) == ("green", "ok")
    assert result["quota"] == {
        "summary": "balance $42.50, spending $0.50/h (~85 h left), spend limit 80",
        "balance": 42.5,
        "spend_per_hr": 0.5,
        "spend_limit": 80.0,
        "hours_left": 85.0,
        "low_balance": 5.0,
        "currency": "USD",
    }
    (seen,) = fake.requests_to("/runpod-green")
    assert seen.method == "POST" and seen.path == "/runpod-green/graphql"  # no ?api_key=
    assert seen.headers["Authorization"] == f"Bearer {RUNPOD_KEY}"
    assert b"myself { clientBalance currentSpendPerHr spendLimit }" in seen.body

    quota = api.get("/api/providers/quota", params={"id": provider_id}).json()
    assert quota["ok"] is True and quota["supported"] is True
    assert quota["quota"]["balance"] == 42.5
    assert quota["raw"] == {
        "myself": {"clientBalance": 42.5, "currentSpendPerHr": 0.5, "spendLimit": 80}
    }


def test_runpod_low_balance_is_amber(api: httpx.Client, fake: FakeProviders) -> None:
    url = fake.runpod("/runpod-low", balance=3.2)
    result = check(api, add(api, "runpod", url, secrets={"api_key": RUNPOD_KEY}))
    assert (result["status"], result["reason_code"]) == ("amber", "low_balance")
    assert "$3.20 is under $5.00" in result["reason"]
    # The threshold is configurable per provider.
    url = fake.runpod("/runpod-high-threshold", balance=42.5)
    provider_id = add(
        api, "runpod", url, secrets={"api_key": RUNPOD_KEY}, thresholds={"low_balance": 50}
    )
    assert check(api, provider_id)["reason_code"] == "low_balance"


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (Reply(401, {"error": "Unauthorized"}), "auth_rejected"),
        (Reply(403, "forbidden"), "auth_rejected"),
        (Reply(200, {"errors": [{"message": "Unauthorized request"}]}), "auth_rejected"),
        (Reply(200, {"data": {"myself": None}}), "auth_rejected"),
        (Reply(200, {"errors": [{"message": "Cannot query field 'x'"}]}), "bad_response"),
        (Reply(502, "Bad Gateway"), "server_error"),
    ],
)
def test_runpod_failures_are_red(
    api: httpx.Client, fake: FakeProviders, reply: Reply, code: str
) -> None:
    url = fake.runpod(f"/runpod-{code}-{next(_ids)}", reply=reply)
    result = check(api, add(api, "runpod", url, secrets={"api_key": RUNPOD_KEY}))
    assert (result["status"], result["reason_code"]) == ("red", code), result


def test_runpod_without_key_is_red_without_a_request(
    api: httpx.Client, fake: FakeProviders
) -> None:
    url = fake.runpod("/runpod-nokey")
    result = check(api, add(api, "runpod", url))
    assert (result["status"], result["reason_code"]) == ("red", "missing_secret")
    assert "secrets.api_key" in result["reason"]
    assert fake.requests_to("/runpod-nokey") == []


def test_env_reference_resolved_and_unresolved(api: httpx.Client, fake: FakeProviders) -> None:
    url = fake.runpod("/runpod-env", balance=20)
    good = add(api, "runpod", url, secrets={"api_key": "env:COMFYVN_SECRET_RUNPOD_KEY"})
    assert check(api, good)["status"] == "green"
    (seen,) = fake.requests_to("/runpod-env")
    assert seen.headers["Authorization"] == f"Bearer {RUNPOD_KEY}"
    bad = add(api, "runpod", url, secrets={"api_key": "env:COMFYVN_SECRET_NOT_SET_1234"})
    result = check(api, bad)
    assert (result["status"], result["reason_code"]) == ("red", "secret_unresolved")
    assert "COMFYVN_SECRET_NOT_SET_1234" in result["reason"]


# -- OpenAI-compatible ---------------------------------------------------------------------------
def test_openai_green_with_rate_limit_quota(api: httpx.Client, fake: FakeProviders) -> None:
    url = fake.openai("/oa-green", headers=openai_limits())
    provider_id = add(api, "openai", url, secrets={"api_key": "sk-test-openai-abcdefgh"})
    result = check(api, provider_id)
    assert (result["status"], result["reason_code"]) == ("green", "ok")
    assert result["quota"] == {
        "summary": "4999/5000 requests, 159976/160000 tokens",
        "reported": True,
        "requests_limit": 5000,
        "requests_remaining": 4999,
        "requests_reset_s": 0.012,
        "tokens_limit": 160000,
        "tokens_remaining": 159976,
        "tokens_reset_s": 360.0,
    }
    assert result["details"]["models"] == 2
    (seen,) = fake.requests_to("/oa-green")
    assert seen.path == "/oa-green/v1/models"
    assert seen.headers["Authorization"] == "Bearer sk-test-openai-abcdefgh"
    quota = api.get("/api/providers/quota", params={"id": provider_id}).json()
    assert quota["supported"] is True
    assert quota["raw"]["headers"]["x-ratelimit-reset-tokens"] == "6m0s"


def test_openai_low_quota_is_amber(api: httpx.Client, fake: FakeProviders) -> None:
    url = fake.openai("/oa-low", headers=openai_limits(requests=(5000, 3)))
    result = check(api, add(api, "openai", url))
    assert (result["status"], result["reason_code"]) == ("amber", "low_quota")
    assert "3 of 5000 requests left" in result["reason"]


def test_openai_429_is_amber_with_quota(api: httpx.Client, fake: FakeProviders) -> None:
    limits = openai_limits(requests=(5000, 0))
    reply = Reply(
        429,
        {"error": {"message": "Rate limit reached", "type": "requests"}},
        {**limits, "Retry-After": "20"},
    )
    url = fake.openai("/oa-429", reply=reply)
    result = check(api, add(api, "openai", url, secrets={"api_key": "sk-429-abcdefghijkl"}))
    assert (result["status"], result["reason_code"]) == ("amber", "rate_limited")
    assert "retry after 20s" in result["reason"]
    assert result["quota"]["requests_remaining"] == 0
    assert result["details"]["retry_after"] == "20"


def test_openai_rejected_key_is_red(api: httpx.Client, fake: FakeProviders) -> None:
    reply = Reply(401, {"error": {"message": "Incorrect API key provided", "code": "invalid"}})
    url = fake.openai("/oa-401", reply=reply)
    result = check(api, add(api, "openai", url, secrets={"api_key": "sk-wrong-abcdefghijkl"}))
    assert (result["status"], result["reason_code"]) == ("red", "auth_rejected")
    assert "Incorrect API key" in result["error"]


def test_openai_compatible_without_headers(api: httpx.Client, fake: FakeProviders) -> None:
    url = fake.openai("/oa-local", models=["llama3"])
    result = check(api, add(api, "openai", url))
    assert result["status"] == "green"
    assert result["quota"]["summary"] == "no rate-limit headers"
    assert result["quota"]["reported"] is False
    assert "Authorization" not in fake.requests_to("/oa-local")[0].headers


# -- generic HTTP, echo, slow, disabled ----------------------------------------------------------
@pytest.mark.parametrize(
    ("reply", "config", "status", "code"),
    [
        (Reply(200, {"ok": True}), {}, "green", "ok"),
        (Reply(204), {"accepted_status": [204]}, "green", "ok"),
        (Reply(401, "who are you"), {"accepted_status": [401]}, "green", "ok"),
        (Reply(200, "ok"), {"accepted_status": [204]}, "red", "http_error"),
        (Reply(503, "maintenance"), {}, "red", "server_error"),
        (Reply(429, "slow down"), {}, "amber", "rate_limited"),
        (Reply(404, "nope"), {}, "red", "http_error"),
        (Reply(403, "denied"), {}, "red", "auth_rejected"),
    ],
)
def test_http_colours(
    api: httpx.Client,
    fake: FakeProviders,
    reply: Reply,
    config: dict[str, Any],
    status: str,
    code: str,
) -> None:
    prefix = f"/http-{next(_ids)}"
    fake.route("GET", f"{prefix}/healthz", reply)
    provider_id = add(api, "http", fake.url + prefix, config={"health_path": "/healthz", **config})
    result = check(api, provider_id)
    assert (result["status"], result["reason_code"]) == (status, code), result
    assert result["details"]["status_code"] == reply.status


def test_slow_provider_is_amber(api: httpx.Client, fake: FakeProviders) -> None:
    fake.route("GET", "/slow/", Reply(200, "ok", delay=0.3))
    provider_id = add(api, "http", fake.url + "/slow", thresholds={"latency_amber_ms": 100})
    result = check(api, provider_id)
    assert (result["status"], result["reason_code"]) == ("amber", "slow")
    assert result["latency_ms"] >= 300
    assert "amber above 100 ms" in result["reason"]


def test_echo_is_green_without_network(api: httpx.Client) -> None:
    result = check(api, add(api, "echo"))
    assert (result["status"], result["reason_code"]) == ("green", "ok")


def test_disabled_is_gray_and_never_checked_is_gray(api: httpx.Client) -> None:
    disabled = add(api, "http", closed_port_url(), enabled=False)
    result = check(api, disabled)
    assert (result["status"], result["reason_code"], result["ok"]) == ("gray", "disabled", False)
    fresh = add(api, "echo")
    (last,) = api.get("/api/providers/status", params={"id": fresh}).json()["results"]
    assert (last["status"], last["reason_code"], last["checked_at"]) == (
        "gray",
        "never_checked",
        None,
    )


def test_hosts_outside_the_allow_list_are_never_contacted(api: httpx.Client) -> None:
    provider_id = add(api, "openai", "https://api.example.invalid/v1")
    result = check(api, provider_id)
    assert (result["status"], result["reason_code"]) == ("red", "host_not_allowed")
    assert "'api.example.invalid'" in result["reason"] and result["latency_ms"] is None


def test_allow_list_patterns() -> None:
    settings = ProviderSettings(allow_hosts=("127.0.0.1", "*.allowed.invalid"))
    assert settings.host_allowed("127.0.0.1")
    assert settings.host_allowed("gpu.allowed.invalid")
    assert not settings.host_allowed("allowed.invalid.evil.com")
    assert not settings.host_allowed("localhost")
    assert ProviderSettings().host_allowed("anything.example")


# -- timeout and concurrency ---------------------------------------------------------------------
def test_hanging_provider_is_bounded_by_the_timeout(api: httpx.Client, fake: FakeProviders) -> None:
    fake.route("GET", "/hang/", Reply(hang=True))
    hanging = add(api, "http", fake.url + "/hang")
    echo = add(api, "echo")
    started = time.monotonic()
    response = api.get("/api/providers/health", params={"id": f"{hanging},{echo}"})
    elapsed = time.monotonic() - started
    results = {r["provider_id"]: r for r in response.json()["results"]}
    assert (results[hanging]["status"], results[hanging]["reason_code"]) == ("red", "timeout")
    assert f"within {TIMEOUT_S:g} s" in results[hanging]["reason"]
    assert results[echo]["status"] == "green"
    assert TIMEOUT_S * 0.9 <= elapsed < TIMEOUT_S * 10  # bounded by the timeout, not hung


def test_twenty_slow_providers_are_checked_concurrently(
    api: httpx.Client, fake: FakeProviders
) -> None:
    ids = []
    for n in range(20):
        prefix = f"/conc-{n}"
        fake.route("GET", f"{prefix}/", Reply(200, "ok", delay=0.3))
        ids.append(add(api, "http", fake.url + prefix))
    started = time.monotonic()
    response = api.get("/api/providers/health", params=[("id", i) for i in ids])
    elapsed = time.monotonic() - started
    body = response.json()
    assert [r["provider_id"] for r in body["results"]] == ids
    assert all(r["status"] == "green" and r["latency_ms"] >= 300 for r in body["results"])
    assert elapsed < 2.0, f"20 x 300 ms took {elapsed:.2f} s; sequential would be 6 s"


# -- status, history, quota route ----------------------------------------------------------------
def test_status_keeps_last_result_and_bounded_history(api: httpx.Client) -> None:
    provider_id = add(api, "echo")
    for _ in range(HISTORY + 2):
        check(api, provider_id)
    body = api.get("/api/providers/status", params={"id": provider_id}).json()
    (last,) = body["results"]
    assert last["status"] == "green" and last["checked_at"] is not None
    history = body["history"][provider_id]
    assert len(history) == HISTORY == body["history_size"]
    assert set(history[0]) == {"checked_at", "status", "latency_ms", "reason_code"}
    assert [h["checked_at"] for h in history] == sorted(h["checked_at"] for h in history)


def test_status_survives_restart(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path).start()
    try:
        with server.client() as client:
            provider_id = add(client, "echo")
            first = check(client, provider_id)
        server.restart()
        with server.client() as client:
            body = client.get("/api/providers/status").json()
        assert body["results"][0]["checked_at"] == first["checked_at"]
        assert len(body["history"][provider_id]) == 1
    finally:
        server.stop()


def test_quota_route(api: httpx.Client, fake: FakeProviders) -> None:
    http_id = add(api, "http", fake.url + "/whatever")
    body = api.get("/api/providers/quota", params={"id": http_id})
    assert body.status_code == 200
    assert body.json() == {
        "ok": True,
        "provider_id": http_id,
        "kind": "http",
        "supported": False,
        "quota": None,
        "reason": "http providers report no quota",
    }
    url = fake.comfyui("/comfy-quota", pending=4)
    comfy = api.get("/api/providers/quota", params={"id": add(api, "comfyui", url)}).json()
    assert comfy["supported"] is True and comfy["quota"]["queue_pending"] == 4
    assert "argv" not in comfy["raw"]["system_stats"]["system"]
    down = add(api, "runpod", closed_port_url() + "/graphql", secrets={"api_key": RUNPOD_KEY})
    failed = api.get("/api/providers/quota", params={"id": down}).json()
    assert (failed["ok"], failed["supported"], failed["quota"], failed["status"]) == (
        False,
        True,
        None,
        "red",
    )
    assert api.get("/api/providers/quota", params={"id": "nope"}).status_code == 404
    assert api.get("/api/providers/quota").status_code == 422


def test_health_unknown_ids_are_404(api: httpx.Client) -> None:
    response = api.get("/api/providers/health", params={"id": "missing-one,missing-two"})
    assert response.status_code == 404
    assert "'missing-one'" in response.json()["detail"]
    assert api.get("/api/providers/status", params={"id": "missing"}).status_code == 404
    assert api.get("/api/providers/health", params={"id": ","}).status_code == 422


def test_a_check_finishing_after_delete_or_change_is_not_kept(
    api: httpx.Client, srv: ServerProcess, fake: FakeProviders
) -> None:
    """A check still in flight when its provider is removed (or reconfigured) must not leave
    its result behind: a new provider with the same id starts as "never checked", not with a
    stale red from an address it no longer has."""
    fake.route("GET", "/hang-then-gone/", Reply(hang=True))
    changed = add(api, "http", fake.url + "/hang-then-gone")
    removed = add(api, "http", fake.url + "/hang-then-gone")
    with concurrent.futures.ThreadPoolExecutor(1) as pool, srv.client() as other:
        pending = pool.submit(
            other.get, "/api/providers/health", params={"id": f"{changed},{removed}"}
        )
        deadline = time.monotonic() + 10
        while len(fake.requests_to("/hang-then-gone")) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)  # both checks are in flight
        assert api.delete(f"/api/providers/{removed}").status_code == 200
        assert api.put(f"/api/providers/{changed}", json={"kind": "echo"}).status_code == 200
        response = pending.result(timeout=TIMEOUT_S * 10)
    # The caller still gets what it asked for...
    assert [r["status"] for r in response.json()["results"]] == ["red", "red"]
    add(api, "echo", id=removed)
    # ...but the registry's last results describe the providers as they are now.
    body = api.get("/api/providers/status", params={"id": f"{changed},{removed}"}).json()
    assert [r["reason_code"] for r in body["results"]] == ["never_checked", "never_checked"]
    assert body["history"] == {changed: [], removed: []}
