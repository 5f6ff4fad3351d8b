"""`python main.py run WORKFLOW [--out DIR] [--set NODE.INPUT=VALUE ...] [--cache ...]`."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Optional

from graph.runner import RunError, Runner


def _parse_set(text: str) -> tuple[str, object]:
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise argparse.ArgumentTypeError(f"--set expects NODE.INPUT=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)  # numbers, true/false, lists; anything else is a plain string
    except json.JSONDecodeError:
        value = raw
    return key, value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="main.py run",
                                description="Run a workflow (API JSON, UI JSON or PNG) headless.")
    p.add_argument("workflow", help="workflow file: API-format JSON, UI-format JSON, or a PNG")
    p.add_argument("--out", help="output directory (default: <base>/output)")
    p.add_argument("--set", dest="sets", action="append", default=[], type=_parse_set,
                   metavar="NODE.INPUT=VALUE", help="override an input constant (repeatable)")
    p.add_argument("--cache", choices=("classic", "lru", "ram", "none"), default="classic")
    p.add_argument("--cache-lru", type=int, default=0, metavar="N",
                   help="keep up to N cached node outputs (implies --cache lru)")
    p.add_argument("--cache-ram", type=float, default=None, metavar="GB",
                   help="cache budget in GB (implies --cache ram)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


class TqdmProgress:
    """An event listener drawing one tqdm bar per node that reports steps."""

    def __init__(self, prompt: Optional[dict] = None, stream=None):
        self.prompt = prompt or {}
        self.stream = stream or sys.stderr
        self.bars: dict = {}

    def __call__(self, event: str, data: dict) -> None:
        if event == "run_start":
            self.prompt = data.get("prompt") or {}
        elif event == "progress":
            from tqdm import tqdm

            node = data.get("node")
            bar = self.bars.get(node)
            if bar is None or bar.total != data["max"]:
                if bar is not None:
                    bar.close()
                class_type = (self.prompt.get(node) or {}).get("class_type", "")
                bar = self.bars[node] = tqdm(total=data["max"], desc=f"{node} {class_type}".strip(),
                                             file=self.stream, leave=True)
            bar.update(data["value"] - bar.n)
        elif event in ("executing", "execution_success", "execution_error",
                       "execution_interrupted"):
            for bar in self.bars.values():
                bar.close()
            self.bars.clear()


def run_main(argv, registry_factory: Callable, folder_paths) -> int:
    args = build_parser().parse_args(list(argv))
    policy = args.cache
    if args.cache_lru:
        policy = "lru"
    if args.cache_ram is not None:
        policy = "ram"
    if policy == "lru" and args.cache_lru < 1:
        print("error: --cache lru needs --cache-lru N (N >= 1)", file=sys.stderr)
        return 2
    if not os.path.isfile(args.workflow):
        # Checked before the registry is built: that imports the model runtime and takes seconds.
        print(f"error: {args.workflow}: no such file", file=sys.stderr)
        return 2
    if args.out:
        folder_paths.set_output_directory(args.out)
    if hasattr(folder_paths, "add_output_model_paths"):  # models saved by workflows load too
        folder_paths.add_output_model_paths()
    registry = registry_factory()
    listeners = [] if args.quiet else [TqdmProgress()]
    runner = Runner(registry, cache_policy=policy, lru_size=max(args.cache_lru, 1),
                    ram_bytes=int((args.cache_ram or 4) * 1024 ** 3), listeners=listeners)
    try:
        result = runner.run(args.workflow, overrides=dict(args.sets))
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1 if e.kind != "load" else 2
    for warning in result.warnings:
        print(f"warning: some outputs were skipped:\n{warning}", file=sys.stderr)
    files = result.files(folder_paths)
    for path in files:
        print(path)
    if not files:
        print(f"done: {len(result.outputs)} output node(s), no files written", file=sys.stderr)
    return 0
