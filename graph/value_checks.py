"""Runtime checks of a node's arguments against its declared input types.

Before a node function is called, a required input must have a value, and a value that arrived
over a link must look like its declared type. What a type looks like is the node layer's
knowledge: the registry may offer `value_type(name) -> ValueType | None`; types it does not know
(plugins' own types, "*") are not checked, and neither are registries without that method.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from graph.contract import ExecutionBlocker, NodeInputError
from graph.inputs import values_of
from graph.node_class import ClassInfo
from graph.types import ANY_TYPES


def _shown(value: Any) -> str:
    shape = getattr(value, "shape", None)
    if shape is not None and not isinstance(shape, (str, bytes)):
        try:
            return f"{type(value).__name__} of shape {list(shape)}"
        except TypeError:  # a "shape" that is not a sequence says nothing useful
            pass
    return type(value).__name__


class ValueChecks:
    def __init__(self, registry):
        self._lookup = getattr(registry, "value_type", None)
        self._types: dict[Any, Optional[list]] = {}
        # class -> its checkable inputs, worked out once: most classes (plugins' own types, "*",
        # plain constants) have none, and their calls then cost one dict lookup.
        self._plans: dict[type, tuple] = {}

    def _value_types(self, declared: Any) -> Optional[list]:
        """The ValueTypes of a declared type ("A,B" is either); None when any part is unknown."""
        if self._lookup is None or not isinstance(declared, str):
            return None
        if declared not in self._types:
            names = [t.strip() for t in declared.split(",")]
            found = [None if t in ANY_TYPES else self._lookup(t) for t in names]
            self._types[declared] = None if any(f is None for f in found) else found
        return self._types[declared]

    def _plan(self, info: ClassInfo) -> tuple:
        """(name, types, must not be None) for each input of the class that can be checked."""
        plan = self._plans.get(info.cls)
        if plan is None:
            plan = []
            for category, name, type_, opts in info.parsed:
                types = None if opts.get("rawLink") else self._value_types(type_)
                if types is not None:
                    plan.append((name, types, category == "required" and not opts.get("lazy")))
            plan = self._plans[info.cls] = tuple(plan)
        return plan

    def check(self, node_id: str, class_type_of: Callable[[str], str], info: ClassInfo, call: dict,
              linked: set) -> None:
        """Raise NodeInputError naming the node and the input if this call cannot be made.
        `class_type_of(node_id)` is only asked when there is something to report."""
        for name, types, needed in self._plan(info):
            for value in values_of(info, call.get(name)):
                if value is None:
                    if needed:
                        wanted = " or ".join(t.description for t in types)
                        hints = "".join(f" {t.when_none}" for t in types if t.when_none)
                        raise NodeInputError(f"{class_type_of(node_id)} (node {node_id}): required "
                                             f"input '{name}' is None; it needs {wanted}.{hints}")
                elif name in linked and not isinstance(value, ExecutionBlocker) \
                        and not any(t.accepts(value) for t in types):
                    wanted = " or ".join(t.description for t in types)
                    raise NodeInputError(f"{class_type_of(node_id)} (node {node_id}): input '{name}' "
                                         f"must be {wanted}, got {_shown(value)}")


