"""SA-Solver: stochastic Adams predictor-corrector (Xue et al. 2023, NeurIPS, arXiv 2309.05019).

Data-prediction form in lambda = -log(sigma) (SD family: the VP signal scale is 1 in sigma space).
A step from lambda_s to lambda_t with stochasticity tau is
    x_t = (sigma_t / sigma_s) e^{-tau^2 h} x_s + sum_j b_j x0_j  (+ noise when tau > 0),
    b_j = (1 + tau^2) * integral_s^t e^{(1 + tau^2)(lambda - lambda_t)} l_j(lambda) dlambda,
l_j the Lagrange basis through the lambdas of the x0 predictions used (paper eqs. 15 and 18).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from diffusion.sampling.model_sampling import ModelSampling
from diffusion.sampling.samplers.common import report, setup, step_noise, steps

_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(32)


def adams_coefficients(lambdas, lambda_s: float, lambda_t: float, tau: float, simple_order_2=False,
                       corrector=False) -> list[float]:
    """b_j for x0 predictions at `lambdas` (oldest first), by Gauss-Legendre quadrature in float64."""
    k = 1 + tau ** 2
    h = lambda_t - lambda_s
    if simple_order_2 and len(lambdas) == 2:
        # the paper's simplified second-order pair (appendix D)
        total = -np.expm1(-h * k)
        if corrector:
            b1 = 0.5 * k * h
            return [total - b1, b1]
        b2 = 0.5 * k * h ** 2 / (lambdas[-2] - lambda_s)
        return [b2, total - b2]
    grid = 0.5 * h * _NODES + 0.5 * (lambda_s + lambda_t)
    weight = k * np.exp(k * (grid - lambda_t)) * _WEIGHTS * 0.5 * h
    out = []
    for j, lj in enumerate(lambdas):
        basis = np.ones_like(grid)
        for m, lm in enumerate(lambdas):
            if m != j:
                basis *= (grid - lm) / (lj - lm)
        out.append(float(np.sum(weight * basis)))
    return out


def tau_interval(start_sigma: float, end_sigma: float, eta: float = 1.0):
    """Stochasticity eta inside [end_sigma, start_sigma], 0 (plain ODE) outside."""
    def tau(sigma) -> float:
        if eta <= 0:
            return 0.0
        return eta if start_sigma >= float(sigma) >= end_sigma else 0.0
    return tau


def _combine(coeffs, preds):
    return sum(c * p for c, p in zip(coeffs, preds))


@torch.no_grad()
def sample_sa_solver(model, x, sigmas, extra_args=None, callback=None, disable=None, tau_func=None,
                     s_noise=1.0, noise_sampler=None, predictor_order=3, corrector_order=4, use_pece=False,
                     simple_order_2=False):
    """SA-Solver (Xue et al. 2023): stochastic Adams predictor with a corrector that reuses the next
    evaluation; stochastic only between 20% and 80% of the schedule by default."""
    if len(sigmas) <= 1:
        return x
    extra_args, s_in = setup(x, extra_args)
    noise_sampler = step_noise(x, extra_args, noise_sampler)
    if tau_func is None:
        ms = getattr(model, "model_sampling", None) or ModelSampling()
        tau_func = tau_interval(ms.percent_to_sigma(0.2), ms.percent_to_sigma(0.8), eta=1.0)
    sig = [float(s) for s in sigmas.double().cpu()]
    lams = [-math.log(s) if s > 0 else math.inf for s in sig]
    max_order = max(predictor_order, corrector_order)
    lower_at_end = sig[-1] == 0  # lower the order near the end for stability
    x_pred = x
    h = tau_t = 0.0
    noise = 0.0
    preds = []
    for i in steps(len(sigmas) - 1, disable):
        denoised = model(x_pred, sigmas[i] * s_in, **extra_args)
        report(callback, x_pred, i, sigmas[i], sigmas[i], denoised)
        preds = (preds + [denoised])[-max_order:]
        p_order = min(predictor_order, len(preds))
        c_order = 0 if (i == 0 or (sig[i + 1] == 0 and not use_pece)) else min(corrector_order, len(preds))
        if lower_at_end:
            p_order = min(p_order, len(sig) - 2 - i)
            c_order = min(c_order, len(sig) - 1 - i)
        # corrector: redo the last step with the new prediction included
        if c_order == 0:
            x = x_pred
        else:
            b = adams_coefficients(lams[i - c_order + 1:i + 1], lams[i - 1], lams[i], tau_t, simple_order_2,
                                   corrector=True)
            x = float(sig[i] / sig[i - 1] * np.exp(-(tau_t ** 2) * h)) * x + _combine(b, preds[-c_order:])
            if tau_t > 0 and s_noise > 0:
                x = x + noise  # the same noise the predictor used
            if use_pece:
                denoised = model(x, sigmas[i] * s_in, **extra_args)
                preds[-1] = denoised
        # predictor
        if sig[i + 1] == 0:
            x_pred = denoised
        else:
            tau_t = tau_func(sigmas[i + 1])
            b = adams_coefficients(lams[i - p_order + 1:i + 1], lams[i], lams[i + 1], tau_t, simple_order_2)
            h = lams[i + 1] - lams[i]
            x_pred = float(sig[i + 1] / sig[i] * np.exp(-(tau_t ** 2) * h)) * x + _combine(b, preds[-p_order:])
            if tau_t > 0 and s_noise > 0:
                noise = noise_sampler(sigmas[i], sigmas[i + 1]) * float(
                    sig[i + 1] * np.sqrt(-np.expm1(-2 * tau_t ** 2 * h)) * s_noise)
                x_pred = x_pred + noise
    return x_pred


@torch.no_grad()
def sample_sa_solver_pece(model, x, sigmas, extra_args=None, callback=None, disable=None, tau_func=None,
                          s_noise=1.0, noise_sampler=None, predictor_order=3, corrector_order=4,
                          simple_order_2=False):
    """SA-Solver in PECE mode: the corrected state is evaluated again (one more model call per step)."""
    return sample_sa_solver(model, x, sigmas, extra_args, callback, disable, tau_func, s_noise, noise_sampler,
                            predictor_order, corrector_order, use_pece=True, simple_order_2=simple_order_2)
