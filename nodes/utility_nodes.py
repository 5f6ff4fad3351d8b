"""Primitive values, strings, small math/logic nodes and PreviewAny (no torch); handy in tests too."""
from __future__ import annotations

import json
import math
import operator

from nodes.spec import Boolean, Combo, Float, Int, Link, Out, String, mappings, node

INT_LIMIT = 0x7FFFFFFFFFFFFFFF


def _passthrough(self, value):
    return (value,)


@node(category="utils/primitive", display_name="Int", outputs=[Out("INT")],
      inputs=[Int("value", 0, min=-INT_LIMIT, max=INT_LIMIT, control_after_generate=True)])
class PrimitiveInt:
    execute = _passthrough


@node(category="utils/primitive", display_name="Float", outputs=[Out("FLOAT")],
      inputs=[Float("value", 0.0, min=-INT_LIMIT, max=INT_LIMIT, step=0.1)])
class PrimitiveFloat:
    execute = _passthrough


@node(category="utils/primitive", display_name="String", outputs=[Out("STRING")],
      inputs=[String("value", "")])
class PrimitiveString:
    execute = _passthrough


@node(category="utils/primitive", display_name="String (Multiline)", outputs=[Out("STRING")],
      inputs=[String("value", "", multiline=True)])
class PrimitiveStringMultiline:
    execute = _passthrough


@node(category="utils/primitive", display_name="Boolean", outputs=[Out("BOOLEAN")],
      inputs=[Boolean("value", False)])
class PrimitiveBoolean:
    execute = _passthrough


@node(category="utils/string", display_name="Concatenate", outputs=[Out("STRING")],
      inputs=[String("string_a", "", multiline=True), String("string_b", "", multiline=True),
              String("delimiter", "")])
class StringConcatenate:
    def execute(self, string_a, string_b, delimiter):
        return (f"{string_a}{delimiter}{string_b}",)


_INT_OPS = {"add": operator.add, "subtract": operator.sub, "multiply": operator.mul,
            "divide": operator.floordiv, "modulo": operator.mod, "power": operator.pow,
            "min": min, "max": max}
_FLOAT_OPS = {"add": operator.add, "subtract": operator.sub, "multiply": operator.mul,
              "divide": operator.truediv, "power": math.pow, "min": min, "max": max}


@node(category="utils/math", display_name="Int Math", outputs=[Out("INT")],
      inputs=[Int("a", 0, min=-INT_LIMIT, max=INT_LIMIT), Int("b", 0, min=-INT_LIMIT, max=INT_LIMIT),
              Combo("operation", list(_INT_OPS), "add")])
class IntMath:
    def execute(self, a, b, operation):
        if operation in ("divide", "modulo") and b == 0:
            raise ZeroDivisionError(f"IntMath: cannot {operation} {a} by zero (input 'b')")
        return (int(_INT_OPS[operation](a, b)),)


@node(category="utils/math", display_name="Float Math", outputs=[Out("FLOAT")],
      inputs=[Float("a", 0.0), Float("b", 0.0), Combo("operation", list(_FLOAT_OPS), "add")])
class FloatMath:
    def execute(self, a, b, operation):
        if operation == "divide" and b == 0:
            raise ZeroDivisionError(f"FloatMath: cannot divide {a} by zero (input 'b')")
        return (float(_FLOAT_OPS[operation](a, b)),)


_COMPARE = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
            ">": operator.gt, ">=": operator.ge}


@node(category="utils/logic", display_name="Compare", outputs=[Out("BOOLEAN")],
      inputs=[Link("a", "INT,FLOAT"), Link("b", "INT,FLOAT"), Combo("comparison", list(_COMPARE), "==")])
class Compare:
    def execute(self, a, b, comparison):
        return (bool(_COMPARE[comparison](a, b)),)


@node(category="utils/logic", display_name="Switch", outputs=[Out("*")],
      inputs=[Boolean("switch", True), Link("on_true", "*", lazy=True),
              Link("on_false", "*", lazy=True)],
      description="Passes on_true or on_false; only the chosen branch is computed.")
class Switch:
    def check_lazy_status(self, switch, on_true=None, on_false=None):
        return ["on_true"] if switch else ["on_false"]

    def execute(self, switch, on_true=None, on_false=None):
        return (on_true if switch else on_false,)


def preview_text(value) -> str:
    """How PreviewAny shows a value: strings as they are, numbers and booleans by str(), anything
    else as JSON when it serializes (lists, dicts of plain values), else by str() (tensors, models)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float, bool)):
        return str(value)
    if value is None:
        return "None"
    try:
        return json.dumps(value)
    except (TypeError, ValueError):  # ValueError: circular references
        pass
    try:
        return str(value)
    except Exception:  # a broken __str__ must not fail the preview
        return "source exists, but could not be serialized."


@node(category="utils", display_name="Preview Any", output_node=True, outputs=[],
      inputs=[Link("source", "*")])
class PreviewAny:
    def execute(self, source=None):
        return {"ui": {"text": [preview_text(source)]}}


PreviewAny.RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_preview_any"  # as ComfyUI reports it
# ComfyUI declares the input as (ANY, {}): /object_info shows ["*", {}], which spec's Link (no hints,
# no options dict) cannot express.
PreviewAny.INPUT_TYPES = classmethod(lambda cls: {"required": {"source": ("*", {})}})

NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = mappings(
    PrimitiveInt, PrimitiveFloat, PrimitiveString, PrimitiveStringMultiline, PrimitiveBoolean,
    StringConcatenate, IntMath, FloatMath, Compare, Switch, PreviewAny)
