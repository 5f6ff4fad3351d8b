"""Reference arithmetic for the SD node tests, written from the formulas in COMPAT §10, not from our
sampler code: the SD sigma table, the "normal" schedule, the CPU noise recipe, CFG and Euler steps.
Only the network itself (MODEL.apply_model) is shared with the code under test.
"""
from __future__ import annotations

import math

import torch

SD1_SCALE = 0.18215


def sigma_table() -> torch.Tensor:
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)
    return ((1 - abar) / abar).sqrt().float()


def normal_sigmas(steps: int) -> torch.Tensor:
    """'normal' scheduler: sigma(t) at `steps` evenly spaced t from t(sigma_max) to t(sigma_min), then 0."""
    table = sigma_table()
    log_table = table.log()

    def sigma_at(t: float) -> float:  # exp of the linear interpolation of log sigma
        lo = int(math.floor(t))
        hi = min(lo + 1, 999)
        w = t - lo
        return math.exp((1 - w) * float(log_table[lo]) + w * float(log_table[hi]))

    ts = torch.linspace(999.0, 0.0, steps)  # t(sigma_max) = 999, t(sigma_min) = 0
    return torch.tensor([sigma_at(float(t)) for t in ts] + [0.0], dtype=torch.float32)


def initial_noise(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def euler_cfg(model, x: torch.Tensor, sigmas: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
              cfg: float, y_cond=None, y_uncond=None) -> torch.Tensor:
    """Euler steps of the CFG-combined denoiser: x0 = u + (c - u)·cfg, x += (x - x0)/σ · (σ' - σ)."""
    for i in range(len(sigmas) - 1):
        s = sigmas[i].reshape(1)
        c = model.apply_model(x, s, cond, y=y_cond)
        u = model.apply_model(x, s, uncond, y=y_uncond)
        denoised = u + (c - u) * cfg
        x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    return x


def txt2img_latent(model, cond, uncond, seed: int, steps: int, cfg: float, shape, scale=SD1_SCALE,
                   y_cond=None, y_uncond=None) -> torch.Tensor:
    """KSampler(euler, normal, denoise 1) on an empty latent; unscaled result."""
    sigmas = normal_sigmas(steps)
    x = initial_noise(shape, seed) * math.sqrt(1 + float(sigmas[0]) ** 2)  # full denoise: sqrt(1+σ²)
    return euler_cfg(model, x, sigmas, cond, uncond, cfg, y_cond, y_uncond) / scale


def img2img_latent(model, cond, uncond, latent: torch.Tensor, seed: int, steps: int, cfg: float,
                   denoise: float, scale=SD1_SCALE) -> torch.Tensor:
    """KSampler(euler, normal, denoise<1): the last steps+1 sigmas of int(steps/denoise) steps."""
    sigmas = normal_sigmas(int(steps / denoise))[-(steps + 1):]
    x = latent * scale + initial_noise(latent.shape, seed) * sigmas[0]
    return euler_cfg(model, x, sigmas, cond, uncond, cfg) / scale


def size_embedding(values, dim: int) -> torch.Tensor:
    """SDXL size conditioning: each value through the sinusoidal timestep embedding [cos | sin]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = torch.tensor(values, dtype=torch.float32)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).reshape(1, -1)
