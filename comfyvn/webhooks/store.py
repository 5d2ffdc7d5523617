"""Webhook tables in the event log's SQLite file.

Living next to ``events`` is what makes the outbox exact: the bus writer inserts the delivery
rows inside the transaction that commits the events (:mod:`comfyvn.webhooks.outbox`). This
module owns its own connection for everything else (subscriptions, attempts, status updates).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from comfyvn.core.event_log import BatchSizer, connect

from .models import Attempt, Delivery, Subscription

__all__ = ["INSERT_DELIVERY_SQL", "Outcome", "WebhookStore"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_subscriptions (
    id                    TEXT PRIMARY KEY,
    url                   TEXT NOT NULL,
    events                TEXT NOT NULL,
    secret                TEXT NOT NULL,
    enabled               INTEGER NOT NULL DEFAULT 1,
    description           TEXT NOT NULL DEFAULT '',
    created_at            REAL NOT NULL,
    updated_at            REAL NOT NULL,
    old_secret            TEXT,
    old_secret_expires_at REAL,
    disabled_reason       TEXT,
    consecutive_failures  INTEGER NOT NULL DEFAULT 0,
    last_success_at       REAL,
    last_failure_at       REAL
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id       TEXT NOT NULL,
    event_seq        INTEGER,
    event_id         TEXT NOT NULL,
    event            TEXT NOT NULL,
    body             TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'pending',
    attempts         INTEGER NOT NULL DEFAULT 0,
    tries            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    last_status_code INTEGER,
    last_error       TEXT,
    last_latency_ms  REAL
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due
    ON webhook_deliveries(webhook_id, status, next_attempt_at);
CREATE INDEX IF NOT EXISTS webhook_deliveries_by_hook ON webhook_deliveries(webhook_id, id);
CREATE TABLE IF NOT EXISTS webhook_attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    started_at  REAL NOT NULL,
    latency_ms  REAL NOT NULL,
    status_code INTEGER,
    error       TEXT,
    response    TEXT,
    outcome     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_attempts_by_delivery ON webhook_attempts(delivery_id, id);
"""

INSERT_DELIVERY_SQL = (
    "INSERT INTO webhook_deliveries(webhook_id, event_seq, event_id, event, body, "
    "next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)

# A batch of attempt results, one JSON object each (WebhookStore.record), as a table.
_BATCH_FIELDS = (
    "id",
    "tries",
    "status",
    "next_attempt_at",
    "started_at",
    "latency_ms",
    "status_code",
    "error",
    "response",
    "outcome",
)
_BATCH = (
    "WITH r AS (SELECT key AS n, "
    + ", ".join(f"json_extract(value, '$.{f}') AS {f}" for f in _BATCH_FIELDS)
    + " FROM json_each(?)) "
)
_RECORD_DELIVERIES_SQL = _BATCH + (
    "UPDATE webhook_deliveries SET attempts = attempts + 1, tries = r.tries, "
    "status = r.status, next_attempt_at = r.next_attempt_at, updated_at = r.started_at, "
    "last_status_code = r.status_code, last_error = r.error, last_latency_ms = r.latency_ms "
    "FROM r WHERE webhook_deliveries.id = r.id"
)
# After the update: a delivery's attempt count is the number of the attempt just made.
_INSERT_ATTEMPTS_SQL = _BATCH + (
    "INSERT INTO webhook_attempts(delivery_id, attempt, started_at, latency_ms, status_code, "
    "error, response, outcome) SELECT d.id, d.attempts, r.started_at, r.latency_ms, "
    "r.status_code, r.error, r.response, r.outcome "
    "FROM r JOIN webhook_deliveries AS d ON d.id = r.id ORDER BY r.n"
)

_SUB_COLUMNS = [f.name for f in fields(Subscription)]
_DELIVERY_COLUMNS = [f.name for f in fields(Delivery)]


def _make_private(db: Path) -> None:
    """The file now holds signing secrets: owner-only, like ``api_token`` (SQLite creates the
    -wal/-shm files with the database file's mode)."""
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        with contextlib.suppress(OSError):
            os.chmod(path, 0o600)


def _insert_attempt(conn: sqlite3.Connection, a: Attempt) -> None:
    conn.execute(
        "INSERT INTO webhook_attempts(delivery_id, attempt, started_at, latency_ms, "
        "status_code, error, response, outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            a.delivery_id,
            a.number,
            a.started_at,
            a.latency_ms,
            a.status_code,
            a.error,
            a.response,
            a.outcome,
        ),
    )


@dataclass(slots=True)
class Outcome:
    """What one attempt did to its delivery (and maybe to its subscription)."""

    attempt: Attempt
    status: str  # pending | delivered | failed
    tries: int
    next_attempt_at: float | None
    effect: Literal["success", "retry", "exhausted", "gone", "none"]


class WebhookStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._conn = connect(self.path)
        self._lock = threading.Lock()
        self._conn.executescript(SCHEMA)
        _make_private(self.path)

    def close(self) -> None:
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._conn.close()

    @contextlib.contextmanager
    def _txn(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    # -- subscriptions -----------------------------------------------------------------------
    @staticmethod
    def _sub(row: Sequence[Any]) -> Subscription:
        values = dict(zip(_SUB_COLUMNS, row, strict=True))
        values["events"] = tuple(json.loads(values["events"]))
        values["enabled"] = bool(values["enabled"])
        return Subscription(**values)

    def list_subscriptions(self) -> list[Subscription]:
        rows = self._query(
            f"SELECT {', '.join(_SUB_COLUMNS)} FROM webhook_subscriptions ORDER BY created_at, id"
        )
        return [self._sub(r) for r in rows]

    def get_subscription(self, sub_id: str) -> Subscription | None:
        rows = self._query(
            f"SELECT {', '.join(_SUB_COLUMNS)} FROM webhook_subscriptions WHERE id = ?", (sub_id,)
        )
        return self._sub(rows[0]) if rows else None

    def insert_subscription(self, sub: Subscription) -> None:
        values = [getattr(sub, c) for c in _SUB_COLUMNS]
        values[_SUB_COLUMNS.index("events")] = json.dumps(list(sub.events))
        values[_SUB_COLUMNS.index("enabled")] = int(sub.enabled)
        with self._txn() as conn:
            conn.execute(
                f"INSERT INTO webhook_subscriptions({', '.join(_SUB_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(_SUB_COLUMNS))})",
                values,
            )

    def update_subscription(self, sub_id: str, **changes: Any) -> Subscription | None:
        if "events" in changes:
            changes["events"] = json.dumps(list(changes["events"]))
        if "enabled" in changes:
            changes["enabled"] = int(changes["enabled"])
        changes["updated_at"] = time.time()
        assigns = ", ".join(f"{k} = ?" for k in changes)
        with self._txn() as conn:
            cur = conn.execute(
                f"UPDATE webhook_subscriptions SET {assigns} WHERE id = ?",
                (*changes.values(), sub_id),
            )
            if cur.rowcount == 0:
                return None
        return self.get_subscription(sub_id)

    def delete_subscription(self, sub_id: str) -> bool:
        with self._txn() as conn:
            conn.execute(
                "DELETE FROM webhook_attempts WHERE delivery_id IN "
                "(SELECT id FROM webhook_deliveries WHERE webhook_id = ?)",
                (sub_id,),
            )
            conn.execute("DELETE FROM webhook_deliveries WHERE webhook_id = ?", (sub_id,))
            cur = conn.execute("DELETE FROM webhook_subscriptions WHERE id = ?", (sub_id,))
            return cur.rowcount > 0

    # -- deliveries --------------------------------------------------------------------------
    @staticmethod
    def _delivery(row: Sequence[Any]) -> Delivery:
        return Delivery(*row)

    _DSELECT = f"SELECT {', '.join(_DELIVERY_COLUMNS)} FROM webhook_deliveries"

    def get_delivery(self, delivery_id: int) -> Delivery | None:
        rows = self._query(f"{self._DSELECT} WHERE id = ?", (delivery_id,))
        return self._delivery(rows[0]) if rows else None

    def list_deliveries(
        self, sub_id: str, *, status: str | None, limit: int, before: int | None
    ) -> list[Delivery]:
        sql = f"{self._DSELECT} WHERE webhook_id = ?"
        args: list[Any] = [sub_id]
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        if before is not None:
            sql += " AND id < ?"
            args.append(before)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return [self._delivery(r) for r in self._query(sql, args)]

    def delivery_counts(self, sub_id: str) -> dict[str, int]:
        rows = self._query(
            "SELECT status, COUNT(*) FROM webhook_deliveries WHERE webhook_id = ? GROUP BY status",
            (sub_id,),
        )
        counts = {"pending": 0, "delivered": 0, "failed": 0}
        counts.update({status: n for status, n in rows})
        return counts

    def attempts(self, delivery_id: int) -> list[Attempt]:
        rows = self._query(
            "SELECT attempt, started_at, latency_ms, status_code, error, response, outcome "
            "FROM webhook_attempts WHERE delivery_id = ? ORDER BY id",
            (delivery_id,),
        )
        return [
            Attempt(
                delivery_id=delivery_id,
                webhook_id="",
                number=n,
                started_at=started,
                latency_ms=latency,
                status_code=code,
                error=error,
                response=response,
                outcome=outcome,
            )
            for n, started, latency, code, error, response, outcome in rows
        ]

    def due(
        self, sub_id: str, now: float, limit: int, exclude: Sequence[int] = ()
    ) -> list[Delivery]:
        """Pending rows due by ``now``, oldest first, leaving out the ids in ``exclude``.

        They come back as one JSON value: each result row would be a step that takes the GIL
        back, and with the sending thread busy every one of those waits (a 64-row fetch took
        20 ms). JSON renders REAL with 15 significant digits, so the timestamps of these
        records are that close, not exact; the worker reads only the id, event, tries and body.
        """
        [(rows,)] = self._query(
            f"SELECT json_group_array(json_array({', '.join(_DELIVERY_COLUMNS)})) "
            f"FROM ({self._DSELECT} WHERE webhook_id = ? AND status = 'pending' "
            "AND next_attempt_at <= ? AND id NOT IN (SELECT value FROM json_each(?)) "
            "ORDER BY next_attempt_at, id LIMIT ?)",
            (sub_id, now, json.dumps(list(exclude)), limit),
        )
        due = [self._delivery(r) for r in json.loads(rows)]
        due.sort(key=lambda d: (d.next_attempt_at, d.id))  # aggregate order is not promised
        return due

    def next_due_after(self, sub_ids: Sequence[str], now: float) -> float | None:
        best: float | None = None
        for sub_id in sub_ids:
            rows = self._query(
                "SELECT MIN(next_attempt_at) FROM webhook_deliveries "
                "WHERE webhook_id = ? AND status = 'pending' AND next_attempt_at > ?",
                (sub_id, now),
            )
            value = rows[0][0]
            if value is not None and (best is None or value < best):
                best = value
        return best

    def insert_ping(self, sub_id: str, msg_id: str, body: str, attempt: Attempt) -> int:
        """Log a ping (already sent) as a finished delivery with its single attempt."""
        a = attempt
        status = "delivered" if a.ok else "failed"
        with self._txn() as conn:
            cur = conn.execute(
                "INSERT INTO webhook_deliveries(webhook_id, event_seq, event_id, event, body, "
                "status, attempts, tries, next_attempt_at, created_at, updated_at, "
                "last_status_code, last_error, last_latency_ms) "
                "VALUES (?, NULL, ?, 'ping', ?, ?, 1, 1, NULL, ?, ?, ?, ?, ?)",
                (
                    sub_id,
                    msg_id,
                    body,
                    status,
                    a.started_at,
                    a.started_at,
                    a.status_code,
                    a.error,
                    a.latency_ms,
                ),
            )
            delivery_id = int(cur.lastrowid or 0)
            a.delivery_id, a.number = delivery_id, 1
            _insert_attempt(conn, a)
            return delivery_id

    def record(self, outcomes: Sequence[Outcome], disable_after: int) -> list[str]:
        """Log attempts and apply their effects in one transaction; returns disabled sub ids.

        A batch is a few statements whatever its size (its rows travel as one JSON array):
        the worker's database thread then takes the GIL a few times per batch, not a few times
        per attempt, and so never holds up the thread that sends. The attempt numbers are the
        table's (``Attempt.number`` is not filled in here)."""
        disabled: list[str] = []
        if not outcomes:
            return disabled
        rows = json.dumps(
            [
                {
                    "id": o.attempt.delivery_id,
                    "tries": o.tries,
                    "status": o.status,
                    "next_attempt_at": o.next_attempt_at,
                    "started_at": o.attempt.started_at,
                    "latency_ms": o.attempt.latency_ms,
                    "status_code": o.attempt.status_code,
                    "error": o.attempt.error,
                    "response": o.attempt.response,
                    "outcome": o.attempt.outcome,
                }
                for o in outcomes
            ]
        )
        with self._txn() as conn:
            # Rows deleted meanwhile (their subscription was) get no attempt, as nothing joins.
            conn.execute(_RECORD_DELIVERIES_SQL, (rows,))
            conn.execute(_INSERT_ATTEMPTS_SQL, (rows,))
            # Subscription effects in order. Successes and retries only reset the failure count
            # and set timestamps, so a run of them comes down to the last of each.
            stamps: dict[str, list[float | None]] = {}
            for o in outcomes:
                sub_id, at = o.attempt.webhook_id, o.attempt.started_at
                if o.effect == "success":
                    stamps.setdefault(sub_id, [None, None])[0] = at
                elif o.effect == "retry":
                    stamps.setdefault(sub_id, [None, None])[1] = at
                elif o.effect in ("gone", "exhausted"):
                    self._stamp(conn, sub_id, *stamps.pop(sub_id, [None, None]))
                    if self._apply_effect(conn, o, disable_after):
                        disabled.append(sub_id)
            for sub_id, (success_at, failure_at) in stamps.items():
                self._stamp(conn, sub_id, success_at, failure_at)
        return disabled

    @staticmethod
    def _stamp(
        conn: sqlite3.Connection, sub_id: str, success_at: float | None, failure_at: float | None
    ) -> None:
        if success_at is not None:
            conn.execute(
                "UPDATE webhook_subscriptions SET consecutive_failures = 0, last_success_at = ? "
                "WHERE id = ?",
                (success_at, sub_id),
            )
        if failure_at is not None:
            conn.execute(
                "UPDATE webhook_subscriptions SET last_failure_at = ? WHERE id = ?",
                (failure_at, sub_id),
            )

    @staticmethod
    def _apply_effect(conn: sqlite3.Connection, o: Outcome, disable_after: int) -> bool:
        a = o.attempt
        if o.effect == "gone":
            reason = "the receiver answered 410 Gone"
            cur = conn.execute(
                "UPDATE webhook_subscriptions SET enabled = 0, disabled_reason = ?, "
                "last_failure_at = ?, updated_at = ? WHERE id = ? AND enabled = 1",
                (reason, a.started_at, a.started_at, a.webhook_id),
            )
            return cur.rowcount > 0
        if o.effect == "exhausted":
            conn.execute(
                "UPDATE webhook_subscriptions SET consecutive_failures = consecutive_failures + 1, "
                "last_failure_at = ? WHERE id = ?",
                (a.started_at, a.webhook_id),
            )
            reason = (
                f"{disable_after} consecutive deliveries failed after every retry "
                "(COMFYVN_WEBHOOK_DISABLE_AFTER)"
            )
            cur = conn.execute(
                "UPDATE webhook_subscriptions SET enabled = 0, disabled_reason = ?, "
                "updated_at = ? WHERE id = ? AND enabled = 1 AND consecutive_failures >= ?",
                (reason, a.started_at, a.webhook_id, disable_after),
            )
            return cur.rowcount > 0
        return False

    # -- retention ---------------------------------------------------------------------------
    def prune(self, older_than: float) -> int:
        """Drop finished deliveries (and their attempts) older than the cut-off, and orphans.

        These tables share ``events.sqlite3`` with the bus writer, whose commits wait for the
        same write lock; so, like the event log's retention (DESIGN.md 9), this walks the
        deliveries by id in short transactions (a few ms each, sized by a BatchSizer) with a
        pause after each, long enough for a waiting writer's busy handler to get the lock.
        """
        with self._lock:
            lo, top = self._conn.execute(
                "SELECT MIN(id), MAX(id) FROM webhook_deliveries"
            ).fetchone()
        if top is None:
            return 0
        where = (
            "id > ? AND id <= ? AND ((status != 'pending' AND updated_at < ?) "
            "OR webhook_id NOT IN (SELECT id FROM webhook_subscriptions))"
        )
        sizer = BatchSizer()
        removed = 0
        cursor = lo - 1
        while cursor < top:
            upto = min(cursor + sizer.size, top)
            started = time.perf_counter()
            with self._txn() as conn:
                args = (cursor, upto, older_than)
                conn.execute(
                    "DELETE FROM webhook_attempts WHERE delivery_id IN "
                    f"(SELECT id FROM webhook_deliveries WHERE {where})",
                    args,
                )
                cur = conn.execute(f"DELETE FROM webhook_deliveries WHERE {where}", args)
                removed += cur.rowcount
            elapsed = time.perf_counter() - started
            sizer.update(upto - cursor, elapsed)
            cursor = upto
            if cursor < top:
                time.sleep(max(0.01, 2 * elapsed))
        return removed
