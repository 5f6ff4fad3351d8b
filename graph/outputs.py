"""From what a node function returned to the node's outputs (COMPAT §1.2-1.3).

A call returns a tuple (one value per output), a dict with 'result'/'ui'/'expand', or an
ExecutionBlocker. Outputs are lists per slot: one value per call, or the concatenation of the
calls' lists for OUTPUT_IS_LIST slots.
"""
from __future__ import annotations

from typing import Any, Optional

from graph.contract import ExecutionBlocker, NodeOutputError
from graph.node_class import ClassInfo


class Resolved:
    """A slot value of an expanded node: the whole output list of the linked node."""

    __slots__ = ("values",)

    def __init__(self, values: list):
        self.values = values


def normalize(node_id: str, class_type: str, info: ClassInfo, r: Any) -> tuple:
    """(outputs tuple, ui dict | None, expand graph | None) from one call's return value."""
    n = len(info.return_types)
    if isinstance(r, ExecutionBlocker):
        return (r,) * n, None, None
    if isinstance(r, dict):
        ui = r.get("ui")
        expand = r.get("expand")
        result = r.get("result", (None,) * n)
        if isinstance(result, ExecutionBlocker):
            result = (result,) * n
        return tuple(result), ui, expand
    if isinstance(r, (tuple, list)):
        if len(r) < n:
            raise NodeOutputError(
                f"node {node_id} ({class_type}) returned "
                f"{len(r)} values but declares {n} outputs {list(info.return_types)}")
        return tuple(r), None, None
    raise NodeOutputError(
        f"node {node_id} ({class_type}) returned "
        f"{type(r).__name__}; a node function must return a tuple (one value per output), "
        f"a dict with 'result'/'ui'/'expand', or an ExecutionBlocker")


def merge_outputs(info: ClassInfo, per_call: list) -> list:
    """Per slot: one value per call, or the concatenation for OUTPUT_IS_LIST (COMPAT §1.2.4)."""
    outputs = []
    for slot, is_list in enumerate(info.output_is_list):
        merged: list = []
        for result in per_call:
            v = result[slot] if slot < len(result) else None
            if isinstance(v, Resolved):
                merged.extend(v.values)
            elif is_list and not isinstance(v, ExecutionBlocker):
                merged.extend(v)
            else:
                merged.append(v)
        outputs.append(merged)
    return outputs


def merge_ui(uis: list) -> Optional[dict]:
    """The calls' UI dicts as one: list entries concatenated, other entries from the first."""
    uis = [u for u in uis if u is not None]
    if not uis or not uis[0]:  # an empty ui is no ui: no `executed`, no history entry
        return None
    first = uis[0]
    merged = {}
    for k in first:
        merged[k] = [x for u in uis for x in (u.get(k) or [])] \
            if isinstance(first[k], (list, tuple)) else first[k]
    return merged
