"""The asset registry: content-addressed files under one root, a sidecar next to each, a SQLite
index, and the asset hooks.

Order of work for a new asset: stage and hash the content, move the file into its bucket folder
(atomic), write the sidecar (atomic), commit the row, then emit ``on_asset_sidecar_written``,
``on_asset_saved`` and ``on_asset_registered``. A crash at any point leaves at worst an
unindexed file that the next registration of the same content adopts.

Several processes may share one data dir (``serve --workers N``): every read-modify-write (a
registration, a meta update, a removal) runs under :attr:`AssetRegistry.lock`, a thread lock
plus an ``flock`` on ``<data-dir>/assets.lock``, so the check for an existing row, the file and
sidecar writes and the commit are one step for all threads and processes. Reads take no lock.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from comfyvn.core import modder_hooks
from comfyvn.core.file_lock import FileLock
from comfyvn.core.hook_bus import Emitted, HookBus
from comfyvn.core.json_input import JsonInputError, check_json_value

from .config import AssetConfig
from .errors import (
    AssetConflict,
    AssetEmpty,
    AssetInputError,
    AssetNotFound,
    AssetPathError,
    AssetTooLarge,
)
from .files import (
    StagedFile,
    StagingWriter,
    atomic_write_json,
    clear_staging,
    hash_file,
    install,
    removing,
    stage_stream,
)
from .paths import (
    STAGING_DIR,
    bucket_dir,
    checked_target,
    relative,
    resolve_inside,
    safe_filename,
    sidecar_for,
    validate_type,
)
from .store import AssetRecord, AssetStore

__all__ = ["UID_LENGTH", "AssetPage", "AssetRegistry", "Change", "merge_patch", "validate_meta"]

log = logging.getLogger("comfyvn.assets")

UID_LENGTH = 32  # hex digits of the SHA-256 (128 bits)
LOCK_FILE = "assets.lock"  # next to assets.sqlite3; never deleted (see comfyvn.core.file_lock)
MAX_PAGE = 1000
MAX_OFFSET = 2**63 - 1  # SQLite's INTEGER range; beyond it sqlite3 raises OverflowError


@dataclass(frozen=True, slots=True)
class Change:
    """What a registry call did: the record after it, and the events it emitted (in order)."""

    record: AssetRecord
    created: bool = False
    events: list[Emitted] = field(default_factory=list)

    @property
    def last_seq(self) -> int | None:
        return self.events[-1].seq if self.events else None


@dataclass(frozen=True, slots=True)
class AssetPage:
    items: list[AssetRecord]
    total: int


@dataclass(slots=True)
class _Content:
    sha256: str
    size: int
    head: bytes
    filename: str | None = None
    staged: StagedFile | None = None  # content to move into the tree
    in_place: Path | None = None  # or a file already under the root, registered where it is


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON Merge Patch: objects merge recursively, ``null`` deletes a key."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def validate_meta(meta: Any, max_bytes: int, *, what: str = "meta") -> dict[str, Any]:
    """A private deep copy of a JSON object; ``tags``, when present, is a list of strings."""
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise AssetInputError(f"{what} must be a JSON object, got {type(meta).__name__}")
    try:
        check_json_value(meta, what=what)
    except JsonInputError as exc:
        raise AssetInputError(str(exc)) from None
    try:
        text = json.dumps(meta, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise AssetInputError(f"{what} is not plain JSON: {exc}") from None
    size = len(text.encode())
    if size > max_bytes:
        raise AssetTooLarge(f"{what} is {size} bytes of JSON; the limit is {max_bytes} bytes")
    copy: dict[str, Any] = json.loads(text)
    tags = copy.get("tags")
    if tags is not None and (
        not isinstance(tags, list) or not all(isinstance(t, str) for t in tags)
    ):
        raise AssetInputError(f"{what}.tags must be a list of strings")
    return copy


class AssetRegistry:
    """Safe for threads and processes: mutations are serialized by :attr:`lock` (threads of
    this process and every process on the same data dir), reads run concurrently."""

    def __init__(self, config: AssetConfig, bus: HookBus | None = None) -> None:
        self.config = config
        config.root.mkdir(parents=True, exist_ok=True)
        # Containment checks compare real paths, so the root itself must be a real path.
        self.root = config.root.resolve()
        self._bus = bus
        config.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = FileLock(config.db_path.with_name(LOCK_FILE))
        self.staging = self.root / STAGING_DIR
        leftovers = clear_staging(self.staging)  # only dead writers' files: see clear_staging
        if leftovers:
            log.info("removed %d interrupted upload(s) from %s", leftovers, self.staging)
        with self.lock:  # the schema and WAL mode are set by one process at a time
            self._store = AssetStore(config.db_path)
        self._closed = False

    @classmethod
    def open(cls, data_dir: Path, bus: HookBus | None = None) -> AssetRegistry:
        return cls(AssetConfig.from_env(data_dir), bus)

    # -- registration ------------------------------------------------------------------------
    def register_bytes(
        self,
        data: bytes,
        asset_type: str,
        meta: dict[str, Any] | None = None,
        *,
        filename: str | None = None,
    ) -> Change:
        """Store ``data`` as a new asset file in the type's bucket folder."""
        asset_type, clean = self._check(asset_type, meta)
        if not data:
            raise AssetEmpty("content is empty; an asset needs at least one byte")
        if len(data) > self.config.max_bytes:
            raise AssetTooLarge(
                f"content is {len(data)} bytes; the asset size limit is {self.config.max_bytes}"
            )
        staged = stage_stream(
            io.BytesIO(data), self.staging, self.config.max_bytes, fsync=self.config.fsync
        )
        return self._register(_staged_content(staged, filename), asset_type, clean)

    def register_file(
        self,
        path: str | Path,
        asset_type: str,
        meta: dict[str, Any] | None = None,
        copy: bool = True,
    ) -> Change:
        """``copy=True``: copy any readable file into the bucket folder. ``copy=False``: register
        a file that already lives under the assets root where it is (path-checked)."""
        asset_type, clean = self._check(asset_type, meta)
        if not copy:
            real = resolve_inside(self.root, path)
            sha, size, head = hash_file(real, self.config.max_bytes)
            content = _Content(sha, size, head, filename=real.name, in_place=real)
            return self._register(content, asset_type, clean)
        src = Path(path)
        if not src.is_file():
            raise AssetPathError(f"no regular file at {str(path)!r}")
        with src.open("rb") as fh:
            staged = stage_stream(fh, self.staging, self.config.max_bytes, fsync=self.config.fsync)
        return self._register(_staged_content(staged, src.name), asset_type, clean)

    def register_staged(
        self,
        staged: StagedFile,
        asset_type: str,
        meta: dict[str, Any] | None = None,
        *,
        filename: str | None = None,
    ) -> Change:
        """Adopt content already streamed into :meth:`staging_writer` (the upload route)."""
        try:
            asset_type, clean = self._check(asset_type, meta)
        except BaseException:
            staged.discard()
            raise
        return self._register(_staged_content(staged, filename), asset_type, clean)

    def staging_writer(self) -> StagingWriter:
        return StagingWriter(self.staging, self.config.max_bytes, fsync=self.config.fsync)

    def _check(self, asset_type: str, meta: Any) -> tuple[str, dict[str, Any]]:
        return validate_type(asset_type), validate_meta(meta, self.config.max_meta_bytes)

    def _register(self, content: _Content, asset_type: str, meta: dict[str, Any]) -> Change:
        uid = content.sha256[:UID_LENGTH]
        try:
            with self.lock:
                self._ensure_open()
                existing = self._store.get(uid)
                if existing is not None:
                    return self._resave(existing, content, asset_type, meta)
                if content.in_place is not None:
                    target = content.in_place
                else:
                    name = safe_filename(content.filename, uid, content.head)
                    target = bucket_dir(self.root, asset_type) / name
                rel = relative(self.root, target)
                self._check_path_free(rel, uid)
                now = time.time()
                record = AssetRecord(
                    uid, content.sha256, asset_type, rel, content.size, meta, now, now
                )
                self._write_new(record, content)
                events = self._emit_asset(record, now, resaved=False, registered=True)
                return Change(record, created=True, events=events)
        finally:
            if content.staged is not None:
                content.staged.discard()  # a no-op once the file was moved into place

    def _check_path_free(self, rel: str, uid: str) -> None:
        holder = self._store.get_by_path(rel)
        if holder is not None and holder.uid != uid:
            raise AssetConflict(
                f"{rel!r} is already registered as asset {holder.uid} with different "
                "content (the file changed since); remove that asset first"
            )

    def _target(self, rel: str, *, create: bool) -> Path:
        return checked_target(self.root, rel, create=create)

    def _write_new(self, record: AssetRecord, content: _Content) -> None:
        if content.staged is None:  # registered in place: the file is already there
            self._save(record, None)
            return
        target = self._target(record.path, create=True)
        install(content.staged, target)
        try:
            self._save(record, None)
        except BaseException:
            # Not a crash (those are covered by atomic writes): undo what this call created.
            target.unlink(missing_ok=True)
            raise

    def _save(self, record: AssetRecord, previous: AssetRecord | None) -> None:
        """Write the sidecar, then the row. When the row cannot be written the old sidecar is
        put back (or the new one removed), so the two never disagree and a refused call
        changes nothing, as the 503 for a storage error promises."""
        sidecar = sidecar_for(self._target(record.path, create=True))
        atomic_write_json(sidecar, record.sidecar_dict(), fsync=self.config.fsync)
        try:
            self._store.upsert(record, insert=previous is None)
        except BaseException:
            with contextlib.suppress(OSError):
                if previous is not None and previous.path == record.path:
                    atomic_write_json(sidecar, previous.sidecar_dict(), fsync=self.config.fsync)
                else:
                    sidecar.unlink(missing_ok=True)
            raise

    def _resave(
        self, existing: AssetRecord, content: _Content, asset_type: str, meta: dict[str, Any]
    ) -> Change:
        """Identical content again: same uid, meta merged, sidecar rewritten, no new row."""
        if existing.type != asset_type:
            raise AssetConflict(
                f"identical content is already registered as asset {existing.uid} with type "
                f"{existing.type!r}, not {asset_type!r}"
            )
        merged = validate_meta(
            merge_patch(existing.meta, meta), self.config.max_meta_bytes, what="merged meta"
        )
        path = existing.path
        if not (self.root / path).is_file():  # the file went missing: this one restores it
            if content.staged is not None:
                install(content.staged, self._target(path, create=True))
            elif content.in_place is not None:
                path = relative(self.root, content.in_place)
                self._check_path_free(path, existing.uid)
        now = time.time()
        record = replace(existing, meta=merged, path=path, updated_at=now)
        self._save(record, existing)
        events = self._emit_asset(record, now, resaved=True, registered=False)
        return Change(record, created=False, events=events)

    # -- reads -------------------------------------------------------------------------------
    def find(self, uid: str) -> AssetRecord | None:
        self._ensure_open()
        return self._store.get(uid)

    def get(self, uid: str) -> AssetRecord:
        record = self.find(uid)
        if record is None:
            raise AssetNotFound(f"no asset with uid {uid!r}")
        return record

    def list(
        self,
        type: str | None = None,
        tag: str | None = None,
        q: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> AssetPage:
        """Newest first; ``type`` matches the bucket and its sub-buckets."""
        self._ensure_open()
        if type is not None:
            validate_type(type)
        if not 1 <= limit <= MAX_PAGE:
            raise AssetInputError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
        if not 0 <= offset <= MAX_OFFSET:
            raise AssetInputError(f"offset must be from 0 to {MAX_OFFSET}, got {offset}")
        items, total = self._store.query(
            asset_type=type, tag=tag or None, q=q or None, limit=limit, offset=offset
        )
        return AssetPage(items, total)

    def count(self) -> int:
        return self._store.count()

    def file_path(self, uid: str) -> Path:
        """The asset's file, re-checked against the root (a symlink may have been swapped in)."""
        record = self.get(uid)
        try:
            return resolve_inside(self.root, record.path)
        except AssetPathError:
            raise AssetNotFound(
                f"the file of asset {uid} ({record.path!r}) is missing under the assets root"
            ) from None

    # -- updates -----------------------------------------------------------------------------
    def update_meta(self, uid: str, patch: dict[str, Any]) -> Change:
        """Apply a JSON Merge Patch to the meta, rewrite the sidecar, emit
        ``on_asset_sidecar_written`` then ``on_asset_meta_updated``. An empty patch is a no-op."""
        changes = validate_meta(patch, self.config.max_meta_bytes, what="meta patch")
        with self.lock:
            self._ensure_open()
            existing = self.get(uid)
            if not changes:
                return Change(existing)
            merged = validate_meta(
                merge_patch(existing.meta, changes), self.config.max_meta_bytes, what="meta"
            )
            now = time.time()
            record = replace(existing, meta=merged, updated_at=now)
            self._save(record, existing)
            events = self._emit_asset(record, now, resaved=False, registered=False)
            shared = _json_copy(merged)
            events.append(
                self._emit(
                    "on_asset_meta_updated",
                    {
                        "uid": record.uid,
                        "type": record.type,
                        "path": record.path,
                        "meta": shared,
                        "changes": _json_copy(changes),
                        "sidecar": record.sidecar,
                        "hook_event": "on_asset_meta_updated",
                        "timestamp": now,
                    },
                )
            )
            return Change(record, events=[e for e in events if e is not None])

    def remove(self, uid: str, delete_files: bool = False) -> Change:
        """Drop the row; with ``delete_files`` also the file and its sidecar. Emits
        ``on_asset_removed``."""
        with self.lock:
            self._ensure_open()
            record = self.get(uid)
            doomed: list[Path] = []
            if delete_files:
                target = self._target(record.path, create=False)
                doomed = [target, sidecar_for(target)]
            with removing(doomed):  # files go only once the row is gone, or not at all
                self._store.delete(uid)
            now = time.time()
            emitted = self._emit(
                "on_asset_removed",
                {
                    "uid": record.uid,
                    "type": record.type,
                    "path": record.path,
                    "deleted_files": delete_files,
                    "hook_event": "on_asset_removed",
                    "timestamp": now,
                },
            )
            return Change(record, events=[emitted] if emitted else [])

    # -- events ------------------------------------------------------------------------------
    def _emit(self, event: str, payload: dict[str, Any]) -> Emitted | None:
        bus = self._bus
        if bus is None:
            with contextlib.suppress(RuntimeError):
                bus = modder_hooks.current_bus()
        return bus.emit(event, payload) if bus is not None else None

    def _emit_asset(
        self, record: AssetRecord, now: float, *, resaved: bool, registered: bool
    ) -> list[Emitted]:
        """``on_asset_sidecar_written``, then (after a registration) ``on_asset_saved`` and,
        for a new row, ``on_asset_registered``; all with the same payload but ``hook_event``."""
        names = ["on_asset_sidecar_written"]
        if registered or resaved:
            names.append("on_asset_saved")
        if registered:
            names.append("on_asset_registered")
        meta = _json_copy(record.meta)  # private to the bus; never mutated afterwards
        base = {
            "uid": record.uid,
            "type": record.type,
            "path": record.path,
            "meta": meta,
            "sidecar": record.sidecar,
            "bytes": record.bytes,
            "timestamp": now,
            "resaved": resaved,
        }
        emitted = [self._emit(name, {**base, "hook_event": name}) for name in names]
        return [e for e in emitted if e is not None]

    # -- lifecycle ---------------------------------------------------------------------------
    def _ensure_open(self) -> None:
        if self._closed:
            raise RuntimeError("the asset registry is closed")

    def close(self) -> None:
        with self.lock:
            if not self._closed:
                self._closed = True
                self._store.close()


def _staged_content(staged: StagedFile, filename: str | None) -> _Content:
    return _Content(staged.sha256, staged.size, staged.head, filename=filename, staged=staged)


def _json_copy(value: Any) -> Any:
    return json.loads(json.dumps(value))
