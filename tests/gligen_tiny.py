"""Test helper: a GLIGEN state dict in the file layout for any UNet of ours (one fuser per spatial
transformer), random weights, gates set to `gate` (0 = the GLIGEN changes nothing)."""
from __future__ import annotations

import torch

from diffusion.models.gligen import POSITION_HIDDEN, GatedSelfAttention, PositionNet
from diffusion.models.unet import SpatialTransformer


def tiny_gligen_state_dict(unet, key_dim: int, seed: int = 0, gate: float = 0.5) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, module in unet.named_modules():
        if not isinstance(module, SpatialTransformer):
            continue
        dim = module.transformer_blocks[0].attn1.to_q.out_features
        fuser = GatedSelfAttention(dim, key_dim, 1, dim)
        for k, v in fuser.state_dict().items():
            sd[f"{name}.transformer_blocks.0.fuser.{k}"] = (
                torch.full_like(v, gate) if k.startswith("alpha") else torch.randn(v.shape, generator=g) * 0.2)
    position = PositionNet(key_dim, key_dim)
    for k, v in position.state_dict().items():
        sd[f"position_net.{k}"] = torch.randn(v.shape, generator=g) * (0.2 if v.ndim > 1 else 0.05)
    assert POSITION_HIDDEN == 512
    return sd
