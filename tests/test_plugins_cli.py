"""``comfyvn plugins list | reload | new`` against a real server, the template plugin working
unchanged (loaded, receiving hooks, reloaded by watch mode), and no abbreviated options."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from comfyvn.cli import build_parser, main
from comfyvn.client.plugins_cli import render_table
from comfyvn.core.hook_specs import HOOK_SPECS
from comfyvn.core.plugin_template import render_plugin_template

from .support import ROOT, ServerProcess, emit_scene, wait_for
from .test_providers_fakes import closed_port_url


def comfyvn(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m comfyvn ...`` without the outer COMFYVN_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYVN_")}
    return subprocess.run(
        [sys.executable, "-m", "comfyvn", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def conn(server: ServerProcess) -> list[str]:
    return ["--server", server.url, "--token", server.token]


def plugins(server: ServerProcess) -> dict[str, dict]:
    with server.client() as client:
        body = client.get("/api/modder/hooks/plugins").json()
    return {p["name"]: p for p in body["plugins"]}


def log_messages(server: ServerProcess, name: str) -> list[str]:
    return [line["message"] for line in plugins(server).get(name, {}).get("log", [])]


def dev_server(data_dir: Path, root: Path, *extra: str) -> ServerProcess:
    return ServerProcess(
        data_dir, extra_args=["--dev", *extra], env={"COMFYVN_MOD_PLUGIN_ROOT": str(root)}
    ).start()


def test_new_plugin_works_unchanged_and_is_listed(tmp_path: Path, data_dir: Path) -> None:
    root = tmp_path / "plugins"  # `new` creates it
    made = comfyvn("plugins", "new", "demo", "--plugin-root", str(root))
    assert made.returncode == 0, made.stderr
    path = root / "demo.py"
    assert f"wrote {path}" in made.stdout
    assert "comfyvn serve --dev" in made.stdout and "reloads it on save" in made.stdout
    assert path.read_text(encoding="utf-8") == render_plugin_template("demo")
    (data_dir / "plugins.toml").write_text('[demo]\ngreeting = "ahoy"\n', encoding="utf-8")

    server = dev_server(data_dir, root)
    try:
        demo = plugins(server)["demo"]
        assert demo["status"] == "loaded" and demo["running"] == "current", demo
        assert demo["hooks"] == ["on_scene_enter"] and demo["problems"] == []
        out = data_dir / "demo.jsonl"
        assert any(m.startswith("ahoy: demo is ready") for m in log_messages(server, "demo"))

        emit_scene(server, "forest")  # the module-level hook
        wait_for(lambda: "entered forest (scene demo)" in log_messages(server, "demo"))
        wait_for(lambda: out.exists() and out.read_text().endswith("\n"))
        record = json.loads(out.read_text().splitlines()[0])
        assert record["node"] == "forest" and record["scene_id"] == "demo"

        with server.client() as client:  # the listener registered in setup(ctx)
            example = HOOK_SPECS["on_choice_render"].example
            sent = client.post(
                "/api/modder/hooks/test", json={"event": "on_choice_render", "payload": example}
            )
        assert sent.status_code == 200, sent.text
        wait_for(lambda: any(m.startswith("choices at ") for m in log_messages(server, "demo")))

        listed = comfyvn("plugins", "list", "--log", *conn(server))
        assert listed.returncode == 0, listed.stderr
        header, row = listed.stdout.splitlines()[:2]
        assert header.split() == [
            "NAME", "SOURCE", "STATUS", "RUNNING", "HOOKS", "CALLS", "ERRORS", "DETAIL"
        ]  # fmt: skip
        assert row.split()[:5] == ["demo", "folder", "loaded", "current", "on_scene_enter"]
        assert "\033[" not in listed.stdout  # not a terminal: no colour
        assert "entered forest (scene demo)" in listed.stdout  # --log
        as_json = comfyvn("plugins", "list", "--json", *conn(server))
        assert as_json.returncode == 0
        assert json.loads(as_json.stdout)["plugins"][0]["name"] == "demo"

        reloaded = comfyvn("plugins", "reload", "demo", *conn(server))
        assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
        assert reloaded.stdout.split()[:4] == ["demo", "loaded", "running:", "current"]
        # teardown(ctx) of the replaced version ran and counted its scene entries.
        assert any("stopping after 1 scene entries" in m for m in log_messages(server, "demo"))

        # Watch mode: a plugin written while the server runs loads by itself.
        again = comfyvn("plugins", "new", "second", "--plugin-root", str(root))
        assert again.returncode == 0, again.stderr
        wait_for(lambda: plugins(server).get("second", {}).get("status") == "loaded")
        emit_scene(server, "river")
        wait_for(lambda: "entered river (scene demo)" in log_messages(server, "second"))
        wait_for(lambda: (data_dir / "second.jsonl").exists())
    finally:
        server.stop()


def test_reload_reports_a_broken_version_and_unknown_names(tmp_path: Path, data_dir: Path) -> None:
    root = tmp_path / "plugins"
    assert comfyvn("plugins", "new", "demo", "--plugin-root", str(root)).returncode == 0
    path = root / "demo.py"
    server = dev_server(data_dir, root, "--no-watch")  # reloads happen only when asked
    try:
        assert plugins(server)["demo"]["status"] == "loaded"
        ok = comfyvn("plugins", "reload", "demo", *conn(server))
        assert ok.returncode == 0, ok.stdout + ok.stderr

        source = path.read_text(encoding="utf-8")
        bad_line = source.count("\n") + 1
        path.write_text(source + "def on_scene_exit(payload)\n    pass\n", encoding="utf-8")
        broken = comfyvn("plugins", "reload", "demo", *conn(server))
        assert broken.returncode == 1, broken.stdout + broken.stderr
        assert f"{path}:{bad_line}" in broken.stdout and "SyntaxError" in broken.stdout
        assert "previous" in broken.stdout and "demo  error" in broken.stdout
        assert "failed to reload" in broken.stderr

        listed = comfyvn("plugins", "list", *conn(server))
        assert listed.returncode == 0
        row = listed.stdout.splitlines()[1]
        assert row.split()[:4] == ["demo", "folder", "error", "previous"]
        assert f"{path}:{bad_line}" in row

        emit_scene(server, "cave")  # the last good version still runs
        wait_for(lambda: "entered cave (scene demo)" in log_messages(server, "demo"))

        unknown = comfyvn("plugins", "reload", "nope", *conn(server))
        assert unknown.returncode == 2
        assert "no plugin named 'nope'" in unknown.stderr and "'demo'" in unknown.stderr
        every = comfyvn("plugins", "reload", *conn(server))
        assert every.returncode == 1 and "demo" in every.stdout
    finally:
        server.stop()


def test_list_and_reload_without_dev_mode(data_dir: Path, tmp_path: Path) -> None:
    server = ServerProcess(data_dir, env={"COMFYVN_MOD_PLUGIN_ROOT": str(tmp_path)}).start()
    try:
        listed = comfyvn("plugins", "list", *conn(server))
        assert listed.returncode == 0, listed.stderr
        assert "plugins are off on this server: dev mode is off" in listed.stdout
        reloaded = comfyvn("plugins", "reload", *conn(server))
        assert reloaded.returncode == 2
        assert "409" in reloaded.stderr and "dev mode is off" in reloaded.stderr
        refused = comfyvn("plugins", "list", "--server", server.url, "--token", "wrong")
        assert refused.returncode == 2 and "refused the API token" in refused.stderr
    finally:
        server.stop()


def test_unreachable_server_is_one_line_naming_the_url() -> None:
    url = closed_port_url()
    for command in (["list"], ["reload", "demo"]):
        done = comfyvn("plugins", *command, "--server", url, "--token", "t", timeout=60)
        assert done.returncode == 2
        assert done.stderr.count("\n") == 1 and f"cannot reach the ComfyVN server at {url}" in (
            done.stderr
        )


@pytest.mark.parametrize("name", ["1demo", "_private", "my-plugin", "class", "a.b", ""])
def test_new_refuses_bad_names(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plugins", "new", name, "--plugin-root", str(tmp_path)]) == 2
    assert "error:" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_new_refuses_an_existing_file_unless_forced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COMFYVN_MOD_PLUGIN_ROOT", str(tmp_path))  # the default root, as serve
    path = tmp_path / "demo.py"
    path.write_text("# mine\n", encoding="utf-8")
    assert main(["plugins", "new", "demo"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "--force" in err
    assert path.read_text(encoding="utf-8") == "# mine\n"
    assert main(["plugins", "new", "demo", "--force"]) == 0
    assert path.read_text(encoding="utf-8") == render_plugin_template("demo")
    assert f"wrote {path}" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.py"]  # no temp file left


def test_template_is_valid_lint_clean_python(tmp_path: Path) -> None:
    source = render_plugin_template("my_plugin")
    compile(source, "my_plugin.py", "exec")
    assert "[my_plugin]" in source and "__PLUGIN_NAME__" not in source
    for needed in ("def setup(ctx", "ctx.config.get(", "ctx.log.", "ctx.register_listener(",
                   "def on_scene_enter(", "def teardown(ctx", "on_choice_render"):  # fmt: skip
        assert needed in source
    path = tmp_path / "my_plugin.py"
    path.write_text(source, encoding="utf-8")
    ruff = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if "No module named ruff" in ruff.stderr:
        pytest.skip("ruff is not installed")
    assert ruff.returncode == 0, ruff.stdout + ruff.stderr
    with pytest.raises(ValueError):
        render_plugin_template("_hidden")


def test_render_table_detail_and_colour() -> None:
    rows = [
        {"name": "a", "source": "folder", "status": "error", "running": "previous",
         "hooks": ["on_scene_enter"], "calls": 3, "errors": 0, "problems": ["p1"],
         "error": {"message": "boom", "file": "/x/a.py", "line": 4, "phase": "setup"}},
        {"name": "b", "source": "installed", "status": "warning", "running": "current",
         "hooks": [], "calls": 0, "errors": 0, "problems": ["p1", "p2"], "last_error": "e"},
        {"name": "c", "source": "folder", "status": "failing", "running": "current",
         "hooks": ["on_asset_saved"], "calls": 2, "errors": 2, "last_error": "RuntimeError: x"},
    ]  # fmt: skip
    plain = render_table(rows, color=False).splitlines()
    assert plain[1].endswith("setup failed: /x/a.py:4: boom")
    assert plain[2].endswith("p1 (+1 more)") and plain[2].split()[4] == "-"
    assert plain[3].endswith("RuntimeError: x")
    assert "\033[" not in "\n".join(plain)
    colored = render_table(rows, color=True)
    assert "\033[31merror" in colored and "\033[33mwarning" in colored


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--plug", "x"],
        ["serve", "--plugin-r", "x"],
        ["serve", "--no-w"],
        ["plugins", "new", "demo", "--plugin-r", "x"],
        ["plugins", "new", "demo", "--forc"],
        ["plugins", "list", "--serv", "http://127.0.0.1:1"],
    ],
)
def test_abbreviated_options_are_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_full_option_names_still_parse() -> None:
    args = build_parser().parse_args(["serve", "--plugin", "x", "--plugin-root", "r", "--no-watch"])
    assert args.plugin == ["x"] and args.plugin_root == "r" and args.no_watch
    new = build_parser().parse_args(["plugins", "new", "demo", "--plugin-root", "r", "--force"])
    assert isinstance(new, argparse.Namespace) and new.force and new.plugin_root == "r"


def test_a_token_that_starts_with_a_dash_is_read_as_the_value() -> None:
    """About one generated token in 64 used to start with '-', and `--token -abc` was then a
    usage error; new tokens never start with '-', and old ones still work as a value."""
    from comfyvn.cli import _join_dash_values, build_parser

    argv = _join_dash_values(["plugins", "list", "--token", "-abc_DEF", "--server", "http://x"])
    args = build_parser().parse_args(argv)
    assert args.token == "-abc_DEF" and args.server == "http://x"
