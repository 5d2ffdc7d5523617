"""Asset registry knobs, read from ``COMFYVN_*`` environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from comfyvn.core.env import env_flag, env_number

__all__ = ["DEFAULT_MAX_BYTES", "AssetConfig"]

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_META_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class AssetConfig:
    """Where assets live and how big they may be.

    ``fsync`` adds power-loss durability to file writes; without it a write is still atomic
    against a process crash (temp file + ``os.replace``), matching the event log's policy.
    """

    root: Path
    db_path: Path
    max_bytes: int = DEFAULT_MAX_BYTES
    max_meta_bytes: int = DEFAULT_MAX_META_BYTES
    fsync: bool = False

    @classmethod
    def from_env(cls, data_dir: Path) -> AssetConfig:
        """``COMFYVN_ASSETS_ROOT`` (default ``<data-dir>/assets``), ``COMFYVN_ASSET_MAX_BYTES``
        (default 64 MiB), ``COMFYVN_ASSET_MAX_META_BYTES`` (64 KiB), ``COMFYVN_ASSET_FSYNC``."""
        root_env = os.environ.get("COMFYVN_ASSETS_ROOT", "").strip()
        root = Path(root_env).expanduser() if root_env else Path(data_dir) / "assets"
        return cls(
            root=root.resolve(),
            db_path=Path(data_dir) / "assets.sqlite3",
            max_bytes=int(
                env_number("COMFYVN_ASSET_MAX_BYTES", DEFAULT_MAX_BYTES, minimum=1, integer=True)
            ),
            max_meta_bytes=int(
                env_number(
                    "COMFYVN_ASSET_MAX_META_BYTES", DEFAULT_MAX_META_BYTES, minimum=1, integer=True
                )
            ),
            fsync=env_flag("COMFYVN_ASSET_FSYNC"),
        )
