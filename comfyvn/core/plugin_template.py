"""The plugin that ``comfyvn plugins new NAME`` writes: commented, and working unchanged.

Kept here (not in the CLI) so the tests and the docs render the very same text.
"""

from __future__ import annotations

import keyword

__all__ = ["check_plugin_name", "render_plugin_template"]

_PLACEHOLDER = "__PLUGIN_NAME__"

_TEMPLATE = '''\
"""__PLUGIN_NAME__: a ComfyVN Studio plugin (written by `comfyvn plugins new`).

It works as it is: each scene entry is logged ("entered <node>") and appended as one JSON line
to <data-dir>/__PLUGIN_NAME__.jsonl. Edit it from there.

Lifecycle
    The server imports this file in dev mode (`comfyvn serve --dev`) from the plugin folder
    ($COMFYVN_MOD_PLUGIN_ROOT, default dev/modder_hooks), then calls setup(ctx). Every
    module-level function named after a hook (on_scene_enter, on_choice_render, on_asset_saved,
    ...; see `GET /api/modder/hooks`) receives that hook's payload, a private dict. Hooks run on
    this plugin's own thread, after the event is committed: a slow or raising hook only affects
    this plugin. `async def` hooks work too.

Reload
    With `comfyvn serve --dev` the server watches the plugin folder: saving this file reloads
    the plugin by itself within about a second (or run `comfyvn plugins reload __PLUGIN_NAME__`).
    The new version is imported and set up first; only if that succeeds does teardown(ctx) run
    on the old one and the new one take over. If the new version fails (a syntax error, an
    exception in setup), the old version keeps running and `comfyvn plugins list` shows the
    error with its file and line. Listeners registered through ctx are removed on unload.

Where output goes
    ctx.log is the logger "comfyvn.plugin.__PLUGIN_NAME__": its lines appear in the server log,
    in `comfyvn plugins list`, in GET /api/modder/hooks/plugins (per plugin, "log") and in the
    Studio's Plugins tab. print() from plugin code lands in the same log.

Config
    ctx.config is the [__PLUGIN_NAME__] table of <data-dir>/plugins.toml (an empty dict if
    there is none); it is read again on every reload. For example:

        [__PLUGIN_NAME__]
        greeting = "hello from plugins.toml"
        log_choices = false
"""

from __future__ import annotations

import json
from typing import Any

# The context of the running version, kept for the module-level hooks below. Each reload imports
# this file afresh, so a new version never sees the old version's globals.
_ctx: Any = None


def setup(ctx: Any) -> None:
    """Called once after import. Raising here keeps the previous version running."""
    global _ctx
    _ctx = ctx
    greeting = ctx.config.get("greeting", "hello")  # a default when plugins.toml has none
    ctx.state["scenes_entered"] = 0
    ctx.state["out_file"] = ctx.data_dir / f"{ctx.name}.jsonl"
    ctx.log.info("%s: %s is ready; writing to %s", greeting, ctx.name, ctx.state["out_file"])
    if ctx.config.get("log_choices", True):
        # A listener receives (event, payload); removed automatically when this version unloads.
        ctx.register_listener(_choices_shown, events=["on_choice_render"])


def on_scene_enter(payload: dict[str, Any]) -> None:
    """A hook: the player entered a scene node."""
    if _ctx is None:  # an event that arrived before setup() finished
        return
    _ctx.state["scenes_entered"] += 1
    _ctx.log.info("entered %s (scene %s)", payload["node"], payload["scene_id"])
    record = {key: payload[key] for key in ("scene_id", "node", "pov", "timestamp")}
    with open(_ctx.state["out_file"], "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\\n")


def _choices_shown(event: str, payload: dict[str, Any]) -> None:
    labels = ", ".join(choice["label"] for choice in payload["choices"])
    _ctx.log.info("choices at %s: %s", payload["node"], labels or "(none)")


def teardown(ctx: Any) -> None:
    """Called before this version unloads (reload, file deleted, server shutdown): close what
    setup() opened. Keep it short: it is bounded by the plugin call budget."""
    ctx.log.info("%s stopping after %d scene entries", ctx.name, ctx.state["scenes_entered"])
'''


def check_plugin_name(name: str) -> str | None:
    """Why ``name`` cannot name a folder plugin, or None when it can."""
    if not name.isidentifier():
        return f"{name!r} is not a Python identifier (letters, digits and _, not first a digit)"
    if keyword.iskeyword(name):
        return f"{name!r} is a Python keyword"
    if name.startswith("_"):
        return f"{name!r} starts with '_': the plugin host skips such files"
    return None


def render_plugin_template(name: str) -> str:
    """The source of a new plugin called ``name`` (its file is ``<name>.py``)."""
    problem = check_plugin_name(name)
    if problem is not None:
        raise ValueError(problem)
    return _TEMPLATE.replace(_PLACEHOLDER, name)
