"""The upscale-model and separate-file loader nodes: /object_info against ComfyUI 0.8 (transcribed by
hand from COMPAT §9, its extras table, and ComfyUI's nodes.py / nodes_upscale_model.py option lists),
the nodes on a model file in models/upscale_models, and a UI-format hires-fix workflow end to end."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.sdnodes_env import registry, sd_home, tiny_checkpoint_files  # noqa: F401
from tests.upscale_reference import tiny_rrdbnet

WORKFLOW = Path(__file__).resolve().parent / "fixtures" / "workflows" / "hires_fix_upscale_model.json"
needs_spandrel = pytest.mark.skipif(importlib.util.find_spec("spandrel") is None, reason="spandrel not installed")

CLIP_TYPES = ["stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
              "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image", "flux2", "ovis"]
DUAL_TYPES = ["sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image", "hunyuan_video_15", "kandinsky5",
              "kandinsky5_image", "ltxv", "newbie"]
FILES = None  # a folder listing: any list
# class: (category, python_module, display name, required [(name, type or options)], optional, outputs)
EXPECTED = {
    "UpscaleModelLoader": ("loaders", "comfy_extras.nodes_upscale_model", "Load Upscale Model",
                           [("model_name", FILES)], [], ["UPSCALE_MODEL"]),
    "ImageUpscaleWithModel": ("image/upscaling", "comfy_extras.nodes_upscale_model", "Upscale Image (using Model)",
                              [("upscale_model", "UPSCALE_MODEL"), ("image", "IMAGE")], [], ["IMAGE"]),
    "CLIPLoader": ("advanced/loaders", "nodes", "Load CLIP", [("clip_name", FILES), ("type", CLIP_TYPES)],
                   [("device", ["default", "cpu"])], ["CLIP"]),
    "DualCLIPLoader": ("advanced/loaders", "nodes", "DualCLIPLoader",
                       [("clip_name1", FILES), ("clip_name2", FILES), ("type", DUAL_TYPES)],
                       [("device", ["default", "cpu"])], ["CLIP"]),
    "UNETLoader": ("advanced/loaders", "nodes", "Load Diffusion Model",
                   [("unet_name", FILES), ("weight_dtype", ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"])],
                   [], ["MODEL"]),
}


@pytest.mark.parametrize("class_type", sorted(EXPECTED))
def test_object_info_matches_comfyui(registry, class_type):  # noqa: F811
    category, module, display, required, optional, outputs = EXPECTED[class_type]
    info = registry.object_info_for(class_type)
    assert (info["category"], info["python_module"], info["display_name"]) == (category, module, display)
    assert info["output"] == info["output_name"] == outputs
    assert info["input_order"]["required"] == [name for name, _ in required]
    assert info["input_order"].get("optional", []) == [name for name, _ in optional]
    for section, entries in (("required", required), ("optional", optional)):
        for name, kind in entries:
            spec = info["input"][section][name]
            if kind is FILES:
                assert isinstance(spec[0], list), name
            else:
                assert spec[0] == kind, name
    if optional:
        assert info["input"]["optional"]["device"][1] == {"advanced": True}
    assert info["output_node"] is False


@pytest.fixture
def upscale_home(sd_home):  # noqa: F811
    folder = sd_home / "models" / "upscale_models"
    folder.mkdir(parents=True, exist_ok=True)
    net = tiny_rrdbnet(seed=0)
    torch.save({"params_ema": net.state_dict()}, folder / "tiny_x4.pth")
    return sd_home, net


@needs_spandrel
def test_nodes_load_from_the_folder_and_upscale(upscale_home):
    from nodes.upscale_nodes import ImageUpscaleWithModel, UpscaleModelLoader

    _, net = upscale_home
    assert "tiny_x4.pth" in UpscaleModelLoader.INPUT_TYPES()["required"]["model_name"][0]
    (model,) = UpscaleModelLoader().execute("tiny_x4.pth")
    image = torch.rand(2, 40, 36, 3)
    (out,) = ImageUpscaleWithModel().execute(model, image)
    with torch.no_grad():
        expected = net(image.movedim(-1, 1)).clamp(0, 1).movedim(1, -1)
    assert out.shape == (2, 160, 144, 3) and out.dtype == torch.float32
    assert torch.allclose(out, expected, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="UpscaleModelLoader: model_name 'missing.pth'.*upscale_models"):
        UpscaleModelLoader().execute("missing.pth")
    with pytest.raises(TypeError, match="ImageUpscaleWithModel: input 'upscale_model'"):
        ImageUpscaleWithModel().execute("tiny_x4.pth", image)
    with pytest.raises(ValueError, match="ImageUpscaleWithModel: .*3-channel"):
        ImageUpscaleWithModel().execute(model, torch.rand(1, 8, 8, 4))


@needs_spandrel
def test_hires_fix_with_upscale_model_workflow_runs_headless(registry, upscale_home):  # noqa: F811
    from graph.runner import Runner
    from nodes import folder_paths

    workflow = json.loads(WORKFLOW.read_text())
    result = Runner(registry).run(workflow)
    assert {"10", "11", "12", "13", "14", "15", "9"} <= set(result.ran)
    files = result.files(folder_paths)
    assert len(files) == 1
    with Image.open(files[0]) as im:
        assert im.size == (128, 128)  # 64 px -> x4 model -> x0.5 -> second pass at 128 px
        assert json.loads(im.info["workflow"])["nodes"]
