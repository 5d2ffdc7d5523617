"""Names and paths: type buckets, safe file names, and keeping every path inside the root."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path, PurePosixPath

from .errors import AssetInputError, AssetPathError

__all__ = [
    "SIDECAR_SUFFIX",
    "STAGING_DIR",
    "bucket_dir",
    "check_path_length",
    "checked_target",
    "relative",
    "resolve_inside",
    "safe_filename",
    "sidecar_for",
    "sniff_extension",
    "validate_type",
]

SIDECAR_SUFFIX = ".asset.json"
STAGING_DIR = ".staging"
# What Linux and macOS accept; beyond this the OS answers ENAMETOOLONG, which is the client's
# input, not the server's storage failing.
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096
MAX_TYPE_LENGTH = 128
_TYPE_RE = re.compile(r"[a-z0-9][a-z0-9_-]*(?:\.[a-z0-9][a-z0-9_-]*)*")
_STEM_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_EXT_RE = re.compile(r"[a-z0-9]{1,10}")


def validate_type(value: object) -> str:
    """A type bucket is dotted lowercase words (``character.portrait``); each word is a folder."""
    if not isinstance(value, str):
        raise AssetInputError(f"type must be a string, got {type(value).__name__}")
    if not value:
        raise AssetInputError(
            "type is empty; use a dotted bucket name such as 'character.portrait'"
        )
    if len(value) > MAX_TYPE_LENGTH:
        raise AssetInputError(f"type is longer than {MAX_TYPE_LENGTH} characters")
    if not _TYPE_RE.fullmatch(value):
        raise AssetInputError(
            f"type {value!r} is not a valid bucket name: use lowercase letters, digits, '_' and "
            "'-' in dot-separated words, e.g. 'character.portrait'"
        )
    return value


def bucket_dir(root: Path, asset_type: str) -> Path:
    return root.joinpath(*asset_type.split("."))


def sniff_extension(head: bytes) -> str:
    """A file extension for content that came without a name (common image formats only)."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return "bin"


def safe_filename(name: str | None, uid: str, head: bytes = b"") -> str:
    """``<stem>-<uid12>.<ext>``: the uid suffix keeps different contents from colliding, and the
    stem never contains a dot, so a stored file can never look like a sidecar."""
    base = PurePosixPath((name or "").replace("\\", "/")).name
    stem, dot, ext = base.rpartition(".")
    if not dot or not stem:
        stem, ext = base, ""
    ext = ext.lower()
    if not _EXT_RE.fullmatch(ext):
        ext = sniff_extension(head)
    stem = _STEM_UNSAFE.sub("_", stem).strip("_-")[:64] or "asset"
    return f"{stem}-{uid[:12]}.{ext}"


def sidecar_for(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def relative(root: Path, path: Path) -> str:
    """A path relative to the assets root, with forward slashes (what payloads carry)."""
    return path.relative_to(root).as_posix()


def check_path_length(text: str) -> None:
    """Refuse a path the OS would refuse for its length, naming the part that is too long."""
    encoded = text.encode("utf-8", "surrogateescape")
    if len(encoded) > MAX_PATH_BYTES:
        raise AssetPathError(f"path is {len(encoded)} bytes long; the limit is {MAX_PATH_BYTES}")
    for part in PurePosixPath(text.replace("\\", "/")).parts:
        size = len(part.encode("utf-8", "surrogateescape"))
        if size > MAX_NAME_BYTES:
            shown = part[:32] + "..."
            raise AssetPathError(
                f"path part {shown!r} is {size} bytes long; a file or folder name is limited to "
                f"{MAX_NAME_BYTES} bytes"
            )


def resolve_inside(root: Path, raw: str | Path) -> Path:
    """The real path of an existing regular file under ``root``; anything else is refused.

    ``raw`` is relative to the root, or absolute but inside it. ``..`` is refused outright and
    symlinks are resolved before the containment check, so neither can leave the root.
    """
    text = str(raw)
    if not text.strip():
        raise AssetPathError("path is empty; name a file under the assets root")
    if "\x00" in text:
        raise AssetPathError("path contains a NUL byte")
    check_path_length(text)
    candidate = Path(text)
    if ".." in candidate.parts:
        raise AssetPathError(f"path {text!r} must not contain '..'")
    try:
        real = (root / candidate).resolve(strict=False)  # an absolute candidate replaces root
    except (OSError, RuntimeError) as exc:  # symlink loops and the like
        raise AssetPathError(f"path {text!r} cannot be resolved: {exc}") from None
    if not real.is_relative_to(root):
        if candidate.is_absolute() and not candidate.is_relative_to(root):
            raise AssetPathError(f"path {text!r} is outside the assets root")
        raise AssetPathError(f"path {text!r} resolves outside the assets root (symlink)")
    if real == root:
        raise AssetPathError(f"path {text!r} names the assets root, not a file")
    rel = real.relative_to(root)
    if rel.parts[0] == STAGING_DIR:
        raise AssetPathError(f"path {text!r} is inside the registry's staging folder")
    if real.name.endswith(SIDECAR_SUFFIX):
        raise AssetPathError(f"path {text!r} is a sidecar file, not an asset")
    if not real.exists():
        raise AssetPathError(f"no file at {text!r} under the assets root")
    if not real.is_file():
        raise AssetPathError(f"path {text!r} is not a regular file")
    return real


def checked_target(root: Path, rel: str | Path, *, create: bool) -> Path:
    """``root / rel``, about to be written or deleted, once every folder on the way is known to
    be a real folder under ``root``.

    A bucket or asset folder that is (or was swapped for) a symlink leading out of the root is
    refused, so no write or delete ever lands outside it. With ``create``, missing folders are
    made one level at a time after their parent passed the check, so nothing is created outside
    the root either.
    """
    target = root / rel
    current = root
    for part in target.parent.relative_to(root).parts:
        current = current / part
        if create:
            with contextlib.suppress(FileExistsError):
                current.mkdir()
        real = current.resolve()
        shown = relative(root, current)
        if not real.is_relative_to(root):
            raise AssetPathError(f"folder {shown!r} resolves outside the assets root (symlink)")
        if create and not real.is_dir():
            raise AssetPathError(f"{shown!r} under the assets root is a file, not a folder")
    return target
