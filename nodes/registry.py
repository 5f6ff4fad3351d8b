"""NodeRegistry: class_type -> node class, and the /object_info entries (COMPAT §4)."""
from __future__ import annotations

import logging
from typing import Optional

from graph.contract import ValueType
from nodes.value_types import BUILTIN_VALUE_TYPES

log = logging.getLogger(__name__)


def _jsonable(value):
    """INPUT_TYPES as JSON: tuples become lists, nested containers walked."""
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


class NodeRegistry:
    def __init__(self):
        self._classes: dict[str, type] = {}
        self._display: dict[str, str] = {}
        self._module: dict[str, str] = {}
        self._value_types: dict[str, ValueType] = dict(BUILTIN_VALUE_TYPES)

    # -- what graph/ needs ------------------------------------------------------------------
    def get_class(self, class_type: str) -> Optional[type]:
        return self._classes.get(class_type)

    def __contains__(self, class_type) -> bool:
        return class_type in self._classes

    def value_type(self, type_name: str) -> Optional[ValueType]:
        """How the executor checks a value of this type at run time; None: not checked."""
        return self._value_types.get(type_name)

    def register_value_type(self, type_name: str, value_type: ValueType) -> None:
        self._value_types[type_name] = value_type

    # -- registration ---------------------------------------------------------------------
    def register(self, class_type: str, cls: type, display_name: Optional[str] = None,
                 python_module: str = "nodes") -> None:
        for attr in ("INPUT_TYPES", "RETURN_TYPES", "FUNCTION"):
            if not hasattr(cls, attr):
                raise TypeError(f"node class {class_type} ({cls.__qualname__}) lacks {attr}")
        self._classes[class_type] = cls
        # A class may say where it lives in ComfyUI's tree (e.g. "comfy_extras.nodes_clip_sdxl"),
        # which /object_info reports and some clients group by.
        self._module[class_type] = getattr(cls, "RELATIVE_PYTHON_MODULE", None) or python_module
        if display_name is not None:
            self._display[class_type] = display_name
        elif getattr(cls, "DISPLAY_NAME", None):
            self._display[class_type] = cls.DISPLAY_NAME

    def register_mappings(self, class_mappings: dict, display_names: Optional[dict] = None,
                          python_module: str = "nodes", override: bool = True) -> list[str]:
        """Add a module's NODE_CLASS_MAPPINGS; with override=False existing names are kept
        (COMPAT §7: custom packs cannot replace core nodes). Returns the names added."""
        added = []
        for class_type, cls in class_mappings.items():
            if not override and class_type in self._classes:
                continue
            self.register(class_type, cls, None, python_module)
            added.append(class_type)
        for class_type, name in (display_names or {}).items():
            self._display[class_type] = name
        return added

    def class_types(self) -> list[str]:
        return list(self._classes)

    def display_name(self, class_type: str) -> str:
        return self._display.get(class_type, class_type)

    # -- /object_info ----------------------------------------------------------------------
    def object_info_for(self, class_type: str) -> Optional[dict]:
        cls = self._classes.get(class_type)
        if cls is None:
            return None
        types = cls.INPUT_TYPES() or {}
        rt = list(getattr(cls, "RETURN_TYPES", ()) or ())
        oil = getattr(cls, "OUTPUT_IS_LIST", None)
        info = {
            "input": _jsonable(types),
            "input_order": {cat: list(types[cat]) for cat in ("required", "optional", "hidden")
                            if cat in types and types[cat] is not None},
            "output": _jsonable(rt),
            "output_is_list": [bool(x) for x in oil] if oil else [False] * len(rt),
            "output_name": _jsonable(list(getattr(cls, "RETURN_NAMES", None) or rt)),
            "name": class_type,
            "display_name": self.display_name(class_type),
            "description": getattr(cls, "DESCRIPTION", "") or "",
            "python_module": self._module.get(class_type, "nodes"),
            "category": getattr(cls, "CATEGORY", "sd") or "sd",
            "output_node": getattr(cls, "OUTPUT_NODE", False) is True,
        }
        if hasattr(cls, "OUTPUT_TOOLTIPS"):
            info["output_tooltips"] = list(cls.OUTPUT_TOOLTIPS)
        if getattr(cls, "DEPRECATED", False):
            info["deprecated"] = True
        if getattr(cls, "EXPERIMENTAL", False):
            info["experimental"] = True
        if hasattr(cls, "API_NODE"):
            info["api_node"] = bool(cls.API_NODE)
        return info

    def object_info(self) -> dict:
        out = {}
        for class_type in self._classes:
            try:
                out[class_type] = self.object_info_for(class_type)
            except Exception:  # one broken node must not take the whole listing down
                log.exception("object_info failed for node %s", class_type)
        return out
