"""Cache keys for node outputs (COMPAT §3.4).

A node's key is a digest of: its class_type, its IS_CHANGED result, its id (only when the class is
NOT_IDEMPOTENT or takes a UNIQUE_ID hidden input), each input sorted by name as either the constant
or (upstream key, slot). Upstream keys are themselves digests, so a key covers the whole ancestry
(Merkle style) in linear time. The node id is otherwise not part of the key: identical sub-chains
share results, across prompts and workflows.

Anything that cannot be compared reliably makes the key unique (the node always re-runs): an
IS_CHANGED that returns NaN or raises, a constant that is an arbitrary object, a cycle.
"""
from __future__ import annotations

import hashlib
import inspect
import itertools
import logging
import math
from typing import Any, Callable, Optional

from graph.node_class import ClassInfoCache, hidden_kind, run_maybe_async
from graph.types import is_link

log = logging.getLogger(__name__)

_unique_counter = itertools.count()


def _unique(tag: str) -> str:
    """A token never produced twice in this process: a key containing it never hits."""
    return f"<{tag}#{next(_unique_counter)}>"


class Uncomparable(Exception):
    pass


def canonical(value: Any) -> str:
    """A deterministic text form of a JSON-like constant; raises Uncomparable otherwise."""
    parts: list = []
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, _Close):
            parts.append(v.text)
        elif v is None or isinstance(v, (bool, int, str)):
            parts.append(f"{type(v).__name__}:{v!r}")
        elif isinstance(v, float):
            if math.isnan(v):
                raise Uncomparable("NaN")
            parts.append(f"float:{v!r}")
        elif isinstance(v, (list, tuple)):
            parts.append("[")
            stack.append(_Close("]"))
            stack.extend(reversed(v))
        elif isinstance(v, dict):
            try:
                items = sorted(v.items(), key=lambda kv: repr(kv[0]))
            except Exception as e:  # pragma: no cover - repr of keys always works for JSON
                raise Uncomparable(str(e))
            parts.append("{")
            stack.append(_Close("}"))
            for k, item in reversed(items):
                stack.append(item)
                stack.append(_Close(f"{k!r}="))
        else:
            raise Uncomparable(type(v).__name__)
    return ",".join(parts)


class _Close:
    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _accepted_params(func) -> Optional[set]:
    """Parameter names a class hook accepts, or None if it takes **kwargs."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return None
    names = set()
    for p in params:
        if p.kind is p.VAR_KEYWORD:
            return None
        names.add(p.name)
    return names


def is_changed_value(info, node_id: str, inputs: dict, extra_pnginfo=None) -> Any:
    """Call the class's IS_CHANGED with constant inputs (links are None, PROMPT is {}).

    Returns a canonical string, or a unique token when the result cannot be trusted (NaN,
    exception, unhashable), which makes the node re-run every time.
    """
    args: dict = {}
    for name, value in inputs.items():
        if is_link(value) or isinstance(value, list):
            args[name] = None
        elif info.declared(name) is not None:
            args[name] = value
    for name, kind in info.hidden.items():
        args[name] = {"PROMPT": {}, "UNIQUE_ID": node_id,
                      "EXTRA_PNGINFO": extra_pnginfo}.get(hidden_kind(kind))
    func = info.cls.IS_CHANGED
    accepted = _accepted_params(func)
    if accepted is not None:
        args = {k: v for k, v in args.items() if k in accepted}
    if info.input_is_list:
        args = {k: [v] for k, v in args.items()}
    try:
        result = run_maybe_async(func(**args))
        return canonical(result)
    except Exception:  # COMPAT: a failing IS_CHANGED means "changed", the node runs every time
        log.debug("IS_CHANGED of %s failed", info.cls.__name__, exc_info=True)
        return _unique("is_changed")


class SignatureBuilder:
    """Computes and remembers the keys of the nodes of one prompt (including expansion nodes)."""

    def __init__(self, get_node: Callable[[str], dict], has_node: Callable[[str], bool],
                 class_of: Callable[[str], type], infos: Optional[ClassInfoCache] = None,
                 extra_pnginfo=None):
        self._get_node = get_node
        self._has_node = has_node
        self._class_of = class_of
        self.infos = infos if infos is not None else ClassInfoCache()
        self._extra_pnginfo = extra_pnginfo
        self.keys: dict[str, str] = {}
        self._per_node_by_cls: dict[type, bool] = {}

    def key(self, node_id: str) -> str:
        """The node's key; upstream keys are computed first, iteratively (no recursion)."""
        if node_id in self.keys:
            return self.keys[node_id]
        on_path: set = set()
        stack = [node_id]
        while stack:
            nid = stack[-1]
            if nid in self.keys:
                stack.pop()
                continue
            if nid not in on_path:
                on_path.add(nid)
                todo = [v[0] for v in self._inputs(nid).values()
                        if is_link(v) and v[0] not in self.keys and v[0] not in on_path
                        and self._has_node(v[0])]
                if todo:
                    stack.extend(todo)
                    continue
            self.keys[nid] = self._compute(nid)
            on_path.discard(nid)
            stack.pop()
        return self.keys[node_id]

    def _per_node(self, info) -> bool:
        """Whether the class's key includes the node id (not idempotent, or takes UNIQUE_ID)."""
        found = self._per_node_by_cls.get(info.cls)
        if found is None:
            found = self._per_node_by_cls[info.cls] = bool(info.not_idempotent or info.uses_unique_id())
        return found

    def _inputs(self, node_id: str) -> dict:
        return self._get_node(node_id).get("inputs") or {}

    def _compute(self, node_id: str) -> str:
        node = self._get_node(node_id)
        try:
            info = self.infos.get_info(self._class_of(node_id))
        except Exception:  # the node fails when it is run; its key must just never hit
            log.debug("no class info for node %s", node_id, exc_info=True)
            return _unique("unknown-class")
        inputs = node.get("inputs") or {}
        parts = [node["class_type"]]
        parts.append(is_changed_value(info, node_id, inputs, self._extra_pnginfo)
                     if info.has_is_changed else "")
        parts.append(node_id if self._per_node(info) else "")
        for name in sorted(inputs):
            value = inputs[name]
            if is_link(value):
                # An upstream still without a key is on a cycle: never equal to anything.
                up = self.keys.get(value[0]) or _unique("cycle")
                parts.append(f"{name}=>{up}/{int(value[1])}")
            else:
                try:
                    parts.append(f"{name}={canonical(value)}")
                except Uncomparable:
                    parts.append(f"{name}={_unique('object')}")
        return _digest("\x1f".join(parts))
