"""What the prompt queue stores: the row states, the SQLite schema, and QueueItem (one prompt as the
queue knows it). Shared by the store layers in graph/queue_history.py and graph/queue.py."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

PENDING = "pending"
RUNNING = "running"
SUCCESS = "success"
ERROR = "error"
INTERRUPTED = "interrupted"
FINISHED_STATES = (SUCCESS, ERROR, INTERRUPTED)

DEFAULT_MAX_HISTORY = 10_000

SCHEMA = """
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


COLUMNS = (
    "number, prompt_id, prompt, extra_data, outputs_to_execute, state, create_time, start_time, "
    "end_time, worker_id, outputs, status, meta, webhook"
)


def row_to_item(row: tuple) -> QueueItem:
    (number, prompt_id, prompt, extra, outs, state, ctime, stime, etime, worker, outputs, status,
     meta, webhook) = row
    return QueueItem(
        number=number, prompt_id=prompt_id, prompt=json.loads(prompt), extra_data=json.loads(extra),
        outputs_to_execute=json.loads(outs), state=state, create_time=ctime, start_time=stime,
        end_time=etime, worker_id=worker, outputs=json.loads(outputs) if outputs else {},
        status=json.loads(status) if status else None, meta=json.loads(meta) if meta else {},
        webhook=webhook,
    )
