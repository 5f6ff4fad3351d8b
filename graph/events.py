"""The events of one prompt run, sent to its listeners (COMPAT §5.2 payloads).

A listener is `listener(event, data)`. The start, cached and final messages are also recorded,
as history's `status.messages`.
"""
from __future__ import annotations

import logging
from typing import Callable

from graph import progress
from graph.prompt import DynamicPrompt

log = logging.getLogger(__name__)

Listener = Callable[[str, dict], None]


class RunEvents:
    def __init__(self, prompt_id: str, dyn: DynamicPrompt, listeners: tuple):
        self.prompt_id = prompt_id
        self.dyn = dyn
        self.listeners = listeners
        self.messages: list = []
        self._states: dict[str, dict] = {}

    def emit(self, event: str, data: dict, record: bool = False) -> None:
        if record:
            self.messages.append([event, data])
        for listener in self.listeners:
            try:
                listener(event, data)
            except Exception:  # a broken listener must not break the prompt
                log.exception("event listener failed on %s", event)

    def _node_ids(self, node_id: str) -> dict:
        return {"node_id": node_id, "prompt_id": self.prompt_id,
                "display_node_id": self.dyn.get_display_node_id(node_id),
                "parent_node_id": self.dyn.get_parent_node_id(node_id),
                "real_node_id": self.dyn.get_real_node_id(node_id)}

    def state(self, node_id: str, state: str, value: float = 0, max_: float = 1) -> None:
        """progress_state with every node seen so far (ComfyUI sends the whole table)."""
        if not self.listeners:
            return
        entry = self._states.get(node_id)
        ids = entry if entry is not None else self._node_ids(node_id)
        # A new entry dict per update, never changed once sent: each event's table can then share
        # the other nodes' entries instead of copying all of them (O(n) copies per event made a
        # 2,000-node prompt spend seconds here).
        self._states[node_id] = {**ids, "value": value, "max": max_, "state": state}
        self.emit("progress_state", {"prompt_id": self.prompt_id, "nodes": dict(self._states)})

    def executing(self, node_id: str) -> None:
        self.state(node_id, "running", 0, 1)
        self.emit("executing", {"node": node_id, "display_node": self.dyn.get_display_node_id(node_id),
                                "prompt_id": self.prompt_id})

    def executed(self, node_id: str, ui: dict) -> None:
        self.emit("executed", {"node": node_id, "display_node": self.dyn.get_display_node_id(node_id),
                               "output": ui, "prompt_id": self.prompt_id})

    def on_progress(self, run: progress.NodeRun, value: int, total: int, preview) -> None:
        """The hook graph.progress calls while a node reports progress."""
        self.state(run.node_id, "running", value, total)
        if preview is not None:
            self.emit("preview", {"prompt_id": self.prompt_id, "node_id": run.node_id,
                                  "display_node_id": run.display_node_id,
                                  "parent_node_id": run.parent_node_id,
                                  "real_node_id": run.real_node_id, "image": preview})
        self.emit("progress", {"value": value, "max": total, "prompt_id": self.prompt_id,
                               "node": run.display_node_id})
