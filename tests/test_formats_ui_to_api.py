"""UI-format -> API-format conversion on hand-written editor workflows (COMPAT §2.2)."""
import json

import pytest

from graph.workflow_formats import (WorkflowFormatError, load_workflow, map_widget_values,
                                    ui_to_api)

# /object_info-shaped definitions of the few classes these workflows use.
DEFS = {
    "Loader": {"input": {"required": {"ckpt_name": [["a.safetensors", "b.safetensors"], {}]}},
               "input_order": {"required": ["ckpt_name"]},
               "output": ["MODEL", "CLIP"], "display_name": "Load"},
    "Encode": {"input": {"required": {"text": ["STRING", {"multiline": True}], "clip": ["CLIP"]}},
               "input_order": {"required": ["text", "clip"]}, "output": ["CONDITIONING"]},
    "Sampler": {"input": {"required": {
        "model": ["MODEL"],
        "seed": ["INT", {"default": 0, "min": 0, "control_after_generate": True}],
        "steps": ["INT", {"default": 20, "min": 1}],
        "cfg": ["FLOAT", {"default": 8.0}],
        "positive": ["CONDITIONING"],
        "negative": ["CONDITIONING"]},
        "optional": {"denoise": ["FLOAT", {"default": 1.0}]}},
        "input_order": {"required": ["model", "seed", "steps", "cfg", "positive", "negative"],
                        "optional": ["denoise"]},
        "output": ["LATENT"]},
    "Filter": {"input": {"required": {"model": ["MODEL"], "amount": ["FLOAT", {"default": 0.5}]}},
               "input_order": {"required": ["model", "amount"]}, "output": ["MODEL"]},
    "Save": {"input": {"required": {"samples": ["LATENT"],
                                    "prefix": ["STRING", {"default": "ComfyUI"}]}},
             "input_order": {"required": ["samples", "prefix"]}, "output": [],
             "output_node": True},
}


def node_info(class_type):
    return DEFS.get(class_type)


def node(nid, type_, inputs=(), outputs=(), widgets=None, mode=0, **extra):
    d = {"id": nid, "type": type_, "mode": mode, "pos": [0, 0], "size": [100, 50], "flags": {},
         "order": 0, "properties": {"Node name for S&R": type_},
         "inputs": [{"name": n, "type": t, "link": l} for n, t, l in inputs],
         "outputs": [{"name": n, "type": t, "links": ls, "slot_index": i}
                     for i, (n, t, ls) in enumerate(outputs)]}
    if widgets is not None:
        d["widgets_values"] = widgets
    d.update(extra)
    return d


def basic_workflow():
    """Loader -> Encode x2 -> Sampler -> Save, links in v0.4 array form."""
    nodes = [
        node(1, "Loader", outputs=[("MODEL", "MODEL", [1]), ("CLIP", "CLIP", [2, 3])],
             widgets=["b.safetensors"]),
        node(2, "Encode", inputs=[("clip", "CLIP", 2)], outputs=[("C", "CONDITIONING", [4])],
             widgets=["a cat"]),
        node(3, "Encode", inputs=[("clip", "CLIP", 3)], outputs=[("C", "CONDITIONING", [5])],
             widgets=["blurry"]),
        node(4, "Sampler", inputs=[("model", "MODEL", 1), ("positive", "CONDITIONING", 4),
                                   ("negative", "CONDITIONING", 5)],
             outputs=[("LATENT", "LATENT", [6])], widgets=[42, "randomize", 12, 7.5, 0.8]),
        node(5, "Save", inputs=[("samples", "LATENT", 6)], widgets=["out"]),
        node(6, "Note", widgets=["just a note"]),
    ]
    links = [[1, 1, 0, 4, 0, "MODEL"], [2, 1, 1, 2, 0, "CLIP"], [3, 1, 1, 3, 0, "CLIP"],
             [4, 2, 0, 4, 1, "CONDITIONING"], [5, 3, 0, 4, 2, "CONDITIONING"],
             [6, 4, 0, 5, 0, "LATENT"]]
    return {"last_node_id": 6, "last_link_id": 6, "nodes": nodes, "links": links, "groups": [],
            "config": {}, "extra": {}, "version": 0.4}


def test_basic_conversion_maps_widgets_and_links():
    api = ui_to_api(basic_workflow(), node_info)
    assert set(api) == {"1", "2", "3", "4", "5"}  # the Note is dropped
    assert api["1"]["inputs"] == {"ckpt_name": "b.safetensors"}
    assert api["2"]["inputs"] == {"text": "a cat", "clip": ["1", 1]}
    # the "randomize" control value after the seed is skipped, the optional widget still maps
    assert api["4"]["inputs"] == {"model": ["1", 0], "seed": 42, "steps": 12, "cfg": 7.5,
                                  "denoise": 0.8, "positive": ["2", 0], "negative": ["3", 0]}
    assert api["5"] == {"inputs": {"samples": ["4", 0], "prefix": "out"}, "class_type": "Save",
                        "_meta": {"title": "Save"}}
    assert api["1"]["_meta"]["title"] == "Load"


def test_v1_link_objects_give_the_same_prompt():
    wf = basic_workflow()
    wf["links"] = [{"id": l[0], "origin_id": l[1], "origin_slot": l[2], "target_id": l[3],
                    "target_slot": l[4], "type": l[5]} for l in wf["links"]]
    wf["version"] = 1
    assert ui_to_api(wf, node_info) == ui_to_api(basic_workflow(), node_info)


def test_seed_without_control_value_and_named_values():
    wf = basic_workflow()
    wf["nodes"][3]["widgets_values"] = [7, 30, 5.0, 1.0]
    assert ui_to_api(wf, node_info)["4"]["inputs"]["steps"] == 30
    wf["nodes"][3]["widgets_values"] = [1, "fixed", 2, 3.0, 1.0]
    wf["nodes"][3]["widgets_values_named"] = {"seed": 9, "steps": 4, "cfg": 2.0, "denoise": 0.5}
    inputs = ui_to_api(wf, node_info)["4"]["inputs"]
    assert (inputs["seed"], inputs["steps"], inputs["cfg"], inputs["denoise"]) == (9, 4, 2.0, 0.5)


def test_short_widgets_values_fill_required_defaults_only():
    wf = basic_workflow()
    wf["nodes"][3]["widgets_values"] = [5]
    inputs = ui_to_api(wf, node_info)["4"]["inputs"]
    assert inputs["seed"] == 5 and inputs["steps"] == 20 and inputs["cfg"] == 8.0
    assert "denoise" not in inputs  # optional: left to the node's own default


def test_muted_node_is_dropped_and_its_consumers_lose_the_link():
    wf = basic_workflow()
    wf["nodes"][2]["mode"] = 2  # negative Encode muted
    api = ui_to_api(wf, node_info)
    assert "3" not in api
    assert "negative" not in api["4"]["inputs"]


def test_bypassed_node_is_spliced_through_by_type():
    wf = basic_workflow()
    wf["nodes"].append(node(7, "Filter", inputs=[("model", "MODEL", 7)],
                            outputs=[("MODEL", "MODEL", [8])], widgets=[0.3], mode=4))
    wf["links"][0] = [7, 1, 0, 7, 0, "MODEL"]
    wf["links"].append([8, 7, 0, 4, 0, "MODEL"])
    wf["nodes"][3]["inputs"][0]["link"] = 8
    api = ui_to_api(wf, node_info)
    assert "7" not in api
    assert api["4"]["inputs"]["model"] == ["1", 0]
    wf["nodes"][-1]["mode"] = 0
    api = ui_to_api(wf, node_info)
    assert api["4"]["inputs"]["model"] == ["7", 0]
    assert api["7"]["inputs"] == {"model": ["1", 0], "amount": 0.3}


def test_reroutes_and_primitive_are_inlined():
    wf = basic_workflow()
    # Loader.MODEL -> Reroute 8 -> Reroute 9 -> Sampler.model
    wf["nodes"] += [node(8, "Reroute", inputs=[("", "*", 1)], outputs=[("", "MODEL", [9])]),
                    node(9, "Reroute", inputs=[("", "*", 9)], outputs=[("", "MODEL", [10])]),
                    node(10, "PrimitiveNode", outputs=[("INT", "INT", [11])],
                         widgets=[1234, "increment"])]
    wf["links"][0] = [1, 1, 0, 8, 0, "MODEL"]
    wf["links"] += [[9, 8, 0, 9, 0, "MODEL"], [10, 9, 0, 4, 0, "MODEL"], [11, 10, 0, 4, 6, "INT"]]
    wf["nodes"][3]["inputs"][0]["link"] = 10
    wf["nodes"][3]["inputs"].append({"name": "seed", "type": "INT", "link": 11,
                                     "widget": {"name": "seed"}})
    api = ui_to_api(wf, node_info)
    assert not {"8", "9", "10"} & set(api)
    assert api["4"]["inputs"]["model"] == ["1", 0]
    assert api["4"]["inputs"]["seed"] == 1234


def test_reroute_loop_is_an_error_not_a_hang():
    wf = basic_workflow()
    wf["nodes"] += [node(8, "Reroute", inputs=[("", "*", 9)], outputs=[("", "*", [9, 10])])]
    wf["links"] += [[9, 8, 0, 8, 0, "*"], [10, 8, 0, 4, 0, "MODEL"]]
    wf["nodes"][3]["inputs"][0]["link"] = 10
    with pytest.raises(WorkflowFormatError, match="loop"):
        ui_to_api(wf, node_info)


def subgraph_workflow():
    """Outer: Loader -> [subgraph S: input model -> Filter -> output; input clip -> Encode -> out]
    -> Sampler; the subgraph also contains a nested subgraph T that passes MODEL straight through."""
    inner_t = {
        "id": "tttt", "name": "Passthrough",
        "inputs": [{"id": "ti", "name": "m", "type": "MODEL"}],
        "outputs": [{"id": "to", "name": "m", "type": "MODEL"}],
        "nodes": [],
        "links": [{"id": 1, "origin_id": -10, "origin_slot": 0, "target_id": -20,
                   "target_slot": 0, "type": "MODEL"}],
    }
    sub_s = {
        "id": "ssss", "name": "Prep",
        "inputs": [{"id": "i0", "name": "model", "type": "MODEL"},
                   {"id": "i1", "name": "clip", "type": "CLIP"}],
        "outputs": [{"id": "o0", "name": "model", "type": "MODEL"},
                    {"id": "o1", "name": "cond", "type": "CONDITIONING"}],
        "nodes": [
            node(1, "Filter", inputs=[("model", "MODEL", 1)], outputs=[("MODEL", "MODEL", [2])],
                 widgets=[0.25]),
            node(2, "Encode", inputs=[("clip", "CLIP", 3)],
                 outputs=[("C", "CONDITIONING", [4])], widgets=["inside"]),
            node(3, "tttt", inputs=[("m", "MODEL", 2)], outputs=[("m", "MODEL", [5])]),
        ],
        "links": [
            {"id": 1, "origin_id": -10, "origin_slot": 0, "target_id": 1, "target_slot": 0},
            {"id": 2, "origin_id": 1, "origin_slot": 0, "target_id": 3, "target_slot": 0},
            {"id": 3, "origin_id": -10, "origin_slot": 1, "target_id": 2, "target_slot": 0},
            {"id": 4, "origin_id": 2, "origin_slot": 0, "target_id": -20, "target_slot": 1},
            {"id": 5, "origin_id": 3, "origin_slot": 0, "target_id": -20, "target_slot": 0},
        ],
    }
    wf = basic_workflow()
    wf["definitions"] = {"subgraphs": [sub_s, inner_t]}
    wf["nodes"].append(node(12, "ssss", inputs=[("model", "MODEL", 20), ("clip", "CLIP", 21)],
                            outputs=[("model", "MODEL", [22]), ("cond", "CONDITIONING", [23])]))
    wf["links"][0] = [20, 1, 0, 12, 0, "MODEL"]
    wf["links"][3] = [23, 12, 1, 4, 1, "CONDITIONING"]
    wf["links"] += [[21, 1, 1, 12, 1, "CLIP"], [22, 12, 0, 4, 0, "MODEL"]]
    wf["nodes"][3]["inputs"][0]["link"] = 22
    wf["nodes"][3]["inputs"][1]["link"] = 23
    wf["nodes"] = [n for n in wf["nodes"] if n["id"] != 2]
    return wf


def test_subgraphs_are_flattened_with_colon_ids():
    api = ui_to_api(subgraph_workflow(), node_info)
    assert "12" not in api and "12:3" not in api  # instances are not nodes
    assert api["12:1"]["inputs"] == {"model": ["1", 0], "amount": 0.25}
    assert api["12:2"]["inputs"] == {"text": "inside", "clip": ["1", 1]}
    # the nested passthrough subgraph resolves to the Filter inside the outer subgraph
    assert api["4"]["inputs"]["model"] == ["12:1", 0]
    assert api["4"]["inputs"]["positive"] == ["12:2", 0]


def test_bypassed_subgraph_passes_inputs_through():
    wf = subgraph_workflow()
    wf["nodes"][-1]["mode"] = 4
    api = ui_to_api(wf, node_info)
    assert not [k for k in api if k.startswith("12:")]
    assert api["4"]["inputs"]["model"] == ["1", 0]
    assert "positive" not in api["4"]["inputs"]  # no CONDITIONING input to pass through


def test_list_constants_are_wrapped():
    wf = basic_workflow()
    wf["nodes"][4]["widgets_values"] = [["a", "b"]]
    assert ui_to_api(wf, node_info)["5"]["inputs"]["prefix"] == {"__value__": ["a", "b"]}


def test_map_widget_values_does_not_skip_a_real_value_that_looks_like_control():
    info = {"input": {"required": {"seed": ["INT", {"control_after_generate": True}],
                                   "mode": [["fixed", "other"]]}},
            "input_order": {"required": ["seed", "mode"]}}
    # two widgets, two values: "fixed" is the combo's value, not a seed control
    assert map_widget_values(info, [3, "fixed"]) == {"seed": 3, "mode": "fixed"}
    assert map_widget_values(info, [3, "randomize", "other"]) == {"seed": 3, "mode": "other"}


def test_load_workflow_recognises_formats_and_reports_bad_files(tmp_path):
    api = {"1": {"class_type": "Save", "inputs": {}}}
    p = tmp_path / "api.json"
    p.write_text(json.dumps(api))
    assert load_workflow(p) == ("api", api)
    p.write_text(json.dumps({"prompt": api, "client_id": "x"}))
    assert load_workflow(p) == ("api", api)
    p.write_text(json.dumps(basic_workflow()))
    assert load_workflow(p)[0] == "ui"
    p.write_text('{"1": {"class_type": ')
    with pytest.raises(WorkflowFormatError, match=r"api.json: malformed JSON at line 1"):
        load_workflow(p)
    p.write_text('[1, 2]')
    with pytest.raises(WorkflowFormatError, match="neither an API-format"):
        load_workflow(p)
    with pytest.raises(WorkflowFormatError, match="no such file"):
        load_workflow(tmp_path / "missing.json")


def test_malformed_ui_pieces_name_the_problem():
    wf = basic_workflow()
    wf["links"].append([99, 1])
    with pytest.raises(WorkflowFormatError, match="malformed link"):
        ui_to_api(wf, node_info)
    wf = basic_workflow()
    wf["nodes"].append({"type": "Save"})
    with pytest.raises(WorkflowFormatError, match="without 'id'"):
        ui_to_api(wf, node_info)


def test_unknown_class_is_kept_for_validation_to_report():
    wf = basic_workflow()
    wf["nodes"][4]["type"] = "NoSuchNode"
    api = ui_to_api(wf, node_info)
    assert api["5"]["class_type"] == "NoSuchNode"
    assert api["5"]["inputs"] == {"samples": ["4", 0]}
