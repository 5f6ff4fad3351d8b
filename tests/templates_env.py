"""Test helpers for running ComfyUI's own saved template workflows (PyPI comfyui-workflow-templates-json).

The templates are UI-format files saved by ComfyUI's editor. The helpers here read them from the
installed package, find the ones our registry can run, and make the only edits the tests allow:
a small image and a few steps (set where a user would: on the EmptyLatentImage, on the PrimitiveNode
that drives the samplers' steps, or as a Runner override on a sampler that has no such primitive).
"""
from __future__ import annotations

import copy
import importlib.resources
import json

import pytest

# The version whose templates the expectations below were written against (pyproject test extra).
TEMPLATES_PACKAGE = "comfyui-workflow-templates-json"
TEMPLATES_VERSION = "0.1.123"

# Editor-only node types: the UI-to-API conversion drops or resolves them; they never reach a registry.
EDITOR_ONLY = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
SAMPLERS = ("KSampler", "KSamplerAdvanced", "SDTurboScheduler")  # nodes whose "steps" input is overridden
# Sampler inputs that count steps: scaled with the step count so a base/refiner split stays a split.
STEP_POSITIONS = ("start_at_step", "end_at_step")


def require_templates_package() -> None:
    from importlib import metadata

    try:
        version = metadata.version(TEMPLATES_PACKAGE)
    except metadata.PackageNotFoundError:
        pytest.fail(f"pip install {TEMPLATES_PACKAGE}=={TEMPLATES_VERSION} (test extra)")
    if version != TEMPLATES_VERSION:
        pytest.fail(f"{TEMPLATES_PACKAGE} {version} installed; these tests expect {TEMPLATES_VERSION}")


def _templates_dir():
    return importlib.resources.files("comfyui_workflow_templates_json") / "templates"


def template_names() -> list[str]:
    return sorted(p.name for p in _templates_dir().iterdir() if p.name.endswith(".json"))


def load_template(name: str) -> dict:
    return json.loads((_templates_dir() / name).read_text(encoding="utf-8"))


def node_types(workflow: dict) -> set[str]:
    """Class types used by a UI workflow, inside subgraph definitions too (subgraph ids excluded)."""
    subgraphs = (workflow.get("definitions") or {}).get("subgraphs") or []
    nodes = list(workflow.get("nodes") or [])
    for sub in subgraphs:
        nodes += sub.get("nodes") or []
    return {n.get("type") for n in nodes} - {s.get("id") for s in subgraphs}


def runnable_templates(class_types) -> list[str]:
    """Names of the UI-format templates whose every node type is in `class_types` or editor-only."""
    known = set(class_types) | EDITOR_ONLY
    names = []
    for name in template_names():
        workflow = load_template(name)
        if isinstance(workflow, dict) and isinstance(workflow.get("nodes"), list) \
                and node_types(workflow) <= known:
            names.append(name)
    return names


def nodes_of_type(workflow: dict, class_type: str) -> list[dict]:
    return [n for n in workflow["nodes"] if n.get("type") == class_type]


def _targets(workflow: dict, node: dict) -> list[tuple[dict, str]]:
    """(target node, widget name) for each link leaving a primitive's output."""
    by_id = {n["id"]: n for n in workflow["nodes"]}
    links = {link[0]: link for link in workflow.get("links") or []}
    found = []
    for link_id in node["outputs"][0].get("links") or []:
        target = by_id[links[link_id][3]]
        slot = links[link_id][4]
        found.append((target, target["inputs"][slot]["widget"]["name"]))
    return found


def _set_widget(node: dict, index: int, name: str, value) -> None:
    """Set a widget as the editor saves it: positionally, and by name where the file also has names."""
    node["widgets_values"][index] = value
    if isinstance(node.get("widgets_values_named"), dict) and name in node["widgets_values_named"]:
        node["widgets_values_named"][name] = value


def shrink(workflow: dict, size: int, steps: int) -> tuple[dict, dict]:
    """(copy of the UI workflow, Runner overrides) for a `size`-pixel image in `steps` steps.

    Primitive-driven steps are edited on the primitive, as in the editor; the step positions of a
    KSamplerAdvanced split (end_at_step 20 of 25) scale to the same fraction of the new count.
    """
    ui = copy.deepcopy(workflow)
    for node in nodes_of_type(ui, "EmptyLatentImage"):
        _set_widget(node, 0, "width", size)
        _set_widget(node, 1, "height", size)
    primitives = [(p, _targets(ui, p)) for p in nodes_of_type(ui, "PrimitiveNode") if p.get("outputs")]
    old_steps = [p["widgets_values"][0] for p, targets in primitives
                 if any(name == "steps" for _, name in targets)]
    driven = set()
    for prim, targets in primitives:
        names = {name for _, name in targets}
        if names == {"steps"}:
            _set_widget(prim, 0, "value", steps)
        elif names <= set(STEP_POSITIONS) and len(old_steps) == 1:
            scaled = round(prim["widgets_values"][0] * steps / old_steps[0])
            _set_widget(prim, 0, "value", max(1, min(steps - 1, scaled)))
        else:
            continue
        driven |= {(t["id"], name) for t, name in targets}
    overrides = {f"{n['id']}.steps": steps for n in ui["nodes"]
                 if n.get("type") in SAMPLERS and (n["id"], "steps") not in driven}
    return ui, overrides


def checkpoint_names(api_prompt: dict) -> dict[str, str]:
    """{loader node id: ckpt_name} of the CheckpointLoaderSimple nodes of an API prompt."""
    return {nid: n["inputs"]["ckpt_name"] for nid, n in api_prompt.items()
            if n["class_type"] == "CheckpointLoaderSimple"}
