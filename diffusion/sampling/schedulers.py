"""Noise schedules: which sigmas a sampler visits, from sigma_max down to 0.

Every scheduler returns a float32 CPU tensor of `steps + 1` sigmas (fewer for `beta`, which drops
duplicate timesteps) ending in 0. The names and their order are the ComfyUI combo (COMPAT §10).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

SCHEDULER_NAMES = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
                   "linear_quadratic", "kl_optimal"]


def _with_zero(values) -> torch.Tensor:
    return torch.cat([torch.as_tensor(values, dtype=torch.float32).reshape(-1), torch.zeros(1)])


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022), eq. 5: uniform steps in sigma^(1/rho)."""
    ramp = torch.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _with_zero((hi + ramp * (lo - hi)) ** rho)


def get_sigmas_exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Uniform steps in log-sigma."""
    return _with_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def get_sigmas_polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    """k-diffusion's polyexponential schedule: log-sigma follows a ramp**rho (rho 1: exponential)."""
    ramp = torch.linspace(1, 0, n) ** rho
    return _with_zero((ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)).exp())


def get_sigmas_vp(n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3) -> torch.Tensor:
    """k-diffusion's continuous VP schedule (Song et al. 2021): sigma(t) for t from 1 down to eps_s."""
    t = torch.linspace(1, eps_s, n)
    return _with_zero(torch.special.expm1(beta_d * t ** 2 / 2 + beta_min * t).sqrt())


def get_sigmas_laplace(n: int, sigma_min: float, sigma_max: float, mu: float = 0.0, beta: float = 0.5) -> torch.Tensor:
    """Laplace schedule (Tiankai et al. 2024): log-sigma at the Laplace(mu, beta) quantiles, clamped to
    [sigma_min, sigma_max]. As in ComfyUI it has n sigmas and no final 0, so sampling ends at sigma_min."""
    x = torch.linspace(0, 1, n)
    centred = 0.5 - x
    log_sigma = mu - beta * centred.sign() * torch.log(1 - 2 * centred.abs() + 1e-5)  # 1e-5: no log(0)
    return log_sigma.exp().clamp(min=sigma_min, max=sigma_max).to(torch.float32)


def sd_turbo_sigmas(model_sampling, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """SD/SDXL-Turbo's schedule (ComfyUI's SDTurboScheduler): at most ten timesteps 999, 899, ..., 99;
    denoise < 1 skips the first 10 - int(10 * denoise) of them, then `steps` are taken."""
    start = 10 - int(10 * denoise)
    timesteps = torch.arange(999, 0, -100)[start:start + steps]
    return _with_zero(model_sampling.sigma(timesteps))


def kl_optimal_sigmas(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """'Align Your Steps' KL-optimal schedule (Sabour et al. 2024): uniform steps in atan(sigma)."""
    if n == 1:
        return _with_zero([sigma_max])
    frac = torch.arange(n, dtype=torch.float32) / (n - 1)
    return _with_zero((frac * math.atan(sigma_min) + (1 - frac) * math.atan(sigma_max)).tan())


def simple_sigmas(model_sampling, steps: int) -> torch.Tensor:
    """Evenly strided entries of the model's own sigma table, from the top."""
    table = model_sampling.sigmas
    stride = len(table) / steps
    return _with_zero([float(table[-(1 + int(i * stride))]) for i in range(steps)])


def normal_sigmas(model_sampling, steps: int, sgm: bool = False) -> torch.Tensor:
    """Evenly spaced (fractional) timesteps between t(sigma_max) and t(sigma_min).

    `sgm` (sgm_uniform, Stability's generative-models repo) spaces steps+1 points and drops the last,
    so the schedule never reaches sigma_min itself before the final 0.
    """
    ms = model_sampling
    t_start = float(ms.timestep(ms.sigma_max))
    t_end = float(ms.timestep(ms.sigma_min))
    if sgm:
        ts = torch.linspace(t_start, t_end, steps + 1)[:-1]
    else:
        ts = torch.linspace(t_start, t_end, steps)
    return _with_zero(ms.sigma(ts))


def ddim_uniform_sigmas(model_sampling, steps: int) -> torch.Tensor:
    """DDIM's uniform timestep skipping: every (1000 // steps)-th table entry from index 1."""
    table = model_sampling.sigmas
    stride = max(len(table) // steps, 1)
    picked = [float(table[i]) for i in range(1, len(table), stride)]
    return _with_zero(picked[::-1])


def beta_sigmas(model_sampling, steps: int, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    """Timesteps at Beta(alpha, beta) quantiles (Lee et al. 2024, 'Beta sampling is all you need').

    Neighbouring quantiles can round to the same timestep; repeats are dropped, so the result may
    hold fewer than steps + 1 sigmas.
    """
    import numpy as np
    from scipy import stats  # scipy is only needed for this schedule

    table = model_sampling.sigmas
    last_index = len(table) - 1
    quantiles = 1.0 - np.linspace(0, 1, steps, endpoint=False)
    indices = np.rint(stats.beta.ppf(quantiles, alpha, beta) * last_index).astype(int).tolist()
    picked, previous = [], None
    for idx in indices:
        if idx != previous:
            picked.append(float(table[idx]))
        previous = idx
    return _with_zero(picked)


def linear_quadratic_sigmas(model_sampling, steps: int, threshold_noise: float = 0.025,
                            linear_steps: int | None = None) -> torch.Tensor:
    """Linear-then-quadratic schedule (Movie Gen, Polyak et al. 2024), scaled to sigma_max.

    In 'progress' space u (0 = pure noise, 1 = clean) the first `linear_steps` steps rise linearly
    to `threshold_noise`; the rest follow the quadratic q(i) with q(L) = threshold, q'(L) equal to
    the linear slope (smooth joint) and q(steps) = 1.
    """
    sigma_max = float(model_sampling.sigma_max)
    if steps == 1:
        return torch.tensor([sigma_max, 0.0], dtype=torch.float32)
    n = steps
    lin = n // 2 if linear_steps is None else linear_steps
    tau = threshold_noise
    quad = n - lin
    slope = tau / lin
    # q(i) = a (i - L)^2 + slope (i - L) + tau; q(n) = 1 fixes a.
    a = (1.0 - tau - slope * quad) / quad ** 2
    progress = [i * slope for i in range(lin)]
    progress += [a * (i - lin) ** 2 + slope * (i - lin) + tau for i in range(lin, n)]
    progress.append(1.0)
    return torch.tensor([(1.0 - u) * sigma_max for u in progress], dtype=torch.float32)


def _from_range(fn):
    return lambda ms, steps: fn(steps, float(ms.sigma_min), float(ms.sigma_max))


SCHEDULERS: dict[str, Callable] = {
    "simple": simple_sigmas,
    "sgm_uniform": lambda ms, steps: normal_sigmas(ms, steps, sgm=True),
    "karras": _from_range(get_sigmas_karras),
    "exponential": _from_range(get_sigmas_exponential),
    "ddim_uniform": ddim_uniform_sigmas,
    "beta": beta_sigmas,
    "normal": normal_sigmas,
    "linear_quadratic": linear_quadratic_sigmas,
    "kl_optimal": _from_range(kl_optimal_sigmas),
}
assert list(SCHEDULERS) == SCHEDULER_NAMES


def calculate_sigmas(model_sampling, scheduler: str, steps: int) -> torch.Tensor:
    """The full schedule for `steps` steps (before any denoise / start / end trimming)."""
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; expected one of {SCHEDULER_NAMES}")
    if int(steps) < 1:
        raise ValueError(f"scheduler {scheduler!r}: steps must be >= 1, got {steps}")
    return SCHEDULERS[scheduler](model_sampling, int(steps))


# --- editing a schedule (SIGMAS nodes) -----------------------------------------------------------------

def split_sigmas(sigmas: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The schedule up to `step` and from `step` on; both hold sigmas[step], so the two runs chain."""
    return sigmas[:step + 1], sigmas[step:]


def split_sigmas_denoise(sigmas: torch.Tensor, denoise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Split so the low part holds round(steps * denoise) steps. As in ComfyUI, zero low steps leave the
    high part empty (Python's [:-0])."""
    low_steps = round(max(sigmas.shape[-1] - 1, 0) * denoise)
    return sigmas[:-low_steps], sigmas[-(low_steps + 1):]


def flip_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """The schedule reversed (for unsampling: image to noise); a leading 0 becomes 1e-4 so the first
    step has a sigma to divide by."""
    if len(sigmas) == 0:
        return sigmas
    flipped = sigmas.flip(0)
    if flipped[0] == 0:
        flipped[0] = 0.0001
    return flipped


def set_first_sigma(sigmas: torch.Tensor, sigma: float) -> torch.Tensor:
    out = sigmas.clone()
    out[0] = sigma
    return out


def parse_sigmas(text: str) -> torch.Tensor:
    """Sigmas written out as numbers ("14.6, 7.3, 0"), any separators (ManualSigmas)."""
    import re

    numbers = re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", text)
    return torch.tensor([float(n) for n in numbers], dtype=torch.float32)
