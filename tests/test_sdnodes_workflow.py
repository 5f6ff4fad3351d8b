"""workflows/default.json is a well-formed UI-format (v0.4) workflow the editor can load (COMPAT §2.2):
consistent link records, node slots that match /object_info, widgets_values in widget order with the
seed's "control after generate" value after the seed."""
from __future__ import annotations

import json
from pathlib import Path

from tests.sdnodes_env import registry, sd_home, tiny_checkpoint_files  # noqa: F401

WORKFLOW = Path(__file__).resolve().parent.parent / "workflows" / "default.json"
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}


def _load():
    return json.loads(WORKFLOW.read_text())


def test_top_level_fields():
    wf = _load()
    assert wf["version"] == 0.4
    for key, kind in (("nodes", list), ("links", list), ("groups", list), ("config", dict), ("extra", dict)):
        assert isinstance(wf[key], kind), key
    assert wf["last_node_id"] == max(n["id"] for n in wf["nodes"])
    assert wf["last_link_id"] == max(link[0] for link in wf["links"])
    assert len({n["id"] for n in wf["nodes"]}) == len(wf["nodes"])
    for n in wf["nodes"]:
        assert n["mode"] == 0 and isinstance(n["flags"], dict) and isinstance(n["properties"], dict)
        assert len(n["pos"]) == 2 and len(n["size"]) == 2
        assert n["properties"]["Node name for S&R"] == n["type"]
    assert sorted(n["order"] for n in wf["nodes"]) == list(range(len(wf["nodes"])))


def test_links_agree_with_node_slots():
    wf = _load()
    nodes = {n["id"]: n for n in wf["nodes"]}
    for link_id, origin, origin_slot, target, target_slot, type_ in wf["links"]:
        out = nodes[origin]["outputs"][origin_slot]
        inp = nodes[target]["inputs"][target_slot]
        assert link_id in out["links"] and inp["link"] == link_id
        assert out["type"] == inp["type"] == type_
        assert out["slot_index"] == origin_slot
    linked = {link[0] for link in wf["links"]}
    for n in wf["nodes"]:
        for out in n["outputs"]:
            assert set(out["links"]) <= linked
        for inp in n["inputs"]:
            assert inp["link"] in linked


def test_slots_and_widgets_match_object_info(registry, sd_home):  # noqa: F811
    wf = _load()
    for n in wf["nodes"]:
        info = registry.object_info_for(n["type"])
        assert info is not None, n["type"]
        assert [o["type"] for o in n["outputs"]] == info["output"]
        required = info["input"]["required"]
        sockets = [name for name in info["input_order"]["required"]
                   if not isinstance(required[name][0], list)
                   and required[name][0] not in ("INT", "FLOAT", "STRING", "BOOLEAN")]
        widgets = [name for name in info["input_order"]["required"] if name not in sockets]
        assert [i["name"] for i in n["inputs"]] == sockets, n["type"]
        values = list(n["widgets_values"])
        if "seed" in widgets:  # the editor stores the seed's control value right after the seed
            seed_at = widgets.index("seed")
            assert values[seed_at + 1] in CONTROL_VALUES
            del values[seed_at + 1]
        assert len(values) == len(widgets), n["type"]
        for name, value in zip(widgets, values):
            kind, opts = required[name][0], (required[name][1] if len(required[name]) > 1 else {})
            if isinstance(kind, list) and kind:
                assert value in kind or name == "ckpt_name", (n["type"], name, value)
            elif kind in ("INT", "FLOAT"):
                assert opts["min"] <= value <= opts["max"], (n["type"], name, value)


def test_conversion_gives_the_classic_graph(registry, sd_home):  # noqa: F811
    from graph.workflow_formats import ui_to_api

    api = ui_to_api(_load(), registry.object_info_for)
    assert api["4"]["inputs"] == {"ckpt_name": "latentgraph-tiny-sd1.safetensors"}
    assert api["3"]["inputs"] == {"seed": 42, "steps": 8, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
                                  "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                                  "latent_image": ["5", 0]}
    assert api["8"]["inputs"] == {"samples": ["3", 0], "vae": ["4", 2]}
    assert api["9"]["inputs"] == {"filename_prefix": "latentgraph", "images": ["8", 0]}
    assert api["6"]["inputs"]["clip"] == api["7"]["inputs"]["clip"] == ["4", 1]
