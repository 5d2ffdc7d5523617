"""Example modder plugin: records every scene entry.

Loaded by the plugin host in dev mode (``comfyvn serve --dev``). Any module-level function named
after a hook receives that hook's payload (a private copy). This one logs the scene and node and
appends one JSON line per entry to ``$COMFYVN_DATA_DIR/example_plugin.jsonl``.
"""

import json
import logging
import os
from pathlib import Path

# The plugin's own logger: its lines show per plugin in the API, `comfyvn plugins list --log`
# and the Studio's Plugins tab, as well as in the server log.
log = logging.getLogger("comfyvn.plugin.example_plugin")


def on_scene_enter(payload: dict) -> None:
    log.info("scene %s entered node %s", payload["scene_id"], payload["node"])
    record = {key: payload[key] for key in ("scene_id", "node", "pov", "timestamp")}
    out = Path(os.environ["COMFYVN_DATA_DIR"]) / "example_plugin.jsonl"
    with out.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
