"""Tiny model files for the CLIP vision / unCLIP / style model workflows: transformers-built vision
towers, an SD2.1-unCLIP-layout checkpoint (UNet with an ADM input, OpenCLIP text tower, VAE and an
open_clip vision tower under `embedder.model.visual.`), and a T2I style adapter."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from diffusion.loading.config import ClipTextConfig, UNetConfig, VAEConfig
from diffusion.loading.vision_config import StyleAdapterConfig
from diffusion.models.style_model import StyleAdapter
from tests.clip_vision_reference import hf_file, hf_vision, open_clip_file
from tools.make_tiny_checkpoint import build_state_dict

VISION = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=16,
              image_size=56, patch_size=14)
UNCLIP_EMBED = 32  # the tiny unCLIP UNet's ADM input is twice this


def clip_vision_file(path: Path, projection: int, seed: int = 0) -> Path:
    save_file(hf_file(hf_vision({**VISION, "projection_dim": projection}, seed=seed)), str(path))
    return path


def unclip_checkpoint(path: Path, seed: int = 0) -> Path:
    unet = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1), transformer_depth=(1, 1),
                      transformer_depth_output=(1, 1, 1, 1), transformer_depth_middle=1, context_dim=64,
                      num_heads=-1, num_head_channels=64, use_linear_in_transformer=True,
                      adm_in_channels=2 * UNCLIP_EMBED)
    text = ClipTextConfig(layout="open_clip", width=64, layers=3, heads=4, vocab_size=49408, context_length=77,
                          projection_dim=64, activation="gelu")
    vae = VAEConfig(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1)
    sd, meta = build_state_dict(unet, vae, [("cond_stage_model.model.", text)], "sd2", seed)
    tower = hf_vision({**VISION, "projection_dim": UNCLIP_EMBED}, seed=seed + 1)
    sd.update({k: v.half() for k, v in open_clip_file(tower, prefix="embedder.model.visual.").items()})
    # what the original checkpoints also carry (the augmentor's schedule buffers; not read)
    sd["noise_augmentor.betas"] = torch.zeros(1000)
    sd["noise_augmentor.alphas_cumprod"] = torch.ones(1000)
    save_file(sd, str(path), metadata=meta)
    return path


def style_model_file(path: Path, width: int = 64, context_dim: int = 32, seed: int = 0) -> Path:
    cfg = StyleAdapterConfig(width=width, layers=2, tokens=4, context_dim=context_dim)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in StyleAdapter(cfg).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in shapes.items():
        if k.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight")):
            sd[k] = torch.ones(shape)
        elif k.endswith("bias"):
            sd[k] = torch.zeros(shape)
        else:
            sd[k] = torch.randn(shape, generator=g) * width ** -0.5
    save_file(sd, str(path))
    return path


def image_file(path: Path, size=(80, 60), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path
