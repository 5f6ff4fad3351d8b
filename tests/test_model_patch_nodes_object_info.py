"""/object_info of the model-patch and GLIGEN nodes against COMPAT §9 and ComfyUI's extras declarations
(transcribed by hand)."""
from __future__ import annotations

import pytest

from tests.sdnodes_env import registry, sd_home, tiny_checkpoint_files  # noqa: F401

M = ("MODEL",)
F = "FLOAT"


def _f(default, lo, hi, step, **extra):
    return (F, {"default": default, "min": lo, "max": hi, "step": step, **extra})


def _freeu(b1, b2):
    return [("model", M), ("b1", _f(b1, 0.0, 10.0, 0.01)), ("b2", _f(b2, 0.0, 10.0, 0.01)),
            ("s1", _f(0.9, 0.0, 10.0, 0.01)), ("s2", _f(0.2, 0.0, 10.0, 0.01))]


METHODS = ["bicubic", "nearest-exact", "bilinear", "area", "bislerp"]
BOX = ("INT", {"default": 64, "min": 8, "max": 16384, "step": 8})
POS = ("INT", {"default": 0, "min": 0, "max": 16384, "step": 8})
# class: (python_module, category, display name, [(input, spec)], outputs)
EXPECTED = {
    "ModelSamplingDiscrete": ("comfy_extras.nodes_model_advanced", "advanced/model", "ModelSamplingDiscrete",
                              [("model", M), ("sampling", (["eps", "v_prediction", "lcm", "x0", "img_to_img"],)),
                               ("zsnr", ("BOOLEAN", {"default": False}))], ["MODEL"]),
    "RescaleCFG": ("comfy_extras.nodes_model_advanced", "advanced/model", "RescaleCFG",
                   [("model", M), ("multiplier", _f(0.7, 0.0, 1.0, 0.01))], ["MODEL"]),
    "FreeU": ("comfy_extras.nodes_freelunch", "model_patches/unet", "FreeU", _freeu(1.1, 1.2), ["MODEL"]),
    "FreeU_V2": ("comfy_extras.nodes_freelunch", "model_patches/unet", "FreeU_V2", _freeu(1.3, 1.4), ["MODEL"]),
    "PerpNeg": ("comfy_extras.nodes_perpneg", "_for_testing", "Perp-Neg (DEPRECATED by PerpNegGuider)",
                [("model", M), ("empty_conditioning", ("CONDITIONING",)),
                 ("neg_scale", _f(1.0, 0.0, 100.0, 0.01))], ["MODEL"]),
    "PerpNegGuider": ("comfy_extras.nodes_perpneg", "_for_testing", "PerpNegGuider",
                      [("model", M), ("positive", ("CONDITIONING",)), ("negative", ("CONDITIONING",)),
                       ("empty_conditioning", ("CONDITIONING",)), ("cfg", _f(8.0, 0.0, 100.0, 0.1, round=0.01)),
                       ("neg_scale", _f(1.0, 0.0, 100.0, 0.01))], ["GUIDER"]),
    "SelfAttentionGuidance": ("comfy_extras.nodes_sag", "_for_testing", "Self-Attention Guidance",
                              [("model", M), ("scale", _f(0.5, -2.0, 5.0, 0.01)),
                               ("blur_sigma", _f(2.0, 0.0, 10.0, 0.1))], ["MODEL"]),
    "PatchModelAddDownscale": ("comfy_extras.nodes_model_downscale", "_for_testing",
                               "PatchModelAddDownscale (Kohya Deep Shrink)",
                               [("model", M), ("block_number", ("INT", {"default": 3, "min": 1, "max": 32, "step": 1})),
                                ("downscale_factor", _f(2.0, 0.1, 9.0, 0.001)),
                                ("start_percent", _f(0.0, 0.0, 1.0, 0.001)), ("end_percent", _f(0.35, 0.0, 1.0, 0.001)),
                                ("downscale_after_skip", ("BOOLEAN", {"default": True})),
                                ("downscale_method", (METHODS,)), ("upscale_method", (METHODS,))], ["MODEL"]),
    "TomePatchModel": ("comfy_extras.nodes_tomesd", "_for_testing", "TomePatchModel",
                       [("model", M), ("ratio", _f(0.3, 0.0, 1.0, 0.01))], ["MODEL"]),
    "HypernetworkLoader": ("comfy_extras.nodes_hypernetwork", "loaders", "HypernetworkLoader",
                           [("model", M), ("hypernetwork_name", None), ("strength", _f(1.0, -10.0, 10.0, 0.01))],
                           ["MODEL"]),
    "GLIGENLoader": ("nodes", "loaders", "GLIGENLoader", [("gligen_name", None)], ["GLIGEN"]),
    "GLIGENTextBoxApply": ("nodes", "conditioning/gligen", "GLIGENTextBoxApply",
                           [("conditioning_to", ("CONDITIONING",)), ("clip", ("CLIP",)),
                            ("gligen_textbox_model", ("GLIGEN",)),
                            ("text", ("STRING", {"multiline": True, "dynamicPrompts": True})),
                            ("width", BOX), ("height", BOX), ("x", POS), ("y", POS)], ["CONDITIONING"]),
}


@pytest.mark.parametrize("class_type", sorted(EXPECTED))
def test_object_info_matches_comfyui(class_type, registry, sd_home):  # noqa: F811
    module, category, display, inputs, outputs = EXPECTED[class_type]
    info = registry.object_info_for(class_type)
    assert (info["python_module"], info["category"], info["display_name"]) == (module, category, display)
    assert info["output"] == outputs and info["output_name"] == outputs
    assert info["input_order"]["required"] == [name for name, _ in inputs]
    for name, spec in inputs:
        if spec is not None:
            assert tuple(info["input"]["required"][name]) == spec, name
    flags = {"PerpNeg": (True, True), "PerpNegGuider": (False, True)}.get(class_type, (False, False))
    assert (info.get("deprecated", False), info.get("experimental", False)) == flags


def test_file_lists_come_from_their_folders(registry, sd_home):  # noqa: F811
    for folder, class_type, name in (("hypernetworks", "HypernetworkLoader", "hypernetwork_name"),
                                     ("gligen", "GLIGENLoader", "gligen_name")):
        (sd_home / "models" / folder).mkdir(parents=True, exist_ok=True)
        (sd_home / "models" / folder / f"x-{folder}.pt").write_bytes(b"")
        assert registry.object_info_for(class_type)["input"]["required"][name][0] == [f"x-{folder}.pt"]
