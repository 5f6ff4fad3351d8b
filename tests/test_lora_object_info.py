"""/object_info of the LoRA, merge and save nodes against COMPAT §9 (LoraLoader, LoraLoaderModelOnly,
CheckpointSave) and ComfyUI's comfy_extras declarations (nodes_model_merging, nodes_lora_extract),
transcribed by hand; LoraLoader's pass-through and file cache."""
from __future__ import annotations

import pytest

from tests.sdnodes_env import registry, sd_home, tiny_checkpoint_files  # noqa: F401

STRENGTH = ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01})
RATIO = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})
MULT = ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01})
MM, LX = "comfy_extras.nodes_model_merging", "comfy_extras.nodes_lora_extract"
M = "advanced/model_merging"

# class: (python_module, category, [(input, spec or None for a combo)], outputs, output_node)
EXPECTED = {
    "LoraLoader": ("nodes", "loaders", [("model", ("MODEL",)), ("clip", ("CLIP",)), ("lora_name", None),
                                        ("strength_model", STRENGTH), ("strength_clip", STRENGTH)],
                   ["MODEL", "CLIP"], False),
    "LoraLoaderModelOnly": ("nodes", "loaders", [("model", ("MODEL",)), ("lora_name", None),
                                                 ("strength_model", STRENGTH)], ["MODEL"], False),
    "CheckpointSave": (MM, M, [("model", ("MODEL",)), ("clip", ("CLIP",)), ("vae", ("VAE",)),
                               ("filename_prefix", ("STRING", {"default": "checkpoints/ComfyUI"}))], [], True),
    "ModelMergeSimple": (MM, M, [("model1", ("MODEL",)), ("model2", ("MODEL",)), ("ratio", RATIO)], ["MODEL"], False),
    "ModelMergeBlocks": (MM, M, [("model1", ("MODEL",)), ("model2", ("MODEL",)), ("input", RATIO), ("middle", RATIO),
                                 ("out", RATIO)], ["MODEL"], False),
    "ModelMergeSubtract": (MM, M, [("model1", ("MODEL",)), ("model2", ("MODEL",)), ("multiplier", MULT)],
                           ["MODEL"], False),
    "ModelMergeAdd": (MM, M, [("model1", ("MODEL",)), ("model2", ("MODEL",))], ["MODEL"], False),
    "CLIPMergeSimple": (MM, M, [("clip1", ("CLIP",)), ("clip2", ("CLIP",)), ("ratio", RATIO)], ["CLIP"], False),
    "CLIPMergeSubtract": (MM, M, [("clip1", ("CLIP",)), ("clip2", ("CLIP",)), ("multiplier", MULT)], ["CLIP"], False),
    "CLIPMergeAdd": (MM, M, [("clip1", ("CLIP",)), ("clip2", ("CLIP",))], ["CLIP"], False),
    "LoraSave": (LX, "_for_testing", [("filename_prefix", ("STRING", {"default": "loras/ComfyUI_extracted_lora"})),
                                      ("rank", ("INT", {"default": 8, "min": 1, "max": 4096, "step": 1})),
                                      ("lora_type", (["standard", "full_diff"],)),
                                      ("bias_diff", ("BOOLEAN", {"default": True}))], [], True),
}


@pytest.mark.parametrize("class_type", sorted(EXPECTED))
def test_object_info_matches_comfyui(class_type, registry, sd_home):  # noqa: F811
    module, category, inputs, outputs, output_node = EXPECTED[class_type]
    info = registry.object_info_for(class_type)
    assert info["python_module"] == module and info["category"] == category
    assert info["output"] == outputs and info["output_node"] == output_node
    assert info["input_order"]["required"] == [name for name, _ in inputs]
    for name, spec in inputs:
        got = info["input"]["required"][name]
        if spec is None:
            assert isinstance(got[0], list)  # the loras folder listing
        else:
            assert (got[0], {k: v for k, v in (got[1] if len(got) > 1 else {}).items() if k != "tooltip"}) == \
                (spec[0], spec[1] if len(spec) > 1 else {}), name
    if class_type == "CheckpointSave":
        assert info["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
        assert info["display_name"] == "Save Checkpoint"
    if class_type == "LoraSave":
        assert info["input_order"]["optional"] == ["model_diff", "text_encoder_diff"]
    if class_type == "LoraLoader":
        assert info["display_name"] == "Load LoRA"


def test_lora_combo_lists_the_loras_folder(registry, sd_home):  # noqa: F811
    (sd_home / "models" / "loras").mkdir(parents=True)
    (sd_home / "models" / "loras" / "a.safetensors").write_bytes(b"")
    assert registry.object_info_for("LoraLoader")["input"]["required"]["lora_name"][0] == ["a.safetensors"]


def test_zero_strengths_pass_inputs_through_and_the_file_is_read_once(sd_home, monkeypatch):  # noqa: F811
    import torch
    from safetensors.torch import save_file

    from nodes import lora_nodes

    loras = sd_home / "models" / "loras"
    loras.mkdir(parents=True)
    save_file({"lora_unet_x.lora_up.weight": torch.zeros(2, 1)}, str(loras / "a.safetensors"))
    model, clip = object(), object()
    node = lora_nodes.LoraLoader()
    assert node.execute(model, clip, "a.safetensors", 0.0, 0.0) == (model, clip)
    assert lora_nodes.LoraLoaderModelOnly().execute(model, "a.safetensors", 0.0) == (model,)
    reads = []
    real = lora_nodes.read_state_dict
    monkeypatch.setattr(lora_nodes, "read_state_dict", lambda p: reads.append(p) or real(p))
    calls = []
    monkeypatch.setattr(lora_nodes, "apply_lora", lambda *a, **k: calls.append(a) or (a[0], a[1]))
    node.execute(model, clip, "a.safetensors", 1.0, 0.5)
    node.execute(model, clip, "a.safetensors", 0.3, 0.5)
    assert len(reads) == 1 and [c[3:5] for c in calls] == [(1.0, 0.5), (0.3, 0.5)]
    with pytest.raises(FileNotFoundError, match="LoraLoader: lora_name 'missing.safetensors' was not found"):
        node.execute(model, clip, "missing.safetensors", 1.0, 1.0)
