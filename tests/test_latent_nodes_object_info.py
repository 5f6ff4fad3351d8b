"""/object_info of the latent, inpaint and outpaint nodes against ComfyUI's declarations.

Transcribed by hand from COMPAT §9 (core table and extras table) and, for the nodes_latent arithmetic
nodes COMPAT only names, from ComfyUI's comfy_extras/nodes_latent.py; not computed by our code.
"""
from __future__ import annotations

import pytest

from tests.object_info_checks import assert_required_inputs
from tests.sdnodes_env import temporary_base

R = 16384
METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]
L = ("LATENT", None, None, None, None)

# name: (category, python_module, [(input, type, default, min, max, step)], optional, outputs, output_node)
EXPECTED = {
    "LatentUpscale": ("latent", "nodes", [
        ("samples", *L), ("upscale_method", METHODS, None, None, None, None),
        ("width", "INT", 512, 0, R, 8), ("height", "INT", 512, 0, R, 8),
        ("crop", ["disabled", "center"], None, None, None, None)], [], ["LATENT"], False),
    "LatentUpscaleBy": ("latent", "nodes", [
        ("samples", *L), ("upscale_method", METHODS, None, None, None, None),
        ("scale_by", "FLOAT", 1.5, 0.01, 8.0, 0.01)], [], ["LATENT"], False),
    "LatentFromBatch": ("latent/batch", "nodes", [
        ("samples", *L), ("batch_index", "INT", 0, 0, 63, None), ("length", "INT", 1, 1, 64, None)],
        [], ["LATENT"], False),
    "RepeatLatentBatch": ("latent/batch", "nodes", [("samples", *L), ("amount", "INT", 1, 1, 64, None)],
                          [], ["LATENT"], False),
    "SetLatentNoiseMask": ("latent/inpaint", "nodes", [("samples", *L), ("mask", "MASK", None, None, None, None)],
                           [], ["LATENT"], False),
    "VAEEncodeForInpaint": ("latent/inpaint", "nodes", [
        ("pixels", "IMAGE", None, None, None, None), ("vae", "VAE", None, None, None, None),
        ("mask", "MASK", None, None, None, None), ("grow_mask_by", "INT", 6, 0, 64, 1)], [], ["LATENT"], False),
    "LatentComposite": ("latent", "nodes", [
        ("samples_to", *L), ("samples_from", *L), ("x", "INT", 0, 0, R, 8), ("y", "INT", 0, 0, R, 8),
        ("feather", "INT", 0, 0, R, 8)], [], ["LATENT"], False),
    "LatentBlend": ("_for_testing", "nodes", [
        ("samples1", *L), ("samples2", *L), ("blend_factor", "FLOAT", 0.5, 0, 1, 0.01)], [], ["LATENT"], False),
    "LatentRotate": ("latent/transform", "nodes", [
        ("samples", *L), ("rotation", ["none", "90 degrees", "180 degrees", "270 degrees"], None, None, None, None)],
        [], ["LATENT"], False),
    "LatentFlip": ("latent/transform", "nodes", [
        ("samples", *L), ("flip_method", ["x-axis: vertically", "y-axis: horizontally"], None, None, None, None)],
        [], ["LATENT"], False),
    "LatentCrop": ("latent/transform", "nodes", [
        ("samples", *L), ("width", "INT", 512, 64, R, 8), ("height", "INT", 512, 64, R, 8),
        ("x", "INT", 0, 0, R, 8), ("y", "INT", 0, 0, R, 8)], [], ["LATENT"], False),
    "LoadLatent": ("_for_testing", "nodes", [("latent", [], None, None, None, None)], [], ["LATENT"], False),
    "SaveLatent": ("_for_testing", "nodes", [
        ("samples", *L), ("filename_prefix", "STRING", "latents/ComfyUI", None, None, None)], [], [], True),
    "ImagePadForOutpaint": ("image", "nodes", [
        ("image", "IMAGE", None, None, None, None), ("left", "INT", 0, 0, R, 8), ("top", "INT", 0, 0, R, 8),
        ("right", "INT", 0, 0, R, 8), ("bottom", "INT", 0, 0, R, 8), ("feathering", "INT", 40, 0, R, 1)],
        [], ["IMAGE", "MASK"], False),
    "LatentCompositeMasked": ("latent", "comfy_extras.nodes_mask", [
        ("destination", *L), ("source", *L), ("x", "INT", 0, 0, R, 8), ("y", "INT", 0, 0, R, 8),
        ("resize_source", "BOOLEAN", False, None, None, None)], ["mask"], ["LATENT"], False),
    "LatentBatchSeedBehavior": ("latent/advanced", "comfy_extras.nodes_latent", [
        ("samples", *L), ("seed_behavior", ["random", "fixed"], "fixed", None, None, None)], [], ["LATENT"], False),
    "LatentAdd": ("latent/advanced", "comfy_extras.nodes_latent", [("samples1", *L), ("samples2", *L)],
                  [], ["LATENT"], False),
    "LatentSubtract": ("latent/advanced", "comfy_extras.nodes_latent", [("samples1", *L), ("samples2", *L)],
                       [], ["LATENT"], False),
    "LatentMultiply": ("latent/advanced", "comfy_extras.nodes_latent", [
        ("samples", *L), ("multiplier", "FLOAT", 1.0, -10.0, 10.0, 0.01)], [], ["LATENT"], False),
    "LatentInterpolate": ("latent/advanced", "comfy_extras.nodes_latent", [
        ("samples1", *L), ("samples2", *L), ("ratio", "FLOAT", 1.0, 0.0, 1.0, 0.01)], [], ["LATENT"], False),
    "LatentBatch": ("latent/batch", "comfy_extras.nodes_latent", [("samples1", *L), ("samples2", *L)],
                    [], ["LATENT"], False),
}

DISPLAY = {"LatentUpscale": "Upscale Latent", "LatentUpscaleBy": "Upscale Latent By",
           "LatentComposite": "Latent Composite", "LatentBlend": "Latent Blend", "LatentRotate": "Rotate Latent",
           "LatentFlip": "Flip Latent", "LatentCrop": "Crop Latent", "LatentFromBatch": "Latent From Batch",
           "RepeatLatentBatch": "Repeat Latent Batch", "SetLatentNoiseMask": "Set Latent Noise Mask",
           "VAEEncodeForInpaint": "VAE Encode (for Inpainting)", "ImagePadForOutpaint": "Pad Image for Outpainting"}


@pytest.fixture(scope="module")
def info(tmp_path_factory):
    from nodes import load_registry

    registry = load_registry()
    with temporary_base(tmp_path_factory.mktemp("latent_info")):  # an empty input folder
        yield {name: registry.object_info_for(name) for name in EXPECTED}


@pytest.mark.parametrize("class_type", sorted(EXPECTED))
def test_object_info_matches_comfyui(class_type, info):
    category, module, inputs, optional, outputs, output_node = EXPECTED[class_type]
    got = info[class_type]
    assert got is not None, f"{class_type} is not registered"
    assert (got["category"], got["python_module"]) == (category, module)
    assert got["output"] == outputs and got["output_is_list"] == [False] * len(outputs)
    assert got["output_node"] is output_node
    assert got["input_order"].get("optional", []) == optional
    assert_required_inputs(got, class_type, inputs)
    if output_node:
        assert got["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    if class_type in DISPLAY:
        assert got["display_name"] == DISPLAY[class_type]
