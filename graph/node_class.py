"""What the engine reads from a classic node class, gathered once per class per run.

INPUT_TYPES() may rescan folders, so callers keep one ClassInfo per class for the duration of a
validation or an execution instead of calling it per node.
"""
from __future__ import annotations

import asyncio
import inspect
import threading
from dataclasses import dataclass
from typing import Any, Optional


def input_spec(spec: Any) -> tuple[Any, dict]:
    """(type, options) from an INPUT_TYPES entry: (TYPE,), (TYPE, {...}), or a bare TYPE."""
    if isinstance(spec, (tuple, list)) and spec:
        opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        return spec[0], opts
    return spec, {}


def _signature_params(func) -> tuple[set, bool]:
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return set(), True
    names = set()
    has_kwargs = False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            has_kwargs = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            names.add(p.name)
    names.discard("self")
    names.discard("cls")
    return names, has_kwargs


@dataclass
class ClassInfo:
    cls: type
    required: dict
    optional: dict
    hidden: dict
    return_types: tuple
    output_is_list: tuple
    output_node: bool
    input_is_list: bool
    not_idempotent: bool
    function_name: str
    is_async: bool
    validate_params: Optional[set]  # None when the class has no VALIDATE_INPUTS
    validate_kwargs: bool
    has_is_changed: bool
    # (category, name, type, options) for required+optional inputs in declaration order,
    # and name -> (category, type, options) for all declared inputs; parsed once per class.
    parsed: tuple = ()
    decl: dict = None

    @classmethod
    def of(cls_, node_cls: type) -> "ClassInfo":
        types = node_cls.INPUT_TYPES() if hasattr(node_cls, "INPUT_TYPES") else {}
        types = types or {}
        rt = tuple(getattr(node_cls, "RETURN_TYPES", ()) or ())
        oil = getattr(node_cls, "OUTPUT_IS_LIST", None)
        oil = tuple(bool(x) for x in oil) if oil else (False,) * len(rt)
        if len(oil) < len(rt):
            oil = oil + (False,) * (len(rt) - len(oil))
        fname = getattr(node_cls, "FUNCTION", None)
        func = getattr(node_cls, fname, None) if isinstance(fname, str) else None
        vfunc = getattr(node_cls, "VALIDATE_INPUTS", None)
        vparams, vkwargs = (_signature_params(vfunc) if vfunc is not None else (None, False))
        info = cls_(
            cls=node_cls,
            required=dict(types.get("required") or {}),
            optional=dict(types.get("optional") or {}),
            hidden=dict(types.get("hidden") or {}),
            return_types=rt,
            output_is_list=oil,
            output_node=getattr(node_cls, "OUTPUT_NODE", False) is True,
            input_is_list=bool(getattr(node_cls, "INPUT_IS_LIST", False)),
            not_idempotent=bool(getattr(node_cls, "NOT_IDEMPOTENT", False)),
            function_name=fname if isinstance(fname, str) else "",
            is_async=func is not None and (asyncio.iscoroutinefunction(func)
                                           or inspect.iscoroutinefunction(func)),
            validate_params=vparams,
            validate_kwargs=vkwargs,
            has_is_changed=callable(getattr(node_cls, "IS_CHANGED", None)),
        )
        parsed = []
        decl = {}
        for cat, table in (("required", info.required), ("optional", info.optional)):
            for name, spec in table.items():
                t, o = input_spec(spec)
                parsed.append((cat, name, t, o))
                decl.setdefault(name, (cat, t, o))
        for name, kind in info.hidden.items():
            decl.setdefault(name, ("hidden", kind, {}))
        info.parsed = tuple(parsed)
        info.decl = decl
        return info

    def declared(self, name: str) -> Optional[tuple[str, Any, dict]]:
        """(category, type, options) of a declared input, or None."""
        return self.decl.get(name)

    def uses_unique_id(self) -> bool:
        return any(v == "UNIQUE_ID" or (isinstance(v, (tuple, list)) and v and v[0] == "UNIQUE_ID")
                   for v in self.hidden.values())


class ClassInfoCache(dict):
    """class -> ClassInfo for one run."""

    def get_info(self, node_cls: type) -> ClassInfo:
        info = self.get(node_cls)
        if info is None:
            info = self[node_cls] = ClassInfo.of(node_cls)
        return info


def hidden_kind(value: Any) -> Any:
    """Hidden entries are strings in V1 ("PROMPT") and 1-tuples in V3-shaped info (("PROMPT",))."""
    if isinstance(value, (tuple, list)) and value:
        return value[0]
    return value


def run_maybe_async(value):
    """Resolve a coroutine returned by a class-level hook (V3 allows async ones).

    Validation is synchronous and may be called from inside a running event loop (the server),
    so the coroutine runs on a private loop in a helper thread.
    """
    if not asyncio.iscoroutine(value):
        return value
    box: dict = {}

    def runner():
        try:
            box["v"] = asyncio.run(value)
        except BaseException as e:  # re-raised in the caller's thread
            box["e"] = e

    t = threading.Thread(target=runner, daemon=True)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box["v"]
