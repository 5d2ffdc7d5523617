"""The registry's SQLite table (its own WAL file, apart from the event log).

One writer connection serialized by the registry's lock (which also excludes the other
processes on the same data dir, so a check made before a write still holds at the write); each
reading thread gets its own connection, so listing never waits for a registration in progress.
Writes are ``BEGIN IMMEDIATE`` transactions: SQLite's own write lock, waited for up to the busy
timeout, against any writer that does not take the registry's lock.
"""

from __future__ import annotations

import json
import mimetypes
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["AssetRecord", "AssetStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS assets (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    uid        TEXT NOT NULL UNIQUE,
    sha256     TEXT NOT NULL,
    type       TEXT NOT NULL,
    path       TEXT NOT NULL UNIQUE,
    bytes      INTEGER NOT NULL,
    meta       TEXT NOT NULL,
    search     TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS assets_by_type ON assets(type);
CREATE TABLE IF NOT EXISTS asset_tags (
    tag TEXT NOT NULL,
    uid TEXT NOT NULL,
    PRIMARY KEY (tag, uid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS asset_tags_by_uid ON asset_tags(uid);
"""

_COLUMNS = "uid, sha256, type, path, bytes, meta, created_at, updated_at"


@dataclass(frozen=True, slots=True)
class AssetRecord:
    uid: str
    sha256: str
    type: str
    path: str  # relative to the assets root, forward slashes
    bytes: int
    meta: dict[str, Any]
    created_at: float
    updated_at: float

    @property
    def sidecar(self) -> str:
        return self.path + ".asset.json"

    @property
    def media_type(self) -> str:
        return mimetypes.guess_type(self.path)[0] or "application/octet-stream"

    def sidecar_dict(self) -> dict[str, Any]:
        """What the sidecar JSON next to the file holds."""
        return {
            "uid": self.uid,
            "type": self.type,
            "path": self.path,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "meta": self.meta,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    def to_dict(self) -> dict[str, Any]:
        """The API shape."""
        return {
            **self.sidecar_dict(),
            "sidecar": self.sidecar,
            "media_type": self.media_type,
            "url": f"/api/assets/{self.uid}/file",
        }


def tags_of(meta: dict[str, Any]) -> list[str]:
    tags = meta.get("tags", [])
    return sorted({t.strip().lower() for t in tags if t.strip()}) if isinstance(tags, list) else []


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def search_text(path: str, asset_type: str, meta: dict[str, Any]) -> str:
    """What ``q`` matches: the path, the type and every string value in the meta."""
    return "\n".join([path, asset_type, *_strings(meta)]).lower()


def _record(row: tuple[Any, ...]) -> AssetRecord:
    uid, sha, asset_type, path, size, meta, created, updated = row
    return AssetRecord(uid, sha, asset_type, path, size, json.loads(meta), created, updated)


class AssetStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = self._connect()
        self._conn.executescript(_SCHEMA)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=30.0, check_same_thread=False, isolation_level=None
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    # -- reads (any thread) ------------------------------------------------------------------
    def get(self, uid: str) -> AssetRecord | None:
        row = (
            self._reader()
            .execute(f"SELECT {_COLUMNS} FROM assets WHERE uid = ?", (uid,))
            .fetchone()
        )
        return _record(row) if row else None

    def get_by_path(self, path: str) -> AssetRecord | None:
        row = (
            self._reader()
            .execute(f"SELECT {_COLUMNS} FROM assets WHERE path = ?", (path,))
            .fetchone()
        )
        return _record(row) if row else None

    def query(
        self,
        *,
        asset_type: str | None,
        tag: str | None,
        q: str | None,
        limit: int,
        offset: int,
    ) -> tuple[list[AssetRecord], int]:
        """Newest first. ``asset_type`` matches the bucket and its sub-buckets."""
        where: list[str] = []
        args: list[Any] = []
        if asset_type:
            # 'character' matches 'character' and 'character.*' ('/' sorts right after '.').
            where.append("(type = ? OR (type > ? AND type < ?))")
            args += [asset_type, asset_type + ".", asset_type + "/"]
        if tag:
            where.append("uid IN (SELECT uid FROM asset_tags WHERE tag = ?)")
            args.append(tag.strip().lower())
        if q:
            where.append("instr(search, ?) > 0")
            args.append(q.lower())
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        conn = self._reader()
        total = conn.execute(f"SELECT count(*) FROM assets {clause}", args).fetchone()[0]
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM assets {clause} ORDER BY seq DESC LIMIT ? OFFSET ?",
            [*args, limit, offset],
        ).fetchall()
        return [_record(r) for r in rows], total

    def count(self) -> int:
        return self._reader().execute("SELECT count(*) FROM assets").fetchone()[0]

    # -- writes (callers hold the registry lock) --------------------------------------------
    def _set_tags(self, uid: str, tags: Iterable[str]) -> None:
        self._conn.execute("DELETE FROM asset_tags WHERE uid = ?", (uid,))
        self._conn.executemany(
            "INSERT INTO asset_tags(tag, uid) VALUES (?, ?)", [(t, uid) for t in tags]
        )

    def upsert(self, rec: AssetRecord, *, insert: bool) -> None:
        meta = json.dumps(rec.meta, separators=(",", ":"), ensure_ascii=False)
        search = search_text(rec.path, rec.type, rec.meta)
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if insert:
                conn.execute(
                    "INSERT INTO assets(uid, sha256, type, path, bytes, meta, search, created_at,"
                    " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        rec.uid,
                        rec.sha256,
                        rec.type,
                        rec.path,
                        rec.bytes,
                        meta,
                        search,
                        rec.created_at,
                        rec.updated_at,
                    ),
                )
            else:
                conn.execute(
                    "UPDATE assets SET path = ?, meta = ?, search = ?, updated_at = ?"
                    " WHERE uid = ?",
                    (rec.path, meta, search, rec.updated_at, rec.uid),
                )
            self._set_tags(rec.uid, tags_of(rec.meta))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def delete(self, uid: str) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("DELETE FROM asset_tags WHERE uid = ?", (uid,))
            conn.execute("DELETE FROM assets WHERE uid = ?", (uid,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()
        self._conn.close()
