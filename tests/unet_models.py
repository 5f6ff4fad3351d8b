"""Test helper: diffusers UNet configs (tiny ones for numerics, released ones for key tables) and
writing a diffusers UNet as an original-layout checkpoint file."""
from __future__ import annotations

import torch
from safetensors.torch import save_file

from unet_keymap import diffusers_unet_to_original, randomize_

# Tiny configs: GroupNorm needs widths that are multiples of 32. Head layouts follow the released
# conventions our detection assumes (SD1: 8 heads; SD2/SDXL: 64 channels per head).
TINY = {
    "sd1": dict(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=24, attention_head_dim=8),
    "sd2": dict(
        sample_size=8, block_out_channels=(64, 128), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(1, 2), use_linear_projection=True),
    "sdxl": dict(
        sample_size=8, block_out_channels=(32, 64, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2), cross_attention_dim=32, attention_head_dim=(1, 1, 1),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=16 + 6 * 8),
}
TINY_POOLED_DIM = {"sdxl": 16}

# Released architectures, as diffusers describes them (config values only; the key tables are
# generated from these on the meta device).
FULL = {
    "sd1": dict(
        block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
        attention_head_dim=8),
    "sd2": dict(
        block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20), use_linear_projection=True),
    "sdxl": dict(
        block_out_channels=(320, 640, 1280), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
        attention_head_dim=(5, 10, 20), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816),
    "sdxl_refiner": dict(
        block_out_channels=(384, 768, 1536, 1536), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=4, cross_attention_dim=1280, attention_head_dim=(6, 12, 24, 24),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2560),
}


def diffusers_unet(config: dict, seed: int = 0, meta: bool = False):
    from diffusers import UNet2DConditionModel

    if meta:
        with torch.device("meta"):
            return UNet2DConditionModel(**config)
    model = UNet2DConditionModel(**config).eval()
    randomize_(model, seed)
    return model


def write_unet_checkpoint(unet, path, prefix: str = "model.diffusion_model.", dtype=None,
                          metadata=None, extra=None) -> dict:
    """Save a diffusers UNet in the original single-file layout; returns what was written."""
    sd = {prefix + k: (v.to(dtype) if dtype else v).contiguous()
          for k, v in diffusers_unet_to_original(unet).items()}
    if extra:
        sd.update(extra)
    save_file(sd, str(path), metadata=metadata)
    return sd


def sdxl_y(text_embeds: torch.Tensor, time_ids: torch.Tensor, dim: int) -> torch.Tensor:
    """The SDXL `y` the original model takes for diffusers' text_embeds/time_ids pair, computed with
    the formula diffusers documents (cos-first sinusoid of each id, width `dim`)."""
    half = dim // 2
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(half) / half)
    args = time_ids.flatten()[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).reshape(time_ids.shape[0], -1)
    return torch.cat([text_embeds, emb], dim=1)


def inputs(arch: str, batch: int = 2, size: int = 8, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    cfg = TINY[arch]
    x = torch.randn(batch, 4, size, size, generator=gen)
    t = torch.tensor([10.0, 617.0][:batch])
    ctx = torch.randn(batch, 7, cfg["cross_attention_dim"], generator=gen)
    added = None
    if arch == "sdxl":
        te = torch.randn(batch, TINY_POOLED_DIM[arch], generator=gen)
        tid = torch.tensor([[1024, 1024, 0, 0, 1024, 1024], [768, 512, 16, 8, 1024, 1024]][:batch],
                           dtype=torch.float32)
        added = {"text_embeds": te, "time_ids": tid}
    return x, t, ctx, added
