"""Durable prompt queue and history, kept in SQLite (stdlib sqlite3, WAL journal).

ComfyUI keeps its queue and history in memory; here every state change is a committed row, so a
crash or `kill -9` loses nothing: on restart `recover()` re-files prompts that were running as
interrupted history entries, and pending prompts simply stay pending.

One row per prompt moves through states
    pending -> running -> success | error | interrupted
A worker takes work with `claim(worker_id)`, which sets a lease; `finish()` must come from the same
worker. The lease lets a later multi-process setup hand prompts to remote workers and re-queue the
ones whose worker vanished (`expire_leases`). Pure Python on purpose: no torch, no server imports.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

PENDING = "pending"
RUNNING = "running"
SUCCESS = "success"
ERROR = "error"
INTERRUPTED = "interrupted"
FINISHED_STATES = (SUCCESS, ERROR, INTERRUPTED)

DEFAULT_MAX_HISTORY = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS prompts (
    prompt_id TEXT PRIMARY KEY,
    number REAL NOT NULL,
    state TEXT NOT NULL,
    prompt TEXT NOT NULL,
    extra_data TEXT NOT NULL,
    outputs_to_execute TEXT NOT NULL,
    create_time INTEGER NOT NULL,
    start_time INTEGER,
    end_time INTEGER,
    worker_id TEXT,
    lease_until REAL,
    outputs TEXT,
    status TEXT,
    meta TEXT,
    history_seq INTEGER,
    idempotency_key TEXT UNIQUE,
    request_hash TEXT,
    webhook TEXT,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS prompts_pending ON prompts(state, number, prompt_id);
CREATE INDEX IF NOT EXISTS prompts_history ON prompts(history_seq);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class QueueError(ValueError):
    """A queue operation that cannot be done as asked (unknown id, wrong state, key reuse)."""


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class QueueItem:
    """One prompt as the queue knows it; `as_tuple()` is ComfyUI's 5-element queue item."""

    number: float
    prompt_id: str
    prompt: dict
    extra_data: dict
    outputs_to_execute: list
    state: str = PENDING
    create_time: int = 0
    start_time: int | None = None
    end_time: int | None = None
    worker_id: str | None = None
    outputs: dict = field(default_factory=dict)
    status: dict | None = None
    meta: dict = field(default_factory=dict)
    webhook: str | None = None

    def as_tuple(self) -> list:
        number = int(self.number) if float(self.number).is_integer() else self.number
        return [number, self.prompt_id, self.prompt, self.extra_data, self.outputs_to_execute]

    def history_entry(self) -> dict:
        """The `/history` entry shape of COMPAT §6."""
        return {
            "prompt": self.as_tuple(),
            "outputs": self.outputs,
            "status": self.status or {"status_str": "error", "completed": False, "messages": []},
            "meta": self.meta,
        }


_COLUMNS = (
    "number, prompt_id, prompt, extra_data, outputs_to_execute, state, create_time, start_time, "
    "end_time, worker_id, outputs, status, meta, webhook"
)


def _row_to_item(row: tuple) -> QueueItem:
    (number, prompt_id, prompt, extra, outs, state, ctime, stime, etime, worker, outputs, status,
     meta, webhook) = row
    return QueueItem(
        number=number, prompt_id=prompt_id, prompt=json.loads(prompt), extra_data=json.loads(extra),
        outputs_to_execute=json.loads(outs), state=state, create_time=ctime, start_time=stime,
        end_time=etime, worker_id=worker, outputs=json.loads(outputs) if outputs else {},
        status=json.loads(status) if status else None, meta=json.loads(meta) if meta else {},
        webhook=webhook,
    )


class PromptStore:
    """The queue + history store. Thread-safe: one connection guarded by a lock.

    `path` is a file path or ":memory:". `max_history` bounds the number of finished entries kept
    (oldest dropped first). `on_change` (optional callable, no arguments) is called after every
    change to the pending/running set, from the thread that made it.
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
        self._db.executescript(_SCHEMA)

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

    # ---- numbering -----------------------------------------------------------------------------
    def next_number(self) -> int:
        """Advance the submission counter (ComfyUI bumps it on every POST /prompt, even rejected)."""
        return self._tx(lambda db: self._bump(db, "number"))

    # ---- queue ---------------------------------------------------------------------------------
    def put(self, prompt_id: str, prompt: dict, extra_data: dict, outputs_to_execute: list,
            number: float, *, sensitive: dict | None = None, idempotency_key: str | None = None,
            request_hash: str | None = None, webhook: str | None = None) -> QueueItem:
        """Queue a validated prompt. With an idempotency key already used, returns the first item
        instead of queueing again (QueueError if the earlier request had a different body)."""
        create_time = int(extra_data.get("create_time") or now_ms())

        def insert(db):
            if idempotency_key is not None:
                row = db.execute("SELECT prompt_id, request_hash FROM prompts WHERE idempotency_key=?",
                                 (idempotency_key,)).fetchone()
                if row is not None:
                    if request_hash is not None and row[1] not in (None, request_hash):
                        raise QueueError(f"Idempotency-Key {idempotency_key!r} was already used "
                                         "with a different request body")
                    return False
            if db.execute("SELECT 1 FROM prompts WHERE prompt_id=?", (prompt_id,)).fetchone():
                raise QueueError(f"prompt_id {prompt_id!r} is already queued or in history")
            db.execute(
                "INSERT INTO prompts(prompt_id, number, state, prompt, extra_data, outputs_to_execute,"
                " create_time, idempotency_key, request_hash, webhook) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (prompt_id, float(number), PENDING, json.dumps(prompt), json.dumps(extra_data),
                 json.dumps(list(outputs_to_execute)), create_time, idempotency_key, request_hash,
                 webhook))
            return True

        created = self._tx(insert)
        if not created:
            return self.find_by_idempotency_key(idempotency_key)
        if sensitive:
            with self._lock:
                self._sensitive[prompt_id] = dict(sensitive)
        self._changed()
        return self.get(prompt_id)

    def find_by_idempotency_key(self, key: str, request_hash: str | None = None) -> QueueItem | None:
        """The item queued under `key`, or None. QueueError if it was queued with another body."""
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS}, request_hash FROM prompts WHERE "
                                   "idempotency_key=?", (key,)).fetchone()
        if row is None:
            return None
        if request_hash is not None and row[-1] not in (None, request_hash):
            raise QueueError(f"Idempotency-Key {key!r} was already used with a different request body")
        return _row_to_item(row[:-1])

    def get(self, prompt_id: str) -> QueueItem | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM prompts WHERE prompt_id=?",
                                   (prompt_id,)).fetchone()
        return _row_to_item(row) if row else None

    def sensitive(self, prompt_id: str) -> dict:
        with self._lock:
            return dict(self._sensitive.get(prompt_id, {}))

    def claim(self, worker_id: str, lease_s: float = 3600.0) -> QueueItem | None:
        """Take the next pending prompt (lowest number, ties by prompt_id) for `worker_id`."""

        def take(db):
            row = db.execute("SELECT prompt_id FROM prompts WHERE state=? ORDER BY number, prompt_id "
                             "LIMIT 1", (PENDING,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE prompts SET state=?, worker_id=?, lease_until=?, start_time=?, "
                       "attempts = attempts + 1 WHERE prompt_id=?",
                       (RUNNING, worker_id, time.time() + lease_s, now_ms(), row[0]))
            return row[0]

        prompt_id = self._tx(take)
        if prompt_id is None:
            return None
        self._changed()
        return self.get(prompt_id)

    def wait_for_work(self, timeout: float) -> bool:
        """Block up to `timeout` seconds until something is pending; True if so."""
        with self._lock:
            if self.count(PENDING):
                return True
            self._work.wait(timeout)
            return self.count(PENDING) > 0

    def wake(self) -> None:
        """Wake threads blocked in wait_for_work (used for shutdown and /free)."""
        with self._lock:
            self._work.notify_all()

    def finish(self, prompt_id: str, status_str: str, completed: bool, outputs: dict,
               messages: list, meta: dict, *, worker_id: str | None = None,
               interrupted: bool = False) -> QueueItem:
        """Move a running prompt into history with its outputs and status messages."""
        state = INTERRUPTED if interrupted else (SUCCESS if status_str == "success" else ERROR)
        status = {"status_str": status_str, "completed": bool(completed), "messages": messages}

        def done(db):
            row = db.execute("SELECT state, worker_id FROM prompts WHERE prompt_id=?",
                             (prompt_id,)).fetchone()
            if row is None:
                raise QueueError(f"finish: unknown prompt_id {prompt_id!r}")
            if row[0] != RUNNING:
                raise QueueError(f"finish: prompt {prompt_id!r} is {row[0]}, not running")
            if worker_id is not None and row[1] != worker_id:
                raise QueueError(f"finish: prompt {prompt_id!r} is leased by {row[1]!r}, "
                                 f"not {worker_id!r}")
            seq = self._bump(db, "history")
            db.execute("UPDATE prompts SET state=?, end_time=?, outputs=?, status=?, meta=?, "
                       "history_seq=?, lease_until=NULL WHERE prompt_id=?",
                       (state, now_ms(), json.dumps(outputs), json.dumps(status), json.dumps(meta),
                        seq, prompt_id))
            self._trim_history(db)

        self._tx(done)
        with self._lock:
            self._sensitive.pop(prompt_id, None)
        self._changed()
        return self.get(prompt_id)

    def _trim_history(self, db) -> None:
        placeholders = ",".join("?" * len(FINISHED_STATES))
        count = db.execute(f"SELECT COUNT(*) FROM prompts WHERE state IN ({placeholders})",
                           FINISHED_STATES).fetchone()[0]
        excess = count - self.max_history
        if excess > 0:
            db.execute(f"DELETE FROM prompts WHERE prompt_id IN (SELECT prompt_id FROM prompts WHERE "
                       f"state IN ({placeholders}) ORDER BY history_seq LIMIT ?)",
                       (*FINISHED_STATES, excess))

    def _interrupt_running(self, db, where: str, args: tuple, reason: str) -> list[str]:
        rows = db.execute(f"SELECT prompt_id FROM prompts WHERE state=? {where}",
                          (RUNNING, *args)).fetchall()
        ids = [r[0] for r in rows]
        for prompt_id in ids:
            message = ["execution_interrupted",
                       {"prompt_id": prompt_id, "node_id": None, "node_type": None, "executed": [],
                        "timestamp": now_ms(), "reason": reason}]
            status = {"status_str": "error", "completed": False, "messages": [message]}
            db.execute("UPDATE prompts SET state=?, end_time=?, outputs=COALESCE(outputs, '{}'), "
                       "status=?, history_seq=?, lease_until=NULL WHERE prompt_id=?",
                       (INTERRUPTED, now_ms(), json.dumps(status), self._bump(db, "history"),
                        prompt_id))
        if ids:
            self._trim_history(db)
        return ids

    def recover(self) -> list[str]:
        """At start-up: every prompt left running by a dead process becomes an interrupted history
        entry. Pending prompts stay pending. Returns the interrupted ids."""
        ids = self._tx(lambda db: self._interrupt_running(db, "", (), "server restarted"))
        if ids:
            self._changed()
        return ids

    def expire_leases(self) -> list[str]:
        """Mark prompts whose worker's lease ran out as interrupted (for remote workers)."""
        ids = self._tx(lambda db: self._interrupt_running(
            db, "AND lease_until < ?", (time.time(),), "worker lease expired"))
        if ids:
            self._changed()
        return ids

    def requeue(self, prompt_id: str, number: float | None = None) -> QueueItem:
        """Put a finished (typically interrupted) prompt back in the queue under the same id."""

        def back(db):
            row = db.execute("SELECT state FROM prompts WHERE prompt_id=?", (prompt_id,)).fetchone()
            if row is None:
                raise QueueError(f"requeue: unknown prompt_id {prompt_id!r}")
            if row[0] not in FINISHED_STATES:
                raise QueueError(f"requeue: prompt {prompt_id!r} is {row[0]}, not finished")
            n = self._bump(db, "number") if number is None else number
            db.execute("UPDATE prompts SET state=?, number=?, start_time=NULL, end_time=NULL, "
                       "worker_id=NULL, outputs=NULL, status=NULL, meta=NULL, history_seq=NULL "
                       "WHERE prompt_id=?", (PENDING, float(n), prompt_id))

        self._tx(back)
        self._changed()
        return self.get(prompt_id)

    def _select(self, where: str, args: Iterable = (), order: str = "number, prompt_id",
                limit: int | None = None, offset: int = 0) -> list[QueueItem]:
        sql = f"SELECT {_COLUMNS} FROM prompts WHERE {where} ORDER BY {order}"
        params = list(args)
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params += [limit, offset]
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [_row_to_item(r) for r in rows]

    def pending(self) -> list[QueueItem]:
        """Pending items in run order (a sorted list is also a valid heap order)."""
        return self._select("state=?", (PENDING,))

    def running(self) -> list[QueueItem]:
        return self._select("state=?", (RUNNING,))

    def count(self, *states: str) -> int:
        placeholders = ",".join("?" * len(states))
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM prompts WHERE state IN ({placeholders})",
                                    states).fetchone()[0]

    def queue_remaining(self) -> int:
        return self.count(PENDING, RUNNING)

    def delete_pending(self, prompt_ids: Iterable[str]) -> int:
        ids = [str(p) for p in prompt_ids]

        def delete(db):
            n = 0
            for prompt_id in ids:
                n += db.execute("DELETE FROM prompts WHERE prompt_id=? AND state=?",
                                (prompt_id, PENDING)).rowcount
            return n

        n = self._tx(delete)
        with self._lock:
            for prompt_id in ids:
                self._sensitive.pop(prompt_id, None)
        if n:
            self._changed()
        return n

    def clear_pending(self) -> int:
        n = self._tx(lambda db: db.execute("DELETE FROM prompts WHERE state=?", (PENDING,)).rowcount)
        if n:
            self._changed()
        return n

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
