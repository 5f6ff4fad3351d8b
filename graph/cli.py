"""The headless commands:

    python main.py run WORKFLOW [--out DIR] [--previews DIR] [--set NODE.INPUT=VALUE ...] [--cache ...]
    python main.py convert WORKFLOW [--no-validate]

Exit codes (both): 0 done, 1 the workflow cannot be converted, is invalid or failed, 2 the file
cannot be read (or bad arguments).
"""
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


PREVIEWS_SUBFOLDER = "previews"
WORKFLOW_HELP = "workflow file: API-format JSON, UI-format JSON, or a PNG"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="main.py run", description="Run a workflow (API JSON, UI JSON or PNG) headless.",
        epilog="Prints the path of every image written, one a line: saved images first, then "
               "previews (PreviewImage results), which a headless run keeps under "
               f"OUT/{PREVIEWS_SUBFOLDER}/ unless --previews says elsewhere.")
    p.add_argument("workflow", help=WORKFLOW_HELP)
    p.add_argument("--out", help="output directory (default: <base>/output)")
    p.add_argument("--previews", metavar="DIR",
                   help=f"where preview images go (default: the output directory's {PREVIEWS_SUBFOLDER}/)")
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
    if not _readable(args.workflow):
        return 2
    if args.out:
        folder_paths.set_output_directory(args.out)
    # Previews would land in the temp folder, which the server empties when it starts: a headless
    # run keeps them beside its outputs instead.
    folder_paths.set_temp_directory(args.previews or os.path.join(
        folder_paths.get_output_directory(), PREVIEWS_SUBFOLDER))
    if hasattr(folder_paths, "add_output_model_paths"):  # models saved by workflows load too
        folder_paths.add_output_model_paths()
    registry = registry_factory()
    listeners = [] if args.quiet else [TqdmProgress()]
    runner = Runner(registry, cache_policy=policy, lru_size=max(args.cache_lru, 1),
                    ram_bytes=int((args.cache_ram or 4) * 1024 ** 3), listeners=listeners)
    try:
        result = runner.run(args.workflow, overrides=dict(args.sets))
    except RunError as e:
        return _report(e)
    for warning in result.warnings:
        print(f"warning: some outputs were skipped:\n{warning}", file=sys.stderr)
    files = result.files(folder_paths, types=("output",)) + result.previews(folder_paths)
    for path in files:
        print(path)
    if not files:
        print(f"done: {len(result.outputs)} output node(s), no files written", file=sys.stderr)
    return 0


def _readable(path: str) -> bool:
    # Checked before the registry is built: that imports the model runtime and takes seconds.
    if os.path.isfile(path):
        return True
    print(f"error: {path}: no such file", file=sys.stderr)
    return False


def _report(error: RunError) -> int:
    print(f"error: {error}", file=sys.stderr)
    return 2 if error.kind == "load" else 1


def build_convert_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="main.py convert",
        description="Print the API-format prompt the server would run for a workflow: a UI-format "
                    "JSON saved by the editor, a PNG carrying a workflow or prompt, or an API-format "
                    "JSON (printed as is). Uses the server's own conversion.")
    p.add_argument("workflow", help=WORKFLOW_HELP)
    p.add_argument("--no-validate", action="store_true",
                   help="print the prompt without checking it against the node definitions "
                        "(validation fails, for example, on model files this machine lacks)")
    p.add_argument("--indent", type=int, default=2, help="JSON indentation (default 2)")
    return p


def convert_main(argv, registry_factory: Callable, out=None) -> int:
    """The prompt goes to stdout (also when it is invalid, so it can be fixed); problems to stderr."""
    from graph.runner import load_prompt
    from graph.validate import format_errors, validate_prompt

    args = build_convert_parser().parse_args(list(argv))
    if not _readable(args.workflow):
        return 2
    registry = registry_factory()
    try:
        prompt, _ui = load_prompt(args.workflow, registry)
    except RunError as e:
        return _report(e)
    print(json.dumps(prompt, indent=args.indent or None), file=out or sys.stdout)
    if args.no_validate:
        return 0
    checked = validate_prompt(prompt, registry)
    if not checked.ok:
        print(f"error: the workflow is invalid:\n{format_errors(checked, prompt)}", file=sys.stderr)
        return 1
    if checked.node_errors:  # the server runs the valid outputs and reports the others
        print(f"warning: some outputs would be skipped:\n{format_errors(checked, prompt)}",
              file=sys.stderr)
    return 0
