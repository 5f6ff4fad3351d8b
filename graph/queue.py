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
import time
from typing import Iterable

from graph.queue_history import HistoryStore
from graph.queue_records import (COLUMNS, ERROR, FINISHED_STATES, INTERRUPTED, PENDING, RUNNING, SUCCESS,
                                 QueueError, QueueItem, now_ms, row_to_item)


class PromptStore(HistoryStore):
    """The queue + history store: prompts move pending -> running -> history (see the module doc)."""

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
            row = self._db.execute(f"SELECT {COLUMNS}, request_hash FROM prompts WHERE "
                                   "idempotency_key=?", (key,)).fetchone()
        if row is None:
            return None
        if request_hash is not None and row[-1] not in (None, request_hash):
            raise QueueError(f"Idempotency-Key {key!r} was already used with a different request body")
        return row_to_item(row[:-1])

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

    def pending(self) -> list[QueueItem]:
        """Pending items in run order (a sorted list is also a valid heap order)."""
        return self._select("state=?", (PENDING,))

    def running(self) -> list[QueueItem]:
        return self._select("state=?", (RUNNING,))

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
