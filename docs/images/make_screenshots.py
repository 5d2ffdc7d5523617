"""Regenerate the Studio screenshots in this folder with the real ``comfyvn studio --screenshot``.

    .venv/bin/python docs/images/make_screenshots.py

It starts local fake providers (one of each colour), a real server (``--demo --dev``) in a
temporary data dir, plays a few scenario steps so the hook stream has content, then runs the
screenshot command for each picture. For the Plugins tab it starts a second server whose plugin
folder holds a healthy plugin and one whose hook raises and whose next edit does not compile
(reloaded, so its previous version keeps running). The Webhooks dock's picture comes from
``tests/test_gui_webhooks.py`` (a healthy and a failing subscription on a real local receiver),
and the Add provider dialog's from ``tests/test_gui_provider_onboarding.py`` (filled for RunPod
and tested against a fake RunPod GraphQL server). Nothing here is drawn by hand.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support import ServerProcess  # noqa: E402
from tests.test_providers_fakes import GIB, FakeProviders, Reply, openai_limits  # noqa: E402

OUT = ROOT / "docs" / "images"


def register(client, fake: FakeProviders) -> None:
    for entry in client.get("/api/providers").json()["providers"]:
        client.delete(f"/api/providers/{entry['id']}")
    fake.route("GET", "/cdn/healthz", Reply(503, "maintenance"))
    bodies = [
        {
            "id": "local-comfyui",
            "name": "Local ComfyUI",
            "kind": "comfyui",
            "base_url": fake.comfyui("/local", vram_free=17.3 * GIB, running=1, pending=2),
        },
        {
            "id": "render-farm",
            "name": "Render farm (ComfyUI)",
            "kind": "comfyui",
            "base_url": fake.comfyui(
                "/farm", vram_total=48 * GIB, vram_free=9.1 * GIB, running=2, pending=14
            ),
        },
        {
            "id": "runpod",
            "name": "RunPod account",
            "kind": "runpod",
            "base_url": fake.runpod("/runpod", balance=37.8, spend=0.69, limit=80),
            "secrets": {"api_key": "rpa_docs_example_key_7Q2F"},
        },
        {
            "id": "openai",
            "name": "OpenAI-compatible",
            "kind": "openai",
            "base_url": fake.openai(
                "/oa", headers=openai_limits((5000, 4870), (2_000_000, 1_953_400))
            ),
            "secrets": {"api_key": "sk-docs-example-key-x9Vb"},
        },
        {
            "id": "asset-cdn",
            "name": "Asset CDN",
            "kind": "http",
            "base_url": f"{fake.url}/cdn",
            "config": {"health_path": "/healthz"},
        },
        {"id": "echo", "name": "Echo (built-in, disabled)", "kind": "echo", "enabled": False},
    ]
    for body in bodies:
        response = client.post("/api/providers", json=body)
        response.raise_for_status()


def play(client) -> None:
    scene = client.get("/api/scenario/scenes/lighthouse").json()["scene"]
    turn = client.post("/api/scenario/run/step", json={"scene": scene, "seed": 7}).json()
    for choice in ("open_door", "ask_boat"):
        body = {"scene": scene, "state": turn["state"], "choice_id": choice}
        turn = client.post("/api/scenario/run/step", json=body).json()


HEALTHY_PLUGIN = """
    \"\"\"Logs every scene entry and choice list.\"\"\"

    CTX = {}


    def setup(ctx):
        CTX["log"] = ctx.log
        ctx.log.info("ready; writing to %s", ctx.data_dir.name)


    def on_scene_enter(payload):
        CTX["log"].info("scene %s entered node %s", payload["scene_id"], payload["node"])


    def on_choice_render(payload):
        CTX["log"].info("%d choice(s) at %s", len(payload["choices"]), payload["node"])
"""
FAILING_PLUGIN = """
    \"\"\"Weights choices by their cost (no choice has one: the hook raises).\"\"\"

    CTX = {}


    def setup(ctx):
        CTX["log"] = ctx.log
        ctx.log.info("weighting choices by cost")


    def on_choice_render(payload):
        costs = {c["id"]: c["cost"] for c in payload["choices"]}
        CTX["log"].info("costs %s", costs)
"""


def plugin_tab_server(tmp: Path) -> ServerProcess:
    """A dev server with one healthy plugin and one failing one, whose broken edit was reloaded."""
    root = tmp / "plugins"
    root.mkdir(parents=True)
    (root / "scene_logger.py").write_text(textwrap.dedent(HEALTHY_PLUGIN), encoding="utf-8")
    failing = root / "choice_weights.py"
    failing.write_text(textwrap.dedent(FAILING_PLUGIN), encoding="utf-8")
    server = ServerProcess(
        tmp / "studio",
        extra_args=["--demo", "--dev", "--no-watch"],
        env={"COMFYVN_MOD_PLUGIN_ROOT": str(root)},
    ).start()
    with server.client() as client:
        play(client)
        # the fix is half-typed: a missing colon; the reload keeps the previous version
        broken = failing.read_text().replace('c["cost"]', 'c.get("cost", 1)')
        failing.write_text(
            broken.replace("on_choice_render(payload):", "on_choice_render(payload)")
        )
        client.post("/api/modder/hooks/plugins/reload", params={"name": "choice_weights"})
    return server


def shoot(name: str, *args: str, env_extra: dict[str, str] | None = None) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYVN_")}
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", "comfyvn", "studio", *args, "--screenshot", str(OUT / name)]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, timeout=120)


def main() -> int:
    fake = FakeProviders().start()
    with tempfile.TemporaryDirectory(prefix="comfyvn-shots-") as tmp:
        data_dir = Path(tmp) / "studio"
        server = ServerProcess(data_dir, extra_args=["--demo", "--dev"]).start()
        try:
            with server.client() as client:
                register(client, fake)
                play(client)
            common = ["--server", server.url, "--data-dir", str(data_dir)]
            shoot("studio_system.png", *common, "--workspace", "system")
            shoot(
                "studio_scenario.png", *common, "--workspace", "scenario", "--scene", "lighthouse"
            )
            # a small screen: everything must fit 1024x700 without clipping or widening
            shoot(
                "studio_1024x700.png",
                *[*common, "--workspace", "scenario", "--scene", "lighthouse"],
                env_extra={"COMFYVN_STUDIO_SIZE": "1024x700"},
            )
        finally:
            server.stop()
        # The Plugins tab of the Modder Hooks dock, next to the Scenario workspace.
        plugins = plugin_tab_server(Path(tmp) / "plugins-tab")
        try:
            shoot(
                "studio_plugins_tab.png",
                *["--server", plugins.url, "--data-dir", str(plugins.data_dir)],
                *["--workspace", "scenario", "--scene", "lighthouse"],
                env_extra={"COMFYVN_STUDIO_HOOKS_TAB": "plugins"},
            )
        finally:
            plugins.stop()
        # A server that is not there: the picture shows what the Studio says about it.
        dead = ["--server", "http://127.0.0.1:9", "--token", "unused", "--data-dir", tmp]
        shoot("studio_offline.png", *dead, "--workspace", "system", "--wait", "10")
    # The Webhooks dock: rendered offscreen by its test, with one healthy and one failing
    # subscription against a real local receiver.
    webhooks = OUT / "studio_webhooks.png"
    print(f"$ pytest tests/test_gui_webhooks.py -k screenshot -> {webhooks}", flush=True)
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "tests/test_gui_webhooks.py", "-k", "screenshot"],
        cwd=ROOT,
        env={
            **os.environ,
            "QT_QPA_PLATFORM": "offscreen",
            "COMFYVN_WEBHOOKS_SCREENSHOT": str(webhooks),
        },
        check=True,
        timeout=300,
    )
    # The Add provider dialog: filled for RunPod from its template and tested, key masked.
    dialog = OUT / "studio_provider_add.png"
    print(f"$ pytest tests/test_gui_provider_onboarding.py -k add_runpod -> {dialog}", flush=True)
    subprocess.run(
        [
            *[sys.executable, "-m", "pytest", "-q", "tests/test_gui_provider_onboarding.py"],
            *["-k", "add_runpod"],
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "QT_QPA_PLATFORM": "offscreen",
            "COMFYVN_PROVIDER_ADD_SCREENSHOT": str(dialog),
        },
        check=True,
        timeout=300,
    )
    fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
