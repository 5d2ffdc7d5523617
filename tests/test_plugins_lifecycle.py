"""Plugins, version 2, over the real server: lifecycle, transactional reload, watch mode,
installed plugins, async hooks, per-plugin logs, and ComfyVN's module API."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from comfyvn.core import modder_hooks
from comfyvn.core.event_log import SQLiteEventLog
from comfyvn.core.hook_bus import HookBus

from .support import ServerProcess, emit_scene, scene_enter_payload, wait_for


def write(path: Path, body: str) -> None:
    path.write_text(textwrap.dedent(body), encoding="utf-8")


def plugins(server: ServerProcess) -> dict[str, dict[str, Any]]:
    with server.client() as client:
        body = client.get("/api/modder/hooks/plugins").json()
    return {p["name"]: p for p in body["plugins"]}


def reload(server: ServerProcess, name: str | None = None) -> dict[str, Any]:
    with server.client() as client:
        response = client.post(
            "/api/modder/hooks/plugins/reload", params={"name": name} if name else None
        )
    assert response.status_code == 200, response.text
    return response.json()


# A plugin that registers one listener at import time (through the module API, as the old docs
# suggested), one in setup(), and has a module-level hook: three deliveries per event per live
# version. Every line names the version, so a leaked listener of an old version shows up.
LIFECYCLE_PLUGIN = """
    import os
    from pathlib import Path
    from comfyvn.core import modder_hooks

    VERSION = {version}
    OUT = Path(os.environ["COMFYVN_DATA_DIR"]) / "lifecycle.txt"

    def _write(text):
        with OUT.open("a") as fh:
            fh.write(text + "\\n")

    def _at_import(event, payload):
        _write(f"import:v{{VERSION}}:{{payload['node']}}")

    modder_hooks.register_listener(_at_import, events=["on_scene_enter"])

    def setup(ctx):
        def in_setup(event, payload):
            _write(f"setup:v{{VERSION}}:{{payload['node']}}")
        ctx.register_listener(in_setup, events=["on_scene_enter"])
        ctx.log.info("ready v%d", VERSION)

    def on_scene_enter(payload):
        _write(f"hook:v{{VERSION}}:{{payload['node']}}")

    def teardown(ctx):
        _write(f"teardown:v{{VERSION}}")
"""


def test_reloads_never_leak_listeners_and_teardown_runs_each_time(tmp_path: Path) -> None:
    root = tmp_path / "plugins"
    root.mkdir()
    plugin = root / "life.py"
    write(plugin, LIFECYCLE_PLUGIN.format(version=1))
    data = tmp_path / "data"
    server = ServerProcess(
        data, extra_args=["--dev", "--no-watch"], env={"COMFYVN_MOD_PLUGIN_ROOT": str(root)}
    ).start()
    out = data / "lifecycle.txt"

    def lines() -> list[str]:
        return out.read_text().splitlines() if out.exists() else []

    def wait_lines(count: int) -> None:
        wait_for(lambda: len(lines()) >= count)

    try:
        expected: list[str] = []
        for version in range(1, 7):  # the first load, then five reloads
            if version > 1:
                write(plugin, LIFECYCLE_PLUGIN.format(version=version))
                report = reload(server)
                assert report["ok"] is True
                expected.append(f"teardown:v{version - 1}")
                wait_lines(len(expected))
            node = f"n{version}"
            emit_scene(server, node)
            expected += [f"{kind}:v{version}:{node}" for kind in ("hook", "import", "setup")]
            wait_lines(len(expected))
            time.sleep(0.3)  # a leaked listener would add lines now
            assert sorted(lines()) == sorted(expected), lines()
            state = plugins(server)["life"]
            assert state["status"] == "loaded" and state["listeners"] == 3
        # Deleted, then reloaded: teardown ran once more, and nothing of it ever runs again.
        plugin.unlink()
        report = reload(server)
        assert report["ok"] is True and "life" not in plugins(server)
        expected.append("teardown:v6")
        emit_scene(server, "after-delete")
        time.sleep(0.5)
        assert sorted(lines()) == sorted(expected)
        with server.client() as client:
            listeners = client.get("/api/modder/hooks").json()["bus"]["listeners"]
        assert [h for h in listeners if h["name"].startswith("plugin:")] == []
    finally:
        server.stop()


GOOD = """
    import os
    from pathlib import Path

    def on_scene_enter(payload):
        with (Path(os.environ["COMFYVN_DATA_DIR"]) / "edits.txt").open("a") as fh:
            fh.write("{tag}:" + payload["node"] + "\\n")
"""


def test_a_broken_edit_keeps_the_previous_version_and_watch_mode_picks_up_the_fix(
    tmp_path: Path,
) -> None:
    root = tmp_path / "plugins"
    root.mkdir()
    plugin = root / "edit.py"
    write(plugin, GOOD.format(tag="v1"))
    data = tmp_path / "data"
    server = ServerProcess(
        data, extra_args=["--dev"], env={"COMFYVN_MOD_PLUGIN_ROOT": str(root)}
    ).start()
    out = data / "edits.txt"
    try:
        assert plugins(server)["edit"]["status"] == "loaded"
        assert plugins(server)["edit"]["running"] == "current"
        # A save with a syntax error on line 3: the watcher tries it, the old version stays.
        plugin.write_text("def on_scene_enter(payload):\n    pass\ndef broken(:\n")
        wait_for(lambda: plugins(server)["edit"]["status"] == "error", timeout=20)
        report = reload(server, "edit")  # the API says the same
        assert report["ok"] is False
        (result,) = report["results"]
        assert result["status"] == "error" and result["running"] == "previous"
        assert result["error"]["file"] == str(plugin) and result["error"]["line"] == 3
        assert f"{plugin}:3" in result["error"]["message"]
        emit_scene(server, "while-broken")
        wait_for(lambda: out.exists() and "v1:while-broken" in out.read_text())
        # Fixing the file is enough: no API call, watch mode reloads it within a few seconds.
        write(plugin, GOOD.format(tag="v2"))
        wait_for(lambda: plugins(server)["edit"]["status"] == "loaded", timeout=20)
        assert plugins(server)["edit"]["running"] == "current"
        emit_scene(server, "fixed")
        wait_for(lambda: "v2:fixed" in out.read_text())
        assert "v1:fixed" not in out.read_text()
        assert "plugin files changed: reloading edit" in server.log_text()
    finally:
        server.stop()


def _installed_plugin(site: Path, marker: Path) -> None:
    """A tiny distribution on a path entry: package + dist-info with an entry point, the way
    pip lays out an installed wheel."""
    package = site / "studio_echo"
    package.mkdir(parents=True)
    write(
        package / "__init__.py",
        f"""
        def setup(ctx):
            ctx.log.info("installed plugin ready, greeting=%s", ctx.config.get("greeting"))

        def on_scene_enter(payload):
            with open({str(marker)!r}, "a") as fh:
                fh.write(payload["node"] + "\\n")
        """,
    )
    info = site / "studio_echo-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: studio-echo\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[comfyvn.plugins]\necho_installed = studio_echo\n")
    (info / "RECORD").write_text("")


def test_an_installed_plugin_is_listed_always_and_loaded_only_when_enabled(
    tmp_path: Path,
) -> None:
    site = tmp_path / "site"
    marker = tmp_path / "installed.txt"
    _installed_plugin(site, marker)
    env = {"PYTHONPATH": str(site)}
    data = tmp_path / "data"
    data.mkdir()
    (data / "plugins.toml").write_text('[echo_installed]\ngreeting = "hi"\n')

    listed_only = ServerProcess(data, env=env).start()  # no --dev, no --plugin
    try:
        entry = plugins(listed_only)["echo_installed"]
        assert entry["status"] == "available" and entry["enabled"] is False
        assert entry["source"] == "installed" and entry["distribution"] == "studio-echo"
        emit_scene(listed_only, "not-loaded")
        time.sleep(0.5)
        assert not marker.exists()
    finally:
        listed_only.stop()

    enabled = ServerProcess(data, extra_args=["--plugin", "echo_installed"], env=env).start()
    try:
        entry = plugins(enabled)["echo_installed"]
        assert entry["status"] == "loaded" and entry["hooks"] == ["on_scene_enter"]
        assert entry["config_keys"] == ["greeting"]
        assert any("greeting=hi" in line["message"] for line in entry["log"])
        emit_scene(enabled, "installed")
        wait_for(lambda: marker.exists() and marker.read_text() == "installed\n")
        assert reload(enabled, "echo_installed")["ok"] is True
    finally:
        enabled.stop()

    typo = ServerProcess(data, extra_args=["--plugin", "echo_instaled"], env=env).start()
    try:
        entry = plugins(typo)["echo_instaled"]
        assert entry["status"] == "error" and "comfyvn.plugins" in entry["error"]["message"]
    finally:
        typo.stop()


def test_async_hooks_and_plugin_output_are_visible_per_plugin(tmp_path: Path) -> None:
    root = tmp_path / "plugins"
    root.mkdir()
    write(
        root / "asyncy.py",
        """
        import asyncio
        import logging

        log = logging.getLogger("comfyvn.plugin.asyncy")

        async def on_scene_enter(payload):
            await asyncio.sleep(0.01)
            print("async saw", payload["node"])

        async def on_choice_render(payload):
            raise ValueError("no choices today")
        """,
    )
    write(
        root / "chatty.py",
        """
        def setup(ctx):
            ctx.log.info("configured with %s", sorted(ctx.config))

        def on_scene_enter(payload):
            import logging
            logging.getLogger("comfyvn.plugin.chatty").warning("node %s", payload["node"])
        """,
    )
    data = tmp_path / "data"
    server = ServerProcess(
        data, extra_args=["--dev"], env={"COMFYVN_MOD_PLUGIN_ROOT": str(root)}
    ).start()
    try:
        emit_scene(server, "hall")
        with server.client() as client:
            payload = {
                "scene_id": "demo",
                "node": "hall",
                "pov": "narrator",
                "choices": [],
                "variables": {},
                "history": [],
                "finished": False,
                "timestamp": 1.0,
            }
            response = client.post(
                "/api/modder/hooks/test", json={"event": "on_choice_render", "payload": payload}
            )
            assert response.status_code == 200, response.text
        wait_for(lambda: plugins(server)["asyncy"]["errors"] == 1)
        asyncy = plugins(server)["asyncy"]
        assert asyncy["calls"] == 2 and asyncy["status"] == "failing"
        assert asyncy["last_error"] == "ValueError: no choices today"
        messages = [line["message"] for line in asyncy["log"]]
        assert "async saw hall" in messages  # print() went to the plugin's log
        assert any("no choices today" in m for m in messages)
        chatty = plugins(server)["chatty"]
        assert chatty["calls"] == 1 and chatty["errors"] == 0 and chatty["status"] == "loaded"
        assert [(line["level"], line["message"]) for line in chatty["log"]] == [
            ("INFO", "configured with []"),
            ("WARNING", "node hall"),
        ]
        # The print did not reach the server's stdout as a bare line.
        assert "async saw hall\n" not in server.output
    finally:
        server.stop()


def test_a_misspelled_hook_gets_a_did_you_mean(tmp_path: Path) -> None:
    root = tmp_path / "plugins"
    root.mkdir()
    write(root / "typo.py", "def on_scene_entered(payload):\n    pass\n")
    server = ServerProcess(
        tmp_path / "data", extra_args=["--dev"], env={"COMFYVN_MOD_PLUGIN_ROOT": str(root)}
    ).start()
    try:
        typo = plugins(server)["typo"]
        assert typo["status"] == "warning"
        assert "did you mean on_scene_enter?" in typo["problems"][0]
    finally:
        server.stop()


@pytest.fixture
def bus(tmp_path: Path):
    bus = HookBus(SQLiteEventLog(tmp_path / "events.sqlite3"))
    modder_hooks.set_current_bus(bus)
    try:
        yield bus
    finally:
        modder_hooks.set_current_bus(None)
        bus.close()


def test_comfyvn_style_module_api(bus: HookBus) -> None:
    seen: list[tuple[str, str]] = []

    def listener(event: str, payload: dict[str, Any]) -> None:
        seen.append((event, payload["node"]))

    modder_hooks.register_listener(listener, ["on_scene_enter", "on_choice_render"])
    modder_hooks.emit("on_scene_enter", scene_enter_payload("a"))
    wait_for(lambda: seen == [("on_scene_enter", "a")])
    # Stop one event by function and event list: the other keeps coming.
    assert modder_hooks.unregister_listener(listener, ["on_scene_enter"]) is True
    modder_hooks.emit("on_scene_enter", scene_enter_payload("b"))
    modder_hooks.emit("on_choice_render", {**scene_enter_payload("c"), "choices": []})
    wait_for(lambda: ("on_choice_render", "c") in seen)
    assert ("on_scene_enter", "b") not in seen
    assert modder_hooks.unregister_listener(listener, ["on_choice_render"]) is True
    assert modder_hooks.unregister_listener(listener) is False  # nothing left
    modder_hooks.emit("on_choice_render", {**scene_enter_payload("d"), "choices": []})
    time.sleep(0.3)
    assert ("on_choice_render", "d") not in seen

    wait_for(lambda: len(modder_hooks.history(limit=5)) == 4)
    recent = modder_hooks.history(limit=5)
    assert [e["data"]["node"] for e in recent] == ["a", "b", "c", "d"]
    assert json.loads(json.dumps(recent))  # plain JSON data
    specs = modder_hooks.hook_specs()
    assert "on_scene_enter" in specs and specs["on_scene_enter"]["payload"]["node"]
