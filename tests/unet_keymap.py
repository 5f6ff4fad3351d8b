"""Test helper: rename a diffusers UNet2DConditionModel state dict to the original CompVis/SGM
single-file layout, so diffusers can serve as the numerical reference for our loader.

Written from the two layouts' structure (diffusers groups resnets/attentions per down/up block; the
original numbers every block of the network in order). Assumes one `layers_per_block` for all levels,
which holds for every released SD1/SD2/SDXL UNet.
"""
from __future__ import annotations

import torch

_RESNET = {
    "norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection",
}
_TOP = {
    "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
}


def _resnet_inner(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_RESNET[head]}.{tail}"


def diffusers_to_original_key(key: str, layers_per_block: int, up_has_attention: list[bool]) -> str:
    n = layers_per_block
    parts = key.split(".")
    for src, dst in _TOP.items():
        if key.startswith(src + "."):
            return dst + key[len(src):]
    if parts[0] == "down_blocks":
        i, kind, j = int(parts[1]), parts[2], int(parts[3])
        rest = ".".join(parts[4:])
        if kind == "resnets":
            return f"input_blocks.{1 + i * (n + 1) + j}.0.{_resnet_inner(rest)}"
        if kind == "attentions":
            return f"input_blocks.{1 + i * (n + 1) + j}.1.{rest}"
        if kind == "downsamplers":  # rest = conv.weight
            return f"input_blocks.{(i + 1) * (n + 1)}.0.op.{rest.split('.', 1)[1]}"
    if parts[0] == "mid_block":
        kind, j = parts[1], int(parts[2])
        rest = ".".join(parts[3:])
        if kind == "resnets":
            return f"middle_block.{2 * j}.{_resnet_inner(rest)}"
        if kind == "attentions":
            return f"middle_block.1.{rest}"
    if parts[0] == "up_blocks":
        i, kind, j = int(parts[1]), parts[2], int(parts[3])
        rest = ".".join(parts[4:])
        if kind == "resnets":
            return f"output_blocks.{i * (n + 1) + j}.0.{_resnet_inner(rest)}"
        if kind == "attentions":
            return f"output_blocks.{i * (n + 1) + j}.1.{rest}"
        if kind == "upsamplers":  # rest = conv.weight
            slot = 2 if up_has_attention[i] else 1
            return f"output_blocks.{i * (n + 1) + n}.{slot}.{rest}"
    raise KeyError(f"no original-layout name for diffusers key {key!r}")


def diffusers_unet_to_original(unet) -> dict[str, torch.Tensor]:
    """State dict of a diffusers UNet2DConditionModel (may live on the meta device), renamed."""
    cfg = unet.config
    up_has_attention = [hasattr(b, "attentions") and len(b.attentions) > 0 for b in unet.up_blocks]
    return {diffusers_to_original_key(k, cfg.layers_per_block, up_has_attention): v
            for k, v in unet.state_dict().items()}


def randomize_(module, seed: int = 0, std: float = 0.05) -> None:
    """Fill every parameter with seeded random values (diffusers zero-inits nothing we rely on, but
    random norms and biases make any misplaced tensor visible in the output)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            noise = torch.randn(p.shape, generator=gen) * std
            owner = name.rsplit(".", 1)[0].split(".")[-1]
            if "norm" in owner and name.endswith(".weight"):  # keep norm scales near 1
                p.copy_(1.0 + noise)
            else:
                p.copy_(noise)
