"""``<data-dir>/plugins.toml``: one table per plugin name, handed to the plugin as ``ctx.config``.

```toml
[example_plugin]
greeting = "hello"

[my_installed_plugin]
channel = "#studio"
```

Read again on every (re)load, so editing the file and reloading applies it. A file that is not
valid TOML is reported (file, line) and every plugin gets an empty config until it is fixed.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CONFIG_FILE", "PluginConfig", "read_plugin_config"]

CONFIG_FILE = "plugins.toml"
MAX_CONFIG_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class PluginConfig:
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str | None = None

    def for_plugin(self, name: str) -> dict[str, Any]:
        table = self.tables.get(name)
        return dict(table) if isinstance(table, dict) else {}


def read_plugin_config(data_dir: Path) -> PluginConfig:
    path = data_dir / CONFIG_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return PluginConfig()
    except OSError as exc:
        return PluginConfig(error=f"{path}: cannot read: {exc.strerror or exc}")
    if len(raw) > MAX_CONFIG_BYTES:
        return PluginConfig(error=f"{path}: larger than {MAX_CONFIG_BYTES} bytes; not read")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return PluginConfig(error=f"{path}: not valid UTF-8")
    except tomllib.TOMLDecodeError as exc:
        return PluginConfig(error=f"{path}: {exc}")
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    return PluginConfig(tables)
