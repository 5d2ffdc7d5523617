"""The durable event history: an append-only SQLite (WAL) log of hook envelopes.

The bus only talks to the small :class:`EventLog` interface (append, read since a seq, latest
seq, prune), so a shared backend such as Redis Streams can replace SQLite later without touching
emitters or subscribers.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

__all__ = [
    "BatchSizer",
    "EventLog",
    "EventLogError",
    "LogRow",
    "RetentionPolicy",
    "SQLiteEventLog",
    "TxnHook",
]


class EventLogError(OSError):
    """The event log file cannot be opened; the message names the file and what to do."""


class LogRow(NamedTuple):
    """One committed envelope as stored: ``data`` is the payload already serialized to JSON.

    A tuple in column order, so the writer hands a batch to ``executemany`` as it is."""

    seq: int
    id: str
    event: str
    ts: float
    data: str


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """Prune by count and/or age; ``None`` disables that bound."""

    max_events: int | None = 100_000
    max_age_s: float | None = 30 * 24 * 3600.0


class BatchSizer:
    """Sizes delete batches so each one takes about ``budget_s``.

    Retention must never stall the single writer (DESIGN.md 9: each batch <= 10 ms), so pruning
    deletes the oldest rows a batch at a time. The row count that fits the budget depends on the
    disk, the page cache and the payload size, so it is learned: after each batch the size moves
    towards ``rows * budget / elapsed``, growing at most 2x and shrinking at once.
    """

    def __init__(
        self, budget_s: float = 0.004, start: int = 256, lo: int = 16, hi: int = 20_000
    ) -> None:
        self.budget_s = budget_s
        self.size = start
        self.lo = lo
        self.hi = hi

    def update(self, rows: int, elapsed: float) -> None:
        if rows < self.size // 2 and elapsed < self.budget_s:
            return  # a short tail batch says little about the cost per row
        ideal = rows * self.budget_s / max(elapsed, 1e-6)
        self.size = int(max(self.lo, min(self.hi, ideal, self.size * 2)))


# A callback run inside the append transaction (e.g. the webhook outbox inserts its delivery
# rows here, so a committed event is never left without its deliveries).
TxnHook = Callable[[sqlite3.Connection, Sequence[LogRow]], None]


class EventLog(Protocol):
    def append(self, rows: Sequence[LogRow]) -> None: ...
    def read_since(
        self, since: int, limit: int, events: Iterable[str] | None = None
    ) -> list[LogRow]: ...
    def read_latest(self, limit: int, events: Iterable[str] | None = None) -> list[LogRow]: ...
    def latest_seq(self) -> int: ...
    def first_seq(self) -> int | None: ...
    def prune(self, policy: RetentionPolicy, now: float | None = None) -> int: ...
    def prune_batch(self, policy: RetentionPolicy, limit: int, now: float | None = None) -> int: ...
    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq   INTEGER PRIMARY KEY,
    id    TEXT NOT NULL UNIQUE,
    event TEXT NOT NULL,
    ts    REAL NOT NULL,
    data  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_event ON events(event, seq);
CREATE INDEX IF NOT EXISTS events_by_ts ON events(ts);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def connect(path: Path, *, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """A WAL connection. NORMAL sync survives a process crash (SIGKILL); FULL adds power loss."""
    conn = sqlite3.connect(path, timeout=30.0, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class SQLiteEventLog:
    """Single writer (the bus's writer thread), many readers (one connection per reading thread)."""

    def __init__(self, path: Path, *, synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._synchronous = synchronous
        try:
            self._writer = connect(self.path, synchronous=synchronous)
            self._writer.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise EventLogError(
                f"event log {self.path} cannot be opened ({exc}); if the file is damaged, move "
                "it (and its -wal/-shm files) aside to start with an empty history"
            ) from None
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._txn_hooks: list[TxnHook] = []

    # -- writing -----------------------------------------------------------------------------
    def add_txn_hook(self, hook: TxnHook) -> None:
        self._txn_hooks.append(hook)

    def remove_txn_hook(self, hook: TxnHook) -> None:
        if hook in self._txn_hooks:
            self._txn_hooks.remove(hook)

    def append(self, rows: Sequence[LogRow]) -> None:
        if not rows:
            return
        with self._write_lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT INTO events(seq, id, event, ts, data) VALUES (?, ?, ?, ?, ?)", rows
                )
                conn.execute(
                    "INSERT INTO meta(key, value) VALUES ('last_seq', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value "
                    "WHERE CAST(excluded.value AS INTEGER) > CAST(meta.value AS INTEGER)",
                    (str(rows[-1].seq),),
                )
                for hook in list(self._txn_hooks):
                    hook(conn, rows)
                conn.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back already (disk full, I/O error): a failing
                # ROLLBACK must not replace the error that names the real problem.
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise

    def get_meta(self, key: str) -> str | None:
        row = self._reader().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._write_lock:
            self._writer.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    # -- reading -----------------------------------------------------------------------------
    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, synchronous=self._synchronous)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    @staticmethod
    def _event_filter(events: Iterable[str] | None) -> tuple[str, list[str]]:
        if events is None:
            return "", []
        names = sorted(set(events))
        if not names:
            return " AND 0", []
        return f" AND event IN ({','.join('?' * len(names))})", names

    def read_since(
        self, since: int, limit: int, events: Iterable[str] | None = None
    ) -> list[LogRow]:
        clause, args = self._event_filter(events)
        cur = self._reader().execute(
            f"SELECT seq, id, event, ts, data FROM events WHERE seq > ?{clause} "
            "ORDER BY seq LIMIT ?",
            (since, *args, limit),
        )
        return [LogRow(*row) for row in cur]

    def read_latest(self, limit: int, events: Iterable[str] | None = None) -> list[LogRow]:
        clause, args = self._event_filter(events)
        cur = self._reader().execute(
            f"SELECT seq, id, event, ts, data FROM events WHERE 1{clause} "
            "ORDER BY seq DESC LIMIT ?",
            (*args, limit),
        )
        return [LogRow(*row) for row in reversed(cur.fetchall())]

    def latest_seq(self) -> int:
        """The highest seq ever committed (kept in ``meta`` so pruning never lowers it)."""
        conn = self._reader()
        stored = conn.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
        top = conn.execute("SELECT MAX(seq) FROM events").fetchone()[0]
        return max(int(stored[0]) if stored else 0, top or 0)

    def first_seq(self) -> int | None:
        return self._reader().execute("SELECT MIN(seq) FROM events").fetchone()[0]

    def count(self) -> int:
        return self._reader().execute("SELECT COUNT(*) FROM events").fetchone()[0]

    # -- retention ---------------------------------------------------------------------------
    def prune(
        self,
        policy: RetentionPolicy,
        now: float | None = None,
        *,
        sizer: BatchSizer | None = None,
    ) -> int:
        """Everything the policy no longer keeps, as a series of short batches (see
        :meth:`prune_batch`), each its own transaction. The bus does not call this: its writer
        runs one batch at a time between group commits (``HookBus._prune_step``)."""
        now = time.time() if now is None else now
        sizer = sizer or BatchSizer()
        removed = 0
        while True:
            limit = sizer.size
            started = time.perf_counter()
            n = self.prune_batch(policy, limit, now)
            sizer.update(n, time.perf_counter() - started)
            removed += n
            if n < limit:
                return removed

    def prune_batch(self, policy: RetentionPolicy, limit: int, now: float | None = None) -> int:
        """Delete at most ``limit`` of the oldest events the policy no longer keeps, in one short
        transaction; returns how many went (fewer than ``limit``: nothing more to prune now).

        Only a prefix of the log is ever deleted (the age bound stops at the first event that is
        still young enough), so the log stays one contiguous run of seqs from ``first_seq()``:
        a subscriber whose cursor is older gets an exact gap, never a silent hole. ``seq`` lives
        on in ``meta``, so pruning never lowers ``latest_seq()`` and no seq is ever reused.
        """
        if limit <= 0 or (policy.max_events is None and policy.max_age_s is None):
            return 0
        now = time.time() if now is None else now
        with self._write_lock:
            conn = self._writer
            # The seq of the limit-th oldest row bounds this batch (a primary-key walk of
            # ``limit`` rows, whatever holes the seqs may have).
            row = conn.execute(
                "SELECT seq FROM events ORDER BY seq LIMIT 1 OFFSET ?", (limit - 1,)
            ).fetchone()
            top = conn.execute("SELECT MAX(seq) FROM events").fetchone()[0]
            if top is None:
                return 0
            window_end = row[0] if row else top
            end: int | None = None
            if policy.max_events is not None:
                end = top - policy.max_events
            if policy.max_age_s is not None:
                # ``+ts`` keeps the planner on the primary key: at most ``limit`` rows scanned.
                young = conn.execute(
                    "SELECT seq FROM events WHERE seq <= ? AND +ts >= ? ORDER BY seq LIMIT 1",
                    (window_end, now - policy.max_age_s),
                ).fetchone()
                by_age = window_end if young is None else young[0] - 1
                end = by_age if end is None else max(end, by_age)
            assert end is not None
            end = min(end, window_end)
            return conn.execute("DELETE FROM events WHERE seq <= ?", (end,)).rowcount

    def close(self) -> None:
        with self._readers_lock:
            for conn in self._readers:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._readers.clear()
        with self._write_lock:
            self._writer.close()
