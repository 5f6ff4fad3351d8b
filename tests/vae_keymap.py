"""Test helpers: diffusers autoencoder state dicts -> the original single-file key layouts.

Written from the two layouts' module structures (diffusers' `AutoencoderKL` / `AutoencoderTiny` vs the
original `first_stage_model.*` and madebyollin TAESD files), independently of diffusion/vae.py so the
tests check our network against diffusers rather than against itself.
"""

from __future__ import annotations

import re

import torch

_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
           "conv_shortcut": "nin_shortcut"}
_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _map_resnet(rest: str) -> str:
    name, _, param = rest.rpartition(".")
    return f"{_RESNET[name]}.{param}"


def diffusers_vae_key_to_original(key: str, num_levels: int) -> str:
    """One diffusers AutoencoderKL key -> the original key (without `first_stage_model.`)."""
    if key.startswith(("quant_conv.", "post_quant_conv.")):
        return key
    part, rest = key.split(".", 1)  # encoder / decoder
    if rest.startswith(("conv_in.", "conv_out.")):
        return key
    if rest.startswith("conv_norm_out."):
        return f"{part}.norm_out.{rest.split('.', 1)[1]}"
    m = re.fullmatch(r"mid_block\.resnets\.(\d)\.(.+)", rest)
    if m:
        return f"{part}.mid.block_{int(m[1]) + 1}.{_map_resnet(m[2])}"
    m = re.fullmatch(r"mid_block\.attentions\.0\.(.+)\.(weight|bias)", rest)
    if m:
        return f"{part}.mid.attn_1.{_ATTN[m[1]]}.{m[2]}"
    m = re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest)
    if m:
        return f"{part}.down.{m[1]}.block.{m[2]}.{_map_resnet(m[3])}"
    m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", rest)
    if m:
        return f"{part}.down.{m[1]}.downsample.conv.{m[2]}"
    # Decoder: diffusers counts up_blocks from the deepest level, the original from full resolution.
    m = re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest)
    if m:
        return f"{part}.up.{num_levels - 1 - int(m[1])}.block.{m[2]}.{_map_resnet(m[3])}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", rest)
    if m:
        return f"{part}.up.{num_levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    raise KeyError(f"no original-layout name for diffusers key {key}")


def diffusers_vae_to_original(sd: dict, num_levels: int, linear_attention: bool = False) -> dict:
    """Whole state dict. Attention projections become 1x1 convs [C,C,1,1] unless linear_attention."""
    out = {}
    for key, value in sd.items():
        new = diffusers_vae_key_to_original(key, num_levels)
        if ".attn_1." in new and new.endswith("weight") and not new.endswith("norm.weight"):
            value = value.reshape(value.shape[0], value.shape[1]) if linear_attention \
                else value.reshape(value.shape[0], value.shape[1], 1, 1)
        out[new] = value
    return out


def diffusers_taesd_part_to_original(sd: dict, part: str) -> dict:
    """AutoencoderTiny `encoder.layers.N.*` / `decoder.layers.N.*` -> TAESD file keys `M.*`.

    The released decoder file numbers its Sequential from a leading clamp module (no weights), so
    decoder indices are shifted by one; the encoder's are not.
    """
    shift = 1 if part == "decoder" else 0
    out = {}
    prefix = f"{part}.layers."
    for key, value in sd.items():
        if key.startswith(prefix):
            idx, rest = key[len(prefix):].split(".", 1)
            out[f"{int(idx) + shift}.{rest}"] = value
    return out


def tiny_diffusers_vae(seed: int = 0, norm_groups: int = 32, block_out_channels=(32, 64), layers=1):
    """A small random-weight diffusers AutoencoderKL (float32, eval) with non-trivial norms/biases."""
    from diffusers import AutoencoderKL
    torch.manual_seed(seed)
    n = len(block_out_channels)
    model = AutoencoderKL(block_out_channels=block_out_channels, down_block_types=("DownEncoderBlock2D",) * n,
                          up_block_types=("UpDecoderBlock2D",) * n, layers_per_block=layers,
                          norm_num_groups=norm_groups, latent_channels=4).eval()
    # Default init leaves norms at 1/0; perturb every parameter so all paths matter.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def tiny_diffusers_taesd(width: int = 16, latent_channels: int = 4, seed: int = 0):
    """A small random-weight diffusers AutoencoderTiny (the TAESD layer order, narrower)."""
    from diffusers import AutoencoderTiny
    torch.manual_seed(seed)
    model = AutoencoderTiny(encoder_block_out_channels=(width,) * 4, decoder_block_out_channels=(width,) * 4,
                            latent_channels=latent_channels).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model
