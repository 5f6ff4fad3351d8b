"""Engine overhead: validate + order + execute for graphs of trivial nodes.

    python benchmarks/engine.py [--sizes 100 1000 5000] [--repeat 5]

For each size: validation time, a cold run (every node executes), a fully cached re-run (nothing
executes; keys are computed and output nodes re-send their UI), and the Python heap growth while
holding the graph, the cache and the results (tracemalloc). Graphs are 10 independent chains of
trivial integer nodes, each ending in an output node. Times are the best of --repeat runs.
Targets: validation of 5,000 nodes < 100 ms, cached re-run of 1,000 nodes < 50 ms, linear growth.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from graph.executor import Executor  # noqa: E402
from graph.validate import validate_prompt  # noqa: E402


class Const:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"min": -10**9, "max": 10**9})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value):
        return (value,)


class Inc:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"x": ("INT",), "step": ("INT", {"min": 0, "max": 100})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, x, step):
        return (x + step,)


class Show:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    def run(self, value):
        return {"ui": {"value": [value]}}


class Registry:
    classes = {"Const": Const, "Inc": Inc, "Show": Show}

    def get_class(self, name):
        return self.classes.get(name)

    def __contains__(self, name):
        return name in self.classes


def make_graph(n: int, chains: int = 10) -> dict:
    prompt = {}
    per_chain = max(n // chains, 2)
    nid = 0
    for c in range(chains):
        prev = None
        for i in range(per_chain):
            nid += 1
            if prev is None:
                prompt[str(nid)] = {"class_type": "Const", "inputs": {"value": c}}
            elif i == per_chain - 1:
                prompt[str(nid)] = {"class_type": "Show", "inputs": {"value": [prev, 0]}}
            else:
                prompt[str(nid)] = {"class_type": "Inc", "inputs": {"x": [prev, 0], "step": 1}}
            prev = str(nid)
    return prompt


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def measure(n: int, repeat: int) -> dict:
    reg = Registry()
    base = make_graph(n)
    # Validation only writes coerced constants back, so re-validating the same dict is fair.
    validate_ms = best(lambda: validate_prompt(base, reg), repeat) * 1000
    checked = validate_prompt(base, reg)
    assert checked.ok

    def cold():
        result = Executor(reg).execute(base, "bench", {}, checked.outputs)
        assert result.status_str == "success" and len(result.ran) == len(base)

    cold_ms = best(cold, repeat) * 1000
    ex = Executor(reg)
    ex.execute(base, "bench", {}, checked.outputs)

    def cached():
        result = ex.execute(base, "bench", {}, checked.outputs)
        assert result.ran == []

    cached_ms = best(cached, repeat) * 1000
    tracemalloc.start()
    ex2 = Executor(reg)
    graph = make_graph(n)
    ok = validate_prompt(graph, reg)
    ex2.execute(graph, "bench", {}, ok.outputs)
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"nodes": len(base), "validate_ms": validate_ms, "cold_ms": cold_ms,
            "cached_ms": cached_ms, "peak_kib": peak / 1024}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    rows = [measure(n, args.repeat) for n in args.sizes]
    print(f"{'nodes':>7} {'validate ms':>12} {'cold run ms':>12} {'cached run ms':>14} "
          f"{'us/node cold':>13} {'peak heap KiB':>14}")
    for r in rows:
        print(f"{r['nodes']:>7} {r['validate_ms']:>12.1f} {r['cold_ms']:>12.1f} {r['cached_ms']:>14.1f} "
              f"{r['cold_ms'] * 1000 / r['nodes']:>13.1f} {r['peak_kib']:>14.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
