"""What node code needs from the engine: the blocker value, the engine's exceptions, and the
shape in which the node layer tells the engine what a value of a type looks like.

Node modules import these names; the executor recognises them. Nothing here imports torch.
"""
from dataclasses import dataclass
from typing import Any, Callable


class ExecutionBlocker:
    """Returned by a node (whole result or one output slot) to stop everything downstream.

    Downstream calls that receive a blocker are not run and pass the blocker on. A non-None
    `message` is reported once as an `execution_error` event with exception_type
    "ExecutionBlocked", yet the prompt still succeeds (COMPAT §1.3).
    """

    __slots__ = ("message",)

    def __init__(self, message):
        self.message = message

    def __repr__(self):
        return f"ExecutionBlocker({self.message!r})"


class InterruptProcessing(Exception):
    """Raised inside a node (by graph.progress) or between nodes when an interrupt was asked for."""


class DependencyCycleError(Exception):
    """A cycle among nodes created by expansion; found while executing (COMPAT §3.6)."""


class DuplicateNodeError(Exception):
    """An expansion tried to add a node id that already exists in the prompt."""


class NodeOutputError(Exception):
    """A node function returned something the engine cannot use (e.g. None)."""


class NodeInputError(TypeError):
    """A node was about to be called with a required input missing or a linked value of the
    wrong kind; the message names the node and the input."""


@dataclass(frozen=True)
class ValueType:
    """What a value of one declared type looks like (e.g. "IMAGE": a [B,H,W,C] tensor).

    The node layer registers these on its registry (`registry.value_type(name)`); the executor
    only calls them, so graph/ needs no torch. `when_none` is advice added when the value is None.
    """

    accepts: Callable[[Any], bool]
    description: str
    when_none: str = ""


# COMPAT §3.6 reports the cycle error as "graph.DependencyCycleError": present our engine
# exceptions under the package name so the reported exception_type is short and stable.
for _cls in (DependencyCycleError, DuplicateNodeError, NodeOutputError, NodeInputError,
             InterruptProcessing):
    _cls.__module__ = "graph"
del _cls
