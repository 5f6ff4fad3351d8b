"""Executor behaviour: order, list mapping, lazy inputs, blockers, expansion, async, interrupt,
events and error shapes (COMPAT §1.2-1.4, §3.2-3.7, §5.2, §6)."""
import threading
import time

import pytest

from graph.executor import Executor
from graph.validate import validate_prompt
from tests import engine_nodes as N


@pytest.fixture(autouse=True)
def _clear_calls():
    N.CALLS.clear()
    yield
    N.CALLS.clear()


def run(prompt, executor=None, outputs=None, extra=None):
    executor = executor or Executor(N.registry())
    events = []
    checked = validate_prompt(prompt, N.registry())
    assert checked.ok, checked.node_errors
    result = executor.execute(prompt, "pid", extra or {}, outputs or checked.outputs,
                              [lambda e, d: events.append((e, d))])
    return result, events


def names(events, kind):
    return [d["node"] for e, d in events if e == kind]


def const(v):
    return {"class_type": "IntConst", "inputs": {"value": v}}


def add(a, b):
    return {"class_type": "Add", "inputs": {"a": a, "b": b}}


def output(link):
    return {"class_type": "Output", "inputs": {"value": link}}


def test_runs_only_outputs_and_ancestors():
    p = {"1": const(1), "2": add(["1", 0], 2), "3": output(["2", 0]),
         "4": const(50), "5": add(["4", 0], 1)}  # 4 and 5 feed no output
    result, events = run(p)
    assert result.status_str == "success" and result.completed
    assert result.outputs == {"3": {"value": [3]}}
    assert result.ran == ["1", "2", "3"]
    assert ("IntConst", 50) not in N.CALLS


def test_order_priority_and_numeric_ties():
    # 1 -> {10 -> 11(out), 2(out)} : outputs first, then nodes feeding outputs; "2" before "10"
    p = {"1": const(1), "10": add(["1", 0], 1), "11": output(["10", 0]), "2": output(["1", 0]),
         "3": const(3), "20": add(["3", 0], 1), "21": add(["20", 0], 1), "22": output(["21", 0])}
    result, events = run(p)
    # ready first: 1 and 3 (both two+ hops / one hop from outputs): 1 feeds output 2 directly.
    assert result.ran == ["1", "2", "10", "11", "3", "20", "21", "22"]
    again, _ = run(p)
    assert again.ran == result.ran  # deterministic across runs


def test_list_mapping_repeats_last_and_output_is_list():
    p = {"1": {"class_type": "Range", "inputs": {"n": 3}},          # [0, 1, 2]
         "2": add(["1", 0], 10),                                     # mapped 3 times
         "3": {"class_type": "SumList", "inputs": {"values": ["2", 0]}},
         "4": output(["3", 0]),
         "5": {"class_type": "Range", "inputs": {"n": 2}},          # [0, 1]
         "6": add(["1", 0], ["5", 0]),                               # b repeats its last: 1
         "7": output(["6", 0])}
    result, _ = run(p)
    assert result.outputs["4"] == {"value": [33]}
    assert ("SumList", [10, 11, 12]) in N.CALLS
    assert result.outputs["7"] == {"value": [0, 2, 3]}  # ui lists concatenated per call


def test_lazy_inputs_only_requested_branch_runs():
    p = {"1": const(1), "2": const(2),
         "3": {"class_type": "LazySwitch", "inputs": {"pick_a": False, "a": ["1", 0], "b": ["2", 0]}},
         "4": output(["3", 0])}
    result, events = run(p)
    assert result.outputs["4"] == {"value": [2]}
    assert "1" not in result.ran and "2" in result.ran
    assert N.CALLS[0] == ("LazySwitch.check", False, None, None)
    assert ("LazySwitch.check", False, None, 2) in N.CALLS
    assert names(events, "executing").count("3") == 2  # once per attempt


def test_blocker_stops_downstream_and_prompt_succeeds():
    p = {"1": const(5), "2": {"class_type": "Gate", "inputs": {"value": ["1", 0], "open": False,
                                                               "message": "closed"}},
         "3": add(["2", 0], 1), "4": output(["3", 0]), "5": output(["1", 0])}
    result, events = run(p)
    assert result.status_str == "success"
    assert "3" not in result.ran and "4" not in result.ran  # blocked calls do not run
    assert result.outputs == {"5": {"value": [5]}}
    errors = [d for e, d in events if e == "execution_error"]
    assert len(errors) == 1  # reported once, silent further down
    assert errors[0]["exception_type"] == "ExecutionBlocked"
    assert errors[0]["exception_message"] == "Execution Blocked: closed"
    assert errors[0]["traceback"] == [] and "timestamp" not in errors[0]
    assert events[-1][0] == "execution_success"


def test_expansion_loop():
    p = {"1": const(10), "2": {"class_type": "CountUp", "inputs": {"value": ["1", 0], "times": 4}},
         "3": output(["2", 0])}
    result, events = run(p)
    assert result.outputs["3"] == {"value": [14]}
    assert [c for c in N.CALLS if c[0] == "CountUp"] == [("CountUp", 10, 4), ("CountUp", 11, 3),
                                                         ("CountUp", 12, 2), ("CountUp", 13, 1),
                                                         ("CountUp", 14, 0)]
    executing = [d for e, d in events if e == "executing"]
    assert executing[2]["node"] == "2.0.0.1" and executing[2]["display_node"] == "2"
    assert "2.0.0.2.0.0.1" in result.ran


def test_expansion_cycle_is_an_error():
    p = {"1": const(1), "2": {"class_type": "CycleMaker", "inputs": {"value": ["1", 0]}},
         "3": output(["2", 0])}
    result, events = run(p)
    assert result.status_str == "error"
    assert result.error["exception_type"] == "graph.DependencyCycleError"
    assert result.error["node_id"] == "2"  # blamed on the expanding node


def test_async_nodes_run_concurrently():
    N.AsyncSleep.events.clear()
    p = {"1": {"class_type": "AsyncSleep", "inputs": {"value": 1, "delay": 0.3}}, "2": output(["1", 0]),
         "3": {"class_type": "AsyncSleep", "inputs": {"value": 2, "delay": 0.3}}, "4": output(["3", 0])}
    t = time.perf_counter()
    result, _ = run(p)
    elapsed = time.perf_counter() - t
    assert result.outputs == {"2": {"value": [1]}, "4": {"value": [2]}}
    assert [e[0] for e in N.AsyncSleep.events[:2]] == ["start", "start"]
    assert elapsed < 0.55, elapsed


def test_event_order_and_history_shape():
    p = {"1": const(1), "2": output(["1", 0])}
    ex = Executor(N.registry())
    result, events = run(p, ex)
    kinds = [e for e, _ in events]
    assert kinds == ["execution_start", "execution_cached",
                     "progress_state", "executing", "progress_state",
                     "progress_state", "executing", "executed", "progress_state",
                     "execution_success"]
    ps = events[-2][1]
    assert ps["nodes"]["2"]["state"] == "finished" and ps["nodes"]["1"]["state"] == "finished"
    assert set(ps["nodes"]["2"]) == {"value", "max", "state", "node_id", "prompt_id",
                                     "display_node_id", "parent_node_id", "real_node_id"}
    assert [m[0] for m in result.messages] == ["execution_start", "execution_cached",
                                               "execution_success"]
    assert result.meta == {"2": {"node_id": "2", "display_node": "2", "parent_node": None,
                                 "real_node_id": "2"}}
    # cached re-run: no executing, but the output node's `executed` is sent again
    result2, events2 = run(p, ex)
    assert [e for e, _ in events2] == ["execution_start", "execution_cached", "executed",
                                       "progress_state", "execution_success"]
    assert events2[1][1]["nodes"] == ["1", "2"]
    assert result2.outputs == {"2": {"value": [1]}}


def test_progress_events():
    p = {"1": {"class_type": "Steps", "inputs": {"value": 1, "steps": 3}}, "2": output(["1", 0])}
    _, events = run(p)
    prog = [d for e, d in events if e == "progress"]
    assert [(d["value"], d["max"], d["node"]) for d in prog] == [(1, 3, "1"), (2, 3, "1"), (3, 3, "1")]


def test_error_shape():
    p = {"1": const(3), "2": {"class_type": "Fail", "inputs": {"value": ["1", 0], "obj": ["9", 0]}},
         "9": {"class_type": "Range", "inputs": {"n": 1}}, "3": output(["2", 0])}
    result, events = run(p)
    assert result.status_str == "error" and not result.completed
    err = result.error
    assert err["node_id"] == "2" and err["node_type"] == "Fail"
    assert err["exception_type"] == "ValueError" and err["exception_message"] == "bad value 3"
    assert isinstance(err["traceback"], list) and any("bad value" in line or "raise" in line
                                                      for line in err["traceback"])
    assert err["current_inputs"] == {"value": [3], "obj": [0]}
    assert set(err["executed"]) == {"1", "9"}
    assert events[-1][0] == "execution_error" and result.messages[-1][0] == "execution_error"


def test_returning_none_is_an_error():
    result, _ = run({"1": {"class_type": "ReturnsNone", "inputs": {}}})
    assert result.status_str == "error" and result.error["exception_type"] == "graph.NodeOutputError"


def test_hidden_inputs():
    N.Hidden.seen.clear()
    p = {"1": {"class_type": "Hidden", "inputs": {"value": 4}}}
    result, _ = run(p, extra={"extra_pnginfo": {"workflow": {"w": 1}}})
    (value, prompt, uid, png, dyn), = N.Hidden.seen
    assert value == 4 and prompt is p and uid == "1" and png == {"workflow": {"w": 1}}
    assert dyn.get_node("1")["class_type"] == "Hidden"


def test_instances_reused_per_node():
    p = {"1": {"class_type": "Counter", "inputs": {"value": 0}}, "2": output(["1", 0])}
    ex = Executor(N.registry())
    assert run(p, ex)[0].outputs["2"] == {"value": [1]}
    assert run(p, ex)[0].outputs["2"] == {"value": [1]}  # cached: node id in key, no re-run
    p["1"]["inputs"]["value"] = 1
    assert run(p, ex)[0].outputs["2"] == {"value": [2]}  # same instance, state persisted


def test_interrupt_between_nodes():
    ex = Executor(N.registry())
    p = {"1": {"class_type": "Steps", "inputs": {"value": 1, "steps": 0}}, "2": add(["1", 0], 1),
         "3": output(["2", 0])}

    def stop_after_first(event, data):
        if event == "progress_state" and data["nodes"]["1"]["state"] == "finished":
            ex.interrupt()
    checked = validate_prompt(p, N.registry())
    events = []
    result = ex.execute(p, "pid", {}, checked.outputs,
                        [stop_after_first, lambda e, d: events.append((e, d))])
    assert result.status_str == "error" and "exception_message" not in result.error
    assert result.error["node_id"] == "2" and result.error["executed"] == ["1"]
    assert events[-1][0] == "execution_interrupted"
    assert result.messages[-1][0] == "execution_interrupted"


def test_interrupt_from_inside_a_node_other_thread():
    ex = Executor(N.registry())
    N.Steps.gate, N.Steps.reached = threading.Event(), threading.Event()
    try:
        p = {"1": {"class_type": "Steps", "inputs": {"value": 1, "steps": 5}}, "2": output(["1", 0])}
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("r", run(p, ex)))
        t.start()
        assert N.Steps.reached.wait(5)
        ex.interrupt()
        N.Steps.gate.set()
        t.join(5)
        result, events = box["r"]
        assert result.status_str == "error" and result.error["node_id"] == "1"
        assert [d["value"] for e, d in events if e == "progress"] == [1]
        assert ("Steps", 1) not in N.CALLS
        # the flag is cleared: the next prompt runs
        assert run(p, ex)[0].status_str == "success"
    finally:
        N.Steps.gate = N.Steps.reached = None


def test_partial_targets_run_needed_outputs():
    p = {"1": const(1), "2": output(["1", 0]), "3": add(["1", 0], 1), "4": output(["3", 0])}
    result, _ = run(p, outputs=["4"])
    assert result.outputs == {"4": {"value": [2]}} and "2" not in result.ran


class RawLink:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"link": ("INT", {"rawLink": True})}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    def run(self, link, **undeclared):
        return {"ui": {"link": [link], "extra": [sorted(undeclared.items())]}}


class Previewer:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    def run(self):
        from graph.progress import ProgressBar
        bar = ProgressBar(2)
        bar.update_absolute(1, preview="IMG")
        bar.update(1)
        return {}


class DupExpander:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self):
        return {"result": (["1", 0],), "expand": {"1": {"class_type": "IntConst", "inputs": {"value": 1}}}}


def registry_plus(**extra):
    reg = N.registry()
    reg.mapping.update(extra)
    return reg


def test_raw_link_and_undeclared_inputs():
    reg = registry_plus(RawLink=RawLink)
    p = {"1": const(4), "2": const(5),
         "3": {"class_type": "RawLink", "inputs": {"link": ["1", 0], "other": ["2", 0], "dropped": 9}}}
    result = Executor(reg).execute(p, "pid", {}, ["3"])
    # rawLink gets the link itself (its upstream still runs first); undeclared links are passed,
    # undeclared constants dropped (COMPAT §1.2)
    assert result.outputs["3"] == {"link": [["1", 0]], "extra": [[("other", 5)]]}
    assert result.ran[-1] == "3" and {"1", "2"} <= set(result.ran)


def test_preview_event_precedes_progress():
    events = []
    result = Executor(registry_plus(Previewer=Previewer)).execute(
        {"1": {"class_type": "Previewer", "inputs": {}}}, "pid", {}, ["1"],
        [lambda e, d: events.append((e, d))])
    assert result.status_str == "success"
    seq = [e for e, _ in events if e in ("preview", "progress")]
    assert seq == ["preview", "progress", "progress"]
    preview = next(d for e, d in events if e == "preview")
    assert preview == {"prompt_id": "pid", "node_id": "1", "display_node_id": "1",
                       "parent_node_id": None, "real_node_id": "1", "image": "IMG"}


def test_expansion_with_existing_id_is_an_error():
    result = Executor(registry_plus(DupExpander=DupExpander)).execute(
        {"1": {"class_type": "DupExpander", "inputs": {}}, "2": output(["1", 0])}, "pid", {}, ["2"])
    assert result.status_str == "error"
    assert result.error["exception_type"] == "graph.DuplicateNodeError" and result.error["node_id"] == "1"


def test_execute_inside_running_event_loop():
    import asyncio

    async def main():
        return Executor(N.registry()).execute({"1": const(1), "2": output(["1", 0])}, "pid", {}, ["2"])
    assert asyncio.run(main()).outputs == {"2": {"value": [1]}}


def test_while_loop_clones_its_body_through_dynprompt():
    # value doubles while remaining counts down from 3: 1 -> 2 -> 4 -> 8
    p = {"1": {"class_type": "LoopOpen", "inputs": {"value": 1, "remaining": 3}},
         "2": {"class_type": "Mul", "inputs": {"a": ["1", 1], "b": 2}},
         "3": add(["1", 2], -1),
         "4": {"class_type": "LoopClose", "inputs": {"flow": ["1", 0], "value": ["2", 0],
                                                     "remaining": ["3", 0]}},
         "5": output(["4", 0])}
    ex = Executor(N.registry())
    result, events = run(p, ex)
    assert result.status_str == "success", result.error
    assert result.outputs["5"] == {"value": [8]}
    assert [c[1:] for c in N.CALLS if c[0] == "LoopClose"] == [(2, 2), (4, 1), (8, 0)]
    displays = {d["display_node"] for e, d in events if e == "executing"}
    assert displays == {"1", "2", "3", "4", "5"}  # ephemeral nodes show as the loop's close node
    N.CALLS.clear()
    assert run(p, ex)[0].ran == [] and N.CALLS == []  # the whole loop result is cached


def test_cached_output_upstream_of_another_output_still_reports_ui():
    # "2" is an output and also feeds output "3": on a cached re-run both re-send their UI
    class PassOut:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"value": ("INT",)}}
        RETURN_TYPES = ("INT",)
        FUNCTION = "run"
        OUTPUT_NODE = True

        def run(self, value):
            return {"ui": {"v": [value]}, "result": (value,)}
    ex = Executor(registry_plus(PassOut=PassOut))
    p = {"1": const(1), "2": {"class_type": "PassOut", "inputs": {"value": ["1", 0]}},
         "3": output(["2", 0])}
    first = ex.execute(p, "a", {}, ["2", "3"])
    events = []
    second = ex.execute(p, "b", {}, ["3", "2"], [lambda e, d: events.append((e, d))])
    assert second.ran == [] and second.outputs == first.outputs == {"2": {"v": [1]}, "3": {"value": [1]}}
    assert sorted(d["node"] for e, d in events if e == "executed") == ["2", "3"]
