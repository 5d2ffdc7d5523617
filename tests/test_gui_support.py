"""Shared helpers for the Studio tests (no tests here): offscreen Qt, a server with fake
providers of every colour, and a window factory. Import it before anything that loads Qt."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before any Qt import

from pathlib import Path
from typing import Any

import httpx
from PySide6.QtCore import QSettings

from comfyvn.gui.main_window import StudioWindow
from comfyvn.gui.options import StudioOptions, Timeouts

from .support import ServerProcess
from .test_providers_fakes import FakeProviders, Reply, openai_limits

OPENAI_SECRET = "sk-studio-test-SECRET-value-9f8e7d6c"
RUNPOD_SECRET = "rpa_studio_test_SECRET_0123456789"

# provider id -> (kind, colour the panel must show)
EXPECTED = {
    "comfy-main": ("comfyui", "green"),
    "runpod-low": ("runpod", "amber"),
    "openai-main": ("openai", "green"),
    "http-down": ("http", "red"),
    "echo-off": ("echo", "gray"),
}


def register_providers(client: httpx.Client, fake: FakeProviders) -> None:
    """Replace the demo providers with one of each colour, backed by the local fakes."""
    for entry in client.get("/api/providers").json()["providers"]:
        assert client.delete(f"/api/providers/{entry['id']}").status_code == 200
    fake.route("GET", "/down/health", Reply(503, "maintenance"))
    bodies: list[dict[str, Any]] = [
        {
            "id": "comfy-main",
            "name": "Render box (ComfyUI)",
            "kind": "comfyui",
            "base_url": fake.comfyui("/comfy"),
        },
        {
            "id": "runpod-low",
            "name": "RunPod account",
            "kind": "runpod",
            "base_url": fake.runpod("/runpod-low", balance=2.0, spend=0.4),
            "secrets": {"api_key": RUNPOD_SECRET},
        },
        {
            "id": "openai-main",
            "name": "OpenAI-compatible",
            "kind": "openai",
            "base_url": fake.openai("/oa", headers=openai_limits()),
            "secrets": {"api_key": OPENAI_SECRET},
        },
        {
            "id": "http-down",
            "name": "Asset CDN",
            "kind": "http",
            "base_url": f"{fake.url}/down",
            "config": {"health_path": "/health"},
        },
        {"id": "echo-off", "name": "Echo (disabled)", "kind": "echo", "enabled": False},
    ]
    for body in bodies:
        response = client.post("/api/providers", json=body)
        assert response.status_code == 201, response.text


def make_window(
    server: ServerProcess | None,
    settings_path: Path,
    *,
    workspace: str | None = None,
    connect: bool = True,
) -> StudioWindow:
    options = StudioOptions(
        server=server.url if server else None,
        token=server.token if server else None,
        data_dir=server.data_dir if server else None,
        workspace=workspace,
        timeouts=Timeouts(http_s=30.0, probe_s=1.0, server_start_s=30.0, reconnect_max_s=0.5),
    )
    window = StudioWindow(options, QSettings(str(settings_path), QSettings.Format.IniFormat))
    window.show()
    if connect:
        window.start()
    return window


def all_texts(tree: Any) -> str:
    """Every text and tooltip of a QTreeWidget, children included."""
    out: list[str] = []

    def walk(item: Any) -> None:
        for col in range(tree.columnCount()):
            out.extend([item.text(col), item.toolTip(col)])
        for i in range(item.childCount()):
            walk(item.child(i))

    for i in range(tree.topLevelItemCount()):
        walk(tree.topLevelItem(i))
    return "\n".join(out)


def studio_env(**extra: str) -> dict[str, str]:
    """The environment for a ``comfyvn studio`` subprocess: no outer COMFYVN_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYVN_")}
    env.update({"QT_QPA_PLATFORM": "offscreen", **extra})
    return env
