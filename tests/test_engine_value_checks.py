"""Runtime input checks: the engine rejects a required input that is None and a linked value of
the wrong kind, naming the node and the input, for the types the registry describes."""
from graph.contract import ValueType
from graph.executor import Executor
from tests import engine_nodes as N


class Pair:
    """Outputs whatever it was built with, under the declared type."""

    value = None

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("PAIR",)
    FUNCTION = "run"

    def run(self):
        return (Pair.value,)


class Junk(Pair):
    def run(self):
        return ("junk",)


class Eat:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"pair": ("PAIR",), "lazy": ("PAIR", {"lazy": True})},
                "optional": {"maybe": ("PAIR",), "any": ("*",), "either": ("PAIR,OTHER",)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    OUTPUT_NODE = True

    def run(self, pair, lazy=None, maybe=None, any=None, either=None):
        N.CALLS.append(("Eat", pair))
        return (1,)


class Checked(N.Registry):
    def value_type(self, name):
        if name == "PAIR":
            return ValueType(lambda v: isinstance(v, tuple) and len(v) == 2, "a PAIR (a 2-tuple)",
                             "Connect a pair maker.")
        return None


def _run(value, inputs, registry_cls=Checked):
    N.CALLS.clear()
    Pair.value = value
    registry = registry_cls({"Pair": Pair, "Junk": Junk, "Eat": Eat})
    prompt = {"1": {"class_type": "Pair", "inputs": {}}, "3": {"class_type": "Junk", "inputs": {}},
              "2": {"class_type": "Eat", "inputs": {"lazy": ["1", 0], **inputs}}}
    return Executor(registry).execute(prompt, "p", outputs=["2"])


def test_a_good_value_runs():
    result = _run((1, 2), {"pair": ["1", 0], "maybe": ["1", 0], "either": ["1", 0]})
    assert result.status_str == "success" and N.CALLS == [("Eat", (1, 2))]


def test_required_none_is_rejected_with_node_input_and_advice():
    result = _run(None, {"pair": ["1", 0]})
    err = result.error
    assert (err["node_id"], err["node_type"], err["exception_type"]) == ("2", "Eat", "graph.NodeInputError")
    assert err["exception_message"] == ("Eat (node 2): required input 'pair' is None; it needs a PAIR "
                                        "(a 2-tuple). Connect a pair maker.")
    assert N.CALLS == []


def test_a_missing_required_input_is_rejected():
    assert "required input 'pair' is None" in _run((1, 2), {}).error["exception_message"]


def test_a_mistyped_linked_value_is_rejected():
    err = _run([1, 2], {"pair": ["1", 0]}).error
    assert err["exception_message"] == "Eat (node 2): input 'pair' must be a PAIR (a 2-tuple), got list"


def test_any_and_unions_with_undescribed_types_are_not_checked():
    result = _run((1, 2), {"pair": ["1", 0], "any": ["3", 0], "either": ["3", 0]})
    assert result.status_str == "success"


def test_an_unrequested_lazy_input_may_be_none_but_an_evaluated_one_is_checked():
    assert _run(None, {"pair": (1, 2)}).status_str == "success"  # a constant: not linked
    assert _run((1, 2), {"pair": ["1", 0], "lazy": ["3", 0]}).status_str == "success"  # not asked for
    # Once its node ran for another input, the lazy value is there, and checked like any other.
    err = _run((1, 2), {"pair": ["1", 0], "lazy": ["3", 0], "any": ["3", 0]}).error
    assert err["exception_message"].startswith("Eat (node 2): input 'lazy' must be a PAIR")


def test_registries_without_value_types_check_nothing():
    assert _run("x", {"pair": ["1", 0]}, N.Registry).status_str == "success"
