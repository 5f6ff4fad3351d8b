"""Workflow formats: recognise API and UI format, and convert UI format to API format (COMPAT §2).

The UI format is what the editor saves: nodes with positional `widgets_values`, links as separate
records (v0.4 arrays or v1 objects), and editor-only constructs (muted and bypassed nodes, Reroute,
PrimitiveNode, Note, subgraphs). ComfyUI converts it in the browser; we do it here so the headless
runner and the server accept saved workflows directly.

Conversion works in two steps. First every node of the workflow, subgraph contents included, is
placed in one flat table under its final id (`outer:inner` for nodes inside subgraphs). Then each
input of each real node is *resolved*: a link is followed through the editor-only nodes (reroutes,
bypassed nodes, subgraph boundaries, primitives) until it reaches a real node output or a constant.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from graph.png_metadata import read_png_workflow
from graph.widget_values import (combo_options, input_names, is_widget, legacy_value_fixes,
                                 map_widget_values, spec_of)

NodeInfo = Callable[[str], Optional[dict]]

MODE_MUTED = 2
MODE_BYPASS = 4
# Nodes that exist only in the editor and never reach the executor.
NOTE_TYPES = {"Note", "MarkdownNote"}
REROUTE = "Reroute"
PRIMITIVE = "PrimitiveNode"
# Subgraph boundary pseudo-nodes (frontend constants).
SUBGRAPH_INPUT_ID = -10
SUBGRAPH_OUTPUT_ID = -20


class WorkflowFormatError(ValueError):
    """A workflow file or object that cannot be read or converted; the message says where."""


@dataclass
class _Link:
    origin: str
    origin_slot: int
    target: str
    target_slot: int
    type: Any = None


@dataclass
class _Node:
    id: str
    type: str
    mode: int
    inputs: list            # UI input records; "link" replaced by a link key or None
    outputs: list
    widgets_values: Any
    widgets_values_named: Optional[dict]
    title: Optional[str]
    raw: dict
    # For a subgraph instance: output slot -> key of the inner link that feeds it.
    sub_outputs: dict = field(default_factory=dict)
    # For a subgraph's input pseudo-node: the instance whose inputs it exposes.
    boundary_of: Optional["_Node"] = None


# ---------------------------------------------------------------------------------------------
# Recognising formats


def is_api_format(data: Any) -> bool:
    return (isinstance(data, dict) and len(data) > 0 and all(
        isinstance(v, dict) and "class_type" in v for v in data.values()))


def is_ui_format(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list)


def load_workflow(source: Union[dict, str, os.PathLike, bytes]) -> tuple[str, dict]:
    """Return ("api", prompt) or ("ui", workflow) from a dict, a JSON/PNG path, or PNG bytes.

    A PNG carrying both prefers the API prompt, which is exactly what was executed.
    """
    if isinstance(source, dict):
        data, name = source, "workflow"
        if "prompt" in data and is_api_format(data.get("prompt")):  # a POST /prompt body
            data = data["prompt"]
    elif isinstance(source, (bytes, bytearray)):
        return _from_png(read_png_workflow(bytes(source)), "image")
    else:
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise WorkflowFormatError(f"{name}: no such file")
        with open(path, "rb") as f:
            head = f.read(8)
        if head.startswith(b"\x89PNG"):
            return _from_png(read_png_workflow(path), name)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise WorkflowFormatError(f"{name}: not a JSON or PNG file") from None
        except json.JSONDecodeError as e:
            raise WorkflowFormatError(
                f"{name}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
        if isinstance(data, dict) and "prompt" in data and is_api_format(data.get("prompt")):
            data = data["prompt"]
    if is_api_format(data):
        return "api", data
    if is_ui_format(data):
        return "ui", data
    raise WorkflowFormatError(
        f"{name}: neither an API-format prompt ({{node_id: {{class_type, inputs}}}}) "
        f"nor a UI-format workflow (with a 'nodes' list)")


def _from_png(meta: dict, name: str) -> tuple[str, dict]:
    if is_api_format(meta.get("prompt")):
        return "api", meta["prompt"]
    if is_ui_format(meta.get("workflow")):
        return "ui", meta["workflow"]
    raise WorkflowFormatError(f"{name}: the image carries no embedded workflow")


# ---------------------------------------------------------------------------------------------
# Flattening: every node under its final id, every link under a unique key


def _link_record(link: Any, where: str) -> tuple[Any, _Link]:
    """v0.4 array [id, origin, origin_slot, target, target_slot, type] or v1 object."""
    if isinstance(link, dict):
        try:
            return link["id"], _Link(link["origin_id"], int(link["origin_slot"]),
                                     link["target_id"], int(link["target_slot"]), link.get("type"))
        except (KeyError, TypeError, ValueError):
            raise WorkflowFormatError(f"{where}: malformed link {link!r}") from None
    if isinstance(link, (list, tuple)) and len(link) >= 5:
        try:
            return link[0], _Link(link[1], int(link[2]), link[3], int(link[4]),
                                  link[5] if len(link) > 5 else None)
        except (TypeError, ValueError):
            raise WorkflowFormatError(f"{where}: malformed link {link!r}") from None
    raise WorkflowFormatError(f"{where}: malformed link {link!r}")


class _Flattener:
    def __init__(self, workflow: dict):
        defs = (workflow.get("definitions") or {}).get("subgraphs") or []
        self.subgraphs = {d.get("id"): d for d in defs if isinstance(d, dict)}
        self.nodes: dict[str, _Node] = {}
        self.links: dict[tuple, _Link] = {}
        self._scopes = 0

    def add_graph(self, nodes: list, links: list, prefix: str, where: str,
                  instance: Optional[_Node] = None, depth: int = 0,
                  declared_inputs: Optional[list] = None) -> dict:
        """Add one graph level; returns {output slot: link key} for a subgraph's output node."""
        if depth > 32:
            raise WorkflowFormatError(f"{where}: subgraphs nested more than 32 deep (recursive?)")
        self._scopes += 1
        scope = self._scopes
        boundary_in = boundary_out = None
        if instance is not None:
            boundary_in = f"{prefix}{SUBGRAPH_INPUT_ID}"
            boundary_out = f"{prefix}{SUBGRAPH_OUTPUT_ID}"
            self.nodes[boundary_in] = _Node(boundary_in, "__subgraph_input__", 0, [],
                                            list(declared_inputs or []), None, None, None, {},
                                            boundary_of=instance)
        sub_outputs: dict[int, tuple] = {}
        for raw_link in links or []:
            if raw_link is None:  # old editors left holes for deleted links; the editor skips them
                continue
            lid, link = _link_record(raw_link, where)
            link.origin = f"{prefix}{link.origin}"
            link.target = f"{prefix}{link.target}"
            self.links[(scope, lid)] = link
            if boundary_out is not None and link.target == boundary_out:
                sub_outputs[link.target_slot] = (scope, lid)
        for raw in nodes or []:
            if not isinstance(raw, dict) or "id" not in raw or "type" not in raw:
                raise WorkflowFormatError(f"{where}: a node without 'id' or 'type': {str(raw)[:80]}")
            nid = f"{prefix}{raw['id']}"
            inputs = []
            for inp in raw.get("inputs") or []:
                if not isinstance(inp, dict):
                    raise WorkflowFormatError(f"{where}: node {nid} has a malformed input {inp!r}")
                inp = dict(inp)
                inp["link"] = None if inp.get("link") is None else (scope, inp["link"])
                inputs.append(inp)
            node = _Node(nid, raw["type"], int(raw.get("mode") or 0), inputs,
                         list(raw.get("outputs") or []), raw.get("widgets_values"),
                         raw.get("widgets_values_named"), raw.get("title"), raw)
            if nid in self.nodes:
                raise WorkflowFormatError(f"{where}: duplicate node id {nid}")
            self.nodes[nid] = node
            definition = self.subgraphs.get(raw["type"])
            if definition is not None and node.mode != MODE_MUTED:
                node.sub_outputs = self.add_graph(
                    definition.get("nodes"), definition.get("links"), f"{nid}:",
                    f"subgraph {definition.get('name') or raw['type']} (node {nid})", node, depth + 1,
                    definition.get("inputs"))
        return sub_outputs


# ---------------------------------------------------------------------------------------------
# Resolving links through editor-only nodes


def _same_type(a: Any, b: Any) -> bool:
    if a in (None, "*", "") or b in (None, "*", ""):
        return True
    sa = {t.strip() for t in str(a).split(",")}
    sb = {t.strip() for t in str(b).split(",")}
    return bool(sa & sb)


class _Resolver:
    def __init__(self, flat: _Flattener, node_info: NodeInfo):
        self.flat = flat
        self.node_info = node_info

    def resolve(self, link_key: Optional[tuple]):
        """Follow a link to ("link", node_id, slot), ("value", v), or None (disconnected).

        Each editor-only node on the way hands over to exactly one further link, so this is a walk;
        a link seen twice means a loop made of reroutes, bypasses or subgraph boundaries.
        """
        seen = set()
        while link_key is not None:
            if link_key in seen:
                raise WorkflowFormatError("a loop of reroute/bypass/subgraph links "
                                          f"through link {link_key[1]}")
            seen.add(link_key)
            link = self.flat.links.get(link_key)
            if link is None:
                return None  # the editor leaves dangling ids behind; ComfyUI ignores them too
            origin = self.flat.nodes.get(link.origin)
            if origin is None:
                return None
            slot = link.origin_slot
            if origin.boundary_of is not None:  # a subgraph input: continue outside the subgraph
                inp = _instance_input(origin, slot)
                link_key = inp["link"] if inp is not None else None
            elif origin.mode == MODE_MUTED:
                return None
            elif origin.mode == MODE_BYPASS:
                link_key = _bypass_input(origin, slot)
            elif origin.type in self.flat.subgraphs:
                link_key = origin.sub_outputs.get(slot)
            elif origin.type == REROUTE:
                link_key = origin.inputs[0]["link"] if origin.inputs else None
            elif origin.type == PRIMITIVE:
                values = origin.widgets_values
                return ("value", values[0]) if isinstance(values, list) and values else None
            else:
                return ("link", origin.id, slot)
        return None


def _bypass_input(node: _Node, slot: int) -> Optional[tuple]:
    """A bypassed node passes through a linked input of the output's type (same slot first)."""
    out_type = node.outputs[slot].get("type") if slot < len(node.outputs) else None
    candidates = [node.inputs[slot]] if slot < len(node.inputs) else []
    candidates += [inp for inp in node.inputs if inp is not (candidates[0] if candidates else None)]
    for inp in candidates:
        if inp.get("link") is not None and _same_type(inp.get("type"), out_type):
            return inp["link"]
    return None


def _instance_input(boundary: _Node, slot: int) -> Optional[dict]:
    """The instance input feeding subgraph input `slot`: matched by name, else by position."""
    inputs = boundary.boundary_of.inputs
    declared = boundary.outputs  # the subgraph definition's inputs, in slot order
    if slot < len(declared) and isinstance(declared[slot], dict):
        name = declared[slot].get("name")
        for inp in inputs:
            if name is not None and inp.get("name") == name:
                return inp
    return inputs[slot] if slot < len(inputs) else None


# ---------------------------------------------------------------------------------------------
# Widgets: positional widgets_values -> input names


def _default_of(spec: list):
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "default" in opts:
        return opts["default"]
    options = combo_options(spec)
    return options[0] if options else None


# ---------------------------------------------------------------------------------------------
# The conversion


def ui_to_api(workflow: dict, node_info: NodeInfo) -> dict:
    """Convert a UI-format workflow to an API-format prompt.

    `node_info(class_type)` returns the /object_info entry of a node class or None when unknown.
    Unknown classes are kept (with their linked inputs) so that validation can name them.
    """
    if not is_ui_format(workflow):
        raise WorkflowFormatError("not a UI-format workflow (no 'nodes' list)")
    _refuse_group_nodes(workflow)
    flat = _Flattener(workflow)
    flat.add_graph(workflow["nodes"], workflow.get("links"), "", "workflow")
    resolver = _Resolver(flat, node_info)
    prompt: dict[str, dict] = {}
    for node in flat.nodes.values():
        if (node.boundary_of is not None or node.type in NOTE_TYPES or node.type in (REROUTE, PRIMITIVE)
                or node.mode in (MODE_MUTED, MODE_BYPASS) or node.type in flat.subgraphs
                or _inside_muted(flat, node)):
            continue
        info = node_info(node.type)
        inputs: dict[str, Any] = {}
        if info is not None:
            inputs.update(map_widget_values(info, node.widgets_values, node.widgets_values_named))
            legacy_value_fixes(node.type, info, inputs)
            for name in input_names(info):
                spec = spec_of(info, name)
                if name not in inputs and is_widget(spec) and name in (
                        (info.get("input") or {}).get("required") or {}):
                    default = _default_of(spec)
                    if default is not None:
                        inputs[name] = default
        for inp in node.inputs:
            name = (inp.get("widget") or {}).get("name") or inp.get("name")
            if name is None:
                continue
            target = resolver.resolve(inp.get("link"))
            if target is None:
                continue
            if target[0] == "link":
                inputs[name] = [target[1], target[2]]
            else:
                inputs[name] = target[1]
        for name, value in inputs.items():
            if isinstance(value, list) and not _is_link_value(value):
                inputs[name] = {"__value__": value}
        entry = {"inputs": inputs, "class_type": node.type}
        title = node.title or (info or {}).get("display_name") or node.type
        entry["_meta"] = {"title": title}
        prompt[node.id] = entry
    return prompt


def _refuse_group_nodes(workflow: dict) -> None:
    """Group nodes of the pre-subgraph editor (`workflow>Name`, or `workflow/Name` in older files,
    defined in extra.groupNodes) are not converted: their inputs and widgets follow naming rules of
    that editor's GroupNodeConfig that we do not reproduce, and a half-right guess would run the
    wrong graph. The current editor turns them into subgraphs on load; a re-saved file converts."""
    groups = (workflow.get("extra") or {}).get("groupNodes")
    if not isinstance(groups, dict) or not groups:
        return
    for raw in workflow["nodes"]:
        type_ = raw.get("type") if isinstance(raw, dict) else None
        if isinstance(type_, str) and type_.startswith(("workflow>", "workflow/")) \
                and type_[len("workflow>"):] in groups:
            raise WorkflowFormatError(
                f"node {raw.get('id')} is a group node ({type_!r}) of the editor before subgraphs; "
                f"open the workflow in the current editor, which turns group nodes into subgraphs, "
                f"and save it again")


def _is_link_value(value: list) -> bool:
    return len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _inside_muted(flat: _Flattener, node: _Node) -> bool:
    """Nodes inside a muted subgraph instance are never expanded, but check ancestors by id."""
    parts = node.id.split(":")[:-1]
    for i in range(1, len(parts) + 1):
        outer = flat.nodes.get(":".join(parts[:i]))
        if outer is not None and outer.mode in (MODE_MUTED, MODE_BYPASS):
            return True
    return False


def to_api(source: Union[dict, str, os.PathLike, bytes], node_info: NodeInfo) -> dict:
    """Any accepted workflow source -> API-format prompt."""
    kind, data = load_workflow(source)
    return data if kind == "api" else ui_to_api(data, node_info)
