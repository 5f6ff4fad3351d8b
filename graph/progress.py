"""Progress and interrupt hook for node code.

The executor binds the node now running in a context variable (so concurrent async nodes each
see their own), and node code calls `report_progress` / `check_interrupt` without passing ids.
Code running in a helper thread (no context) falls back to the most recently started node.
"""
from __future__ import annotations

import contextvars
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from graph.contract import InterruptProcessing


@dataclass
class NodeRun:
    """What the hook needs to know about the running node; made by the executor."""

    prompt_id: str
    node_id: str
    display_node_id: str
    parent_node_id: Optional[str]
    real_node_id: str
    interrupt_flag: threading.Event
    # Called as on_progress(run, value, total, preview) by report_progress.
    on_progress: Callable[["NodeRun", int, int, Any], None] = field(default=lambda *a: None)
    # The running prompt's extra_data (read-only for nodes; e.g. preview_method).
    extra_data: dict = field(default_factory=dict)


_current: contextvars.ContextVar[Optional[NodeRun]] = contextvars.ContextVar(
    "latentgraph_current_node", default=None)
_last_started: Optional[NodeRun] = None
_last_lock = threading.Lock()


def bind(run: NodeRun) -> contextvars.Token:
    """Executor side: mark `run` as the node executing in this context."""
    global _last_started
    with _last_lock:
        _last_started = run
    return _current.set(run)


def unbind(token: contextvars.Token) -> None:
    _current.reset(token)


def clear_last(run: Optional[NodeRun] = None) -> None:
    """Forget the thread fallback (at the end of a prompt)."""
    global _last_started
    with _last_lock:
        if run is None or _last_started is run:
            _last_started = None


def current_node() -> Optional[NodeRun]:
    run = _current.get()
    if run is None:
        with _last_lock:
            run = _last_started
    return run


def check_interrupt() -> None:
    """Raise InterruptProcessing if an interrupt was requested for the running prompt."""
    run = current_node()
    if run is not None and run.interrupt_flag.is_set():
        raise InterruptProcessing("Processing interrupted")


def report_progress(value: int, total: int, preview=None) -> None:
    """Report step `value` of `total` for the running node (preview: PIL.Image or None).

    Emits progress_state / progress (and a preview event) and raises InterruptProcessing if an
    interrupt was requested. Outside a running node this does nothing.
    """
    run = current_node()
    if run is None:
        return
    if run.interrupt_flag.is_set():
        raise InterruptProcessing("Processing interrupted")
    run.on_progress(run, int(value), int(total), preview)


class ProgressBar:
    """A step counter for node authors, shaped like comfy.utils.ProgressBar."""

    def __init__(self, total: int):
        self.total = int(total)
        self.current = 0

    def update_absolute(self, value: int, total: Optional[int] = None, preview=None) -> None:
        if total is not None:
            self.total = int(total)
        self.current = min(int(value), self.total) if self.total else int(value)
        self._emit(preview)

    def _emit(self, preview) -> None:
        # Overridden by comfy.utils.ProgressBar (compat/), which reports through ComfyUI's hook.
        report_progress(self.current, self.total, preview)

    def update(self, value: int) -> None:
        self.update_absolute(self.current + int(value), self.total)
