"""Asset errors. Each carries the HTTP status the API answers with, so routes stay thin."""

from __future__ import annotations

from comfyvn.core.errors import RefusedError

__all__ = [
    "AssetConflict",
    "AssetEmpty",
    "AssetError",
    "AssetInputError",
    "AssetNotFound",
    "AssetPathError",
    "AssetTooLarge",
]


class AssetError(RefusedError):
    """Base class; ``status`` is the HTTP status for the API answer."""

    status = 400


class AssetPathError(AssetError):
    """A path is unsafe (outside the assets root), missing, or not a regular file."""

    status = 400


class AssetEmpty(AssetError):
    """Empty content is never an asset."""

    status = 400


class AssetInputError(AssetError):
    """A type bucket, meta object or filter is malformed."""

    status = 422


class AssetNotFound(AssetError):
    status = 404


class AssetConflict(AssetError):
    """The request contradicts what the registry already holds."""

    status = 409


class AssetTooLarge(AssetError):
    status = 413
