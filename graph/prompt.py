"""The graph object: an API-format prompt plus the ephemeral nodes added by expansion.

Node ids of the original prompt are the user's; expansion adds nodes whose parent is the node that
expanded and whose display id is the parent's display id (or an explicit `override_display_id`),
so clients can show progress against a node they know (COMPAT §1.3).
"""
from __future__ import annotations

from typing import Iterator, Optional

import networkx as nx

from graph.types import is_link


class DynamicPrompt:
    def __init__(self, prompt: dict):
        self._original = prompt
        self._ephemeral: dict[str, dict] = {}
        self._parent: dict[str, str] = {}
        self._display: dict[str, str] = {}

    def get_original_prompt(self) -> dict:
        return self._original

    def has_node(self, node_id: str) -> bool:
        return node_id in self._original or node_id in self._ephemeral

    def get_node(self, node_id: str) -> dict:
        node = self._ephemeral.get(node_id)
        if node is None:
            node = self._original.get(node_id)
        if node is None:
            raise KeyError(f"node {node_id!r} is not in the prompt")
        return node

    def add_ephemeral_node(self, node_id: str, node: dict, parent_id: str, display_id: str) -> None:
        self._ephemeral[node_id] = node
        self._parent[node_id] = parent_id
        self._display[node_id] = display_id

    def is_ephemeral(self, node_id: str) -> bool:
        return node_id in self._ephemeral

    def get_parent_node_id(self, node_id: str) -> Optional[str]:
        return self._parent.get(node_id)

    def get_display_node_id(self, node_id: str) -> str:
        """Follow display ids until an original node (or an explicit self-display) is reached."""
        seen = set()
        while node_id in self._display and node_id not in seen:
            seen.add(node_id)
            nxt = self._display[node_id]
            if nxt == node_id:
                break
            node_id = nxt
        return node_id

    def get_real_node_id(self, node_id: str) -> str:
        """The original-prompt node this (possibly nested) ephemeral node descends from."""
        while node_id in self._parent:
            node_id = self._parent[node_id]
        return node_id

    def all_node_ids(self) -> set:
        return set(self._original) | set(self._ephemeral)

    def links(self, node_id: str) -> Iterator[tuple[str, str, int]]:
        """(input_name, upstream_id, slot) for every link among the node's inputs."""
        for name, value in (self.get_node(node_id).get("inputs") or {}).items():
            if is_link(value):
                yield name, value[0], int(value[1])


def link_graph(prompt: dict, node_ids=None) -> nx.DiGraph:
    """Directed graph upstream -> downstream over `node_ids` (default: all) of an API prompt."""
    ids = set(prompt) if node_ids is None else set(node_ids)
    g = nx.DiGraph()
    g.add_nodes_from(ids)
    for nid in ids:
        for value in (prompt[nid].get("inputs") or {}).values():
            if isinstance(value, list) and len(value) == 2 and value[0] in ids:
                g.add_edge(value[0], nid)
    return g


def find_cycles(prompt: dict, node_ids) -> list[list[str]]:
    """Each strongly connected component that is a real cycle, as a list of node ids in order."""
    g = link_graph(prompt, node_ids)
    cycles = []
    for comp in nx.strongly_connected_components(g):
        if len(comp) == 1:
            (only,) = comp
            if not g.has_edge(only, only):
                continue
        sub = g.subgraph(comp)
        try:
            cycle = [u for u, _v in nx.find_cycle(sub)]
        except nx.NetworkXNoCycle:  # pragma: no cover - an SCC always has one
            cycle = sorted(comp)
        cycles.append(cycle)
    return cycles
