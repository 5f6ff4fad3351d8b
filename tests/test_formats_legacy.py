"""UI-format layouts of older editors (and buggy ones) that the official frontend still opens.

Each shape is taken from the frontend's loading code (comfyui_frontend_package: app loadGraphData's
fixes, migrateWidgetsValues, the Comfy.UploadImage extension, the seed control widgets) and checked
with a small fixture. The classic default workflow is a full file: tests/workflows/.
"""
import copy
import json
from pathlib import Path

import pytest

from graph.widget_values import widget_layout
from graph.workflow_formats import map_widget_values, ui_to_api
from tests.test_formats_ui_to_api import basic_workflow, node, node_info

CLASSIC = Path(__file__).parent / "workflows" / "classic_default_v0.4.json"

SEEDED = {"input": {"required": {"seed": ["INT", {"control_after_generate": True}],
                                 "steps": ["INT", {"default": 20}], "cfg": ["FLOAT", {"default": 8.0}]}},
          "input_order": {"required": ["seed", "steps", "cfg"]}}


@pytest.fixture(scope="module")
def registry():
    from nodes import load_registry

    return load_registry()


def test_classic_default_workflow_converts_and_validates(registry):
    """ComfyUI's default graph of 2023 stores the seed control as `true`; it used to fail with
    "Failed to convert an input value to a FLOAT value [denoise, normal]"."""
    from graph.validate import validate_prompt

    api = ui_to_api(json.loads(CLASSIC.read_text()), registry.object_info_for)
    assert api["3"]["inputs"] == {
        "seed": 156680208700286, "steps": 20, "cfg": 8, "sampler_name": "euler", "scheduler": "normal",
        "denoise": 1, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
        "latent_image": ["5", 0]}
    assert api["5"]["inputs"] == {"width": 512, "height": 512, "batch_size": 1}
    checked = validate_prompt(api, registry)
    # the only complaint left is the checkpoint this machine does not have
    assert set(checked.node_errors) == {"4"}
    (error,) = checked.node_errors["4"]["errors"]
    assert error["type"] == "value_not_in_list" and "v1-5-pruned-emaonly.ckpt" in error["details"]


@pytest.mark.parametrize("control", ["fixed", "increment", "increment-wrap", "decrement", "randomize",
                                     True, False])
def test_every_control_value_after_a_seed_is_skipped(control):
    assert map_widget_values(SEEDED, [5, control, 30, 2.5]) == {"seed": 5, "steps": 30, "cfg": 2.5}


def test_a_value_that_only_looks_like_a_control_is_kept():
    info = {"input": {"required": {"seed": ["INT", {"control_after_generate": True}],
                                   "flag": ["BOOLEAN", {"default": False}]}},
            "input_order": {"required": ["seed", "flag"]}}
    # two widgets, two values: `true` is the boolean widget's value
    assert map_widget_values(info, [3, True]) == {"seed": 3, "flag": True}
    assert map_widget_values(info, [3, False, True]) == {"seed": 3, "flag": True}


def test_old_editors_put_a_control_after_any_int_named_seed():
    info = {"input": {"required": {"noise_seed": ["INT", {}], "steps": ["INT", {}]}}}
    assert map_widget_values(info, [1, True, 9]) == {"noise_seed": 1, "steps": 9}
    assert map_widget_values(info, [1, 9]) == {"noise_seed": 1, "steps": 9}


def test_combo_with_control_and_newer_combo_spec():
    info = {"input": {"required": {"pick": ["COMBO", {"options": ["a", "b"], "control_after_generate": True}],
                                   "n": ["INT", {}]}},
            "input_order": {"required": ["pick", "n"]}}
    assert map_widget_values(info, ["b", "increment-wrap", 4]) == {"pick": "b", "n": 4}


def test_widgets_values_saved_as_a_dict():
    wf = basic_workflow()
    wf["nodes"][3]["widgets_values"] = {"seed": 11, "steps": 3, "cfg": 1.5, "denoise": 0.25,
                                        "not_a_widget": 1}
    inputs = ui_to_api(wf, node_info)["4"]["inputs"]
    assert (inputs["seed"], inputs["steps"], inputs["cfg"], inputs["denoise"]) == (11, 3, 1.5, 0.25)
    assert "not_a_widget" not in inputs


def test_converted_widget_with_old_config_entry_fed_by_a_primitive():
    """Editors before 1.16 kept converted widgets as inputs with {"widget": {"name", "config"}};
    the widget's value stays in widgets_values, the primitive's value wins."""
    wf = basic_workflow()
    sampler = wf["nodes"][3]
    sampler["inputs"].append({"name": "seed", "type": "INT", "link": 7,
                              "widget": {"name": "seed", "config": ["INT", {"default": 0}]}})
    wf["nodes"].append(node(7, "PrimitiveNode", outputs=[("INT", "INT", [7])], widgets=[99, True],
                            properties={"Run widget replace on values": False}))
    wf["links"].append([7, 7, 0, 4, 3, "INT"])
    assert ui_to_api(wf, node_info)["4"]["inputs"]["seed"] == 99
    # an unlinked widget input (how 1.16+ saves every widget) changes nothing
    sampler["inputs"][-1]["link"] = None
    assert ui_to_api(wf, node_info)["4"]["inputs"]["seed"] == 42


def test_link_holes_and_both_link_shapes_mixed_in_subgraphs():
    wf = basic_workflow()
    wf["links"].insert(2, None)  # old editors left holes for deleted links
    assert ui_to_api(wf, node_info) == ui_to_api(basic_workflow(), node_info)


@pytest.mark.parametrize("mode, kept", [(0, True), (1, True), (3, True), (2, False), (4, False)])
def test_litegraph_modes(mode, kept):
    """always (0), on event (1) and on trigger (3) run; never (2, muted) and bypass (4) do not."""
    wf = basic_workflow()
    wf["nodes"][4]["mode"] = mode
    assert ("5" in ui_to_api(wf, node_info)) is kept


def test_search_and_replace_property_and_titles_do_not_matter():
    wf = basic_workflow()
    plain = ui_to_api(wf, node_info)
    for n in wf["nodes"]:
        n["properties"] = {"Node name for S&R": "Something else", "cnr_id": "comfy-core", "ver": "0.3.10"}
    assert ui_to_api(wf, node_info) == plain


UPLOADER = {"input": {"required": {"image": [["x.png", "y.png"], {"image_upload": True}],
                                   "channel": [["alpha", "red"], {}]},
                      "optional": {"strength": ["FLOAT", {"default": 1.0}]}},
            "input_order": {"required": ["image", "channel"], "optional": ["strength"]}}
UPLOAD_BUTTON = {"name": "upload", "options": {"serialize": False, "canvasOnly": True},
                 "label": "choose file to upload", "type": "button", "y": 70}


@pytest.mark.parametrize("upload", ["image", UPLOAD_BUTTON, None])
def test_upload_pseudo_widget_after_the_required_inputs(upload):
    assert [s.kind for s in widget_layout(UPLOADER)] == ["value", "value", "upload", "value"]
    expected = {"image": "y.png", "channel": "red", "strength": 0.5}
    assert map_widget_values(UPLOADER, ["y.png", "red", upload, 0.5]) == expected
    assert map_widget_values(UPLOADER, ["y.png", "red", 0.5]) == expected


def test_values_saved_for_force_input_inputs_are_dropped():
    """A mid-2025 editor saved a value for each forceInput input; the frontend migrates that on
    load when the count matches exactly, and so do we."""
    info = {"input": {"required": {"text": ["STRING", {"forceInput": True}],
                                   "seed": ["INT", {"control_after_generate": True}],
                                   "scale": ["FLOAT", {"default": 1.0}]}},
            "input_order": {"required": ["text", "seed", "scale"]}}
    assert map_widget_values(info, ["", 4, "fixed", 2.0]) == {"seed": 4, "scale": 2.0}
    assert map_widget_values(info, [4, "fixed", 2.0]) == {"seed": 4, "scale": 2.0}
    assert map_widget_values(info, [4, 2.0]) == {"seed": 4, "scale": 2.0}


def test_editor_load_fixes_sampler_prefix_and_null_combos(registry):
    wf = json.loads(CLASSIC.read_text())
    sampler = next(n for n in wf["nodes"] if n["type"] == "KSampler")
    sampler["widgets_values"] = [1, "randomize", 20, 8, "sample_euler_ancestral", None, 1]
    inputs = ui_to_api(wf, registry.object_info_for)["3"]["inputs"]
    assert inputs["sampler_name"] == "euler_ancestral"
    assert inputs["scheduler"] == registry.object_info_for("KSampler")["input"]["required"][
        "scheduler"][0][0]
    # only samplers get the prefix fix: another node's value that starts so is left alone
    wf2 = copy.deepcopy(wf)
    save = next(n for n in wf2["nodes"] if n["type"] == "SaveImage")
    save["widgets_values"] = ["sample_run"]
    assert ui_to_api(wf2, registry.object_info_for)["9"]["inputs"]["filename_prefix"] == "sample_run"


def test_group_nodes_of_the_old_editor_are_refused_with_a_way_out():
    """Pre-subgraph group nodes ("workflow>Name" + extra.groupNodes) are not guessed at."""
    from graph.workflow_formats import WorkflowFormatError

    wf = basic_workflow()
    wf["extra"]["groupNodes"] = {"Prep": {"nodes": [{"type": "Filter", "index": 0}], "links": [],
                                          "external": []}}
    wf["nodes"].append(node(9, "workflow/Prep", widgets=[0.5]))
    with pytest.raises(WorkflowFormatError, match=r"node 9 is a group node \('workflow/Prep'\).*save it again"):
        ui_to_api(wf, node_info)
    wf["nodes"].pop()  # the definitions alone (no instance left) change nothing
    assert ui_to_api(wf, node_info) == ui_to_api(basic_workflow(), node_info)
