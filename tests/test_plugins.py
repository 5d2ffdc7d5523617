"""The dev-mode plugin host over the real server: the example plugin, isolation, reload."""

from __future__ import annotations

import json
import sys
import textwrap
import threading
import time
from pathlib import Path

from comfyvn.core.event_log import SQLiteEventLog
from comfyvn.core.hook_bus import HookBus
from comfyvn.core.plugin_host import PluginHost

from .support import ROOT, ServerProcess, emit_scene, scene_enter_payload, wait_for

EXAMPLE_ROOT = str(ROOT / "dev" / "modder_hooks")


def test_example_plugin_records_scene_entries_in_dev_mode(data_dir: Path) -> None:
    server = ServerProcess(
        data_dir, extra_args=["--dev"], env={"COMFYVN_MOD_PLUGIN_ROOT": EXAMPLE_ROOT}
    ).start()
    try:
        emit_scene(server, "forest")
        out = data_dir / "example_plugin.jsonl"
        wait_for(lambda: out.exists() and out.read_text().endswith("\n"))
        line = json.loads(out.read_text().splitlines()[0])
        assert line["scene_id"] == "demo" and line["node"] == "forest"
        assert set(line) == {"scene_id", "node", "pov", "timestamp"}
        with server.client() as client:
            hooks = client.get("/api/modder/hooks").json()
        plugin = hooks["plugin_host"]["plugins"][0]
        assert hooks["plugin_host"]["enabled"] is True
        assert plugin["name"] == "example_plugin" and plugin["hooks"] == ["on_scene_enter"]
        assert plugin["status"] == "loaded" and plugin["module"].startswith("_comfyvn_plugin_")
        wait_for(lambda: "entered node forest" in server.log_text())
    finally:
        server.stop()


def test_no_plugin_code_runs_outside_dev_mode(data_dir: Path) -> None:
    server = ServerProcess(data_dir, env={"COMFYVN_MOD_PLUGIN_ROOT": EXAMPLE_ROOT}).start()
    try:
        emit_scene(server, "forest")
        with server.client() as client:
            listing = client.get("/api/modder/hooks/plugins").json()
            reload = client.post("/api/modder/hooks/plugins/reload")
            emit_scene(server, "river")
        assert listing["enabled"] is False and listing["plugins"] == []
        assert reload.status_code == 409 and "dev mode" in reload.json()["detail"]
        time.sleep(0.5)
        assert not (data_dir / "example_plugin.jsonl").exists()
    finally:
        server.stop()


def write_plugin(root: Path, name: str, body: str) -> None:
    (root / name).write_text(textwrap.dedent(body), encoding="utf-8")


def test_broken_plugins_are_reported_and_isolated_and_reload_picks_up_edits(
    tmp_path: Path, data_dir: Path
) -> None:
    root = tmp_path / "plugins"
    root.mkdir()
    marker = tmp_path / "good.txt"
    good = f"""
        def on_scene_enter(payload):
            with open({str(marker)!r}, "a") as fh:
                fh.write("v1:" + payload["node"] + "\\n")
    """
    write_plugin(root, "good.py", good)
    write_plugin(root, "syntax.py", "def on_scene_enter(payload)\n    pass\n")
    write_plugin(root, "raises.py", "def on_scene_enter(payload):\n    raise RuntimeError('x')\n")
    write_plugin(root, "sleeper.py", "import time\ndef on_scene_enter(p):\n    time.sleep(10)\n")
    write_plugin(root, "unknown.py", "def on_scene_exit(payload):\n    pass\n")
    # Named like a stdlib module: imported privately, so the server's own json keeps working.
    write_plugin(root, "json.py", "def on_asset_saved(payload):\n    pass\n")
    server = ServerProcess(
        data_dir,
        extra_args=["--dev"],
        env={"COMFYVN_MOD_PLUGIN_ROOT": str(root), "COMFYVN_PLUGIN_CALL_BUDGET": "0.5"},
    ).start()
    try:
        start = time.monotonic()
        for node in ("a", "b", "c"):
            emit_scene(server, node)
        # emit() and the API never wait for the sleeping plugin (10 s per call).
        assert time.monotonic() - start < 5.0
        wait_for(lambda: marker.exists() and len(marker.read_text().splitlines()) == 3)
        assert marker.read_text().splitlines() == ["v1:a", "v1:b", "v1:c"]

        def plugins() -> dict[str, dict]:
            with server.client() as client:
                body = client.get("/api/modder/hooks/plugins").json()
            return {p["name"]: p for p in body["plugins"]}

        wait_for(lambda: plugins()["raises"]["errors"] == 3)
        wait_for(lambda: plugins()["sleeper"]["status"] == "hung")
        state = plugins()
        syntax = state["syntax"]
        assert syntax["status"] == "error" and syntax["running"] is None
        assert "SyntaxError" in syntax["error"]["message"]
        assert syntax["error"]["file"].endswith("syntax.py") and syntax["error"]["line"] == 1
        assert state["raises"]["last_error"] == "RuntimeError: x"
        assert state["raises"]["status"] == "failing"
        assert state["unknown"]["status"] == "warning"
        assert "on_scene_exit" in state["unknown"]["problems"][0]
        assert state["json"]["status"] == "loaded"
        assert state["good"]["calls"] == 3 and state["good"]["errors"] == 0
        log = server.log_text()
        assert "plugin syntax: import failed" in log and "RuntimeError: x" in log

        write_plugin(root, "good.py", good.replace("v1:", "v2:"))
        (root / "syntax.py").unlink()
        with server.client() as client:
            reloaded = client.post("/api/modder/hooks/plugins/reload").json()
        assert "syntax" not in {p["name"] for p in reloaded["plugins"]}
        emit_scene(server, "d")
        wait_for(lambda: "v2:d" in marker.read_text())
        assert marker.read_text().count("v1:") == 3  # the old version did not run again
    finally:
        server.stop()


def make_host(tmp_path: Path, root: Path, **kwargs) -> tuple[HookBus, PluginHost]:
    bus = HookBus(SQLiteEventLog(tmp_path / "events.sqlite3"))
    return bus, PluginHost(bus, root=root, data_dir=tmp_path, **kwargs)


def test_a_plugin_that_hangs_at_import_is_reported_and_the_rest_load(tmp_path: Path) -> None:
    """A module body that never returns must not hang start-up or a reload."""
    root = tmp_path / "plugins"
    root.mkdir()
    write_plugin(root, "hangs.py", "import threading\nthreading.Event().wait()\n")
    write_plugin(root, "works.py", "def on_scene_enter(payload):\n    pass\n")
    bus, host = make_host(tmp_path, root, import_budget_s=0.5)
    try:
        started = time.monotonic()
        report = host.load()
        assert time.monotonic() - started < 5.0  # 10x the budget
        assert report["ok"] is False
        records = {p["name"]: p for p in host.describe()["plugins"]}
        assert records["hangs"]["status"] == "error"
        assert "did not finish within 0.5 s" in records["hangs"]["error"]["message"]
        assert records["works"]["status"] == "loaded"
        assert not any(name.startswith("_comfyvn_plugin_hangs_") for name in sys.modules)
    finally:
        host.unload()
        bus.close()


def test_concurrent_reloads_leave_one_listener_per_plugin(tmp_path: Path) -> None:
    """Two reload requests at once must not leave the first one's listeners behind (every
    plugin would then run twice per event, forever)."""
    root = tmp_path / "plugins"
    root.mkdir()
    counter = tmp_path / "count.txt"
    write_plugin(
        root,
        "counts.py",
        f"""
        import time
        time.sleep(0.05)  # a module body that takes a moment, like most real imports

        def on_scene_enter(payload):
            with open({str(counter)!r}, "a") as fh:
                fh.write("x")
        """,
    )
    bus, host = make_host(tmp_path, root)
    try:
        host.load()
        threads = [threading.Thread(target=host.reload) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(bus.listeners()) == 1 and len(host.describe()["plugins"]) == 1
        bus.emit("on_scene_enter", scene_enter_payload("a"))
        wait_for(lambda: counter.exists())
        time.sleep(0.3)
        assert counter.read_text() == "x"
    finally:
        host.unload()
        bus.close()
