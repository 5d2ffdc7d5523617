"""Provider secrets stay on the server (DESIGN.md section 9, "Secrets").

- ``env:NAME`` references name only variables meant for them (``COMFYVN_SECRET_*`` or those in
  ``COMFYVN_SECRET_ENV_ALLOW``): ``env:PATH`` is refused at creation, and a reference stored
  before the rule is never read.
- An upstream that echoes the key in its error body gets no part of it past the scrubber,
  wherever the error is cut: the key is placed across every position from 150 to 250 characters
  into the body, one provider per position, over a real server and a real fake upstream.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from comfyvn.core.env import EnvError, env_names
from comfyvn.providers.models import env_ref_refusal
from comfyvn.providers.secrets import ERROR_CHARS, REDACTED, SCAN_CHARS, Scrubber

from .support import ROOT, ServerProcess
from .test_providers_fakes import FakeProviders, Reply, Seen

# Keys drawn from letters that occur in none of the padding, the error prefixes, "[redacted]",
# JSON field names or hex ids, so any 4 characters of a key found in an output came from it.
KEY_ALPHABET = "JKQVWXZjkqvwxz"


def _key(length: int = 40) -> str:
    return "".join(secrets.choice(KEY_ALPHABET) for _ in range(length))


LITERAL_KEY = _key()  # stored in provider_secrets.json
ENV_KEY = _key()  # only in the server's environment, as COMFYVN_SECRET_LEAK_KEY
ALLOWED_VALUE = _key()  # MY_KEY, admitted by COMFYVN_SECRET_ENV_ALLOW
LEGACY_VALUE = _key()  # a variable outside the rule, named by a reference stored before it
KEYS = {"literal": LITERAL_KEY, "env": ENV_KEY, "allowed": ALLOWED_VALUE, "legacy": LEGACY_VALUE}

OFFSETS = range(150, 251)  # the key straddles each of these body positions in turn
PAD = "~~~~~~~ " * 64  # single spaces: whitespace normalisation moves nothing
# How upstreams echo a credential; each offset uses one of them (the key at the same position).
FORMS = (
    "Authorization: Bearer {key}",
    '{"authorization": "Bearer {key}"}',
    "x-api-key: {key}",
    "'api-key': '{key}'",
    "api_key={key}",
    "AUTHORIZATION: {key}",
    "{key}",  # bare: only the known-value scrub can catch it
)
RULE = (
    "secret references must name a variable COMFYVN_SECRET_* "
    "or one listed in COMFYVN_SECRET_ENV_ALLOW"
)


def echo_body(offset: int) -> Callable[[Seen], str]:
    """An error body with the received key centred on ``offset``, then every request header."""

    def body(seen: Seen) -> str:
        key = seen.headers.get("Authorization", "").removeprefix("Bearer ")
        form = FORMS[offset % len(FORMS)]
        label = form.split("{key}")[0]
        start = offset - len(key) // 2
        headers = "\n".join(f"{name}: {value}" for name, value in seen.headers.items())
        echoed = form.replace("{key}", key)
        return PAD[: start - len(label)] + echoed + " ~ request headers were:\n" + headers

    return body


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProviders]:
    fake = FakeProviders().start()
    for offset in OFFSETS:
        fake.openai(f"/lit{offset}", reply=Reply(401, echo_body(offset)))
        fake.runpod(f"/env{offset}", reply=Reply(500, echo_body(offset)))
    fake.runpod("/allowed", balance=20)
    fake.runpod("/legacy")
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, fake: FakeProviders) -> Iterator[ServerProcess]:
    data_dir: Path = tmp_path_factory.mktemp("provider-secret-leaks")
    # References stored by an older version, before the rule: the server must never read them.
    legacy = {
        "legacy-set": "env:LEGACY_LEAK_VAR",
        "legacy-unset": "env:LEGACY_UNSET_VAR_9431",
        "legacy-path": "env:PATH",
    }
    providers = [
        {"id": pid, "name": pid, "kind": "runpod", "base_url": f"{fake.url}/legacy/graphql"}
        for pid in legacy
    ]
    (data_dir / "providers.json").write_text(json.dumps({"version": 1, "providers": providers}))
    secrets_file = data_dir / "provider_secrets.json"
    stored = {pid: {"api_key": ref} for pid, ref in legacy.items()}
    secrets_file.write_text(json.dumps({"version": 1, "secrets": stored}))
    secrets_file.chmod(0o600)
    env = {
        "COMFYVN_PROVIDER_TIMEOUT": "5",
        "COMFYVN_PROVIDER_ALLOW_HOSTS": "127.0.0.1",
        "COMFYVN_SECRET_LEAK_KEY": ENV_KEY,
        "COMFYVN_SECRET_ENV_ALLOW": "MY_KEY, OTHER_NAME",
        "MY_KEY": ALLOWED_VALUE,
        "LEGACY_LEAK_VAR": LEGACY_VALUE,
    }
    proc = ServerProcess(data_dir, env=env, extra_args=["--log-level", "DEBUG"]).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def api(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.client() as client:
        yield client


def fragments(key: str, size: int) -> list[str]:
    return [key[i : i + size] for i in range(len(key) - size + 1)]


def leaked(text: str, size: int) -> dict[str, list[str]]:
    """Every ``size``-character piece of any key found in ``text``, by key."""
    found = {name: [f for f in fragments(key, size) if f in text] for name, key in KEYS.items()}
    return {name: pieces for name, pieces in found.items() if pieces}


# -- the reference rule, in process ---------------------------------------------------------------
def test_reference_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMFYVN_SECRET_ENV_ALLOW", raising=False)
    assert env_ref_refusal("COMFYVN_SECRET_OPENAI") is None
    for name in ("PATH", "HOME", "COMFYVN_API_TOKEN", "comfyvn_secret_x", "COMFYVN_SECRET_"):
        assert env_ref_refusal(name) == f"env:{name} is not allowed: {RULE}"
    # The allow-list variable itself is no secret to send anywhere.
    assert env_ref_refusal("COMFYVN_SECRET_ENV_ALLOW") is not None
    monkeypatch.setenv("COMFYVN_SECRET_ENV_ALLOW", " MY_KEY ,OTHER")
    assert env_names("COMFYVN_SECRET_ENV_ALLOW") == ("MY_KEY", "OTHER")
    assert env_ref_refusal("MY_KEY") is None and env_ref_refusal("OTHER") is None
    assert env_ref_refusal("MY_KEY_2") is not None  # exact names only
    monkeypatch.setenv("COMFYVN_SECRET_ENV_ALLOW", "MY_KEY,OPENAI_*")
    with pytest.raises(EnvError, match=r"COMFYVN_SECRET_ENV_ALLOW lists 'OPENAI_\*'"):
        env_names("COMFYVN_SECRET_ENV_ALLOW")
    refusal = env_ref_refusal("MY_KEY")
    assert refusal is not None and "COMFYVN_SECRET_ENV_ALLOW lists" in refusal
    assert env_ref_refusal("COMFYVN_SECRET_OPENAI") is None  # the prefix rule still holds


def test_malformed_allow_list_stops_serve(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COMFYVN_")}
    result = subprocess.run(
        [sys.executable, "-m", "comfyvn", "serve", "--port", "0", "--data-dir", str(tmp_path)],
        cwd=ROOT,
        env={**clean, "COMFYVN_SECRET_ENV_ALLOW": "MY-KEY"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "COMFYVN_SECRET_ENV_ALLOW lists 'MY-KEY'" in result.stderr
    assert "Traceback" not in result.stderr


# -- the scrubber, in process ---------------------------------------------------------------------
def test_clip_scrubs_before_it_cuts_at_every_position() -> None:
    key = _key()
    scrubber = Scrubber([key])
    for offset in range(0, 300):
        for form in FORMS:
            text = "HTTP 500 from /: " + PAD[:offset] + form.replace("{key}", key) + " tail"
            for limit in (150, 200, 240, 250):
                clipped = scrubber.clip(text, limit)
                assert len(clipped) <= limit + 3
                assert not [f for f in fragments(key, 4) if f in clipped], (offset, form, limit)


def test_clip_scrubs_unknown_echoes_and_partial_keys() -> None:
    key = "sk-" + _key(30)
    scrubber = Scrubber([key])
    unknown = _key(24)  # a credential the server never registered
    for echo in (
        f"Authorization: Bearer {unknown}",
        f"authorization:{unknown}",
        f'{{"Authorization": "Basic {unknown}"}}',
        f'{{\\"x-api-key\\": \\"{unknown}\\"}}',
        f"api-key: {unknown}",
        f"Proxy-Authorization: Bearer {unknown}",
        f"bearer {unknown}",
        f"GET /v1?api_key={unknown}&x=1",
    ):
        clipped = scrubber.clip(f"upstream said: {echo} (end)", 240)
        assert unknown not in clipped and REDACTED in clipped, echo
    # Keys an upstream (or a proxy) cut or re-cased itself: any 8 characters of one are scrubbed.
    for partial in (key[:12], key[5:17], key[-9:], key.upper(), json.dumps(key)):
        assert not [f for f in fragments(key, 8) if f in scrubber.clip(f"echo {partial}!", 240)]


def test_clip_bounds_long_bodies_without_cutting_a_key() -> None:
    key = _key()
    scrubber = Scrubber([key])
    for shift in (-len(key), -len(key) // 2, -1, 0, 1):
        # Whitespace collapses, so a key far into a long body lands in the output.
        text = " " * (SCAN_CHARS + shift) + key + " tail " + "~" * 100_000
        clipped = scrubber.clip(text, ERROR_CHARS)
        assert not [f for f in fragments(key, 4) if f in clipped], shift
    # A secret with spaces, split by other whitespace, is joined by the normalisation: scrubbed.
    spaced = "open sesame " + _key(10)
    assert "sesame" not in Scrubber([spaced]).clip(spaced.replace(" ", "\n\t "), 240)


# -- over the real server -------------------------------------------------------------------------
def test_forbidden_references_are_refused_at_creation(
    api: httpx.Client, fake: FakeProviders
) -> None:
    for name in ("PATH", "HOME", "LEGACY_LEAK_VAR", "COMFYVN_API_TOKEN"):
        body = {"id": f"bad-{name.lower()}", "kind": "echo", "secrets": {"api_key": f"env:{name}"}}
        response = api.post("/api/providers", json=body)
        assert response.status_code == 422, response.text
        assert f"env:{name} is not allowed: {RULE}" in response.text
        assert api.get(f"/api/providers/bad-{name.lower()}").status_code == 404
    created = api.post(
        "/api/providers",
        json={"id": "to-update", "kind": "echo", "secrets": {"api_key": "env:COMFYVN_SECRET_X"}},
    )
    assert created.status_code == 201, created.text
    updated = api.put("/api/providers/to-update", json={"secrets": {"token": "env:HOME"}})
    assert updated.status_code == 422 and f"env:HOME is not allowed: {RULE}" in updated.text
    masked = api.get("/api/providers/to-update").json()["provider"]["secrets"]
    assert set(masked) == {"api_key"}  # the refused update changed nothing


def test_allow_list_admits_a_named_variable(api: httpx.Client, fake: FakeProviders) -> None:
    body = {
        "id": "allowed",
        "kind": "runpod",
        "base_url": f"{fake.url}/allowed/graphql",
        "secrets": {"api_key": "env:MY_KEY"},
    }
    response = api.post("/api/providers", json=body)
    assert response.status_code == 201, response.text
    masked = response.json()["provider"]["secrets"]["api_key"]
    assert masked == {"set": True, "source": "env", "env": "MY_KEY", "resolved": True}
    result = api.get("/api/providers/health", params={"id": "allowed"}).json()["results"][0]
    assert (result["status"], result["reason_code"]) == ("green", "ok"), result
    (seen,) = fake.requests_to("/allowed")
    assert seen.headers["Authorization"] == f"Bearer {ALLOWED_VALUE}"


def test_stored_forbidden_reference_is_never_resolved(
    api: httpx.Client, fake: FakeProviders
) -> None:
    masks = {}
    for pid, variable in (
        ("legacy-set", "LEGACY_LEAK_VAR"),
        ("legacy-unset", "LEGACY_UNSET_VAR_9431"),
        ("legacy-path", "PATH"),
    ):
        masked = api.get(f"/api/providers/{pid}").json()["provider"]["secrets"]["api_key"]
        refusal = f"env:{variable} is not allowed: {RULE}"
        assert masked == {
            "set": True,
            "source": "env",
            "env": variable,
            "resolved": False,
            "refused": refusal,
        }
        masks[pid] = {k: v for k, v in masked.items() if k not in ("env", "refused")}
        result = api.get("/api/providers/health", params={"id": pid}).json()["results"][0]
        assert (result["status"], result["reason_code"]) == ("red", "secret_unresolved")
        assert refusal in result["reason"] and "secrets.api_key" in result["reason"]
    # Set or not, a forbidden variable looks the same from outside.
    assert masks["legacy-set"] == masks["legacy-unset"] == masks["legacy-path"]
    assert fake.requests_to("/legacy") == []


def test_echoed_keys_never_leave_the_server_at_any_cut(
    srv: ServerProcess, api: httpx.Client, fake: FakeProviders
) -> None:
    bodies: list[str] = []

    def call(method: str, path: str, expect: int = 200, **kwargs: Any) -> dict[str, Any]:
        response = api.request(method, path, **kwargs)
        assert response.status_code == expect, (method, path, response.text)
        bodies.append(response.text)
        return response.json()

    ids = []
    for offset in OFFSETS:
        for kind, prefix, base_url, key in (
            ("openai", "lit", f"{fake.url}/lit{offset}/v1", LITERAL_KEY),
            ("runpod", "env", f"{fake.url}/env{offset}/graphql", "env:COMFYVN_SECRET_LEAK_KEY"),
        ):
            pid = f"{prefix}-{offset}"
            body = {"id": pid, "kind": kind, "base_url": base_url, "secrets": {"api_key": key}}
            call("POST", "/api/providers", 201, json=body)
            ids.append(pid)

    health = call("GET", "/api/providers/health", params={"id": ",".join(ids)})
    results = {r["provider_id"]: r for r in health["results"]}
    straddled = {"lit": 0, "env": 0}
    for pid in ids:
        result = results[pid]
        expected = "auth_rejected" if pid.startswith("lit") else "server_error"
        assert (result["status"], result["reason_code"]) == ("red", expected), result
        error = result["error"]
        assert len(error) <= ERROR_CHARS + 3 and error.endswith("...")
        # The check is meaningful: at these offsets the key straddled the cut of the error.
        prefix, offset = pid.split("-")
        start = error.index("~") + int(offset) - len(LITERAL_KEY) // 2
        if start < ERROR_CHARS < start + len(LITERAL_KEY):
            straddled[prefix] += 1
            # Redacted whole where it began, or the cut fell just before its marker.
            assert error[start:] == "..." or error[start:].startswith(REDACTED), error
    assert min(straddled.values()) >= 10, straddled
    # The upstream really got the keys (and echoed them): literal and env-resolved.
    assert fake.requests_to("/lit150")[0].headers["Authorization"] == f"Bearer {LITERAL_KEY}"
    assert fake.requests_to("/env150")[0].headers["Authorization"] == f"Bearer {ENV_KEY}"

    call("GET", "/api/providers/status", params={"id": ",".join(ids)})
    call("GET", "/api/providers/status")
    call("GET", "/api/providers")
    for pid in ids:
        quota = call("GET", "/api/providers/quota", params={"id": pid})
        assert quota["supported"] is True and quota["error"]
    for pid in ids[:10]:
        call("GET", f"/api/providers/{pid}")
    call("GET", "/api/providers/health")  # every provider, the legacy ones included

    srv.stop()  # flush every log line and file before reading them
    outputs = {"responses": "\n".join(bodies), "server log": srv.log_text()}
    for path in sorted(srv.data_dir.rglob("*")):
        if path.is_file() and path.name != "provider_secrets.json":
            outputs[str(path.relative_to(srv.data_dir))] = path.read_bytes().decode("latin-1")
    assert "provider_status.json" in outputs
    assert "GET /api/providers/health" in outputs["server log"]
    for where, text in outputs.items():
        assert not leaked(text, 8), f"key fragments leaked into {where}: {leaked(text, 8)}"
        if where in ("responses", "server log") or where.endswith(".json"):
            # The masked hint ("****" and the last 4 characters) is the one designed exception.
            for key in KEYS.values():
                text = text.replace(f"****{key[-4:]}", "****")
            assert not leaked(text, 4), f"key fragments leaked into {where}: {leaked(text, 4)}"
    stored = (srv.data_dir / "provider_secrets.json").read_text()
    assert LITERAL_KEY in stored
    assert ENV_KEY not in stored and ALLOWED_VALUE not in stored and LEGACY_VALUE not in stored
