"""The provider form's rules without a window (comfyvn.gui.provider_form): parsing what was
typed, the POST and PUT bodies it makes from a template, write-only secrets, and messages."""

from __future__ import annotations

from typing import Any

import pytest

from comfyvn.client.api import ApiError
from comfyvn.gui.provider_form import (
    FormError,
    create_body,
    describe_error,
    describe_test,
    display_text,
    initial_value,
    missing_required,
    parse_value,
    secret_hint,
    update_body,
)
from comfyvn.providers.templates import provider_templates

TEMPLATES = {t.kind: t.model_dump() for t in provider_templates()}


def fields(kind: str) -> list[dict[str, Any]]:
    return TEMPLATES[kind]["fields"]


def field(kind: str, name: str) -> dict[str, Any]:
    return next(f for f in fields(kind) if f["name"] == name)


def test_parse_value_by_type() -> None:
    assert parse_value(field("runpod", "name"), "  RunPod  ") == "RunPod"
    assert parse_value(field("runpod", "name"), "   ") is None
    assert parse_value(field("runpod", "enabled"), False) is False
    assert parse_value(field("runpod", "thresholds.low_balance"), "2.5") == 2.5
    assert parse_value(field("comfyui", "thresholds.queue_amber"), "12") == 12
    assert parse_value(field("http", "config.accepted_status"), "200, 204 301") == [200, 204, 301]
    assert parse_value(field("http", "config.method"), "HEAD") == "HEAD"
    with pytest.raises(FormError, match="Low balance \\(USD\\): 'lots' is not a number"):
        parse_value(field("runpod", "thresholds.low_balance"), "lots")
    with pytest.raises(FormError, match="must be at least 0"):
        parse_value(field("runpod", "thresholds.low_balance"), "-1")
    with pytest.raises(FormError, match="must be at most 1"):
        parse_value(field("comfyui", "thresholds.vram_free_amber_ratio"), "1.5")
    with pytest.raises(FormError, match="is not a whole number"):
        parse_value(field("comfyui", "thresholds.queue_amber"), "2.5")
    with pytest.raises(FormError, match="list whole numbers"):
        parse_value(field("http", "config.accepted_status"), "200, ok")
    with pytest.raises(FormError, match="choose one of GET, HEAD"):
        parse_value(field("http", "config.method"), "PUT")
    assert display_text([200, 204]) == "200, 204" and display_text(5.0) == "5"
    assert display_text(None) == ""


def test_create_body_leaves_out_empty_fields_and_default_options() -> None:
    values = {
        "name": "Assets",
        "id": None,
        "base_url": "http://127.0.0.1:9/cdn",
        "enabled": True,
        "secrets.api_key": None,
        "config.health_path": "/healthz",
        "config.method": "GET",  # the default: left to the server
        "config.accepted_status": None,
        "config.auth_header": "Authorization",
        "thresholds.latency_amber_ms": 250.0,
    }
    assert create_body("http", fields("http"), values) == {
        "kind": "http",
        "name": "Assets",
        "base_url": "http://127.0.0.1:9/cdn",
        "enabled": True,
        "config": {"health_path": "/healthz"},
        "thresholds": {"latency_amber_ms": 250.0},
    }
    runpod = create_body("runpod", fields("runpod"), {"name": "R", "secrets.api_key": "k" * 20})
    assert runpod == {"kind": "runpod", "name": "R", "secrets": {"api_key": "k" * 20}}


STORED = {
    "id": "farm",
    "name": "Farm",
    "kind": "http",
    "base_url": "http://127.0.0.1:9",
    "enabled": True,
    "config": {"health_path": "/up", "region": "eu"},
    "threshold_overrides": {"latency_amber_ms": 900.0, "low_balance": 3.0},
    "secrets": {"api_key": {"set": True, "source": "value", "hint": "****wxyz"}},
}


def test_an_edit_form_starts_from_the_masked_view_and_secrets_start_empty() -> None:
    assert initial_value(field("http", "name"), STORED) == "Farm"
    assert initial_value(field("http", "config.health_path"), STORED) == "/up"
    assert initial_value(field("http", "config.method"), STORED) == "GET"  # the default
    assert initial_value(field("http", "thresholds.latency_amber_ms"), STORED) == 900.0
    assert initial_value(field("http", "secrets.api_key"), STORED) is None
    assert initial_value(field("runpod", "base_url"), None) == "https://api.runpod.io/graphql"
    assert secret_hint(STORED["secrets"]["api_key"]) == "****wxyz"
    assert secret_hint({"set": True, "source": "value", "hint": None}) == (
        "set (too short for a hint)"
    )
    assert secret_hint(
        {"set": True, "source": "env", "env": "COMFYVN_SECRET_X", "resolved": 1}
    ) == ("from $COMFYVN_SECRET_X (set)")
    assert secret_hint(None) is None


def test_update_body_keeps_unlisted_keys_and_sends_secrets_only_when_changed() -> None:
    values = {
        "name": "Farm 2",
        "id": "farm",
        "base_url": "http://127.0.0.1:9",
        "enabled": False,
        "secrets.api_key": None,  # empty: keep the stored one
        "config.health_path": "/",  # back to the default: dropped
        "config.method": "HEAD",
        "config.accepted_status": None,
        "config.auth_header": "Authorization",
        "thresholds.latency_amber_ms": None,  # cleared: back to the server default
    }
    body = update_body(STORED, fields("http"), values)
    assert body == {
        "name": "Farm 2",
        "base_url": "http://127.0.0.1:9",
        "enabled": False,
        "config": {"region": "eu", "method": "HEAD"},
        "thresholds": {"low_balance": 3.0},  # an override the template does not list is kept
    }
    typed = update_body(STORED, fields("http"), {**values, "secrets.api_key": "new-key-123456"})
    assert typed["secrets"] == {"api_key": "new-key-123456"}
    removed = update_body(STORED, fields("http"), values, remove_secrets={"api_key"})
    assert removed["secrets"] == {"api_key": None}


def test_required_fields_and_a_stored_secret() -> None:
    values = {"name": None, "secrets.api_key": None}
    assert missing_required(fields("runpod"), values) == ["Name", "API key"]
    assert missing_required(fields("runpod"), values, {"api_key"}) == ["Name"]
    assert missing_required(fields("http"), {"name": "x"}) == ["Base URL"]


def test_messages() -> None:
    result = {
        "status": "red",
        "latency_ms": 12.3,
        "reason": "RunPod rejected the API key",
        "error": "Unauthorized: api key [redacted] is not valid",
    }
    assert describe_test(result) == (
        "Down · 12 ms: RunPod rejected the API key\n"
        "error: Unauthorized: api key [redacted] is not valid"
    )
    assert describe_test({"status": "gray", "reason": "disabled", "error": "disabled"}) == (
        "Not checked: disabled"
    )
    refused = ApiError(
        422,
        [
            {"loc": ["body", "base_url"], "msg": "Value error, base_url refused: metadata"},
            {"loc": ["body", "secrets", "api_key"], "msg": "Value error, env:PATH is not allowed"},
        ],
        "POST /api/providers",
    )
    assert describe_error(refused, "fallback") == (
        "the server refused it (422): base_url: base_url refused: metadata; "
        "secrets.api_key: env:PATH is not allowed"
    )
    assert describe_error(ApiError(409, "taken", "POST"), "fallback") == "fallback"
