"""Provider templates (``GET /api/providers/templates``) and checks of unsaved providers
(``POST /api/providers/test``, ``POST /api/providers/{id}/test``) over a real server and a fake
RunPod GraphQL upstream on 127.0.0.1 that accepts only one key.

- Each template matches what ``POST /api/providers`` accepts: its defaults plus the required
  values create a provider, and so does a body that sets every field the template lists (each
  value then reads back where the template said it goes). The field lists come from the models.
- A test runs one check through the same adapter, address policy and scrubbing as every check,
  stores nothing (no provider, no secret, no last result) and never echoes the key.
- Every bad input is a 4xx that names the problem, with the files left untouched.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from comfyvn.providers.adapters import ADAPTERS
from comfyvn.providers.models import KIND_CONFIG, KINDS, ProviderCreate, ThresholdOverrides
from comfyvn.providers.templates import body_from_values, provider_templates

from .support import ServerProcess, wait_for
from .test_providers_fakes import FakeProviders, Reply

GOOD_KEY = "rpa_TEMPLATE_good_key_QXZJ4711"
WRONG_KEY = "rpa_TEMPLATE_wrong_key_KVWQ0815"
FILES = ("providers.json", "provider_secrets.json", "provider_status.json")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProviders]:
    fake = FakeProviders().start()
    fake.runpod("/rp", keys=(GOOD_KEY,))
    fake.comfyui("/comfy")
    fake.openai("/oa")
    fake.route("GET", "/plain/", Reply(200, "up"))
    fake.route("GET", "/plain/sample", Reply(204, ""))
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("provider-templates"),
        env={"COMFYVN_PROVIDER_TIMEOUT": "5"},
        extra_args=["--log-level", "DEBUG"],
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def api(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.client() as client:
        yield client


def rp_url(fake: FakeProviders) -> str:
    return f"{fake.url}/rp/graphql"


def snapshot(data_dir: Path) -> dict[str, bytes | None]:
    return {
        name: (data_dir / name).read_bytes() if (data_dir / name).exists() else None
        for name in FILES
    }


def templates(api: httpx.Client) -> dict[str, dict[str, Any]]:
    response = api.get("/api/providers/templates")
    assert response.status_code == 200, response.text
    return {t["kind"]: t for t in response.json()["templates"]}


# -- templates -----------------------------------------------------------------------------------
def test_a_template_per_kind_with_fields_defaults_and_secrets(api: httpx.Client) -> None:
    by_kind = templates(api)
    assert list(by_kind) == ["comfyui", "runpod", "openai", "http", "echo"]
    assert {k: t["label"] for k, t in by_kind.items()} == {
        "comfyui": "Local ComfyUI",
        "runpod": "RunPod",
        "openai": "OpenAI-compatible",
        "http": "Generic HTTP",
        "echo": "Echo (built-in test provider)",
    }
    for kind, template in by_kind.items():
        names = [f["name"] for f in template["fields"]]
        assert len(names) == len(set(names)), kind
        assert names[:2] == ["name", "id"], kind
        assert template["description"] == KINDS[kind]
        assert template["body"]["kind"] == kind
        secret = [f for f in template["fields"] if f["secret"]]
        assert all(f["type"] == "secret" and f["default"] is None for f in secret), kind
        assert all(f["group"] == "credentials" for f in secret), kind

    runpod = {f["name"]: f for f in by_kind["runpod"]["fields"]}
    key = runpod["secrets.api_key"]
    assert key["required"] and key["secret"] and key["label"] == "API key"
    assert "Bearer" in key["help"] and "env:COMFYVN_SECRET_" in key["help"]
    assert runpod["base_url"]["default"] == "https://api.runpod.io/graphql"
    assert runpod["thresholds.low_balance"]["placeholder"] == "5 (default)"
    assert runpod["thresholds.low_balance"]["minimum"] == 0
    assert "thresholds.queue_amber" not in runpod  # a ComfyUI threshold
    comfy = {f["name"]: f for f in by_kind["comfyui"]["fields"]}
    assert comfy["base_url"]["default"] == "http://127.0.0.1:8188"
    assert not comfy["secrets.api_key"]["required"]
    assert comfy["thresholds.vram_free_amber_ratio"]["maximum"] == 1
    http = {f["name"]: f for f in by_kind["http"]["fields"]}
    assert http["base_url"]["required"] and http["base_url"]["default"] is None
    assert http["config.method"]["type"] == "choice"
    assert http["config.method"]["choices"] == ["GET", "HEAD"]
    assert http["config.accepted_status"]["type"] == "integers"
    assert http["id"]["pattern"] and http["id"]["type"] == "slug"
    echo = {f["name"] for f in by_kind["echo"]["fields"]}
    assert echo == {"name", "id", "enabled"}  # no network, no key


def test_templates_are_derived_from_the_models() -> None:
    """Adding a field to ProviderCreate, a kind's config model or ThresholdOverrides adds it to
    the templates: nothing is listed twice by hand."""
    general = set(ProviderCreate.model_fields) - {"kind", "config", "thresholds", "secrets"}
    for template in provider_templates():
        names = {f.name for f in template.fields}
        kind = template.kind
        expected = general - ({"base_url"} if kind == "echo" else set())
        assert expected <= names, kind
        config = KIND_CONFIG.get(kind)
        assert {n for n in names if n.startswith("config.")} == {
            f"config.{n}" for n in (config.model_fields if config else ())
        }
        applies = {
            f"thresholds.{n}"
            for n, info in ThresholdOverrides.model_fields.items()
            if kind in info.json_schema_extra["kinds"]
        }
        assert {n for n in names if n.startswith("thresholds.")} == applies
        assert ("secrets.api_key" in names) == ADAPTERS[kind].uses_key
    assert body_from_values({"a": 1, "b.c": 2, "b.d": None, "e": None}) == {"a": 1, "b": {"c": 2}}


def required_values(template: dict[str, Any], fake: FakeProviders) -> dict[str, Any]:
    """A value for each required field the template gives no default."""
    out: dict[str, Any] = {}
    for field in template["fields"]:
        if not field["required"] or field["default"] is not None:
            continue
        if field["type"] == "url":
            out[field["name"]] = f"{fake.url}/plain"
        elif field["type"] == "secret":
            out[field["name"]] = GOOD_KEY
        else:
            raise AssertionError(f"no sample for required {field['name']} ({field['type']})")
    return out


def sample(field: dict[str, Any], kind: str, fake: FakeProviders) -> Any:
    """A valid, non-default value for any field a template lists."""
    name, kind_of = field["name"], field["type"]
    if kind_of == "url":
        return {
            "comfyui": f"{fake.url}/comfy",
            "runpod": rp_url(fake),
            "openai": f"{fake.url}/oa/v1",
        }.get(kind, f"{fake.url}/plain")
    if kind_of == "slug":
        return f"every-field-{kind}"
    if kind_of == "secret":
        return GOOD_KEY
    if kind_of == "boolean":
        return not field["default"]
    if kind_of == "choice":
        return next(c for c in field["choices"] if c != field["default"])
    if kind_of == "integers":
        return [200, 204]
    if kind_of in ("integer", "number"):
        low, high = field["minimum"] or 0, field["maximum"]
        value = (low + high) / 2 if high is not None else low + 3
        return int(value) if kind_of == "integer" else value
    if name == "name":
        return f"Every field ({kind})"
    if name == "config.auth_header":
        return "X-Api-Key"
    return "/sample"  # the other string fields are paths


def test_each_templates_defaults_plus_required_values_are_accepted(
    api: httpx.Client, fake: FakeProviders
) -> None:
    for kind, template in templates(api).items():
        values = required_values(template, fake)
        body = {**template["body"], **body_from_values(values), "id": f"from-defaults-{kind}"}
        created = api.post("/api/providers", json=body)
        assert created.status_code == 201, (kind, created.text)
        provider = created.json()["provider"]
        assert provider["kind"] == kind and provider["name"] == template["body"]["name"]
        assert provider["enabled"] is True
        defaults = {f["name"]: f["default"] for f in template["fields"]}
        if kind != "echo":
            assert provider["base_url"] == (defaults["base_url"] or values["base_url"])
        for name, default in defaults.items():
            if name.startswith("config.") and default is not None:
                assert provider["config"][name.split(".", 1)[1]] == default, (kind, name)
        assert provider["threshold_overrides"] == {}
        if "secrets.api_key" in values:
            assert provider["secrets"]["api_key"]["hint"] == "****" + GOOD_KEY[-4:]
        assert api.delete(f"/api/providers/from-defaults-{kind}").status_code == 200


def test_every_field_a_template_lists_is_accepted_where_it_says(
    api: httpx.Client, fake: FakeProviders
) -> None:
    for kind, template in templates(api).items():
        values = {f["name"]: sample(f, kind, fake) for f in template["fields"]}
        created = api.post("/api/providers", json={"kind": kind, **body_from_values(values)})
        assert created.status_code == 201, (kind, created.text)
        provider = created.json()["provider"]
        for name, value in values.items():
            head, _, rest = name.partition(".")
            if head == "secrets":
                assert provider["secrets"][rest]["set"] is True
            elif head == "config":
                assert provider["config"][rest] == value, (kind, name)
            elif head == "thresholds":
                assert provider["threshold_overrides"][rest] == value, (kind, name)
            else:
                assert provider[head] == value, (kind, name)
        assert api.delete(f"/api/providers/{provider['id']}").status_code == 200


# -- testing before saving -----------------------------------------------------------------------
def runpod_body(fake: FakeProviders, key: str = GOOD_KEY, **extra: Any) -> dict[str, Any]:
    return {
        "name": "RunPod test",
        "kind": "runpod",
        "base_url": rp_url(fake),
        "secrets": {"api_key": key},
        **extra,
    }


def test_a_test_runs_one_check_and_stores_nothing(
    api: httpx.Client, srv: ServerProcess, fake: FakeProviders
) -> None:
    before = snapshot(srv.data_dir)
    listed = api.get("/api/providers").json()["providers"]
    seen = len(fake.requests_to("/rp/"))
    response = api.post("/api/providers/test", json=runpod_body(fake))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["ok"] is True and answer["saved"] is False
    result = answer["result"]
    assert (result["status"], result["reason_code"]) == ("green", "ok")
    assert result["provider_id"] == "runpod-test" and result["provider_name"] == "RunPod test"
    assert result["quota"]["balance"] == 42.5 and result["latency_ms"] is not None
    assert answer["raw"] == {
        "myself": {"clientBalance": 42.5, "currentSpendPerHr": 0.5, "spendLimit": 80}
    }
    sent = fake.requests_to("/rp/")[seen:]
    assert len(sent) == 1 and sent[0].headers["Authorization"] == f"Bearer {GOOD_KEY}"
    assert GOOD_KEY not in response.text
    # nothing stored: no provider, no secret, no last result
    assert snapshot(srv.data_dir) == before
    assert api.get("/api/providers").json()["providers"] == listed
    assert api.get("/api/providers/runpod-test").status_code == 404
    # a disabled provider is tested all the same (it is a test), and low balance is still amber
    disabled = runpod_body(fake, enabled=False, thresholds={"low_balance": 50})
    result = api.post("/api/providers/test", json=disabled).json()["result"]
    assert (result["status"], result["reason_code"], result["enabled"]) == (
        "amber",
        "low_balance",
        False,
    )


def test_a_rejected_key_is_red_and_the_echoed_key_is_scrubbed(
    api: httpx.Client, srv: ServerProcess, fake: FakeProviders
) -> None:
    response = api.post("/api/providers/test", json=runpod_body(fake, WRONG_KEY))
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert (result["status"], result["reason_code"]) == ("red", "auth_rejected")
    assert "[redacted]" in result["error"]
    assert WRONG_KEY not in response.text and WRONG_KEY[-12:] not in response.text
    # a RunPod without a key is a red result, not a refusal: no request is sent
    no_key = {k: v for k, v in runpod_body(fake).items() if k != "secrets"}
    result = api.post("/api/providers/test", json=no_key).json()["result"]
    assert (result["status"], result["reason_code"]) == ("red", "missing_secret")
    assert WRONG_KEY not in srv.log_text()


def test_a_changed_provider_is_tested_with_its_stored_key_unless_replaced(
    api: httpx.Client, srv: ServerProcess, fake: FakeProviders
) -> None:
    created = api.post("/api/providers", json=runpod_body(fake, id="rp-edit"))
    assert created.status_code == 201, created.text
    masked = created.json()["provider"]["secrets"]["api_key"]
    before = snapshot(srv.data_dir)

    def test(body: dict[str, Any]) -> dict[str, Any]:
        response = api.post("/api/providers/rp-edit/test", json=body)
        assert response.status_code == 200, response.text
        assert GOOD_KEY not in response.text and WRONG_KEY not in response.text
        return response.json()["result"]

    assert test({})["status"] == "green"  # the stored key
    assert test({"name": "Renamed", "secrets": {"api_key": masked}})["status"] == "green"
    assert test({"secrets": {"api_key": WRONG_KEY}})["reason_code"] == "auth_rejected"
    assert test({"secrets": {"api_key": None}})["reason_code"] == "missing_secret"
    assert test({"base_url": f"{fake.url}/nowhere/graphql"})["reason_code"] == "http_error"
    assert test({"enabled": False})["status"] == "green"
    assert test({"thresholds": {"low_balance": 100}})["reason_code"] == "low_balance"
    # none of it was stored
    assert snapshot(srv.data_dir) == before
    provider = api.get("/api/providers/rp-edit").json()["provider"]
    assert provider["name"] == "RunPod test" and provider["base_url"] == rp_url(fake)
    assert provider["secrets"]["api_key"] == masked
    assert api.get("/api/providers/status?id=rp-edit").json()["results"][0]["reason_code"] == (
        "never_checked"
    )
    assert api.delete("/api/providers/rp-edit").status_code == 200


# -- bad input -----------------------------------------------------------------------------------
BAD_TESTS: list[tuple[str, Any, int, str]] = [
    ("empty object", {}, 422, "Field required"),
    ("no id or name", {"kind": "echo"}, 422, "give an 'id' (a slug) or a 'name'"),
    ("unknown kind", {"name": "x", "kind": "vast"}, 422, "'comfyui', 'runpod'"),
    ("bad slug", {"id": "Not A Slug", "kind": "echo"}, 422, "id must be a slug"),
    ("reserved id", {"id": "templates", "kind": "echo"}, 422, "is reserved"),
    ("extra field", {"name": "x", "kind": "echo", "colour": "red"}, 422, "Extra inputs"),
    ("http without url", {"name": "x", "kind": "http"}, 422, "base_url is required"),
    ("ftp url", {"name": "x", "kind": "http", "base_url": "ftp://h"}, 422, "http:// or https://"),
    (
        "credentials in url",
        {"name": "x", "kind": "openai", "base_url": "http://u:p@127.0.0.1:1"},
        422,
        "must not carry credentials",
    ),
    (
        "metadata address",
        {"name": "x", "kind": "comfyui", "base_url": "http://169.254.169.254"},
        422,
        "base_url refused",
    ),
    (
        "encoded metadata address",
        {"name": "x", "kind": "comfyui", "base_url": "http://0xa9fea9fe/"},
        422,
        "cloud metadata address",
    ),
    (
        "key in config",
        {"name": "x", "kind": "openai", "config": {"api_key": "sk-123456789012"}},
        422,
        "look like credentials",
    ),
    (
        "bad config value",
        {
            "name": "x",
            "kind": "http",
            "base_url": "http://127.0.0.1:1",
            "config": {"method": "PUT"},
        },
        422,
        "'GET' or 'HEAD'",
    ),
    (
        "bad threshold",
        {"name": "x", "kind": "runpod", "thresholds": {"low_balance": -1}},
        422,
        "greater than or equal to 0",
    ),
    (
        "unknown threshold",
        {"name": "x", "kind": "runpod", "thresholds": {"balance_low": 1}},
        422,
        "Extra inputs",
    ),
    (
        "env reference outside the rule",
        {"name": "x", "kind": "runpod", "secrets": {"api_key": "env:PATH"}},
        422,
        "env:PATH is not allowed",
    ),
    (
        "malformed env reference",
        {"name": "x", "kind": "runpod", "secrets": {"api_key": "env:"}},
        422,
        "env:VARIABLE_NAME",
    ),
    (
        "empty secret",
        {"name": "x", "kind": "runpod", "secrets": {"api_key": "  "}},
        422,
        "secret 'api_key' is empty",
    ),
    (
        "masked secret when creating",
        {"name": "x", "kind": "runpod", "secrets": {"api_key": {"set": True, "hint": "****"}}},
        422,
        "send the secret itself when creating",
    ),
    (
        "bad secret name",
        {"name": "x", "kind": "runpod", "secrets": {"API-Key": "rpa_123456789012"}},
        422,
        "must be lower-case letters",
    ),
    ("not an object", ["kind", "echo"], 422, "valid dictionary"),
]


@pytest.mark.parametrize(
    ("label", "body", "status", "message"), BAD_TESTS, ids=[b[0] for b in BAD_TESTS]
)
def test_bad_test_bodies_are_4xx_naming_the_problem(
    api: httpx.Client, srv: ServerProcess, label: str, body: Any, status: int, message: str
) -> None:
    before = snapshot(srv.data_dir)
    response = api.post("/api/providers/test", json=body)
    assert response.status_code == status, (label, response.text)
    assert message in response.text, (label, response.text)
    assert snapshot(srv.data_dir) == before
    assert "sk-123456789012" not in response.text and "rpa_123456789012" not in response.text


def test_bad_test_requests_are_4xx(api: httpx.Client, fake: FakeProviders) -> None:
    def post(path: str, **kwargs: Any) -> httpx.Response:
        return api.post(path, **kwargs)

    not_json = post(
        "/api/providers/test", content=b"{kind: echo}", headers={"Content-Type": "application/json"}
    )
    assert not_json.status_code in (400, 422) and "JSON" in not_json.text
    nan = post(
        "/api/providers/test",
        content=b'{"name": "x", "kind": "echo", "enabled": NaN}',
        headers={"Content-Type": "application/json"},
    )
    assert nan.status_code in (400, 422) and "NaN" in nan.text
    too_big = post("/api/providers/test", json={"name": "x" * 70_000, "kind": "echo"})
    assert too_big.status_code == 413 and "detail" in too_big.json()
    long_name = post("/api/providers/test", json={"name": "x" * 121, "kind": "echo"})
    assert long_name.status_code == 422 and "at most 120 characters" in long_name.text

    unknown = post("/api/providers/nope/test", json={})
    assert unknown.status_code == 404 and "no provider with id 'nope'" in unknown.text
    assert api.post("/api/providers", json={"id": "bad-edit", "kind": "echo"}).status_code == 201
    other_id = post("/api/providers/bad-edit/test", json={"id": "other"})
    assert other_id.status_code == 422 and "ids cannot be changed" in other_id.text
    refused = post(
        "/api/providers/bad-edit/test",
        json={"kind": "comfyui", "base_url": "http://[fd00:ec2::254]/"},
    )
    assert refused.status_code == 422 and "base_url refused" in refused.text
    env = post("/api/providers/bad-edit/test", json={"secrets": {"api_key": "env:HOME"}})
    assert env.status_code == 422 and "env:HOME is not allowed" in env.text
    extra = post("/api/providers/bad-edit/test", json={"secret": "x"})
    assert extra.status_code == 422 and "Extra inputs" in extra.text
    assert api.delete("/api/providers/bad-edit").status_code == 200


def test_reserved_ids_are_refused_and_never_derived(api: httpx.Client) -> None:
    for reserved in ("health", "status", "quota", "templates", "test"):
        refused = api.post("/api/providers", json={"id": reserved, "kind": "echo"})
        assert refused.status_code == 422 and "is reserved" in refused.text, reserved
        derived = api.post("/api/providers", json={"name": reserved.capitalize(), "kind": "echo"})
        assert derived.status_code == 201, derived.text
        provider_id = derived.json()["provider"]["id"]
        assert provider_id == f"{reserved}-2"
        assert api.get(f"/api/providers/{provider_id}").status_code == 200
        assert api.delete(f"/api/providers/{provider_id}").status_code == 200


def test_the_server_log_never_holds_a_tested_key(
    api: httpx.Client, srv: ServerProcess, fake: FakeProviders
) -> None:
    body = runpod_body(fake, name="Logged test")
    assert api.post("/api/providers/test", json=body).json()["result"]["status"] == "green"
    body = runpod_body(fake, WRONG_KEY, name="Logged test")
    assert api.post("/api/providers/test", json=body).json()["result"]["status"] == "red"
    tested = "tested provider 'logged-test' (runpod) without saving it: "
    wait_for(lambda: f"{tested}red (auth_rejected)" in srv.log_text())  # the log is read async
    log = srv.log_text()
    assert f"{tested}green (ok)" in log
    assert GOOD_KEY not in log and WRONG_KEY not in log
    status = srv.data_dir / "provider_status.json"
    if status.exists():
        assert "logged-test" not in json.loads(status.read_text()).get("last", {})
