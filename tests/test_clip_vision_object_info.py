"""/object_info of the CLIP vision, unCLIP and style model nodes against COMPAT §9 (transcribed by
hand; all are nodes.py classes, python_module "nodes")."""
from __future__ import annotations

import pytest

import nodes

EXPECTED = {
    "CLIPVisionLoader": ("loaders", {"clip_name": ("COMBO",)}, ["CLIP_VISION"], "Load CLIP Vision"),
    "CLIPVisionEncode": ("conditioning", {"clip_vision": ("CLIP_VISION",), "image": ("IMAGE",),
                                          "crop": (["center", "none"],)}, ["CLIP_VISION_OUTPUT"], "CLIP Vision Encode"),
    "StyleModelApply": ("conditioning/style_model", {
        "conditioning": ("CONDITIONING",), "style_model": ("STYLE_MODEL",), "clip_vision_output": ("CLIP_VISION_OUTPUT",),
        "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.001}),
        "strength_type": (["multiply", "attn_bias"],)}, ["CONDITIONING"], "Apply Style Model"),
    "unCLIPConditioning": ("conditioning", {
        "conditioning": ("CONDITIONING",), "clip_vision_output": ("CLIP_VISION_OUTPUT",),
        "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}),
        "noise_augmentation": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01})},
        ["CONDITIONING"], "unCLIPConditioning"),
    "StyleModelLoader": ("loaders", {"style_model_name": ("COMBO",)}, ["STYLE_MODEL"], "Load Style Model"),
    "unCLIPCheckpointLoader": ("loaders", {"ckpt_name": ("COMBO",)}, ["MODEL", "CLIP", "VAE", "CLIP_VISION"],
                               "unCLIPCheckpointLoader"),
}


@pytest.fixture(scope="module")
def registry():
    return nodes.load_registry()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_object_info(registry, name):
    category, inputs, outputs, display = EXPECTED[name]
    info = registry.object_info_for(name)
    assert info["category"] == category and info["python_module"] == "nodes"
    assert info["output"] == outputs and info["output_name"] == outputs
    assert info["display_name"] == display
    assert info.get("output_node") is False
    got = info["input"]["required"]
    assert list(got) == list(inputs)
    for key, spec in inputs.items():
        if spec == ("COMBO",):  # a folder listing
            assert isinstance(got[key][0], list)
        else:
            assert tuple(got[key][0:1]) == spec[0:1] and (len(spec) == 1 or got[key][1] == spec[1]), key
    assert "optional" not in info["input"] or not info["input"]["optional"]
