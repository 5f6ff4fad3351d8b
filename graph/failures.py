"""One place where a node's exception becomes the run's failure, and the event data it yields.

Node code may raise anything. `node_failures(node_id, inputs)` turns an interrupt into
`Interrupted` and any other exception into `NodeFailed`, keeping the node and the inputs it was
called with; the run reports those as `execution_interrupted` / `execution_error` (COMPAT §3.5, §5.2).
"""
from __future__ import annotations

import time
import traceback
from typing import Any, Optional

from graph.contract import ExecutionBlocker, InterruptProcessing
from graph.prompt import DynamicPrompt
from graph.types import sorted_ids
from graph.validate import full_type_name


class NodeFailed(Exception):
    def __init__(self, node_id: str, exc: BaseException, inputs: Optional[dict]):
        super().__init__(str(exc))
        self.node_id = node_id
        self.exc = exc
        self.inputs = inputs


class Interrupted(Exception):
    def __init__(self, node_id: str):
        super().__init__(node_id)
        self.node_id = node_id


def blame(node_id: str, exc: Exception, inputs: Optional[dict] = None) -> Exception:
    """What to raise for `exc`, raised by node_id's code: Interrupted for an interrupt, NodeFailed
    for anything else, and a failure already blamed on a node unchanged. The run loop calls this
    from plain try/except blocks (no per-node context manager object)."""
    if isinstance(exc, (NodeFailed, Interrupted)):
        return exc
    if isinstance(exc, InterruptProcessing):
        return Interrupted(node_id)
    return NodeFailed(node_id, exc, inputs)


class node_failures:
    """`with node_failures(node_id, inputs):` blames what the block raises on node_id.

    Failures already blamed on a node pass through; BaseExceptions (KeyboardInterrupt, task
    cancellation) are not node failures. A class rather than a generator so that the node's
    traceback, which the error event carries, gains no frame of ours.
    """

    def __init__(self, node_id: str, inputs: Optional[dict] = None):
        self.node_id = node_id
        self.inputs = inputs

    def __enter__(self):
        return self

    def __exit__(self, _type, exc, _tb) -> bool:
        if not isinstance(exc, Exception) or isinstance(exc, (NodeFailed, Interrupted)):
            return False
        raise blame(self.node_id, exc, self.inputs)


def now_ms() -> int:
    return int(time.time() * 1000)


def _format_value(x: Any) -> Any:
    if x is None or isinstance(x, (int, float, bool, str)):
        return x
    return str(x)


def _tip(exc: BaseException) -> str:
    """A hint appended to the message of errors users can act on (COMPAT §3.5 adds one for OOM)."""
    if "OutOfMemory" in type(exc).__name__:
        return ("\nThe device ran out of memory. Try a smaller image or batch, tiled VAE nodes, "
                "or free memory (POST /free) and run again.")
    return ""


def error_data(failure: NodeFailed, dyn: DynamicPrompt, prompt_id: str, executed: list,
               current_outputs) -> dict:
    """The execution_error payload of a failed node."""
    exc = failure.exc
    node = dyn.get_node(failure.node_id) if dyn.has_node(failure.node_id) else {}
    inputs = {}
    for name, values in (failure.inputs or {}).items():
        inputs[name] = [_format_value(v) for v in values] if isinstance(values, list) \
            else _format_value(values)
    return {"prompt_id": prompt_id, "node_id": dyn.get_real_node_id(failure.node_id),
            "node_type": node.get("class_type"), "executed": list(executed),
            "exception_message": str(exc) + _tip(exc), "exception_type": full_type_name(type(exc)),
            "traceback": traceback.format_tb(exc.__traceback__), "current_inputs": inputs,
            "current_outputs": sorted_ids(current_outputs), "timestamp": now_ms()}


def interrupted_data(stop: Interrupted, dyn: DynamicPrompt, prompt_id: str, executed: list) -> dict:
    """The execution_interrupted payload."""
    return {"prompt_id": prompt_id, "node_id": dyn.get_real_node_id(stop.node_id),
            "node_type": dyn.get_node(stop.node_id).get("class_type"),
            "executed": list(executed), "timestamp": now_ms()}


def blocked_data(blocker: ExecutionBlocker, node_id: str, class_type: str, prompt_id: str) -> dict:
    """The execution_error payload of a blocker with a message (the prompt still succeeds)."""
    return {"prompt_id": prompt_id, "node_id": node_id, "node_type": class_type, "executed": [],
            "exception_message": f"Execution Blocked: {blocker.message}",
            "exception_type": "ExecutionBlocked", "traceback": [], "current_inputs": [],
            "current_outputs": []}
