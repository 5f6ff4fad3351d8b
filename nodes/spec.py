"""Declarative node definitions compiled to the classic class interface.

A built-in node states its inputs (type, default, bounds, hints), outputs and flags in one place:

    @node(category="image", outputs=[Out("IMAGE")], inputs=[
        Int("width", 512, min=1, max=MAX_RESOLUTION), Link("image", "IMAGE")])
    class Example:
        def execute(self, width, image): ...

`node` fills in INPUT_TYPES, RETURN_TYPES, RETURN_NAMES, OUTPUT_IS_LIST, FUNCTION, CATEGORY,
OUTPUT_NODE, DESCRIPTION, ... exactly as a plugin author would write them by hand, so the executor
and validation treat built-ins and plugins through one path. Bounds and combo options become the
`min`/`max`/options validation checks; `default` is only a hint for the editor (COMPAT §1.1).
Combo options may be a callable, evaluated on every INPUT_TYPES() call (folders are rescanned).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

MAX_RESOLUTION = 16384
_UNSET = object()


@dataclass
class In:
    """One input. `type` is a type name, or for combos the options (list or callable)."""

    name: str
    type: Any
    default: Any = _UNSET
    optional: bool = False
    hints: dict = field(default_factory=dict)

    def spec(self) -> tuple:
        type_ = self.type() if callable(self.type) else self.type
        if isinstance(type_, (list, tuple)):
            type_ = list(type_)
        opts = dict(self.hints)
        if self.default is not _UNSET:
            opts = {"default": self.default, **opts}
        return (type_, opts) if opts else (type_,)


def _in(type_, name, default=_UNSET, *, optional=False, **hints) -> In:
    return In(name, type_, default, optional, {k: v for k, v in hints.items() if v is not None})


def Int(name: str, default: Any = _UNSET, *, min=None, max=None, step=None, optional=False,
        **hints) -> In:
    return _in("INT", name, default, optional=optional, min=min, max=max, step=step, **hints)


def Float(name: str, default: Any = _UNSET, *, min=None, max=None, step=None, round=None,
          optional=False, **hints) -> In:
    return _in("FLOAT", name, default, optional=optional, min=min, max=max, step=step,
               round=round, **hints)


def String(name: str, default: Any = _UNSET, *, multiline=None, optional=False, **hints) -> In:
    return _in("STRING", name, default, optional=optional, multiline=multiline, **hints)


def Boolean(name: str, default: Any = _UNSET, *, optional=False, **hints) -> In:
    return _in("BOOLEAN", name, default, optional=optional, **hints)


def Combo(name: str, options: Union[Sequence[str], Callable[[], Sequence[str]]],
          default: Any = _UNSET, *, optional=False, **hints) -> In:
    return _in(options, name, default, optional=optional, **hints)


def Link(name: str, type_: str, *, optional=False, **hints) -> In:
    """An input that arrives over a link (IMAGE, LATENT, MODEL, ...)."""
    return _in(type_, name, optional=optional, **hints)


@dataclass
class Out:
    type: str
    name: Optional[str] = None
    is_list: bool = False
    tooltip: Optional[str] = None


def _parameters(cls, function: str) -> list:
    """The parameters the engine fills in when it calls cls().function(**arguments)."""
    raw = inspect.getattr_static(cls, function)
    params = list(inspect.signature(getattr(cls, function)).parameters.values())
    if not isinstance(raw, (staticmethod, classmethod)):
        params = params[1:]  # self
    return params


def _check_signature(cls, function: str, inputs: list, hidden: Optional[dict]) -> None:
    """The method must take exactly the declared inputs: the engine passes them by name, and
    leaves an optional input out when it is not connected, so that one needs a default."""
    where = f"{cls.__qualname__}.{function}"
    declared = {i.name: i for i in inputs}
    params = _parameters(cls, function)
    named = {}
    for p in params:
        if p.kind is p.POSITIONAL_ONLY:
            raise TypeError(f"{where}: parameter '{p.name}' is positional-only; inputs are passed by name")
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            named[p.name] = p
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
    for name, p in named.items():
        if name not in declared and name not in (hidden or {}):
            raise TypeError(f"{where}: parameter '{name}' is not a declared input "
                            f"(inputs: {', '.join(declared) or 'none'})")
        spec = declared.get(name)
        if spec is not None and spec.optional and p.default is p.empty:
            raise TypeError(f"{where}: optional input '{name}' needs a default value "
                            f"(it is left out when not connected)")
    for name in [*declared, *(hidden or {})]:
        if name not in named and not takes_any:
            raise TypeError(f"{where}: declared input '{name}' is not a parameter")


def node(*, inputs: Sequence[In] = (), outputs: Sequence[Out] = (), category: str = "sd",
         display_name: Optional[str] = None, description: str = "", output_node: bool = False,
         hidden: Optional[dict] = None, function: str = "execute", input_is_list: bool = False,
         not_idempotent: bool = False, deprecated: bool = False, experimental: bool = False):
    """Class decorator: compile the declaration into the classic attributes."""
    inputs = list(inputs)
    outputs = list(outputs)
    names = [i.name for i in inputs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate input names in {names}")

    def wrap(cls):
        if not callable(getattr(cls, function, None)):
            raise TypeError(f"{cls.__qualname__} declares FUNCTION {function!r} but has no such method")
        _check_signature(cls, function, inputs, hidden)

        def INPUT_TYPES(_cls):
            types: dict = {"required": {i.name: i.spec() for i in inputs if not i.optional}}
            opt = {i.name: i.spec() for i in inputs if i.optional}
            if opt:
                types["optional"] = opt
            if hidden:
                types["hidden"] = dict(hidden)
            return types

        cls.INPUT_TYPES = classmethod(INPUT_TYPES)
        cls.RETURN_TYPES = tuple(o.type for o in outputs)
        cls.RETURN_NAMES = tuple(o.name or o.type for o in outputs)
        cls.OUTPUT_IS_LIST = tuple(o.is_list for o in outputs)
        if any(o.tooltip for o in outputs):
            cls.OUTPUT_TOOLTIPS = tuple(o.tooltip or "" for o in outputs)
        cls.FUNCTION = function
        cls.CATEGORY = category
        cls.OUTPUT_NODE = output_node
        cls.DESCRIPTION = description
        cls.INPUT_IS_LIST = input_is_list
        if not_idempotent:
            cls.NOT_IDEMPOTENT = True
        if deprecated:
            cls.DEPRECATED = True
        if experimental:
            cls.EXPERIMENTAL = True
        if display_name:
            cls.DISPLAY_NAME = display_name
        cls.SPEC_INPUTS = tuple(inputs)
        return cls

    return wrap


def mappings(*classes) -> tuple[dict, dict]:
    """NODE_CLASS_MAPPINGS and NODE_DISPLAY_NAME_MAPPINGS for a module's node classes."""
    classes_by_name = {c.__name__: c for c in classes}
    display = {c.__name__: c.DISPLAY_NAME for c in classes if getattr(c, "DISPLAY_NAME", None)}
    return classes_by_name, display
