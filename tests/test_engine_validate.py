"""Validation: every COMPAT §3.1 error type and shape, plus our fixes (cycles, BOOLEAN, speed)."""

import pytest

from graph.validate import validate_prompt
from tests import engine_nodes as N

REG = N.registry()


def out(value_link):
    return {"class_type": "Output", "inputs": {"value": value_link}}


def reasons(result, node_id):
    return [r["type"] for r in result.node_errors[node_id]["errors"]]


def assert_reason_shape(r):
    assert set(r) == {"type", "message", "details", "extra_info"}
    assert isinstance(r["message"], str) and isinstance(r["details"], str)
    assert isinstance(r["extra_info"], dict)


def test_valid_prompt_and_coercion_written_back():
    p = {"1": {"class_type": "Options", "inputs": {"mode": "b", "flag": "off", "ratio": "0.5",
                                                   "text": 12, "count": 8.9}},
         "2": out(["1", 0])}
    r = validate_prompt(p, REG)
    assert r.ok and r.error is None and r.outputs == ["2"] and r.node_errors == {}
    assert p["1"]["inputs"] == {"mode": "b", "flag": False, "ratio": 0.5, "text": "12", "count": 8}


@pytest.mark.parametrize("word,expected", [("false", False), ("0", False), ("No", False),
                                           ("OFF", False), ("true", True), ("yes", True),
                                           (0, False), (1, True)])
def test_boolean_words(word, expected):
    p = {"1": {"class_type": "Options", "inputs": {"mode": "a", "flag": word, "ratio": 0,
                                                   "text": "", "count": 1}}, "2": out(["1", 0])}
    assert validate_prompt(p, REG).ok
    assert p["1"]["inputs"]["flag"] is expected


def test_value_wrapper_unwrapped():
    p = {"1": {"class_type": "IntConst", "inputs": {"value": {"__value__": "7"}}}, "2": out(["1", 0])}
    assert validate_prompt(p, REG).ok
    assert p["1"]["inputs"]["value"] == 7


def test_unknown_class_is_invalid_prompt_even_if_unreachable():
    p = {"1": {"class_type": "IntConst", "inputs": {"value": 1}}, "2": out(["1", 0]),
         "9": {"class_type": "Nope", "inputs": {}}}
    r = validate_prompt(p, REG)
    assert not r.ok and r.error["type"] == "invalid_prompt" and r.node_errors == {}
    assert "Nope" in r.error["message"] and "#9" in r.error["details"]
    assert_reason_shape(r.error)


def test_missing_class_type():
    r = validate_prompt({"1": {"inputs": {}}}, REG)
    assert r.error["type"] == "invalid_prompt" and "class_type" in r.error["message"]


def test_no_outputs_and_partial_targets():
    p = {"1": {"class_type": "IntConst", "inputs": {"value": 1}}}
    assert validate_prompt(p, REG).error["type"] == "prompt_no_outputs"
    p["2"] = out(["1", 0])
    assert validate_prompt(p, REG, partial_execution_targets=[]).error["type"] == "prompt_no_outputs"
    assert validate_prompt(p, REG, partial_execution_targets=["1"]).error["type"] == "prompt_no_outputs"
    assert validate_prompt(p, REG, partial_execution_targets=["2"]).outputs == ["2"]


def test_all_input_errors_reported_with_shapes():
    p = {"1": {"class_type": "Options", "inputs": {
        "mode": "zzz",                  # value_not_in_list
        "flag": True,
        "ratio": 2.5,                   # value_bigger_than_max
        "count": 0,                     # value_smaller_than_min  (text missing: required)
        "extra": ["1", 0, 3],           # bad_linked_input
    }}, "2": out(["1", 0])}
    r = validate_prompt(p, REG)
    assert not r.ok
    assert r.error["type"] == "prompt_outputs_failed_validation"
    got = reasons(r, "1")
    assert sorted(got) == sorted(["value_not_in_list", "value_bigger_than_max", "required_input_missing",
                                  "value_smaller_than_min", "bad_linked_input"])
    entry = r.node_errors["1"]
    assert entry["class_type"] == "Options" and entry["dependent_outputs"] == ["2"]
    for reason in entry["errors"]:
        assert_reason_shape(reason)
    by_type = {x["type"]: x for x in entry["errors"]}
    assert by_type["value_not_in_list"]["details"] == "mode: 'zzz' not in ['a', 'b', 'c']"
    assert by_type["value_not_in_list"]["extra_info"]["input_config"] == [["a", "b", "c"]]
    assert by_type["value_bigger_than_max"]["message"] == "Value 2.5 bigger than max of 1.0"
    assert by_type["required_input_missing"]["extra_info"]["input_name"] == "text"
    assert by_type["bad_linked_input"]["extra_info"]["received_value"] == ["1", 0, 3]


def test_long_combo_not_echoed():
    class Big:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"c": ([str(i) for i in range(30)],)}}
        RETURN_TYPES = ()
        FUNCTION = "run"
        OUTPUT_NODE = True
    r = validate_prompt({"1": {"class_type": "Big", "inputs": {"c": "x"}}}, N.Registry({"Big": Big}))
    e = r.node_errors["1"]["errors"][0]
    assert e["extra_info"]["input_config"] is None and "(list of length 30)" in e["details"]


def test_invalid_input_type():
    p = {"1": {"class_type": "IntConst", "inputs": {"value": "seven"}}, "2": out(["1", 0])}
    r = validate_prompt(p, REG)
    (e,) = r.node_errors["1"]["errors"]
    assert e["type"] == "invalid_input_type"
    assert e["message"] == "Failed to convert an input value to a INT value"
    assert e["extra_info"]["received_value"] == "seven"


def test_return_type_mismatch_and_downstream_not_listed():
    p = {"1": {"class_type": "StrOut", "inputs": {}},
         "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 1}},
         "3": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": 1}}, "4": out(["3", 0])}
    r = validate_prompt(p, REG)
    assert list(r.node_errors) == ["2"]  # 3 and 4 fail only because of 2: not listed
    (e,) = r.node_errors["2"]["errors"]
    assert e["type"] == "return_type_mismatch"
    assert e["details"] == "a, received_type(STRING) mismatch input_type(INT)"
    assert e["extra_info"]["linked_node"] == ["1", 0]


def test_link_to_missing_node_and_int_id():
    p = {"1": {"class_type": "Add", "inputs": {"a": ["99", 0], "b": [5, 0]}}, "2": out(["1", 0])}
    r = validate_prompt(p, REG)
    errs = r.node_errors["1"]["errors"]
    assert [e["type"] for e in errs] == ["exception_during_inner_validation"] * 2
    assert errs[0]["extra_info"]["exception_type"] == "KeyError"
    assert isinstance(errs[0]["extra_info"]["traceback"], list)


def test_custom_validation_replaces_builtin_bounds():
    # value=4 is above max 5? no; value=8 breaks max but VALIDATE_INPUTS owns `value`: even => ok
    p = {"1": {"class_type": "Validated", "inputs": {"value": 8, "other": 1}}, "2": out(["1", 0])}
    assert validate_prompt(p, REG).ok
    p["1"]["inputs"]["value"] = 3
    r = validate_prompt(p, REG)
    (e,) = r.node_errors["1"]["errors"]
    assert e["type"] == "custom_validation_failed" and e["details"] == "value - value must be even"
    p["1"]["inputs"].update(value=2, other=9)  # `other` is not covered: built-in max applies
    assert reasons(validate_prompt(p, REG), "1") == ["value_bigger_than_max"]


def test_validate_inputs_input_types_skips_link_check():
    N.TypedValidate.seen.clear()
    p = {"1": {"class_type": "StrOut", "inputs": {}},
         "2": {"class_type": "TypedValidate", "inputs": {"x": ["1", 0]}}, "3": out(["2", 0])}
    assert validate_prompt(p, REG).ok
    assert N.TypedValidate.seen == [({"x": "STRING"}, None)]  # linked value is None


def test_exception_in_validate_inputs():
    class Boom:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"v": ("INT",)}}
        RETURN_TYPES = ()
        FUNCTION = "run"
        OUTPUT_NODE = True

        @classmethod
        def VALIDATE_INPUTS(cls, v):
            raise RuntimeError("kaboom")
    r = validate_prompt({"1": {"class_type": "Boom", "inputs": {"v": 1}}}, N.Registry({"Boom": Boom}))
    (e,) = r.node_errors["1"]["errors"]
    assert e["type"] == "exception_during_validation"
    assert e["extra_info"]["exception_type"] == "RuntimeError" and e["details"] == "kaboom"


def test_partial_acceptance():
    p = {"1": {"class_type": "IntConst", "inputs": {"value": 1}}, "2": out(["1", 0]),
         "3": {"class_type": "IntConst", "inputs": {"value": 5000}}, "4": out(["3", 0])}
    r = validate_prompt(p, REG)
    assert r.ok and r.outputs == ["2"] and list(r.node_errors) == ["3"]
    assert r.node_errors["3"]["dependent_outputs"] == ["4"]


def test_cycle_names_its_nodes():
    p = {"1": {"class_type": "Add", "inputs": {"a": ["3", 0], "b": 1}},
         "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 1}},
         "3": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": 1}},
         "4": {"class_type": "Add", "inputs": {"a": ["3", 0], "b": 1}},
         "5": out(["4", 0])}
    r = validate_prompt(p, REG)
    assert not r.ok and r.error["type"] == "prompt_outputs_failed_validation"
    assert sorted(r.node_errors) == ["1", "2", "3"]
    for nid in "123":
        (e,) = r.node_errors[nid]["errors"]
        assert e["type"] == "dependency_cycle" and sorted(e["extra_info"]["cycle"]) == ["1", "2", "3"]
    assert "Dependency cycle" in r.error["details"]


def test_self_loop_is_a_cycle():
    p = {"1": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 1}}, "2": out(["1", 0])}
    r = validate_prompt(p, REG)
    assert reasons(r, "1") == ["dependency_cycle"]


def test_deep_chain_no_recursion():
    # Far deeper than Python's recursion limit: validation must walk it iteratively.
    # (Its speed target is measured by benchmarks/engine.py, not asserted here.)
    n = 5000
    p = {"0": {"class_type": "IntConst", "inputs": {"value": 1}}}
    for i in range(1, n):
        p[str(i)] = {"class_type": "Add", "inputs": {"a": [str(i - 1), 0], "b": 1}}
    p["out"] = out([str(n - 1), 0])
    assert validate_prompt(p, REG).ok
