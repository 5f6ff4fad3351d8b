"""Engine overhead: validate + order + execute for graphs of trivial nodes, and over HTTP.

    python benchmarks/engine.py [--sizes 100 1000 5000] [--repeat 5] [--http-nodes 2000] [--no-http]

For each size: validation time, a cold run (every node executes), a fully cached re-run (nothing
executes; keys are computed and output nodes re-send their UI), and the Python heap growth while
holding the graph, the cache and the results (tracemalloc). Graphs are 10 independent chains of
trivial integer nodes, each ending in an output node. Times are the best of --repeat runs.
Targets: validation of 5,000 nodes < 100 ms, cached re-run of 1,000 nodes < 50 ms, linear growth.

The HTTP row: a real server (`main.py`'s serve_main with the built-in nodes, started by this script
as a subprocess on 127.0.0.1 with a temporary base directory) is sent a graph of --http-nodes cheap
image nodes by POST /api/run, which answers when the prompt has finished: groups of two 8x8
EmptyImage -> ImageBlend -> ImageInvert -> PreviewImage (each preview a PNG with the prompt
embedded, as ComfyUI writes them). Cold: new colours, so every node runs; cached: the same prompt
again. Targets: cold <= 2 s, cached <= 0.2 s for 2,000 nodes (ComfyUI 0.8: 82 s / 74 s for 2,050).
ImageBlend is a built-in node of the image family; where the registry lacks it, the server gets a
stand-in of the same name and inputs that computes the "normal" mode (a linear blend), so the
prompt, and the row, stay the same.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request

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


# -- over HTTP ---------------------------------------------------------------------------------

GROUP = 5  # nodes per group: EmptyImage x2, ImageBlend, ImageInvert, PreviewImage
IMAGE_SIZE = 8


class BlendStandIn:
    """ImageBlend's interface, "normal" mode only: for trees that do not have ImageBlend yet."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image1": ("IMAGE",), "image2": ("IMAGE",),
                             "blend_factor": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0}),
                             "blend_mode": (["normal"],)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "blend"
    CATEGORY = "image/postprocessing"

    def blend(self, image1, image2, blend_factor, blend_mode):
        return (image1 * (1.0 - blend_factor) + image2 * blend_factor,)


def bench_registry():
    from nodes import load_registry

    registry = load_registry()
    if "ImageBlend" not in registry:
        registry.register("ImageBlend", BlendStandIn, "Image Blend (benchmark stand-in)")
    return registry


def image_graph(n: int, colour_seed: int) -> dict:
    """n // 5 groups of EmptyImage x2 -> ImageBlend -> ImageInvert -> PreviewImage."""
    prompt = {}
    for g in range(max(n // GROUP, 1)):
        a, b, blend, invert, preview = (str(g * GROUP + i + 1) for i in range(GROUP))
        for nid, k in ((a, 0), (b, 1)):
            colour = (colour_seed * 7919 + g * 31 + k * 104729) % 0xFFFFFF
            prompt[nid] = {"class_type": "EmptyImage", "inputs": {
                "width": IMAGE_SIZE, "height": IMAGE_SIZE, "batch_size": 1, "color": colour}}
        prompt[blend] = {"class_type": "ImageBlend", "inputs": {
            "image1": [a, 0], "image2": [b, 0], "blend_factor": 0.5, "blend_mode": "normal"}}
        prompt[invert] = {"class_type": "ImageInvert", "inputs": {"image": [blend, 0]}}
        prompt[preview] = {"class_type": "PreviewImage", "inputs": {"images": [invert, 0]}}
    return prompt


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict, timeout: float = 600) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def _wait_up(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/api/queue", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the server did not come up")


def measure_http(n: int, repeat: int) -> dict:
    port = _free_port()
    with tempfile.TemporaryDirectory() as base:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", "--cpu",
                                 "--port", str(port), "--base-directory", base, "--verbose", "WARNING"])
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_up(url, proc)
            _post(url + "/api/run", {"prompt": image_graph(n, 0)})  # warm-up: imports, first PNG

            def run(prompt):
                t = time.perf_counter()
                result = _post(url + "/api/run", {"prompt": prompt})
                took = time.perf_counter() - t
                assert result.get("status") == "completed", str(result)[:500]
                assert len(result["outputs"]) == len(prompt) // GROUP, "every preview reported"
                return took

            cold = min(run(image_graph(n, trial + 1)) for trial in range(repeat))
            same = image_graph(n, repeat + 1)
            run(same)
            cached = min(run(same) for _ in range(repeat))
        finally:
            proc.terminate()
            proc.wait(30)
    return {"nodes": len(image_graph(n, 0)), "cold_s": cold, "cached_s": cached}


def serve(argv) -> int:
    from nodes import runtime_options
    from server.app import serve_main
    from wiring import server_setup

    runtime, argv = runtime_options.parse(argv)
    runtime_options.apply(runtime)
    return serve_main(argv, functools.partial(server_setup, registry_factory=bench_registry))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--serve"]:
        return serve(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--http-nodes", type=int, default=2000)
    p.add_argument("--no-http", action="store_true", help="skip the HTTP row")
    args = p.parse_args(argv)
    rows = [measure(n, args.repeat) for n in args.sizes]
    print(f"{'nodes':>7} {'validate ms':>12} {'cold run ms':>12} {'cached run ms':>14} "
          f"{'us/node cold':>13} {'peak heap KiB':>14}")
    for r in rows:
        print(f"{r['nodes']:>7} {r['validate_ms']:>12.1f} {r['cold_ms']:>12.1f} {r['cached_ms']:>14.1f} "
              f"{r['cold_ms'] * 1000 / r['nodes']:>13.1f} {r['peak_kib']:>14.0f}")
    if not args.no_http:
        h = measure_http(args.http_nodes, args.repeat)
        print(f"\nover HTTP (POST /api/run, subprocess server): {h['nodes']} image nodes "
              f"(EmptyImage, ImageBlend, ImageInvert, PreviewImage)")
        print(f"{'nodes':>7} {'cold run s':>11} {'cached run s':>13}   targets: cold <= 2 s, cached <= 0.2 s")
        print(f"{h['nodes']:>7} {h['cold_s']:>11.3f} {h['cached_s']:>13.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
