"""Reference CLIP vision towers (transformers' CLIPVisionModelWithProjection, random weights) and the
open_clip file layout, written here independently of diffusion/loading/vision_config.py's key map."""
from __future__ import annotations

import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

# Scaled-down towers: 16 heads (the released convention), an MLP width that is not 4x (as bigG's).
TINY = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=16,
            projection_dim=48, image_size=56, patch_size=14)
# Released sizes (ComfyUI's clip_vision_config_{vitl,h,g}.json)
FULL = {
    "L": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
              projection_dim=768, image_size=224, patch_size=14, hidden_act="quick_gelu"),
    "H": dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
              projection_dim=1024, image_size=224, patch_size=14, hidden_act="gelu"),
    "G": dict(hidden_size=1664, intermediate_size=8192, num_hidden_layers=48, num_attention_heads=16,
              projection_dim=1280, image_size=224, patch_size=14, hidden_act="gelu"),
}


def hf_vision(sizes: dict, activation: str = "quick_gelu", seed: int = 0, meta: bool = False):
    config = CLIPVisionConfig(layer_norm_eps=1e-5, attn_implementation="eager", **{"hidden_act": activation, **sizes})
    if meta:
        with torch.device("meta"):
            return CLIPVisionModelWithProjection(config)
    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias") or "class_embedding" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def hf_file(model) -> dict:
    """The transformers layout as files carry it (`vision_model.*`, `visual_projection.weight`)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.endswith("position_ids")}


def open_clip_file(model, prefix: str = "visual.") -> dict:
    """The same weights in open_clip's VisionTransformer names."""
    sd = hf_file(model)
    out = {}
    vm = "vision_model."
    out[prefix + "class_embedding"] = sd.pop(vm + "embeddings.class_embedding")
    out[prefix + "positional_embedding"] = sd.pop(vm + "embeddings.position_embedding.weight")
    out[prefix + "conv1.weight"] = sd.pop(vm + "embeddings.patch_embedding.weight")
    out[prefix + "proj"] = sd.pop("visual_projection.weight").t().contiguous()
    for ours, theirs in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        for part in ("weight", "bias"):
            out[f"{prefix}{theirs}.{part}"] = sd.pop(f"{vm}{ours}.{part}")
    i = 0
    while f"{vm}encoder.layers.{i}.layer_norm1.weight" in sd:
        src, dst = f"{vm}encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{part}"] = torch.cat([sd.pop(f"{src}self_attn.{p}_proj.{part}") for p in "qkv"])
            for a, b in (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("self_attn.out_proj", "attn.out_proj"),
                         ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                out[f"{dst}{b}.{part}"] = sd.pop(f"{src}{a}.{part}")
        i += 1
    assert not sd, f"unconverted keys {list(sd)[:3]}"
    return out
