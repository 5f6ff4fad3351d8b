"""Output caches, one per policy (COMPAT §3.4).

An entry holds a node's outputs (list per slot of values) and its UI dict. Outputs are shared, not
copied: a node must never mutate its inputs in place (built-in nodes return new objects). The
executor keeps the values of the running prompt itself, so evicting an entry mid-prompt only
costs a re-run in a later prompt.

Policies: classic (keep only what the current prompt uses), lru (at most N entries), ram (a byte
budget, least recently used evicted first), none (nothing kept across prompts).
"""
from __future__ import annotations

import logging
import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable, Optional

log = logging.getLogger(__name__)


@dataclass
class CacheEntry:
    outputs: list
    ui: Optional[dict] = None


class OutputCache:
    """Base: the classic policy. Keys are signatures (graph.signature)."""

    policy = "classic"

    def __init__(self):
        self._data: "OrderedDict[str, CacheEntry]" = OrderedDict()

    def get(self, key: str) -> Optional[CacheEntry]:
        return self._data.get(key)

    def put(self, key: str, entry: CacheEntry) -> None:
        self._data[key] = entry

    def begin_prompt(self, keys: Iterable[str]) -> None:
        """Called once a prompt's keys are known: classic forgets everything else."""
        wanted = set(keys)
        for k in [k for k in self._data if k not in wanted]:
            del self._data[k]

    def end_prompt(self) -> None:
        pass

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: str) -> bool:
        return key in self._data


class NoCache(OutputCache):
    policy = "none"

    def get(self, key):
        return None

    def put(self, key, entry):
        pass


class _RecencyCache(OutputCache):
    """Base of the evicting policies: a hit moves the entry to the most-recent end, and a new
    prompt evicts nothing by itself."""

    def get(self, key):
        entry = self._data.get(key)
        if entry is not None:
            self._data.move_to_end(key)
        return entry

    def begin_prompt(self, keys):
        pass


class LRUCache(_RecencyCache):
    policy = "lru"

    def __init__(self, max_entries: int):
        super().__init__()
        if max_entries < 1:
            raise ValueError(f"lru cache size must be at least 1, got {max_entries}")
        self.max_entries = int(max_entries)

    def put(self, key, entry):
        self._data[key] = entry
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)


class RAMCache(_RecencyCache):
    """Keeps entries until their estimated size passes `max_bytes`; evicts least recently used."""

    policy = "ram"

    def __init__(self, max_bytes: int):
        super().__init__()
        self.max_bytes = int(max_bytes)
        self._sizes: dict[str, int] = {}
        self.total_bytes = 0

    def put(self, key, entry):
        if key in self._data:
            self.total_bytes -= self._sizes.pop(key)
        size = estimate_size(entry.outputs) + estimate_size(entry.ui)
        self._data[key] = entry
        self._sizes[key] = size
        self.total_bytes += size
        while self.total_bytes > self.max_bytes and self._data:
            old, _ = self._data.popitem(last=False)
            self.total_bytes -= self._sizes.pop(old)

    def clear(self):
        super().clear()
        self._sizes.clear()
        self.total_bytes = 0


def estimate_size(value: Any) -> int:
    """Bytes held by a value: tensors by their storage (shared storage counted once), numpy arrays
    by nbytes, containers walked; duck-typed so graph/ never imports torch."""
    seen: set = set()
    total = 0
    stack = [value]
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        storage = getattr(v, "untyped_storage", None)
        if callable(storage):
            try:
                st = storage()
                ptr = ("storage", st.data_ptr())
                if ptr not in seen:
                    seen.add(ptr)
                    total += int(st.nbytes())
                continue
            except Exception:  # not a real tensor storage: counted by nbytes or contents below
                log.debug("storage size unknown for %s", type(v).__name__, exc_info=True)
        nbytes = getattr(v, "nbytes", None)
        if isinstance(nbytes, int) and not isinstance(v, (bytes, bytearray)):
            total += nbytes
            continue
        if isinstance(v, dict):
            total += sys.getsizeof(v)
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple, set, frozenset)):
            total += sys.getsizeof(v)
            stack.extend(v)
        else:
            try:
                total += sys.getsizeof(v)
            except TypeError:
                total += 64
    return total


POLICIES = ("classic", "lru", "ram", "none")


def make_cache(policy: str = "classic", lru_size: int = 0, ram_bytes: int = 4 * 1024 ** 3) -> OutputCache:
    if policy == "classic":
        return OutputCache()
    if policy == "lru":
        return LRUCache(lru_size)
    if policy == "ram":
        return RAMCache(ram_bytes)
    if policy == "none":
        return NoCache()
    raise ValueError(f"unknown cache policy {policy!r}; choose one of {', '.join(POLICIES)}")
