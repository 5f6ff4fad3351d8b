"""Full-size kohya LoRA key tables for SD1.5 and SDXL load onto our networks with no unused key.

The tables are generated, not typed: every Linear and Conv2d of diffusers' UNet2DConditionModel and of
transformers' CLIP text models (the module names kohya's sd-scripts and LyCORIS LoCon walk), built on
the meta device at the released sizes, so nothing is allocated. Our side is the real UNet and CLIP
objects at the released sizes, also on the meta device."""
from __future__ import annotations

import pytest
import torch

from clip_reference import hf_model_on_meta
from diffusion.loading.config import ClipTextConfig, detect_unet_config
from diffusion.lora import load_lora, unet_diffusers_names
from diffusion.model_patcher import ModelPatcher
from diffusion.models.clip import ClipTextModel
from diffusion.models.unet import UNetModel
from diffusion.text.encoder import CLIP
from unet_keymap import diffusers_to_original_key, diffusers_unet_to_original
from unet_models import FULL, diffusers_unet

RANK = 4
L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
         hidden_act="quick_gelu")
G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
         hidden_act="gelu", projection_dim=1280)


def _kohya_table(module_root, prefix: str, skip=()) -> dict[str, torch.Tensor]:
    """A rank-4 LoRA (up, down, alpha) for every Linear/Conv2d of `module_root`, keyed the kohya way."""
    sd = {}
    for name, m in module_root.named_modules():
        if not isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) or any(s in name for s in skip):
            continue
        key = prefix + name.replace(".", "_")
        w = m.weight
        kernel = tuple(w.shape[2:])
        sd[f"{key}.lora_down.weight"] = torch.empty(RANK, w.shape[1], *kernel, device="meta")
        sd[f"{key}.lora_up.weight"] = torch.empty(w.shape[0], RANK, *[1] * len(kernel), device="meta")
        sd[f"{key}.alpha"] = torch.tensor(float(RANK))
    return sd


def _encoder(hf):
    """The encoder layers (transformers 5 dropped the `text_model` level on CLIPTextModel)."""
    return getattr(hf, "text_model", hf).encoder


def _our_model(ref):
    config = detect_unet_config(diffusers_unet_to_original(ref))
    with torch.device("meta"):
        unet = UNetModel(config)
    return ModelPatcher(unet, config.arch, load_device="cpu", offload_device="cpu")


def _our_clip(arch, towers):
    encoders = {}
    for key, sizes, layout in towers:
        cfg = ClipTextConfig(layout=layout, width=sizes["hidden_size"], layers=sizes["num_hidden_layers"],
                             heads=sizes["num_attention_heads"], vocab_size=49408, context_length=77,
                             projection_dim=sizes.get("projection_dim"), activation=sizes["hidden_act"])
        with torch.device("meta"):
            encoders[key] = ClipTextModel(cfg)
    return CLIP(arch, encoders, device="cpu")


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_full_size_kohya_lora_loads_every_key(arch):
    ref = diffusers_unet(FULL[arch], meta=True)
    model = _our_model(ref)
    sd = _kohya_table(ref, "lora_unet_", skip=("time_embedding", "add_embedding", "conv_in", "conv_out"))
    if arch == "sd1":
        clip = _our_clip("sd1", [("l", L, "hf")])
        sd.update(_kohya_table(_encoder(hf_model_on_meta(L, False)), "lora_te_text_model_encoder_"))
    else:
        clip = _our_clip("sdxl", [("l", L, "hf"), ("g", G, "open_clip")])
        sd.update(_kohya_table(_encoder(hf_model_on_meta(L, False)), "lora_te1_text_model_encoder_"))
        sd.update(_kohya_table(_encoder(hf_model_on_meta(G, True)), "lora_te2_text_model_encoder_"))
    model_patches, clip_patches, unused = load_lora(sd, model, clip)
    assert unused == []
    n_unet = sum(1 for k in sd if k.startswith("lora_unet_") and k.endswith(".alpha"))
    n_te = sum(1 for k in sd if k.startswith("lora_te") and k.endswith(".alpha"))
    assert len(model_patches) == n_unet and len(clip_patches) == n_te
    # LoCon reaches the resnets, samplers and attention projections: 1x1, 3x3 and linear layers
    kinds = {v[1][1].dim() for v in model_patches.values()}
    assert kinds == {2, 4}


@pytest.mark.parametrize("arch", sorted(FULL))
def test_diffusers_names_invert_the_test_key_map(arch):
    """Our original->diffusers names agree with the independent diffusers->original map of the tests."""
    ref = diffusers_unet(FULL[arch], meta=True)
    cfg = ref.config
    up_attn = [hasattr(b, "attentions") and len(b.attentions) > 0 for b in ref.up_blocks]
    expected = {diffusers_to_original_key(k, cfg.layers_per_block, up_attn): k for k in ref.state_dict()}
    model = _our_model(ref)
    got = unet_diffusers_names(model.model.config, [n for n, _ in model.model.named_parameters()])
    assert got == expected
