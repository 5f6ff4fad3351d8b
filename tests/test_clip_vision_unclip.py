"""unCLIP noise augmentation and the ADM inputs built from image embeddings (SD2.1-unCLIP and SDXL
revision), against formulas written here (ComfyUI's recipe: cosine schedule, seed - 10, merge)."""
from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch

from diffusion.loading.config import UNetConfig
from diffusion.models import adm as adm_mod
from diffusion.models.clip_vision import ClipVisionOutput
from diffusion.models.unclip import NoiseAugmentor, cosine_alphas_cumprod, unclip_adm


def _alphas_cumprod():
    t = np.arange(1001) / 1000
    f = np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
    betas = np.minimum(1 - f[1:] / f[:-1], 0.999)
    return np.cumprod(1 - betas)


def _sinusoid(t: float, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    return torch.cat([torch.cos(t * freqs), torch.sin(t * freqs)])[None]


def _expected(x, level, noise):
    ac = _alphas_cumprod()
    a, b = np.float32(np.sqrt(ac[level])), np.float32(np.sqrt(1 - ac[level]))
    return float(a) * x + float(b) * noise


def test_schedule_is_the_cosine_one():
    ours = cosine_alphas_cumprod()
    assert np.allclose(ours.numpy(), _alphas_cumprod(), rtol=0, atol=1e-12)
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").alphas_cumprod
    assert torch.allclose(ours.float(), ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("aug", [0.0, 0.3, 1.0])
def test_one_embedding(aug):
    dim, seed = 16, 1234
    embeds = torch.randn(1, dim)
    out = ClipVisionOutput(image_embeds=embeds)
    y = unclip_adm([{"clip_vision_output": out, "strength": 0.7, "noise_augmentation": aug}],
                   NoiseAugmentor(dim), 0.05, seed)
    level = round(999 * aug)
    noise = torch.randn((1, dim), generator=torch.manual_seed(seed - 10))
    want = torch.cat([_expected(embeds, level, noise), _sinusoid(level, dim)], dim=1) * 0.7
    assert y.shape == (1, 2 * dim)
    assert torch.allclose(y, want, rtol=1e-5, atol=1e-6)


def test_several_embeddings_are_summed_and_renoised():
    dim, seed = 8, 99
    a, b = torch.randn(2, dim), torch.randn(1, dim)
    conds = [{"clip_vision_output": ClipVisionOutput(image_embeds=a), "strength": 1.0, "noise_augmentation": 0.1},
             {"clip_vision_output": {"image_embeds": b}, "strength": 0.5, "noise_augmentation": 0.0}]
    y = unclip_adm(conds, NoiseAugmentor(dim), 0.05, seed)
    # ComfyUI reseeds the global generator for each embedding, then draws the merge noise after it
    parts = []
    for x, s, lvl in ((a[0:1], 1.0, 100), (a[1:2], 1.0, 100), (b, 0.5, 0)):
        torch.manual_seed(seed - 10)
        noise = torch.randn((1, dim))
        parts.append(torch.cat([_expected(x, lvl, noise), _sinusoid(lvl, dim)], dim=1) * s)
    merge_noise = torch.randn((1, dim))
    total = torch.stack(parts).sum(0)
    level = round(999 * 0.05)
    want = torch.cat([_expected(total[:, :dim], level, merge_noise), _sinusoid(level, dim)], dim=1)
    assert torch.allclose(y, want, rtol=1e-5, atol=1e-6)


UNCLIP = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1), transformer_depth=(1, 1),
                    transformer_depth_output=(1, 1, 1, 1), context_dim=32, num_heads=-1, num_head_channels=32,
                    use_linear_in_transformer=True, adm_in_channels=2 * 24)


def test_unclip_unet_is_sd2_and_encodes_image_embeddings():
    assert UNCLIP.arch == "sd2"
    embeds = torch.randn(1, 24)
    cond = {"unclip_conditioning": [{"clip_vision_output": ClipVisionOutput(image_embeds=embeds), "strength": 1.0,
                                     "noise_augmentation": 0.0}], "seed": 5}
    y = adm_mod.encode_adm("sd2", UNCLIP, cond, batch=3)
    assert y.shape == (3, 48) and torch.equal(y[0], y[2])
    noise = torch.randn((1, 24), generator=torch.manual_seed(-5))
    assert torch.allclose(y[:1, :24], _expected(embeds, 0, noise), rtol=1e-5, atol=1e-6)
    # a conditioning without image embeddings (the usual negative) gets zeros
    assert torch.equal(adm_mod.encode_adm("sd2", UNCLIP, {"pooled_output": None}, 2), torch.zeros(2, 48))


def test_sdxl_revision_replaces_the_pooled_output():
    config = types.SimpleNamespace(adm_in_channels=16 + 6 * 8)
    embeds = torch.randn(1, 16)
    text = {"pooled_output": torch.randn(1, 16), "width": 64, "height": 64, "seed": 3}
    plain = adm_mod.encode_adm("sdxl", config, text, 1)
    revision = adm_mod.encode_adm("sdxl", config, {**text, "unclip_conditioning": [
        {"clip_vision_output": ClipVisionOutput(image_embeds=embeds), "strength": 0.75, "noise_augmentation": 0.0}]}, 1)
    assert torch.equal(plain[:, 16:], revision[:, 16:])  # size embeddings unchanged
    noise = torch.randn((1, 16), generator=torch.manual_seed(3 - 10))
    assert torch.allclose(revision[:, :16], _expected(embeds, 0, noise) * 0.75, rtol=1e-5, atol=1e-6)


def test_wrong_embedding_width_is_a_clear_error():
    cond = {"unclip_conditioning": [{"clip_vision_output": ClipVisionOutput(image_embeds=torch.randn(1, 7)),
                                     "strength": 1.0, "noise_augmentation": 0.0}]}
    with pytest.raises(ValueError, match="width 7 do not fit"):
        adm_mod.encode_adm("sd2", UNCLIP, cond, 1)
