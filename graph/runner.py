"""Headless runs: a workflow (API JSON, UI JSON, or a PNG carrying one) in, outputs per node out.

    runner = Runner(registry, cache_policy="classic")
    result = runner.run("workflow.json", overrides={"3.seed": 7})
    result.outputs  # {node_id: ui dict}, e.g. {"9": {"images": [{"filename": ...}]}}

The runner keeps its executor (and so its cache and node instances) between calls: re-running
with one value changed re-runs only that node and what depends on it.
"""
from __future__ import annotations

import copy
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from graph.cache import make_cache
from graph.executor import ExecutionResult, Executor
from graph.validate import format_errors, validate_prompt

Workflow = Union[dict, str, os.PathLike, bytes]


class RunError(Exception):
    """A run that could not start or did not finish; `kind` is load (the file cannot be read),
    conversion (a UI workflow that cannot be converted), validation, execution or interrupted."""

    def __init__(self, kind: str, message: str, details: Any = None,
                 result: Optional[ExecutionResult] = None):
        super().__init__(message)
        self.kind = kind
        self.details = details
        self.result = result


@dataclass
class RunResult:
    prompt_id: str
    prompt: dict
    outputs: dict
    execution: ExecutionResult
    warnings: list = field(default_factory=list)

    @property
    def ran(self) -> list:
        """Node ids whose function ran (cache misses), in order."""
        return self.execution.ran

    def files(self, folder_paths, types=("output", "temp", "input")) -> list:
        """Absolute paths of the files listed in the UI outputs ({"filename","subfolder","type"}):
        saved files ("output") and previews ("temp") by default; `types` narrows that."""
        paths = []
        for ui in self.outputs.values():
            for entries in ui.values():
                for item in entries if isinstance(entries, list) else ():
                    if (isinstance(item, dict) and "filename" in item
                            and item.get("type", "output") in types):
                        base = folder_paths.get_directory_by_type(item.get("type", "output"))
                        if base is not None:
                            paths.append(os.path.join(base, item.get("subfolder", ""), item["filename"]))
        return paths

    def previews(self, folder_paths) -> list:
        """Absolute paths of the preview images (PreviewImage & co. write them to the temp folder)."""
        return self.files(folder_paths, types=("temp",))


def _node_info_fn(registry):
    info = getattr(registry, "object_info_for", None)
    if info is None:
        raise RunError("conversion", "this registry cannot describe nodes (no object_info_for), so a "
                               "UI-format workflow cannot be converted; pass an API-format prompt")
    return info


def load_prompt(workflow: Workflow, registry) -> tuple[dict, Optional[dict]]:
    """(API prompt, UI workflow or None) from any accepted workflow source."""
    try:
        from graph.workflow_formats import load_workflow, ui_to_api
    except ImportError as e:  # pragma: no cover - only while the formats module is missing
        raise RunError("load", f"workflow formats are unavailable: {e}") from e
    try:
        kind, data = load_workflow(workflow if not isinstance(workflow, Path) else str(workflow))
    except (ValueError, OSError) as e:
        raise RunError("load", str(e)) from e
    if kind == "api":
        return copy.deepcopy(data), None
    try:
        return ui_to_api(data, _node_info_fn(registry)), data
    except RunError:
        raise
    except ValueError as e:
        raise RunError("conversion", f"cannot convert the UI workflow: {e}") from e


def _parse_override_key(key) -> tuple[str, str]:
    if isinstance(key, tuple) and len(key) == 2:
        return str(key[0]), str(key[1])
    if isinstance(key, str) and "." in key:
        node, name = key.split(".", 1)
        return node, name
    raise RunError("load", f"override {key!r} must be 'NODE.INPUT' (e.g. '3.seed')")


def apply_overrides(prompt: dict, overrides: Optional[dict]) -> None:
    """Set constants: keys 'NODE.INPUT' (node id or unique title) or (node, input)."""
    for key, value in (overrides or {}).items():
        node, name = _parse_override_key(key)
        if node not in prompt:
            titled = [nid for nid, n in prompt.items()
                      if ((n.get("_meta") or {}).get("title")) == node]
            if len(titled) != 1:
                known = ", ".join(sorted(prompt)[:20])
                raise RunError("load", f"override {key!r}: no node {node!r} in the workflow "
                                       f"(node ids: {known})")
            node = titled[0]
        prompt[node].setdefault("inputs", {})[name] = value


class Runner:
    def __init__(self, registry, cache_policy: str = "classic", lru_size: int = 100,
                 ram_bytes: int = 4 * 1024 ** 3, listeners: Iterable = ()):
        self.registry = registry
        self.executor = Executor(registry, make_cache(cache_policy, lru_size=lru_size,
                                                      ram_bytes=ram_bytes))
        self.listeners = tuple(listeners)

    def run(self, workflow: Workflow, overrides: Optional[dict] = None,
            extra_data: Optional[dict] = None, listeners: Iterable = (),
            partial_execution_targets=None, prompt_id: Optional[str] = None) -> RunResult:
        prompt, ui = load_prompt(workflow, self.registry)
        apply_overrides(prompt, overrides)
        checked = validate_prompt(prompt, self.registry, partial_execution_targets)
        if not checked.ok:
            raise RunError("validation", "the workflow is invalid:\n" + format_errors(checked, prompt),
                           checked.as_response())
        warnings = [format_errors(checked, prompt)] if checked.node_errors else []
        extra = dict(extra_data or {})
        if ui is not None:
            extra.setdefault("extra_pnginfo", {"workflow": ui})
        prompt_id = prompt_id or uuid.uuid4().hex
        listeners = self.listeners + tuple(listeners)
        for listener in listeners:  # lets a progress display name nodes by class and title
            listener("run_start", {"prompt_id": prompt_id, "prompt": prompt})
        result = self.executor.execute(prompt, prompt_id, extra, checked.outputs, listeners)
        if result.status_str != "success":
            err = result.error or {}
            if "exception_message" not in err:
                raise RunError("interrupted", f"interrupted at node {err.get('node_id')} "
                                              f"({err.get('node_type')})", err, result)
            raise RunError("execution",
                           f"node {err.get('node_id')} ({err.get('node_type')}) failed: "
                           f"{err.get('exception_type')}: {err.get('exception_message')}",
                           err, result)
        return RunResult(prompt_id, prompt, result.outputs, result, warnings)

    def interrupt(self) -> None:
        self.executor.interrupt()

