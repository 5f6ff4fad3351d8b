"""Prompt validation (COMPAT §3.1 shapes, with our fixes).

Differences from ComfyUI, all deliberate: every problem of every node is reported (not only the
first), a cycle names its nodes in node_errors ("dependency_cycle"), BOOLEAN words like "false"
coerce to False, and nothing recurses, so a 100,000-node chain validates like a short one.
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any, Optional

from graph.node_class import ClassInfo, ClassInfoCache, hidden_kind, run_maybe_async
from graph.ordering import cycle_path, find_cycles, topological_order
from graph.types import SCALAR_TYPES, coerce_scalar, node_id_key, sorted_ids, types_match

COMBO_ECHO_LIMIT = 20


@dataclass
class ValidationResult:
    ok: bool
    error: Optional[dict]
    outputs: list = field(default_factory=list)
    node_errors: dict = field(default_factory=dict)

    def as_response(self) -> dict:
        """The 400 body of POST /prompt (or the node_errors part of a 200)."""
        return {"error": self.error, "node_errors": self.node_errors}


def full_type_name(exc_type: type) -> str:
    """"module.Qualname", builtins bare (as ComfyUI reports exception types)."""
    module = getattr(exc_type, "__module__", None)
    if module in (None, "builtins", "__builtin__"):
        return exc_type.__qualname__
    return f"{module}.{exc_type.__qualname__}"


def reason(type_: str, message: str, details: str = "", **extra) -> dict:
    return {"type": type_, "message": message, "details": details, "extra_info": extra}


def _exception_reason(type_: str, message: str, exc: BaseException, **extra) -> dict:
    return reason(type_, message, str(exc), exception_message=str(exc),
                  exception_type=full_type_name(type(exc)),
                  traceback=traceback.format_tb(exc.__traceback__), **extra)


def _input_config(type_: Any, opts: dict) -> list:
    return [type_, opts] if opts else [type_]


def _bad_prompt(message: str, details: str) -> ValidationResult:
    return ValidationResult(False, reason("invalid_prompt", message, details), [], {})


class _Validator:
    def __init__(self, prompt: dict, registry):
        self.prompt = prompt
        self.registry = registry
        self.infos = ClassInfoCache()
        self._by_type: dict[str, ClassInfo] = {}

    def info(self, node_id: str) -> ClassInfo:
        class_type = self.prompt[node_id]["class_type"]
        info = self._by_type.get(class_type)
        if info is None:
            info = self._by_type[class_type] = self.infos.get_info(self.registry.get_class(class_type))
        return info

    # -- one node, its own inputs only ----------------------------------------------------
    def check_node(self, node_id: str) -> tuple[list, list]:
        """(reasons, upstream ids) for one node, without looking at the upstream nodes' health."""
        node = self.prompt[node_id]
        info = self.info(node_id)
        inputs = node.get("inputs")
        if inputs is None:
            inputs = node["inputs"] = {}
        if not isinstance(inputs, dict):
            return [reason("invalid_prompt", "Node inputs must be an object",
                           f"Node ID '#{node_id}'")], []
        reasons: list = []
        upstream: list = []
        received_types: dict = {}
        vparams = info.validate_params
        custom_covers_all = info.validate_kwargs
        takes_input_types = vparams is not None and "input_types" in vparams

        for category, name, type_, opts in info.parsed:
            if name not in inputs:
                if category == "required":
                    reasons.append(reason("required_input_missing", "Required input is missing",
                                          name, input_name=name))
                continue
            value = inputs[name]
            if isinstance(value, list):
                r = self._check_link(name, value, type_, opts, takes_input_types, received_types)
                if isinstance(r, dict):
                    reasons.append(r)
                else:
                    upstream.append(r)
                continue
            if isinstance(value, dict) and "__value__" in value:
                value = inputs[name] = value["__value__"]
            if type_ in SCALAR_TYPES:
                try:
                    value = inputs[name] = coerce_scalar(type_, value)
                except Exception as e:
                    reasons.append(reason(
                        "invalid_input_type", f"Failed to convert an input value to a {type_} value",
                        f"{name}, {value}, {e}", input_name=name,
                        input_config=_input_config(type_, opts), received_value=value,
                        exception_message=str(e)))
                    continue
            if custom_covers_all or (vparams is not None and name in vparams):
                continue  # VALIDATE_INPUTS takes over the range/combo checks (COMPAT §1.5)
            if opts or isinstance(type_, list) or type_ == "COMBO":
                r = self._check_range(name, value, type_, opts, _input_config(type_, opts))
                if r is not None:
                    reasons.append(r)

        # Undeclared links still feed the function (COMPAT §1.2): validate what they point at.
        if len(inputs) > len(info.parsed):
            for name, value in inputs.items():
                if name not in info.required and name not in info.optional \
                        and isinstance(value, list) and len(value) == 2 \
                        and isinstance(value[0], str) and value[0] in self.prompt:
                    upstream.append(value[0])

        if vparams is not None and (vparams or custom_covers_all):
            reasons.extend(self._custom_validation(node_id, info, inputs, received_types))
        return reasons, upstream

    def _check_link(self, name, value, type_, opts, takes_input_types, received_types):
        config = _input_config(type_, opts)
        if len(value) != 2:
            return reason("bad_linked_input",
                          "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                          name, input_name=name, input_config=config, received_value=value)
        from_id, slot = value
        try:
            if not isinstance(from_id, str) or from_id not in self.prompt:
                raise KeyError(f"linked node {from_id!r} does not exist")
            if not isinstance(slot, (int, float)) or isinstance(slot, bool):
                raise TypeError(f"output index must be an integer, got {slot!r}")
            rtypes = self.info(from_id).return_types
            if not 0 <= int(slot) < len(rtypes):
                raise IndexError(f"node {from_id} ({self.prompt[from_id]['class_type']}) has "
                                 f"{len(rtypes)} outputs; output {slot} does not exist")
        except Exception as e:
            return _exception_reason("exception_during_inner_validation",
                                     "Exception when validating inner node", e,
                                     input_name=name, input_config=config, linked_node=value)
        received = rtypes[int(slot)]
        received_types[name] = received
        if not takes_input_types and not types_match(received, type_):
            return reason("return_type_mismatch", "Return type mismatch between linked nodes",
                          f"{name}, received_type({received}) mismatch input_type({type_})",
                          input_name=name, input_config=config, received_type=received,
                          linked_node=value)
        return from_id

    @staticmethod
    def _check_range(name, value, type_, opts, config) -> Optional[dict]:
        try:
            if "min" in opts and value < opts["min"]:
                return reason("value_smaller_than_min", f"Value {value} smaller than min of {opts['min']}",
                              name, input_name=name, input_config=config, received_value=value)
            if "max" in opts and value > opts["max"]:
                return reason("value_bigger_than_max", f"Value {value} bigger than max of {opts['max']}",
                              name, input_name=name, input_config=config, received_value=value)
        except TypeError as e:
            return reason("invalid_input_type", f"Failed to compare the input value with its bounds",
                          f"{name}, {value}, {e}", input_name=name, input_config=config,
                          received_value=value, exception_message=str(e))
        if isinstance(type_, list) or type_ == "COMBO":
            options = opts.get("options", []) if type_ == "COMBO" else type_
            if value not in options:
                if len(options) > COMBO_ECHO_LIMIT:
                    listed, config = f"(list of length {len(options)})", None
                else:
                    listed = str(options)
                return reason("value_not_in_list", "Value not in list",
                              f"{name}: '{value}' not in {listed}", input_name=name,
                              input_config=config, received_value=value)
        return None

    def _custom_validation(self, node_id, info: ClassInfo, inputs, received_types) -> list:
        args: dict = {}
        for name, value in inputs.items():
            if isinstance(value, list):
                args[name] = None  # linked inputs are not known yet (COMPAT §1.5)
            elif info.declared(name) is not None:
                args[name] = value
        for name, kind in info.hidden.items():
            kind = hidden_kind(kind)
            args[name] = {"PROMPT": self.prompt, "UNIQUE_ID": node_id}.get(kind)
        if not info.validate_kwargs:
            args = {k: v for k, v in args.items() if k in info.validate_params}
        named = list(args)
        if "input_types" in info.validate_params:
            args["input_types"] = received_types
        try:
            ret = run_maybe_async(info.cls.VALIDATE_INPUTS(**args))
        except Exception as e:
            return [_exception_reason("exception_during_validation", "Exception when validating node",
                                      e)]
        if ret is True:
            return []
        detail_suffix = "" if ret is False else f" - {ret}"
        names = named or ["(node)"]
        return [reason("custom_validation_failed", "Custom validation failed for node",
                       f"{n}{detail_suffix}", input_name=n) for n in names]


def _registered(node, registry) -> bool:
    class_type = node.get("class_type") if isinstance(node, dict) else None
    return isinstance(class_type, str) and class_type in registry


def validate_prompt(prompt: dict, registry, partial_execution_targets=None) -> ValidationResult:
    """Check a whole API prompt; coerced constants are written back into `prompt`."""
    if not isinstance(prompt, dict):
        return _bad_prompt("Prompt must be an object of nodes", type(prompt).__name__)
    known: set = set()
    for node_id, node in prompt.items():
        class_type = node.get("class_type") if isinstance(node, dict) else None
        if class_type in known:
            continue
        if isinstance(class_type, str) and class_type in registry:
            known.add(class_type)
            continue
        node_id = next(n for n in sorted_ids(prompt) if not _registered(prompt[n], registry))
        node = prompt[node_id]
        if not isinstance(node, dict) or "class_type" not in node:
            return _bad_prompt("Cannot execute because a node is missing the class_type property.",
                               f"Node ID '#{node_id}'")
        return _bad_prompt(f"Cannot execute because node {node['class_type']} does not exist.",
                           f"Node ID '#{node_id}'")

    v = _Validator(prompt, registry)
    outputs = sorted_ids(n for n in prompt if v.info(n).output_node)
    if partial_execution_targets is not None:
        targets = set(partial_execution_targets)
        outputs = [n for n in outputs if n in targets]
    if not outputs:
        return ValidationResult(False, reason("prompt_no_outputs", "Prompt has no outputs"), [], {})

    # Walk everything the outputs need, checking each node once (iteratively: no recursion).
    own: dict[str, list] = {}
    ups: dict[str, list] = {}
    todo = list(outputs)
    while todo:
        nid = todo.pop()
        if nid in own:
            continue
        try:
            own[nid], ups[nid] = v.check_node(nid)
        except Exception as e:
            own[nid], ups[nid] = [_exception_reason(
                "exception_during_validation", "Exception when validating node", e)], []
        todo.extend(u for u in ups[nid] if u not in own)

    # Health flows downstream in topological order; nodes left over sit on or after a cycle.
    order, leftover = topological_order(ups)
    healthy: dict[str, bool] = {}
    for nid in order:
        healthy[nid] = not own[nid] and all(healthy[u] for u in ups[nid])
    if leftover:
        stuck = set(leftover)
        edges = [(u, nid) for nid in leftover for u in ups[nid] if u in stuck]
        for cycle in find_cycles(edges):
            path = cycle_path(cycle)
            for nid in cycle:
                own[nid].append(reason("dependency_cycle", "Dependency cycle detected",
                                       f"node {nid} is on the cycle {path}", cycle=list(cycle)))
        for nid in leftover:
            healthy[nid] = False

    good = [o for o in outputs if healthy[o]]
    node_errors: dict = {}
    failed_reasons: list = []
    for o in outputs:
        if healthy[o]:
            continue
        failed_reasons.extend(own[o])
        for nid in _ancestors(o, ups):
            if own[nid]:
                entry = node_errors.setdefault(nid, {"errors": own[nid], "dependent_outputs": [],
                                                     "class_type": prompt[nid]["class_type"]})
                entry["dependent_outputs"].append(o)
    node_errors = {k: node_errors[k] for k in sorted(node_errors, key=node_id_key)}
    if not good:
        details = "\n".join(f"{r['message']}: {r['details']}" for r in failed_reasons)
        if not details:  # every output failed because of something upstream: say what
            details = "\n".join(f"{r['message']}: {r['details']}"
                                for e in node_errors.values() for r in e["errors"])
        error = reason("prompt_outputs_failed_validation", "Prompt outputs failed validation", details)
        return ValidationResult(False, error, [], node_errors)
    return ValidationResult(True, None, good, node_errors)


def _ancestors(start: str, ups: dict) -> list:
    seen = {start}
    stack = [start]
    while stack:
        for u in ups.get(stack.pop(), ()):
            if u not in seen:
                seen.add(u)
                stack.append(u)
    return list(seen)


def format_errors(result: ValidationResult, prompt: Optional[dict] = None) -> str:
    """A readable multi-line account of a failed validation (for the CLI and logs)."""
    lines = []
    if result.error is not None:
        e = result.error
        lines.append(f"{e['message']}" + (f": {e['details']}" if e.get("details") and not result.node_errors else ""))
    for nid, entry in result.node_errors.items():
        title = ""
        if prompt is not None:
            title = ((prompt.get(nid) or {}).get("_meta") or {}).get("title") or ""
        head = f"node {nid} ({entry['class_type']}{', ' + repr(title) if title else ''})"
        for r in entry["errors"]:
            extra = r.get("extra_info") or {}
            where = f" input '{extra['input_name']}'" if extra.get("input_name") else ""
            lines.append(f"  {head}{where}: {r['message']}" + (f" [{r['details']}]" if r["details"] else ""))
    return "\n".join(lines)


__all__ = ["ValidationResult", "validate_prompt", "format_errors", "full_type_name", "reason"]
