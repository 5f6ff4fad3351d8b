"""UniPC: unified predictor-corrector multistep solver (Zhao et al. 2023), data-prediction form.

Written in sigma space: with lambda = -log(sigma) the exponential-integrator step reads
x_t = (sigma_t / sigma_s) x_s - (e^{-h} - 1) x0_s + higher-order terms, no alpha factors needed.
Variants: 'bh1' uses B(h) = h, 'bh2' uses B(h) = e^h - 1 (paper, section 3.3).
Like ComfyUI, a schedule ending in 0 is run to sigma = 0.001 instead (log(0) is not usable).
"""

from __future__ import annotations

import math

import torch

from diffusion.sampling.samplers.common import report, setup, steps

FINAL_SIGMA = 0.001


def _coefficients(h: torch.Tensor, rks: list[float], order: int, variant: str):
    """The R matrix (powers of the step ratios) and b vector of the UniPC linear systems."""
    hh = -h  # data prediction integrates in -lambda
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    B_h = hh if variant == "bh1" else torch.expm1(hh)
    r = torch.tensor(rks, dtype=torch.float64)
    rows, b = [], []
    factorial = 1
    for i in range(1, order + 1):
        rows.append(r ** (i - 1))
        b.append(float(h_phi_k * factorial / B_h))
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return torch.stack(rows), torch.tensor(b, dtype=torch.float64), h_phi_1, B_h


def _uni_pc_step(model, x, x0_prev, sigma_prev, sigma_t, order, use_corrector, variant, s_in, extra_args):
    """One UniP predictor step to sigma_t and, if asked, the UniC correction with the new x0.

    Returns (x_t, x0_t) where x0_t is the model's prediction at the uncorrected x_t (or None).
    """
    lambdas = [-math.log(float(s)) for s in sigma_prev]
    lambda_t = -math.log(float(sigma_t))
    m0 = x0_prev[-1]
    h = torch.tensor(lambda_t - lambdas[-1], dtype=torch.float64)
    rks, D1s = [], []
    for i in range(1, order):
        rk = (lambdas[-(i + 1)] - lambdas[-1]) / float(h)
        rks.append(rk)
        D1s.append((x0_prev[-(i + 1)] - m0) / rk)
    rks.append(1.0)
    R, b, h_phi_1, B_h = _coefficients(h, rks, order, variant)
    h_phi_1, B_h = float(h_phi_1), float(B_h)

    x_t_ = (float(sigma_t) / float(sigma_prev[-1])) * x - h_phi_1 * m0
    if D1s:
        rhos_p = [0.5] if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
        pred = sum(rho * d for rho, d in zip(rhos_p, D1s))
        x_t = x_t_ - B_h * pred
    else:
        x_t = x_t_
    if not use_corrector:
        return x_t, None
    rhos_c = [0.5] if order == 1 else torch.linalg.solve(R, b).tolist()
    model_t = model(x_t, sigma_t * s_in, **extra_args)
    corr = sum(rho * d for rho, d in zip(rhos_c[:-1], D1s)) if D1s else 0
    x_t = x_t_ - B_h * (corr + rhos_c[-1] * (model_t - m0))
    return x_t, model_t


def _single_step(x, sigmas, callback, denoised):
    """One step, as ComfyUI computes it: its UniPC loop runs with order 0, evaluates the model once and
    never updates the sample. What comes back is the input moved into variance-preserving scale at
    sigma[0] and out of it at sigma[-1] (the VP factor is alpha(s) = 1/sqrt(1 + s^2)); the same float32
    operations in the same order keep the result bit-identical. Turbo/LCM users get a noisy latent
    with uni_pc at one step in ComfyUI too; other samplers denoise in one step."""
    x = x / torch.sqrt(1.0 + sigmas[0] ** 2.0)
    report(callback, x, 0, sigmas[0], sigmas[0], denoised)
    return x / torch.exp(0.5 * torch.log(1 / (sigmas[-1] * sigmas[-1] + 1)))


def _sample_uni_pc(model, x, sigmas, extra_args, callback, disable, variant):
    extra_args, s_in = setup(x, extra_args)
    if len(sigmas) < 2:
        return x
    sigmas = sigmas.clone()
    if sigmas[-1] == 0:
        sigmas[-1] = FINAL_SIGMA
    n = len(sigmas) - 1
    # ComfyUI's order rule, min(3, steps - 1), is 0 for a single step (see _single_step).
    order = min(3, n - 1)
    history_x0 = [model(x, sigmas[0] * s_in, **extra_args)]
    history_sigma = [sigmas[0]]
    if order == 0:
        return _single_step(x, sigmas, callback, history_x0[0])
    for step in steps(n, disable):
        # warm up with lower orders, and lower the order again for the final steps
        step_order = min(order, step + 1, n - step)
        use_corrector = step < n - 1
        x, model_x = _uni_pc_step(model, x, history_x0, history_sigma, sigmas[step + 1], step_order,
                                  use_corrector, variant, s_in, extra_args)
        if step < n - 1:
            if model_x is None:
                model_x = model(x, sigmas[step + 1] * s_in, **extra_args)
            history_x0 = (history_x0 + [model_x])[-order:]
            history_sigma = (history_sigma + [sigmas[step + 1]])[-order:]
        report(callback, x, step, sigmas[step], sigmas[step], history_x0[-1])
    return x


@torch.no_grad()
def sample_uni_pc(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """UniPC (Zhao et al. 2023), B(h) = h ('bh1'), up to third order."""
    return _sample_uni_pc(model, x, sigmas, extra_args, callback, disable, "bh1")


@torch.no_grad()
def sample_uni_pc_bh2(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """UniPC (Zhao et al. 2023), B(h) = e^h - 1 ('bh2'), up to third order."""
    return _sample_uni_pc(model, x, sigmas, extra_args, callback, disable, "bh2")
