"""Multistep samplers: reuse earlier model evaluations instead of extra ones per step."""

from __future__ import annotations

import math

import torch

from diffusion.sampling.samplers.common import (ADAMS_BASHFORTH_WEIGHTS, capture_uncond, lagrange_weights, report,
                                                sde_noise, setup, sigma_of_t, steps, t_of_sigma, to_d)


@torch.no_grad()
def sample_lms(model, x, sigmas, extra_args=None, callback=None, disable=None, order=4):
    """Linear multistep (Adams-Bashforth in sigma; k-diffusion 'LMS'), up to `order` past slopes.

    Weights are exact integrals of the Lagrange basis through the past sigmas. A step to sigma = 0
    returns the x0 prediction, as ComfyUI does.
    """
    extra_args, s_in = setup(x, extra_args)
    sig = [float(s) for s in sigmas.double().cpu()]
    ds = []
    for i in steps(len(sigmas) - 1, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        ds.append(to_d(x, sigmas[i], denoised))
        ds = ds[-order:]
        if sigmas[i + 1] == 0:
            # ComfyUI's sample_lms ends on the x0 prediction instead of a multistep step to 0
            x = denoised
            continue
        k = len(ds)
        weights = lagrange_weights([sig[i - j] for j in range(k)], sig[i], sig[i + 1])
        x = x + sum(w * d for w, d in zip(weights, reversed(ds)))
    return x


def _dpmpp_2m(model, x, sigmas, extra_args, callback, disable, cfg_pp):
    extra_args, s_in = setup(x, extra_args)
    if cfg_pp:
        model, extra_args, uncond = capture_uncond(model, extra_args)
    old = None  # the previous step's x0 prediction (CFG++: its unconditional one)
    for i in steps(len(sigmas) - 1, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        t, t_next = t_of_sigma(sigmas[i]), t_of_sigma(sigmas[i + 1])
        h = t_next - t
        if cfg_pp:
            decay = torch.exp(-h)
            mix = -decay * uncond[0]
            if old is not None and sigmas[i + 1] != 0:
                r = (t - t_of_sigma(sigmas[i - 1])) / h
                mix = mix - torch.expm1(-h) * (1 / (2 * r)) * (denoised - old)
            x = denoised + mix + decay * x
            old = uncond[0]
            continue
        if old is None or sigmas[i + 1] == 0:
            denoised_d = denoised
        else:
            r = (t - t_of_sigma(sigmas[i - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
        x = (sigma_of_t(t_next) / sigma_of_t(t)) * x - (-h).expm1() * denoised_d
        old = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M) (Lu et al. 2022): second-order multistep exponential integrator in log-sigma."""
    return _dpmpp_2m(model, x, sigmas, extra_args, callback, disable, False)


@torch.no_grad()
def sample_dpmpp_2m_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M) with CFG++ (Chung et al. 2024): the history uses unconditional predictions."""
    return _dpmpp_2m(model, x, sigmas, extra_args, callback, disable, True)


def _dpmpp_2m_sde(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler,
                  solver_type, cpu):
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"dpmpp_2m_sde: solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    extra_args, s_in = setup(x, extra_args)
    if len(sigmas) < 2:
        return x
    noise_sampler = sde_noise(x, sigmas, extra_args, noise_sampler, cpu=cpu)
    old_denoised, h_last = None, None
    for i in steps(len(sigmas) - 1, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = t_of_sigma(sigmas[i + 1]) - t_of_sigma(sigmas[i])
            eta_h = eta * h
            phi = (-h - eta_h).expm1().neg()
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + phi * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + (phi / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * phi * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * \
                    (-2 * eta_h).expm1().neg().sqrt() * s_noise
            h_last = h
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None,
                        eta=1.0, s_noise=1.0, noise_sampler=None, solver_type="midpoint"):
    """DPM-Solver++(2M) SDE (Lu et al. 2022), Brownian-tree noise on CPU."""
    return _dpmpp_2m_sde(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler,
                         solver_type, cpu=True)


@torch.no_grad()
def sample_dpmpp_2m_sde_gpu(model, x, sigmas, extra_args=None, callback=None, disable=None,
                            eta=1.0, s_noise=1.0, noise_sampler=None, solver_type="midpoint"):
    """DPM-Solver++(2M) SDE with the Brownian tree on x's device."""
    return _dpmpp_2m_sde(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler,
                         solver_type, cpu=False)


@torch.no_grad()
def sample_dpmpp_2m_sde_heun(model, x, sigmas, extra_args=None, callback=None, disable=None,
                             eta=1.0, s_noise=1.0, noise_sampler=None, solver_type="heun"):
    """DPM-Solver++(2M) SDE, Heun-type second-order correction."""
    return _dpmpp_2m_sde(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler,
                         solver_type, cpu=True)


@torch.no_grad()
def sample_dpmpp_2m_sde_heun_gpu(model, x, sigmas, extra_args=None, callback=None, disable=None,
                                 eta=1.0, s_noise=1.0, noise_sampler=None, solver_type="heun"):
    """DPM-Solver++(2M) SDE (Heun-type correction), Brownian tree on x's device."""
    return _dpmpp_2m_sde(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler,
                         solver_type, cpu=False)


def _dpmpp_3m_sde(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, cpu):
    extra_args, s_in = setup(x, extra_args)
    if len(sigmas) < 2:
        return x
    noise_sampler = sde_noise(x, sigmas, extra_args, noise_sampler, cpu=cpu)
    denoised_1 = denoised_2 = None
    h_1 = h_2 = None
    for i in steps(len(sigmas) - 1, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = t_of_sigma(sigmas[i + 1]) - t_of_sigma(sigmas[i])
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                x = x + phi_2 * (denoised - denoised_1) / (h_1 / h)
            if eta:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * \
                    (-2 * h * eta).expm1().neg().sqrt() * s_noise
            h_1, h_2 = h, h_1
        denoised_1, denoised_2 = denoised, denoised_1
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None,
                        eta=1.0, s_noise=1.0, noise_sampler=None):
    """DPM-Solver++(3M) SDE (third-order multistep, Lu et al. 2022), Brownian-tree noise on CPU."""
    return _dpmpp_3m_sde(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, cpu=True)


@torch.no_grad()
def sample_dpmpp_3m_sde_gpu(model, x, sigmas, extra_args=None, callback=None, disable=None,
                            eta=1.0, s_noise=1.0, noise_sampler=None):
    """DPM-Solver++(3M) SDE with the Brownian tree on x's device."""
    return _dpmpp_3m_sde(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, cpu=False)


def _adams_bashforth(model, x, sigmas, extra_args, callback, disable, max_order, weights_for):
    """Shared loop of iPNDM / iPNDM-v / DEIS: x += sum_j w_j * d_{i-j} with the final step
    to sigma = 0 taken as the x0 prediction itself. `weights_for(i, order)` returns absolute
    step weights (already multiplied by the step size)."""
    extra_args, s_in = setup(x, extra_args)
    history = []
    for i in steps(len(sigmas) - 1, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        history = (history + [d])[-max_order:]
        order = len(history)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x = x + sum(w * dj for w, dj in zip(weights_for(i, order), reversed(history)))
    return x


@torch.no_grad()
def sample_ipndm(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order=4):
    """Improved PNDM (Zhang & Chen 2023, 'DEIS' paper): fixed-coefficient Adams-Bashforth in sigma."""
    sig = sigmas.double().cpu()

    def weights(i, order):
        dt = float(sig[i + 1] - sig[i])
        return [dt * w for w in ADAMS_BASHFORTH_WEIGHTS[order]]

    return _adams_bashforth(model, x, sigmas, extra_args, callback, disable, max_order, weights)


def ipndm_v_coefficients(h: float, h1: float, h2: float | None, h3: float | None, order: int):
    """Step-size-aware multistep coefficients of iPNDM-v as published with the AMED solver
    (Zhou et al. 2024), newest slope first; multiply by the step h.

    h is the current step, h1..h3 the previous ones (all signed sigma differences). For order 3 and 4
    the published correction term reads (1 - a*b)/2 where exact variable-step Adams-Bashforth would
    have (1 - a)*b/2; both agree on uniform steps. The published form is kept so results match other
    implementations of this sampler (ComfyUI).
    """
    r = h / h1
    base = [1 + r / 2, -r / 2]
    if order == 2:
        return base
    a = h / (3 * (h + h1))
    b = h * (h + h1) / (h1 * (h1 + h2))
    t1 = (1 - a * b) / 2
    if order == 3:
        return [base[0] + t1, base[1] - (1 + h1 / h2) * t1, t1 * h1 / h2]
    g = h1 * (h1 + h2) / (h2 * (h2 + h3))
    t2 = ((1 - a) / 2 + (1 - h / (2 * (h + h1))) * h / (6 * (h + h1 + h2))) * \
        (h * (h + h1) * (h + h1 + h2)) / (h1 * (h1 + h2) * (h1 + h2 + h3))
    return [base[0] + t1 + t2,
            base[1] - (1 + h1 / h2) * t1 - (1 + h1 / h2 + g) * t2,
            t1 * h1 / h2 + (h1 / h2 + g * (1 + h2 / h3)) * t2,
            -t2 * g * h1 / h2]


@torch.no_grad()
def sample_ipndm_v(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order=4):
    """iPNDM with variable step sizes (Zhou et al. 2024, 'AMED' code release): multistep coefficients
    adapted to the uneven sigma spacing."""
    sig = [float(s) for s in sigmas.double().cpu()]

    def weights(i, order):
        h = sig[i + 1] - sig[i]
        if order == 1:
            return [h]
        prev = [sig[i - k] - sig[i - k - 1] if i - k - 1 >= 0 else None for k in range(3)]
        return [h * c for c in ipndm_v_coefficients(h, prev[0], prev[1], prev[2], order)]

    return _adams_bashforth(model, x, sigmas, extra_args, callback, disable, max_order, weights)


# EDM's VP-SDE time reparameterisation used by DEIS's 'tab' coefficients (Karras et al. 2022, Table 1).
_VP_EPS, _VP_SIGMA_MIN, _VP_SIGMA_MAX = 1e-3, 0.002, 80.0


def _vp_time(sigma: float) -> float:
    beta_d = 2 * (math.log(_VP_SIGMA_MIN ** 2 + 1) / _VP_EPS - math.log(_VP_SIGMA_MAX ** 2 + 1)) / (_VP_EPS - 1)
    beta_min = math.log(_VP_SIGMA_MAX ** 2 + 1) - 0.5 * beta_d
    return (math.sqrt(beta_min ** 2 + 2 * beta_d * math.log(sigma ** 2 + 1)) - beta_min) / beta_d


def deis_weights(sigmas, i: int, order: int):
    """DEIS 'tab' weights (Zhang & Chen 2023): interpolate the slope polynomially in VP time tau
    through the last `order` points and integrate it over sigma, by 32-point Gauss-Legendre."""
    import numpy as np

    lo, hi = sigmas[i], sigmas[i + 1]
    taus = [_vp_time(sigmas[i - j]) for j in range(order)]
    nodes, qw = np.polynomial.legendre.leggauss(32)
    grid = 0.5 * (hi - lo) * nodes + 0.5 * (hi + lo)
    tau_grid = np.array([_vp_time(s) for s in grid])
    out = []
    for j in range(order):
        basis = np.ones_like(grid)
        for k in range(order):
            if k != j:
                basis *= (tau_grid - taus[k]) / (taus[j] - taus[k])
        out.append(float(0.5 * (hi - lo) * np.sum(qw * basis)))
    return out


@torch.no_grad()
def sample_deis(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order=3):
    """Diffusion Exponential Integrator Sampler (Zhang & Chen 2023), 'tab' (time-polynomial) variant."""
    sig = [float(s) for s in sigmas.double().cpu()]
    return _adams_bashforth(model, x, sigmas, extra_args, callback, disable, max_order,
                            lambda i, order: deis_weights(sig, i, order))
