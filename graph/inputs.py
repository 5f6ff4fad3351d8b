"""A node's arguments: resolved from links, constants and hidden values, then list-mapped.

Every argument is a list of values (COMPAT §1.2): a link brings the upstream slot's list, a constant
is a one-item list. A node is called once per list position (the shorter lists repeat their last
value), or once with the whole lists when it declares INPUT_IS_LIST.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from graph.contract import ExecutionBlocker
from graph.node_class import ClassInfo, hidden_kind
from graph.types import is_link


@dataclass
class Arguments:
    values: dict                                # name -> list of values
    unevaluated: set = field(default_factory=set)  # links whose node has not run (lazy inputs)
    linked: set = field(default_factory=set)       # names whose values came over a link


def resolve(node_id: str, node: dict, info: ClassInfo, outputs: dict, hidden: dict) -> Arguments:
    """The node's arguments from `outputs` (node id -> output lists) and `hidden` (kind -> value)."""
    args = Arguments({})
    for name, value in (node.get("inputs") or {}).items():
        decl = info.declared(name)
        if is_link(value):
            if decl is not None and decl[2].get("rawLink"):
                args.values[name] = [value]
                continue
            up_values = outputs.get(value[0])
            if up_values is None:
                args.values[name] = [None]
                args.unevaluated.add(name)
            else:
                slot = int(value[1])
                args.values[name] = up_values[slot] if slot < len(up_values) else [None]
                args.linked.add(name)
        elif decl is not None:
            if isinstance(value, dict) and "__value__" in value:
                value = value["__value__"]
            args.values[name] = [value]
    for name, kind in info.hidden.items():
        kind = hidden_kind(kind)
        if kind == "UNIQUE_ID":
            args.values[name] = [node_id]
        elif isinstance(kind, str) and kind in hidden:
            args.values[name] = [hidden[kind]]
    return args


def hidden_values(prompt: dict, dyn, extra: dict) -> dict:
    """The hidden input kinds the engine fills in (UNIQUE_ID is per node), by kind."""
    return {"PROMPT": prompt, "DYNPROMPT": dyn, "EXTRA_PNGINFO": extra.get("extra_pnginfo"),
            "AUTH_TOKEN_COMFY_ORG": extra.get("auth_token_comfy_org"),
            "API_KEY_COMFY_ORG": extra.get("api_key_comfy_org")}


def calls(info: ClassInfo, args: dict) -> list[dict]:
    """The keyword arguments of each call (list mapping)."""
    if info.input_is_list:
        return [args]
    n = 0
    for v in args.values():
        if len(v) > n:
            n = len(v)
    if n == 1:  # the common case: one call with the single values
        return [{k: v[0] for k, v in args.items() if v}]
    return [{k: (v[i] if i < len(v) else v[-1]) for k, v in args.items() if v}
            for i in range(n)] or [{}]


def blocker_in(info: ClassInfo, call: dict) -> Optional[ExecutionBlocker]:
    """The first ExecutionBlocker among a call's arguments: that call is not made."""
    for v in call.values():
        if info.input_is_list and isinstance(v, list):
            v = next((e for e in v if isinstance(e, ExecutionBlocker)), v)
        if isinstance(v, ExecutionBlocker):
            return v
    return None


def values_of(info: ClassInfo, value: Any) -> list:
    """The single values inside one call's argument (a whole list under INPUT_IS_LIST)."""
    return value if info.input_is_list and isinstance(value, list) else [value]
