"""The graph object: an API-format prompt plus the ephemeral nodes added by expansion.

Node ids of the original prompt are the user's; expansion adds nodes whose parent is the node that
expanded and whose display id is the parent's display id (or an explicit `override_display_id`),
so clients can show progress against a node they know (COMPAT §1.3).
"""
from __future__ import annotations

from typing import Iterator, Optional

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

