"""A node's saved `widgets_values` -> input names, for every layout the official editor still opens.

The editor saves widget values by position, in the order of the node's widgets. That order is the
node definition's widget inputs (required, then optional, as in `input_order`) plus pseudo-widgets
the editor adds and, depending on the editor version, saves too:

- a "control after generate" value after each input with `control_after_generate` (and, in older
  editors, after every INT named seed/noise_seed): "fixed", "increment", "increment-wrap",
  "decrement", "randomize"; files from the first editors store a boolean there (true meant
  randomize), e.g. the classic default workflow's KSampler `[seed, true, 20, 8, "euler", ...]`;
- an "upload" button after the required inputs of nodes with an image/video/audio upload input,
  saved as "image" by old editors and as a serialized button object by a buggy later one;
- in files of some mid-2025 editors, a value for each `forceInput` input too (the editor's own
  migrateWidgetsValues drops them on load: only when the count matches exactly).

Pseudo-widget values are recognised by position *and* shape, and only while the file carries more
values than the node has widgets, so a real combo value "fixed" is never skipped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "increment-wrap", "decrement", "randomize"}
UPLOAD_FLAGS = ("image_upload", "animated_image_upload", "video_upload", "audio_upload")
# The editor fixes these on load (app.ts loadGraphData), only for these classes.
SAMPLER_CLASSES = ("KSampler", "KSamplerAdvanced")
LEGACY_SAMPLER_PREFIX = "sample_"


@dataclass(frozen=True)
class Slot:
    name: str
    kind: str  # "value" | "control" | "upload" | "forced"
    spec: Any = None


def _opts(spec: Any) -> dict:
    return spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}


def spec_of(info: dict, name: str) -> Optional[list]:
    for section in ("required", "optional"):
        spec = (info.get("input") or {}).get(section, {}).get(name)
        if spec is not None:
            return spec
    return None


def _section_names(info: dict, section: str) -> list[str]:
    order = (info.get("input_order") or {}).get(section)
    return list(order or (info.get("input") or {}).get(section, {}).keys())


def input_names(info: dict) -> list[str]:
    return _section_names(info, "required") + _section_names(info, "optional")


def _widget_kind(spec: Any) -> bool:
    return (isinstance(spec, (list, tuple)) and bool(spec)
            and (isinstance(spec[0], list) or spec[0] in WIDGET_TYPES))


def is_widget(spec: Any) -> bool:
    return _widget_kind(spec) and not _opts(spec).get("forceInput")


def has_control(name: str, spec: Any) -> bool:
    opts = _opts(spec)
    if "control_after_generate" in opts:
        return bool(opts["control_after_generate"])
    # Older editors added the control to INT widgets with these names regardless of the hint.
    return spec[0] == "INT" and name in ("seed", "noise_seed")


def widget_layout(info: dict) -> list[Slot]:
    """Every position the editor may have saved, pseudo-widgets included."""
    slots: list[Slot] = []
    for section in ("required", "optional"):
        specs = (info.get("input") or {}).get(section, {})
        for name in _section_names(info, section):
            spec = specs.get(name)
            if not _widget_kind(spec):
                continue
            slots.append(Slot(name, "value" if is_widget(spec) else "forced", spec))
            if has_control(name, spec):
                slots.append(Slot(name, "control", spec))
        if section == "required" and any(_opts(s).get(f) for s in specs.values() for f in UPLOAD_FLAGS):
            slots.append(Slot("upload", "upload"))
    return slots


def _is_pseudo_value(kind: str, value: Any) -> bool:
    if kind == "control":
        return isinstance(value, bool) or (isinstance(value, str) and value in CONTROL_VALUES)
    if kind == "upload":
        return value is None or isinstance(value, (str, dict))
    return False  # "forced": its saved values are dropped up front or not at all


def map_widget_values(info: dict, values: Any, named: Optional[dict] = None) -> dict:
    """Input name -> value for a node's widgets, given its /object_info entry."""
    layout = widget_layout(info)
    widgets = [s for s in layout if s.kind == "value"]
    if isinstance(named, dict) and named:
        return {s.name: named[s.name] for s in widgets if s.name in named}
    if isinstance(values, dict):  # some node packs save widgets_values as a dict
        return {s.name: values[s.name] for s in widgets if s.name in values}
    values = list(values or [])
    saved = [s for s in layout if s.kind != "upload"]
    if any(s.kind == "forced" for s in layout) and len(values) == len(saved):
        # The editor's migrateWidgetsValues: values saved for forceInput inputs are dropped.
        values = [v for v, s in zip(values, saved) if s.kind != "forced"]
    extras = len(values) - len(widgets)
    result, i = {}, 0
    for slot in layout:
        if i >= len(values):
            break
        if slot.kind == "value":
            result[slot.name] = values[i]
            i += 1
        elif extras > 0 and _is_pseudo_value(slot.kind, values[i]):
            i += 1
            extras -= 1
    return result


def combo_options(spec: Any) -> Optional[list]:
    """The options of a combo input: `[[a, b]]` or the newer `["COMBO", {"options": [a, b]}]`."""
    if not isinstance(spec, (list, tuple)) or not spec:
        return None
    if isinstance(spec[0], list):
        return spec[0]
    return _opts(spec).get("options") if spec[0] == "COMBO" else None


def legacy_value_fixes(class_type: str, info: dict, inputs: dict) -> None:
    """In place: what the editor corrects on load. Sampler names once had a "sample_" prefix;
    a combo saved as null takes the first option."""
    name = inputs.get("sampler_name")
    if (class_type in SAMPLER_CLASSES and isinstance(name, str)
            and name.startswith(LEGACY_SAMPLER_PREFIX)):
        inputs["sampler_name"] = name[len(LEGACY_SAMPLER_PREFIX):]
    for key, value in inputs.items():
        options = combo_options(spec_of(info, key)) if value is None else None
        if options:
            inputs[key] = options[0]
