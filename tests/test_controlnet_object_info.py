"""/object_info of the ControlNet nodes against ComfyUI's declarations, transcribed by hand from
COMPAT §9 (core table) and ComfyUI's NODE_DISPLAY_NAME_MAPPINGS; not computed by our code."""
from __future__ import annotations

import pytest

from tests.object_info_checks import assert_required_inputs
from tests.sdnodes_env import temporary_base

STRENGTH = ("strength", "FLOAT", 1.0, 0.0, 10.0, 0.01)
# name: (category, display name, [(input, type, default, min, max, step)], optional, outputs, output names, deprecated)
EXPECTED = {
    "ControlNetLoader": ("loaders", "Load ControlNet Model", [("control_net_name", [], None, None, None, None)],
                         [], ["CONTROL_NET"], ["CONTROL_NET"], False),
    "DiffControlNetLoader": ("loaders", "Load ControlNet Model (diff)", [
        ("model", "MODEL", None, None, None, None), ("control_net_name", [], None, None, None, None)],
        [], ["CONTROL_NET"], ["CONTROL_NET"], False),
    "ControlNetApply": ("conditioning/controlnet", "Apply ControlNet (OLD)", [
        ("conditioning", "CONDITIONING", None, None, None, None), ("control_net", "CONTROL_NET", None, None, None, None),
        ("image", "IMAGE", None, None, None, None), STRENGTH], [], ["CONDITIONING"], ["CONDITIONING"], True),
    "ControlNetApplyAdvanced": ("conditioning/controlnet", "Apply ControlNet", [
        ("positive", "CONDITIONING", None, None, None, None), ("negative", "CONDITIONING", None, None, None, None),
        ("control_net", "CONTROL_NET", None, None, None, None), ("image", "IMAGE", None, None, None, None), STRENGTH,
        ("start_percent", "FLOAT", 0.0, 0.0, 1.0, 0.001), ("end_percent", "FLOAT", 1.0, 0.0, 1.0, 0.001)],
        ["vae"], ["CONDITIONING", "CONDITIONING"], ["positive", "negative"], False),
}


@pytest.fixture(scope="module")
def info(tmp_path_factory):
    from nodes import load_registry

    registry = load_registry()
    with temporary_base(tmp_path_factory.mktemp("cn_info")):  # empty model folders
        yield {name: registry.object_info_for(name) for name in EXPECTED}


@pytest.mark.parametrize("class_type", sorted(EXPECTED))
def test_object_info_matches_comfyui(class_type, info):
    category, display, inputs, optional, outputs, names, deprecated = EXPECTED[class_type]
    got = info[class_type]
    assert got is not None, f"{class_type} is not registered"
    assert (got["category"], got["python_module"], got["display_name"]) == (category, "nodes", display)
    assert got["output"] == outputs and got["output_name"] == names
    assert got["output_is_list"] == [False] * len(outputs) and got["output_node"] is False
    assert got.get("deprecated", False) is deprecated
    assert got["input_order"].get("optional", []) == optional
    if optional:
        assert got["input"]["optional"] == {"vae": ["VAE"]}
    assert_required_inputs(got, class_type, inputs)


def test_controlnet_files_are_listed_from_both_folders(tmp_path):
    from nodes import load_registry

    with temporary_base(tmp_path):
        for folder, name in (("controlnet", "a.safetensors"), ("t2i_adapter", "b.pth")):
            (tmp_path / "models" / folder).mkdir(parents=True, exist_ok=True)
            (tmp_path / "models" / folder / name).write_bytes(b"")
        got = load_registry().object_info_for("ControlNetLoader")["input"]["required"]["control_net_name"][0]
    assert got == ["a.safetensors", "b.pth"]
