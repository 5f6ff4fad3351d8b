"""What node code needs from the engine: the blocker value and the engine's exceptions.

Node modules import these names; the executor recognises them. Nothing here imports torch.
"""


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


# COMPAT §3.6 reports the cycle error as "graph.DependencyCycleError": present our engine
# exceptions under the package name so the reported exception_type is short and stable.
for _cls in (DependencyCycleError, DuplicateNodeError, NodeOutputError, InterruptProcessing):
    _cls.__module__ = "graph"
del _cls
