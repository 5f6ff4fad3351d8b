"""Node expansion (COMPAT §1.3): a node returns {"result": ..., "expand": graph} and the graph's
nodes join the prompt as ephemeral nodes; the result may link to them and is resolved once they ran.
"""
from __future__ import annotations

from graph.contract import DuplicateNodeError, NodeOutputError
from graph.outputs import Resolved
from graph.prompt import DynamicPrompt
from graph.types import is_link, sorted_ids


def add_nodes(dyn: DynamicPrompt, node_id: str, graphs: list) -> list:
    """Add the nodes of node_id's expansion graphs (None for a call without one); their ids, sorted."""
    new_ids: list = []
    for graph in graphs:
        if graph is None:
            continue
        if not isinstance(graph, dict):
            raise NodeOutputError(f"node {node_id}: 'expand' must be an API-format dict of nodes")
        for nid, spec in graph.items():
            if dyn.has_node(nid):
                raise DuplicateNodeError(
                    f"node {node_id} expanded into node id {nid!r}, which already exists; "
                    f"use GraphBuilder for unique ids")
            if not isinstance(spec, dict) or "class_type" not in spec:
                raise NodeOutputError(f"node {node_id}: expanded node {nid!r} has no class_type")
            display = spec.get("override_display_id", node_id)
            dyn.add_ephemeral_node(nid, spec, node_id, display)
            new_ids.append(nid)
    return sorted_ids(new_ids)


def linked_nodes(dyn: DynamicPrompt, results: list) -> list:
    """The nodes the expanding node's results link to: it finishes after them."""
    return [v[0] for result in results for v in result if is_link(v) and dyn.has_node(v[0])]


def resolve_results(results: list, values: dict) -> list:
    """The results with each link to a node that ran replaced by that node's output list."""
    per_call = []
    for result in results:
        resolved = []
        for v in result:
            if is_link(v) and v[0] in values:
                outs = values[v[0]]
                slot = int(v[1])
                resolved.append(Resolved(outs[slot] if slot < len(outs) else [None]))
            else:
                resolved.append(v)
        per_call.append(tuple(resolved))
    return per_call
