"""Test helpers: diffusers ControlNetModel / T2IAdapter references with random weights, and their
files in the layouts our loader reads.

The cldm (original) names of a diffusers ControlNet are derived here from the UNet test key map
(tests/unet_keymap.py) plus the four ControlNet-only names, independently of the runtime's renaming.
"""
from __future__ import annotations

import re

import torch
from safetensors.torch import save_file

from unet_keymap import diffusers_to_original_key, randomize_
from unet_models import TINY

# Tiny ControlNets with the tiny UNets' encoder shapes (tests/unet_models.py).
_ENCODER_KEYS = ("block_out_channels", "layers_per_block", "down_block_types", "cross_attention_dim",
                 "attention_head_dim", "use_linear_projection", "transformer_layers_per_block",
                 "addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim")
TINY_CONTROLNET = {arch: {k: v for k, v in cfg.items() if k in _ENCODER_KEYS} for arch, cfg in TINY.items()}

# SD1.5 ControlNet 1.1 (lllyasviel/control_v11p_sd15_*), as its diffusers config states it.
SD15_CONTROLNET = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
                       attention_head_dim=8)

# ControlNets for the end-to-end checkpoint (tests/test_controlnet_workflows.py): the tiny SD1 UNet
# with SD1's input-block layout, four levels of two res blocks (make_tiny_checkpoint TinySD1 with
# channel_mult (1, 2, 2, 2), num_res_blocks 2), attention everywhere, context width 32, 8 heads.
E2E_CONTROLNET = dict(block_out_channels=(32, 64, 64, 64), layers_per_block=2, cross_attention_dim=32,
                      attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D",) * 4)
E2E_DEPTH_ADAPTER = dict(in_channels=1, channels=[32, 64, 64, 64], num_res_blocks=2, downscale_factor=8,
                         adapter_type="full_adapter")


def diffusers_controlnet(config: dict, seed: int = 0, meta: bool = False):
    from diffusers import ControlNetModel

    if meta:
        with torch.device("meta"):
            return ControlNetModel(**config)
    model = ControlNetModel(**config).eval()
    randomize_(model, seed)
    return model


def cldm_key(key: str, layers_per_block: int) -> str:
    """The original-layout name of a diffusers ControlNetModel key."""
    if m := re.match(r"controlnet_down_blocks\.(\d+)\.(.*)", key):
        return f"zero_convs.{m.group(1)}.0.{m.group(2)}"
    if key.startswith("controlnet_mid_block."):
        return "middle_block_out.0." + key.split(".", 1)[1]
    if key.startswith("controlnet_cond_embedding.conv_in."):
        return "input_hint_block.0." + key.rsplit(".", 1)[1]
    if m := re.match(r"controlnet_cond_embedding\.blocks\.(\d+)\.(.*)", key):
        return f"input_hint_block.{2 * int(m.group(1)) + 2}.{m.group(2)}"
    if key.startswith("controlnet_cond_embedding.conv_out."):
        return "input_hint_block.14." + key.rsplit(".", 1)[1]  # after six blocks (the released widths)
    return diffusers_to_original_key(key, layers_per_block, [])


def cldm_state_dict(controlnet, prefix: str = "") -> dict:
    n = controlnet.config.layers_per_block
    return {prefix + cldm_key(k, n): v for k, v in controlnet.state_dict().items()}


def save_controlnet(controlnet, path, layout: str, dtype=None) -> None:
    """layout: "diffusers" (its own names), "cldm" (bare) or "cldm_pth" (under control_model.)."""
    if layout == "diffusers":
        sd = dict(controlnet.state_dict())
    else:
        sd = cldm_state_dict(controlnet, "control_model." if layout == "cldm_pth" else "")
    save_file({k: (v.to(dtype) if dtype else v).contiguous() for k, v in sd.items()}, str(path))


# ---------------------------------------------------------------------------------------------
# T2I-Adapters

TINY_ADAPTER = {
    "full": dict(in_channels=3, channels=[32, 64, 128, 128], num_res_blocks=2, downscale_factor=8,
                 adapter_type="full_adapter"),
    "light": dict(in_channels=3, channels=[32, 64, 128], num_res_blocks=2, downscale_factor=8,
                  adapter_type="light_adapter"),
    "full_xl": dict(in_channels=3, channels=[32, 64, 128, 128], num_res_blocks=2, downscale_factor=16,
                    adapter_type="full_adapter_xl"),
}
# TencentARC/t2iadapter_depth_sd14v1 (one-channel depth hint), as its diffusers config states it.
DEPTH_SD14 = dict(in_channels=1, channels=[320, 640, 1280, 1280], num_res_blocks=2, downscale_factor=8,
                  adapter_type="full_adapter")


def diffusers_adapter(config: dict, seed: int = 0, meta: bool = False):
    from diffusers import T2IAdapter

    if meta:
        with torch.device("meta"):
            return T2IAdapter(**config)
    model = T2IAdapter(**config).eval()
    randomize_(model, seed)
    return model


def tencentarc_key(key: str, num_res_blocks: int, light: bool) -> str:
    """TencentARC's name for a diffusers T2IAdapter key (written from the two layouts' structure)."""
    key = key.removeprefix("adapter.")
    if m := re.match(r"body\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        i, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        return f"body.{i}.body.{j}.{rest}" if light else f"body.{i * num_res_blocks + j}.{rest}"
    if not light and (m := re.match(r"body\.(\d+)\.in_conv\.(.*)", key)):
        return f"body.{int(m.group(1)) * num_res_blocks}.in_conv.{m.group(2)}"
    return key


def tencentarc_state_dict(adapter) -> dict:
    light = adapter.config.adapter_type == "light_adapter"
    return {tencentarc_key(k, adapter.config.num_res_blocks, light): v for k, v in adapter.state_dict().items()}
