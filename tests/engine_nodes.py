"""Plain-Python test nodes for the engine tests (no torch). Each records its calls in CALLS."""
from __future__ import annotations

import asyncio
import math
import threading

from graph.contract import ExecutionBlocker
from graph.graph_builder import GraphBuilder
from graph.progress import check_interrupt, report_progress

CALLS: list = []  # (class_type, node-visible args) in call order


class Registry:
    """The smallest object graph/ accepts as a registry."""

    def __init__(self, mapping: dict):
        self.mapping = dict(mapping)

    def get_class(self, class_type):
        return self.mapping.get(class_type)

    def __contains__(self, class_type):
        return class_type in self.mapping


class IntConst:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0, "min": -1000, "max": 1000})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value):
        CALLS.append(("IntConst", value))
        return (value,)


class Add:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("INT",), "b": ("INT", {"default": 0})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, a, b):
        CALLS.append(("Add", a, b))
        return (a + b,)


class Mul:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("INT",), "b": ("INT",)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, a, b):
        CALLS.append(("Mul", a, b))
        return (a * b,)


class Output:
    """Output node: returns its value as UI."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("*",)}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    def run(self, value):
        CALLS.append(("Output", value))
        return {"ui": {"value": [value]}}


class Options:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"mode": (["a", "b", "c"],), "flag": ("BOOLEAN",),
                             "ratio": ("FLOAT", {"min": 0.0, "max": 1.0}), "text": ("STRING",),
                             "count": ("INT", {"min": 1, "max": 10})},
                "optional": {"extra": ("INT",)}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"

    def run(self, mode, flag, ratio, text, count, extra=None):
        CALLS.append(("Options", mode, flag, ratio, text, count, extra))
        return (f"{mode}{flag}{ratio}{text}{count}",)


class StrOut:
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def run(self):
        return ("s",)


class Validated:
    """VALIDATE_INPUTS covering `value`: its own rule replaces min/max."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"min": 0, "max": 5}), "other": ("INT", {"max": 5})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def VALIDATE_INPUTS(cls, value):
        return True if value % 2 == 0 else "value must be even"

    def run(self, value, other):
        return (value + other,)


class TypedValidate:
    """VALIDATE_INPUTS with input_types: built-in link type check skipped."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"x": ("INT",)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    seen = []

    @classmethod
    def VALIDATE_INPUTS(cls, input_types, x=None):
        cls.seen.append((dict(input_types), x))
        return True if input_types.get("x") in ("INT", "STRING") else "bad type"

    def run(self, x):
        return (x,)


class Volatile:
    """IS_CHANGED NaN: always re-runs."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def IS_CHANGED(cls, value):
        return float("nan")

    def run(self, value):
        CALLS.append(("Volatile", value))
        return (value,)


class Stamp:
    """IS_CHANGED returns a class attribute; changing it re-runs the node."""

    token = "x"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def IS_CHANGED(cls, value):
        return cls.token

    def run(self, value):
        CALLS.append(("Stamp", value))
        return (value,)


class Range:
    """OUTPUT_IS_LIST: emits 0..n-1 as a list to fan out."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"n": ("INT",)}}

    RETURN_TYPES = ("INT",)
    OUTPUT_IS_LIST = (True,)
    FUNCTION = "run"

    def run(self, n):
        return (list(range(n)),)


class SumList:
    """INPUT_IS_LIST: receives whole lists."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"values": ("INT",)}}

    RETURN_TYPES = ("INT",)
    INPUT_IS_LIST = True
    FUNCTION = "run"

    def run(self, values):
        CALLS.append(("SumList", list(values)))
        return (sum(values),)


class LazySwitch:
    """Evaluates only the branch it picks."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"pick_a": ("BOOLEAN",), "a": ("INT", {"lazy": True}),
                             "b": ("INT", {"lazy": True})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def check_lazy_status(self, pick_a, a=None, b=None):
        CALLS.append(("LazySwitch.check", pick_a, a, b))
        if pick_a and a is None:
            return ["a"]
        if not pick_a and b is None:
            return ["b"]
        return []

    def run(self, pick_a, a=None, b=None):
        CALLS.append(("LazySwitch", pick_a, a, b))
        return (a if pick_a else b,)


class Gate:
    """Blocks its output when open is False."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",), "open": ("BOOLEAN",)},
                "optional": {"message": ("STRING",)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value, open, message=None):
        return (value if open else ExecutionBlocker(message),)


class CountUp:
    """A loop built by expansion: adds 1 to value `times` times by expanding into itself."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",), "times": ("INT", {"min": 0})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value, times):
        CALLS.append(("CountUp", value, times))
        if times <= 0:
            return (value,)
        g = GraphBuilder()
        step = g.node("Add", a=value, b=1)
        again = g.node("CountUp", value=step.out(0), times=times - 1)
        return {"result": (again.out(0),), "expand": g.finalize()}


class CycleMaker:
    """Expands into two nodes that depend on each other."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value):
        g = GraphBuilder()
        prefix = g.prefix
        a = g.node("Add", a=[prefix + "2", 0], b=value)
        b = g.node("Add", a=a.out(0), b=1)
        assert b.id == prefix + "2"
        return {"result": (b.out(0),), "expand": g.finalize()}


class AsyncSleep:
    """Async node: sleeps, records start/end times."""

    events: list = []

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",), "delay": ("FLOAT",)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    async def run(self, value, delay):
        AsyncSleep.events.append(("start", value))
        await asyncio.sleep(delay)
        AsyncSleep.events.append(("end", value))
        return (value,)


class Steps:
    """Reports progress for `steps` steps; can wait for an event in the middle."""

    gate: threading.Event = None
    reached: threading.Event = None

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",), "steps": ("INT",)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value, steps):
        for i in range(steps):
            if Steps.gate is not None and i == 1:
                Steps.reached.set()
                Steps.gate.wait(5)
            report_progress(i + 1, steps)
        check_interrupt()
        CALLS.append(("Steps", value))
        return (value,)


class Fail:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}, "optional": {"obj": ("*",)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value, obj=None):
        raise ValueError(f"bad value {value}")


class ReturnsNone:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    def run(self):
        return None


class Hidden:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)},
                "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID",
                           "extra_pnginfo": "EXTRA_PNGINFO", "dynprompt": "DYNPROMPT"}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    seen = []

    def run(self, value, prompt, unique_id, extra_pnginfo, dynprompt):
        Hidden.seen.append((value, prompt, unique_id, extra_pnginfo, dynprompt))
        return {"ui": {"id": [unique_id]}}


class Counter:
    """Instance state persists across prompts while the node stays in the graph."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    NOT_IDEMPOTENT = True

    def __init__(self):
        self.count = 0

    def run(self, value):
        self.count += 1
        return (self.count,)


class LoopOpen:
    """Start of a while-style loop body (ComfyUI flow-control pattern)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",), "remaining": ("INT",)}}

    RETURN_TYPES = ("FLOW_CONTROL", "INT", "INT")
    FUNCTION = "run"

    def run(self, value, remaining):
        return ("open", value, remaining)


class LoopClose:
    """End of the loop: while `remaining` > 0, expands into a fresh copy of the body (read from
    DYNPROMPT) whose LoopOpen starts from this iteration's values."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"flow": ("FLOW_CONTROL", {"rawLink": True}), "value": ("INT",),
                             "remaining": ("INT",)},
                "hidden": {"dynprompt": "DYNPROMPT", "unique_id": "UNIQUE_ID"}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, flow, value, remaining, dynprompt, unique_id):
        CALLS.append(("LoopClose", value, remaining))
        if remaining <= 0:
            return (value,)
        open_id = flow[0]
        body, stack = set(), [unique_id]
        while stack:  # every node between LoopOpen and this node
            for v in dynprompt.get_node(stack.pop())["inputs"].values():
                if isinstance(v, list) and len(v) == 2 and v[0] != open_id and v[0] not in body:
                    body.add(v[0])
                    stack.append(v[0])
        g = GraphBuilder()
        new_open = g.node("LoopOpen", value=value, remaining=remaining)
        ids = {open_id: new_open.id}
        for nid in body:
            ids[nid] = g.node(dynprompt.get_node(nid)["class_type"], id="b" + nid).id
        ids[unique_id] = g.node("LoopClose", id="close").id
        for nid in list(body) + [unique_id]:
            clone = g.lookup_node(ids[nid][len(g.prefix):])
            for name, v in dynprompt.get_node(nid)["inputs"].items():
                is_ref = isinstance(v, list) and len(v) == 2 and v[0] in ids
                clone.set_input(name, [ids[v[0]], v[1]] if is_ref else v)
        return {"result": (g.lookup_node("close").out(0),), "expand": g.finalize()}


def nan_free(x):
    return x == x and not (isinstance(x, float) and math.isnan(x))


NODES = {c.__name__: c for c in (
    IntConst, Add, Mul, Output, Options, StrOut, Validated, TypedValidate, Volatile, Stamp, Range,
    SumList, LazySwitch, Gate, CountUp, CycleMaker, AsyncSleep, Steps, Fail, ReturnsNone, Hidden,
    Counter, LoopOpen, LoopClose)}


def registry() -> Registry:
    return Registry(NODES)
