"""The database layer of the prompt queue: the connection, transactions, counters, and the
finished prompts (history, COMPAT §6). graph/queue.py builds the queue itself on top."""
from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Iterable

from graph.queue_records import (COLUMNS, DEFAULT_MAX_HISTORY, FINISHED_STATES, SCHEMA, QueueError, QueueItem,
                                 row_to_item)


class HistoryStore:
    """The SQLite database behind the queue, and the finished prompts in it (history).

    Thread-safe: one connection guarded by a lock. `path` is a file path or ":memory:".
    `max_history` bounds the number of finished entries kept (oldest dropped first). `on_change`
    (optional callable, no arguments) is called after every change to the pending/running set, from
    the thread that made it.
    """

    def __init__(self, path: str | Path = ":memory:", max_history: int = DEFAULT_MAX_HISTORY,
                 on_change=None):
        if max_history < 1:
            raise QueueError(f"max_history must be at least 1, got {max_history}")
        self.path = str(path)
        self.max_history = max_history
        self.on_change = on_change
        self._lock = threading.RLock()
        self._work = threading.Condition(self._lock)
        # Sensitive extra_data keys (API tokens) never touch the disk; they live only here.
        self._sensitive: dict[str, dict] = {}
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL keeps WAL durable against process death (kill -9); only an OS crash can lose the
        # last transactions, which is the trade ComfyUI users expect (it keeps nothing at all).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)

    # ---- helpers -------------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _tx(self, fn):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result

    def _changed(self) -> None:
        with self._lock:
            self._work.notify_all()
        if self.on_change is not None:
            self.on_change()

    def _bump(self, db, name: str) -> int:
        db.execute("INSERT INTO counters(name, value) VALUES (?, 1) "
                   "ON CONFLICT(name) DO UPDATE SET value = value + 1", (name,))
        return db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0]

    def get(self, prompt_id: str) -> QueueItem | None:
        with self._lock:
            row = self._db.execute(f"SELECT {COLUMNS} FROM prompts WHERE prompt_id=?",
                                   (prompt_id,)).fetchone()
        return row_to_item(row) if row else None

    def _select(self, where: str, args: Iterable = (), order: str = "number, prompt_id",
                limit: int | None = None, offset: int = 0) -> list[QueueItem]:
        sql = f"SELECT {COLUMNS} FROM prompts WHERE {where} ORDER BY {order}"
        params = list(args)
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params += [limit, offset]
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [row_to_item(r) for r in rows]

    def count(self, *states: str) -> int:
        placeholders = ",".join("?" * len(states))
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM prompts WHERE state IN ({placeholders})",
                                    states).fetchone()[0]

    def _trim_history(self, db) -> None:
        placeholders = ",".join("?" * len(FINISHED_STATES))
        count = db.execute(f"SELECT COUNT(*) FROM prompts WHERE state IN ({placeholders})",
                           FINISHED_STATES).fetchone()[0]
        excess = count - self.max_history
        if excess > 0:
            db.execute(f"DELETE FROM prompts WHERE prompt_id IN (SELECT prompt_id FROM prompts WHERE "
                       f"state IN ({placeholders}) ORDER BY history_seq LIMIT ?)",
                       (*FINISHED_STATES, excess))

    # ---- history -------------------------------------------------------------------------------
    def history_items(self, max_items: int | None = None, offset: int | None = None) -> list[QueueItem]:
        """Finished items oldest -> newest. Only max_items: the newest N. offset counts from the
        oldest (COMPAT §4 GET /history)."""
        placeholders = ",".join("?" * len(FINISHED_STATES))
        where = f"state IN ({placeholders})"
        if offset is None and max_items is not None:
            newest = self._select(where, FINISHED_STATES, order="history_seq DESC", limit=max_items)
            return list(reversed(newest))
        limit = -1 if max_items is None else max_items
        return self._select(where, FINISHED_STATES, order="history_seq", limit=limit,
                            offset=offset or 0)

    def history(self, max_items: int | None = None, offset: int | None = None) -> dict:
        return {i.prompt_id: i.history_entry() for i in self.history_items(max_items, offset)}

    def delete_history(self, prompt_ids: Iterable[str]) -> int:
        placeholders = ",".join("?" * len(FINISHED_STATES))

        def delete(db):
            return sum(db.execute(f"DELETE FROM prompts WHERE prompt_id=? AND state IN "
                                  f"({placeholders})", (str(p), *FINISHED_STATES)).rowcount
                       for p in prompt_ids)

        return self._tx(delete)

    def clear_history(self) -> int:
        placeholders = ",".join("?" * len(FINISHED_STATES))
        return self._tx(lambda db: db.execute(
            f"DELETE FROM prompts WHERE state IN ({placeholders})", FINISHED_STATES).rowcount)

    def all_items(self) -> list[QueueItem]:
        """Every known prompt: running, pending, then history (used by /api/jobs)."""
        return self._select("1=1", order="create_time, number, prompt_id")
