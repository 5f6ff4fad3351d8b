"""GraphBuilder: how a node author builds the sub-graph returned by node expansion.

    g = GraphBuilder()
    add = g.node("IntAdd", a=value, b=1)
    return {"result": (add.out(0),), "expand": g.finalize()}

Ids are "{parent}.{call}.{graph}.{n}": the executor sets the default prefix (parent node id and
call index) before calling a node function, and each builder created in that call takes the next
graph index, so ids stay unique across calls, nested expansions and loop iterations.
"""
from __future__ import annotations

import contextvars
from typing import Any, Optional

_default = contextvars.ContextVar("latentgraph_builder_prefix", default=None)


class _PrefixState:
    def __init__(self, root: str, call_index: int, graph_index: int):
        self.root = root
        self.call_index = call_index
        self.graph_index = graph_index


def set_default_prefix(root: str, call_index: int, graph_index: int = 0) -> contextvars.Token:
    """Executor side: builders created from now on in this context use this node/call prefix."""
    return _default.set(_PrefixState(str(root), int(call_index), int(graph_index)))


def reset_default_prefix(token: contextvars.Token) -> None:
    _default.reset(token)


def _next_prefix() -> str:
    state = _default.get()
    if state is None:
        raise RuntimeError("GraphBuilder() without a prefix can only be created while a node runs; "
                           "pass prefix='...' explicitly elsewhere")
    prefix = f"{state.root}.{state.call_index}.{state.graph_index}."
    state.graph_index += 1
    return prefix


class Node:
    def __init__(self, node_id: str, class_type: str, inputs: dict):
        self.id = node_id
        self.class_type = class_type
        self.inputs = dict(inputs)
        self.override_display_id: Optional[str] = None

    def out(self, index: int) -> list:
        return [self.id, index]

    def set_input(self, name: str, value: Any) -> None:
        if value is None:
            self.inputs.pop(name, None)
        else:
            self.inputs[name] = value

    def get_input(self, name: str) -> Any:
        return self.inputs.get(name)

    def set_override_display_id(self, display_id: str) -> None:
        self.override_display_id = display_id

    def serialize(self) -> dict:
        node = {"class_type": self.class_type, "inputs": dict(self.inputs)}
        if self.override_display_id is not None:
            node["override_display_id"] = self.override_display_id
        return node


class GraphBuilder:
    def __init__(self, prefix: Optional[str] = None):
        self.prefix = _next_prefix() if prefix is None else prefix
        self.nodes: dict[str, Node] = {}
        self._next_id = 1

    def node(self, class_type: str, id: Optional[str] = None, **inputs) -> Node:
        if id is None:
            id = str(self._next_id)
            self._next_id += 1
        node_id = self.prefix + str(id)
        if node_id in self.nodes:
            return self.nodes[node_id]
        node = self.nodes[node_id] = Node(node_id, class_type, {k: v for k, v in inputs.items()
                                                                 if v is not None})
        return node

    def lookup_node(self, id: str) -> Optional[Node]:
        return self.nodes.get(self.prefix + str(id))

    def remove_node(self, id: str) -> None:
        self.nodes.pop(self.prefix + str(id), None)

    def finalize(self) -> dict:
        return {nid: node.serialize() for nid, node in self.nodes.items()}
