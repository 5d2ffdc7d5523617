"""What ``comfyvn studio`` was asked to do, plus the ``COMFYVN_STUDIO_*`` knobs tests shrink."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from comfyvn.core.env import env_number_or_default

__all__ = ["HOOK_TABS", "WORKSPACES", "StudioOptions", "Timeouts"]

log = logging.getLogger("comfyvn.gui")

WORKSPACES = ("scenario", "system")
HOOK_TABS = ("stream", "plugins")  # the Modder Hooks dock's tabs
DEFAULT_REFRESH_S = 15


def _env_seconds(name: str, default: float, minimum: float = 0.05) -> float:
    return env_number_or_default(name, default, minimum=minimum, log=log)


_HTTP_S = 30.0  # one API call (health checks are bounded server-side by their own timeout)
_PROBE_S = 1.5  # "is a server of this data dir already running?"
_SERVER_START_S = 60.0  # a spawned `comfyvn serve` must print its ready line by then
_RECONNECT_MAX_S = 5.0  # hook stream backoff ceiling


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Network bounds: a dead or hung server costs at most these, and never on the GUI thread."""

    http_s: float = _HTTP_S
    probe_s: float = _PROBE_S
    server_start_s: float = _SERVER_START_S
    reconnect_max_s: float = _RECONNECT_MAX_S

    @classmethod
    def from_env(cls) -> Timeouts:
        return cls(
            http_s=_env_seconds("COMFYVN_STUDIO_HTTP_TIMEOUT", _HTTP_S),
            probe_s=_env_seconds("COMFYVN_STUDIO_PROBE_TIMEOUT", _PROBE_S),
            server_start_s=_env_seconds("COMFYVN_STUDIO_SERVER_START_TIMEOUT", _SERVER_START_S),
            reconnect_max_s=_env_seconds("COMFYVN_STUDIO_RECONNECT_MAX", _RECONNECT_MAX_S),
        )


@dataclass(slots=True)
class StudioOptions:
    server: str | None = None
    token: str | None = None
    data_dir: Path | None = None
    workspace: str | None = None  # None: the last one used, else Scenario
    scene: str | None = None  # play this scene (catalogue id) in the Scenario workspace at start
    hooks_tab: str | None = None  # open this Modder Hooks tab (stream|plugins); None: the last one
    screenshot: Path | None = None
    check: bool = False  # attach, say to what, exit: 0 once the hook stream is live, else 1
    wait_s: float = 20.0
    # screenshots use the default layout, so pictures are repeatable; checks leave it alone
    remember_layout: bool = True
    timeouts: Timeouts = field(default_factory=Timeouts.from_env)

    def resolved_data_dir(self) -> Path:
        if self.data_dir is not None:
            return Path(self.data_dir).expanduser().resolve()
        env = os.environ.get("COMFYVN_DATA_DIR")
        return Path(env).expanduser().resolve() if env else (Path.home() / ".comfyvn").resolve()
