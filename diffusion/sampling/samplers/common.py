"""Helpers shared by the sampler functions (k-diffusion conventions).

A sampler sees `model(x, sigma_batch, **extra_args) -> denoised` in sigma space (x = x0 + sigma*eps).
"""

from __future__ import annotations

import torch

from diffusion.sampling.noise import brownian_noise_sampler, default_noise_sampler

# Fixed-step Adams-Bashforth weights by order, newest slope first (iPNDM, PLMS).
ADAMS_BASHFORTH_WEIGHTS = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12),
                           4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def steps(n: int, disable=None):
    """Step indices; a tqdm bar only when explicitly asked for (disable=False) to keep loops cheap."""
    if disable is False:
        from tqdm.auto import trange
        return trange(n)
    return range(n)


def to_d(x: torch.Tensor, sigma, denoised: torch.Tensor) -> torch.Tensor:
    """dx/dsigma of the probability-flow ODE (Karras et al. 2022, eq. 4 with s(t)=1, sigma(t)=t)."""
    return (x - denoised) / sigma


def ancestral_step(sigma_from, sigma_to, eta: float = 1.0):
    """Split a step into a deterministic move to sigma_down plus fresh noise of size sigma_up.

    sigma_up^2 + sigma_down^2 = sigma_to^2; eta=0 is deterministic, eta=1 is the DDPM-like amount.
    """
    if not eta:
        return sigma_to, torch.zeros_like(torch.as_tensor(sigma_to))
    sigma_up = torch.minimum(torch.as_tensor(sigma_to),
                             eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


def t_of_sigma(sigma):
    """Half-log-SNR time used by the DPM-Solver family: t = -log(sigma)."""
    return sigma.log().neg()


def sigma_of_t(t):
    return t.neg().exp()


def log_lerp(a, b, w: float = 0.5):
    """Geometric interpolation between two sigmas."""
    return a.log().lerp(b.log(), w).exp()


def setup(x: torch.Tensor, extra_args):
    extra_args = {} if extra_args is None else extra_args
    return extra_args, x.new_ones([x.shape[0]])


def step_noise(x, extra_args, noise_sampler=None):
    """The ancestral noise sampler unless one was passed in."""
    if noise_sampler is not None:
        return noise_sampler
    return default_noise_sampler(x, seed=extra_args.get("seed"))


def sde_noise(x, sigmas, extra_args, noise_sampler=None, cpu=True):
    """Brownian-tree noise for SDE samplers (seeded with the sampling seed)."""
    if noise_sampler is not None:
        return noise_sampler
    return brownian_noise_sampler(x, sigmas, extra_args.get("seed"), cpu=cpu)


def report(callback, x, i, sigma, sigma_hat, denoised):
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


def churn(x, sigma, n_steps, s_churn, s_tmin, s_tmax, s_noise):
    """Karras et al. (2022) Alg. 2 'churn': raise sigma by gamma and add the matching noise."""
    gamma = min(s_churn / n_steps, 2 ** 0.5 - 1) if (s_churn > 0 and s_tmin <= sigma <= s_tmax) else 0.0
    if gamma <= 0:
        return x, sigma
    sigma_hat = sigma * (gamma + 1)
    x = x + torch.randn_like(x) * s_noise * (sigma_hat ** 2 - sigma ** 2) ** 0.5
    return x, sigma_hat


def capture_uncond(model, extra_args):
    """For CFG++ samplers: make the guider also report the unconditional x0 prediction.

    Returns (model, extra_args, box): after each call of the returned model, box[0] holds that call's
    unconditional prediction - or the output itself when the model has no CFG hooks (no guidance).
    """
    box = [None]

    def post_cfg(args):
        box[0] = args["uncond_denoised"]
        return args["denoised"]

    options = dict(extra_args.get("model_options", {}))
    options["sampler_post_cfg_function"] = list(options.get("sampler_post_cfg_function", [])) + [post_cfg]
    options["disable_cfg1_optimization"] = True

    def wrapped(x, sigma, **kwargs):
        box[0] = None
        out = model(x, sigma, **kwargs)
        if box[0] is None:
            box[0] = out
        return out

    return wrapped, {**extra_args, "model_options": options}, box


def lagrange_weights(nodes, lo: float, hi: float):
    """Integrals over [lo, hi] of the Lagrange basis polynomials through `nodes` (exact, float64).

    This gives the variable-step Adams-Bashforth weights used by LMS and iPNDM-v.
    """
    import numpy as np
    from numpy.polynomial import polynomial as P

    weights = []
    for j, tj in enumerate(nodes):
        poly = np.array([1.0])
        for k, tk in enumerate(nodes):
            if k != j:
                poly = P.polymul(poly, np.array([-tk, 1.0]) / (tj - tk))
        anti = P.polyint(poly)
        weights.append(float(P.polyval(hi, anti) - P.polyval(lo, anti)))
    return weights
