"""Test helper: a tiny UNet of ours with random weights wrapped in a ModelPatcher (no diffusers,
no file), for tests of the patcher and the memory manager."""
import torch

from diffusion.loading.config import UNetConfig
from diffusion.model_patcher import ModelPatcher
from diffusion.models.unet import UNetModel

TINY_SD1 = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1),
                      transformer_depth=(1, 0), transformer_depth_output=(0, 0, 1, 1),
                      transformer_depth_middle=1, context_dim=16, num_heads=8)  # SD1 convention

TINY_SDXL = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1),
                       transformer_depth=(0, 1), transformer_depth_output=(1, 1, 0, 0),
                       transformer_depth_middle=1, context_dim=16, num_heads=-1,
                       num_head_channels=32, use_linear_in_transformer=True, adm_in_channels=24 + 6 * 8)


def tiny_unet(config=TINY_SD1, seed=0) -> UNetModel:
    torch.manual_seed(seed)
    model = UNetModel(config).eval().requires_grad_(False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # no zero weights: every patch must show
    return model


def tiny_patcher(config=TINY_SD1, seed=0, **kw) -> ModelPatcher:
    return ModelPatcher(tiny_unet(config, seed), arch=config.arch, load_device="cpu",
                        offload_device="cpu", **kw)
