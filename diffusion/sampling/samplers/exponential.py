"""Exponential-integrator samplers in data (x0) prediction: RES multistep, SEEDS, exponential Heun,
ER-SDE, and the gradient-estimation sampler.

For the SD family (eps / v models on the discrete VP schedule) half-log-SNR is lambda = -log(sigma)
and the VP signal scale folds away in sigma space, so every update below is written with sigmas only.
"""

from __future__ import annotations

import torch

from diffusion.sampling.samplers.common import (ancestral_step, capture_uncond, report, setup, sigma_of_t, step_noise, steps,
                              t_of_sigma, to_d)


def h_phi_1(h):
    """h * phi_1(h) = e^h - 1."""
    return torch.expm1(h)


def h_phi_2(h):
    """h * phi_2(h) = (e^h - 1 - h) / h."""
    return (torch.expm1(h) - h) / h


def _res_multistep(model, x, sigmas, extra_args, callback, disable, s_noise, noise_sampler, eta, cfg_pp):
    """RES second-order multistep (Zhang et al. 2023, 'Refined exponential solver', arXiv 2308.02157),
    optionally ancestral (eta > 0) and with CFG++."""
    extra_args, s_in = setup(x, extra_args)
    uncond = [None]
    if cfg_pp:
        model, extra_args, uncond = capture_uncond(model, extra_args)
    noise_sampler = step_noise(x, extra_args, noise_sampler)
    old_sigma_down = old_denoised = None
    for i in steps(len(sigmas) - 1, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigma_down == 0 or old_denoised is None:
            if cfg_pp:
                x = denoised + to_d(x, sigmas[i], uncond[0]) * sigma_down
            else:
                x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = t_of_sigma(sigmas[i]), t_of_sigma(sigma_down)
            h = t_next - t
            # c2: where the previous x0 sits, relative to this step, in lambda
            c2 = (t_of_sigma(sigmas[i - 1]) - t_of_sigma(old_sigma_down)) / h
            phi1 = torch.expm1(-h) / -h
            phi2 = (phi1 - 1) / -h
            b1 = torch.nan_to_num(phi1 - phi2 / c2, nan=0.0)
            b2 = torch.nan_to_num(phi2 / c2, nan=0.0)
            current = denoised
            if cfg_pp:
                x = x + (denoised - uncond[0])
                current = uncond[0]
            x = sigma_of_t(h) * x + h * (b1 * current + b2 * old_denoised)
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        old_denoised = uncond[0] if cfg_pp else denoised
        old_sigma_down = sigma_down
    return x


@torch.no_grad()
def sample_res_multistep(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0,
                         noise_sampler=None):
    """RES multistep, deterministic (Zhang et al. 2023)."""
    return _res_multistep(model, x, sigmas, extra_args, callback, disable, s_noise, noise_sampler, 0.0, False)


@torch.no_grad()
def sample_res_multistep_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0,
                                noise_sampler=None):
    """RES multistep with CFG++ (Chung et al. 2024)."""
    return _res_multistep(model, x, sigmas, extra_args, callback, disable, s_noise, noise_sampler, 0.0, True)


@torch.no_grad()
def sample_res_multistep_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0,
                                   s_noise=1.0, noise_sampler=None):
    """Ancestral RES multistep."""
    return _res_multistep(model, x, sigmas, extra_args, callback, disable, s_noise, noise_sampler, eta, False)


@torch.no_grad()
def sample_res_multistep_ancestral_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None,
                                          eta=1.0, s_noise=1.0, noise_sampler=None):
    """Ancestral RES multistep with CFG++."""
    return _res_multistep(model, x, sigmas, extra_args, callback, disable, s_noise, noise_sampler, eta, True)


def _gradient_estimation(model, x, sigmas, extra_args, callback, disable, ge_gamma, cfg_pp):
    extra_args, s_in = setup(x, extra_args)
    uncond = [None]
    if cfg_pp:
        model, extra_args, uncond = capture_uncond(model, extra_args)
    old_d = None
    for i in steps(len(sigmas) - 1, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = to_d(x, sigmas[i], uncond[0] if cfg_pp else denoised)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x = denoised + d * sigmas[i + 1] if cfg_pp else x + d * dt
            if old_d is not None:
                # extrapolate the denoising direction from its last change (momentum-like)
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
    return x


@torch.no_grad()
def sample_gradient_estimation(model, x, sigmas, extra_args=None, callback=None, disable=None, ge_gamma=2.0):
    """Gradient-estimation sampler (Permenter & Yuan 2024, 'Interpreting and improving diffusion
    models from an optimization perspective')."""
    return _gradient_estimation(model, x, sigmas, extra_args, callback, disable, ge_gamma, False)


@torch.no_grad()
def sample_gradient_estimation_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None,
                                      ge_gamma=2.0):
    """Gradient estimation with CFG++."""
    return _gradient_estimation(model, x, sigmas, extra_args, callback, disable, ge_gamma, True)


def _seeds_noise(noise_sampler, s_from, s_to, segment):
    """Normalised noise for a sub-step of SEEDS' stochastic exponential integrator."""
    return segment.mul(2).expm1().neg().sqrt() * noise_sampler(s_from, s_to)


def _seeds_first_stage(model, x, sigma, sigma_next, denoised, r, eta, s_noise, noise_sampler, inject, s_in,
                       extra_args):
    """The stage every SEEDS variant begins with: an exponential step to the log-SNR fraction r of
    the way, with its share of fresh noise. Returns (h, h_eta, sigma_1, noise, denoised at sigma_1)."""
    lam_s, lam_t = t_of_sigma(sigma), t_of_sigma(sigma_next)
    h = lam_t - lam_s
    h_eta = h * (eta + 1)
    sigma_1 = sigma_of_t(torch.lerp(lam_s, lam_t, r))
    x_2 = sigma_1 / sigma * (-r * h * eta).exp() * x - h_phi_1(-r * h_eta) * denoised
    noise = None
    if inject:
        noise = _seeds_noise(noise_sampler, sigma, sigma_1, -r * h * eta)
        x_2 = x_2 + noise * sigma_1 * s_noise
    return h, h_eta, sigma_1, noise, model(x_2, sigma_1 * s_in, **extra_args)


@torch.no_grad()
def sample_seeds_2(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                   noise_sampler=None, r=0.5, solver_type="phi_1"):
    """SEEDS-2 (Gonzalez et al. 2023, 'SEEDS: Exponential SDE solvers'), two stages per step."""
    if solver_type not in ("phi_1", "phi_2"):
        raise ValueError(f"seeds_2: solver_type must be 'phi_1' or 'phi_2', got {solver_type!r}")
    extra_args, s_in = setup(x, extra_args)
    noise_sampler = step_noise(x, extra_args, noise_sampler)
    inject = eta > 0 and s_noise > 0
    for i in steps(len(sigmas) - 1, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        h, h_eta, sigma_1, noise, denoised_2 = _seeds_first_stage(
            model, x, sigmas[i], sigmas[i + 1], denoised, r, eta, s_noise, noise_sampler, inject, s_in, extra_args)
        decay = sigmas[i + 1] / sigmas[i] * (-h * eta).exp()
        if solver_type == "phi_1":
            x = decay * x - h_phi_1(-h_eta) * torch.lerp(denoised, denoised_2, 1 / (2 * r))
        else:
            b2 = h_phi_2(-h_eta) / r
            x = decay * x - ((h_phi_1(-h_eta) - b2) * denoised + b2 * denoised_2)
        if inject:
            segment = (r - 1) * h * eta
            noise = noise * segment.exp() + _seeds_noise(noise_sampler, sigma_1, sigmas[i + 1], segment)
            x = x + noise * sigmas[i + 1] * s_noise
    return x


@torch.no_grad()
def sample_seeds_3(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                   noise_sampler=None, r_1=1.0 / 3, r_2=2.0 / 3):
    """SEEDS-3 (Gonzalez et al. 2023), three stages per step."""
    extra_args, s_in = setup(x, extra_args)
    noise_sampler = step_noise(x, extra_args, noise_sampler)
    inject = eta > 0 and s_noise > 0
    for i in steps(len(sigmas) - 1, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        h, h_eta, sigma_1, noise, denoised_2 = _seeds_first_stage(
            model, x, sigmas[i], sigmas[i + 1], denoised, r_1, eta, s_noise, noise_sampler, inject, s_in,
            extra_args)
        sigma_2 = sigma_of_t(torch.lerp(t_of_sigma(sigmas[i]), t_of_sigma(sigmas[i + 1]), r_2))
        a2 = r_2 / r_1 * h_phi_2(-r_2 * h_eta)
        a1 = h_phi_1(-r_2 * h_eta) - a2
        x_3 = sigma_2 / sigmas[i] * (-r_2 * h * eta).exp() * x - (a1 * denoised + a2 * denoised_2)
        if inject:
            segment = (r_1 - r_2) * h * eta
            noise = noise * segment.exp() + _seeds_noise(noise_sampler, sigma_1, sigma_2, segment)
            x_3 = x_3 + noise * sigma_2 * s_noise
        denoised_3 = model(x_3, sigma_2 * s_in, **extra_args)
        b3 = h_phi_2(-h_eta) / r_2
        x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - ((h_phi_1(-h_eta) - b3) * denoised + b3 * denoised_3)
        if inject:
            segment = (r_2 - 1) * h * eta
            noise = noise * segment.exp() + _seeds_noise(noise_sampler, sigma_2, sigmas[i + 1], segment)
            x = x + noise * sigmas[i + 1] * s_noise
    return x


@torch.no_grad()
def sample_exp_heun_2_x0(model, x, sigmas, extra_args=None, callback=None, disable=None, solver_type="phi_2"):
    """Deterministic exponential Heun (second order, x0 prediction, log-SNR time): SEEDS-2 with r = 1
    and no noise."""
    return sample_seeds_2(model, x, sigmas, extra_args, callback, disable, eta=0.0, s_noise=0.0, r=1.0,
                          solver_type=solver_type)


@torch.no_grad()
def sample_exp_heun_2_x0_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0,
                             s_noise=1.0, noise_sampler=None, solver_type="phi_2"):
    """Stochastic exponential Heun: SEEDS-2 with r = 1."""
    return sample_seeds_2(model, x, sigmas, extra_args, callback, disable, eta=eta, s_noise=s_noise,
                          noise_sampler=noise_sampler, r=1.0, solver_type=solver_type)


def _er_noise_scaler(lam):
    """ER-SDE's default noise-scale function (Cui et al. 2023, 'ER-SDE-Solver', eq. 21 family)."""
    return lam * ((lam ** 0.3).exp() + 10.0)


@torch.no_grad()
def sample_er_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0,
                  noise_sampler=None, noise_scaler=None, max_stage=3):
    """Extended reverse-time SDE solver (Cui et al. 2023), up to third stage; integrals of the
    noise-scale function by a 200-point Riemann sum, as in the authors' code."""
    extra_args, s_in = setup(x, extra_args)
    noise_sampler = step_noise(x, extra_args, noise_sampler)
    scaler = _er_noise_scaler if noise_scaler is None else noise_scaler
    n_points = 200.0
    points = torch.arange(0, n_points, dtype=torch.float32, device=x.device)
    lams = sigmas  # ER-SDE's lambda is sigma itself for VE-parameterised (sigma-space) sampling
    old_denoised = old_denoised_d = None
    for i in steps(len(sigmas) - 1, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        stage = min(max_stage, i + 1)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lam_s, lam_t = lams[i], lams[i + 1]
            r = scaler(lam_t) / scaler(lam_s)
            x = r * x + (1 - r) * denoised
            if stage >= 2:
                dt = lam_t - lam_s
                step = -dt / n_points
                pos = lam_t + points * step
                scaled = scaler(pos)
                s = torch.sum(1 / scaled) * step
                denoised_d = (denoised - old_denoised) / (lam_s - lams[i - 1])
                x = x + (dt + s * scaler(lam_t)) * denoised_d
                if stage >= 3:
                    s_u = torch.sum((pos - lam_s) / scaled) * step
                    denoised_u = (denoised_d - old_denoised_d) / ((lam_s - lams[i - 2]) / 2)
                    x = x + (dt ** 2 / 2 + s_u * scaler(lam_t)) * denoised_u
                old_denoised_d = denoised_d
            if s_noise > 0:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * \
                    (lam_t ** 2 - lam_s ** 2 * r ** 2).sqrt().nan_to_num(nan=0.0)
        old_denoised = denoised
    return x
