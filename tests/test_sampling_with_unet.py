"""sample() and CFG batching with the project's own tiny random UNet behind a ModelPatcher."""

import torch

from diffusion.sampling.guidance import CFGDenoiser
from diffusion.sampling.noise import prepare_noise
from diffusion.sampling.ksampler import sample
from unet_tiny import TINY_SD1, TINY_SDXL, tiny_patcher


def _cond(tokens, value, dim=16, **options):
    gen = torch.Generator().manual_seed(int(value * 100))
    return [[torch.randn(1, tokens, dim, generator=gen), dict(options)]]


def test_batched_and_padded_cfg_equals_separate_forwards():
    """cond (154 tokens) and uncond (77 tokens) in one padded forward give the same x0 as two
    separate forwards: repeating the context does not change cross-attention."""
    model = tiny_patcher(TINY_SD1)
    positive, negative = _cond(154, 0.3), _cond(77, 0.7)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * 3
    sigma = torch.tensor([2.5, 2.5])
    den = CFGDenoiser(model, positive, negative, cfg=5.0)
    out = den(x, sigma)
    c = model.apply_model(x, sigma, c_crossattn=positive[0][0].repeat(2, 1, 1))
    u = model.apply_model(x, sigma, c_crossattn=negative[0][0].repeat(2, 1, 1))
    assert torch.allclose(out, u + (c - u) * 5.0, atol=1e-4, rtol=1e-4)


def test_sdxl_adm_flows_through_encode_adm():
    model = tiny_patcher(TINY_SDXL)
    pooled_a, pooled_b = torch.randn(1, 24), torch.randn(1, 24)
    positive = _cond(77, 0.1, pooled_output=pooled_a, width=64, height=64)
    negative = _cond(77, 0.2, pooled_output=pooled_b, width=64, height=64)
    x = torch.randn(1, 4, 8, 8)
    sigma = torch.tensor([1.5])
    out = CFGDenoiser(model, positive, negative, cfg=3.0)(x, sigma)
    c = model.apply_model(x, sigma, c_crossattn=positive[0][0], y=model.encode_adm(positive[0][1], 1))
    u = model.apply_model(x, sigma, c_crossattn=negative[0][0], y=model.encode_adm(negative[0][1], 1))
    assert torch.allclose(out, u + (c - u) * 3.0, atol=1e-4, rtol=1e-4)


def test_ksampler_run_is_reproducible():
    model = tiny_patcher(TINY_SD1)
    latent = torch.zeros(1, 4, 8, 8)
    runs = [sample(model, prepare_noise(latent, 5), _cond(77, 0.3), _cond(77, 0.7), 6.0, "dpmpp_2m_sde", "karras",
                   4, latent, seed=5) for _ in range(2)]
    assert runs[0].dtype == torch.float32 and torch.isfinite(runs[0]).all()
    assert torch.equal(runs[0], runs[1])
