"""The asset registry: content-addressed files, sidecars, a SQLite index and the asset hooks."""

from __future__ import annotations

from .config import AssetConfig
from .errors import (
    AssetConflict,
    AssetEmpty,
    AssetError,
    AssetInputError,
    AssetNotFound,
    AssetPathError,
    AssetTooLarge,
)
from .registry import UID_LENGTH, AssetPage, AssetRegistry, Change, merge_patch
from .store import AssetRecord

__all__ = [
    "UID_LENGTH",
    "AssetConfig",
    "AssetConflict",
    "AssetEmpty",
    "AssetError",
    "AssetInputError",
    "AssetNotFound",
    "AssetPage",
    "AssetPathError",
    "AssetRecord",
    "AssetRegistry",
    "AssetTooLarge",
    "Change",
    "merge_patch",
]
