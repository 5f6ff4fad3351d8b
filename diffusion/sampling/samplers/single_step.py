"""Single-step samplers (k-diffusion style): Euler, Heun, DPM2, DPM-Solver++(2S/SDE), DDPM, LCM.

Every sampler has k-diffusion's signature (see diffusion/sampling/registry.py, which names them all).
Multistep methods live in multistep.py, DPM-Solver in dpm_solver.py, UniPC in uni_pc.py, SA-Solver in
sa_solver.py, exponential integrators (RES, SEEDS, ER-SDE, gradient estimation) in exponential.py.
"""

from __future__ import annotations

import torch

from diffusion.sampling.samplers.common import (ancestral_step, capture_uncond, churn, log_lerp, report, sde_noise, setup,
                              sigma_of_t, step_noise, steps, t_of_sigma, to_d)


def _euler(model, x, sigmas, extra_args, callback, disable, s_churn, s_tmin, s_tmax, s_noise, cfg_pp):
    extra_args, s_in = setup(x, extra_args)
    if cfg_pp:
        model, extra_args, uncond = capture_uncond(model, extra_args)
    n = len(sigmas) - 1
    for i in steps(n, disable):
        x, sigma_hat = churn(x, sigmas[i], n, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigma_hat, denoised)
        if cfg_pp:  # step direction from the unconditional prediction, starting at the guided x0
            x = denoised + to_d(x, sigma_hat, uncond[0]) * sigmas[i + 1]
        else:
            x = x + to_d(x, sigma_hat, denoised) * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None,
                 s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Alg. 2 with optional churn)."""
    return _euler(model, x, sigmas, extra_args, callback, disable, s_churn, s_tmin, s_tmax, s_noise, False)


@torch.no_grad()
def sample_euler_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Euler with CFG++ (Chung et al. 2024): step direction from the unconditional prediction."""
    return _euler(model, x, sigmas, extra_args, callback, disable, 0.0, 0.0, float("inf"), 1.0, True)


def _euler_ancestral(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, cfg_pp):
    extra_args, s_in = setup(x, extra_args)
    if cfg_pp:
        model, extra_args, uncond = capture_uncond(model, extra_args)
    noise_sampler = step_noise(x, extra_args, noise_sampler)
    for i in steps(len(sigmas) - 1, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if cfg_pp:
            x = denoised + to_d(x, sigmas[i], uncond[0]) * sigma_down
        elif sigma_down == 0:
            # ComfyUI's sample_euler_ancestral: the x0 prediction itself, and no noise even when an
            # eta > 1 made sigma_down reach 0 before the end of the schedule
            x = denoised
            continue
        else:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None,
                           eta=1.0, s_noise=1.0, noise_sampler=None):
    """Ancestral Euler: an Euler step down to sigma_down, then fresh noise up to sigmas[i+1]."""
    return _euler_ancestral(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, False)


@torch.no_grad()
def sample_euler_ancestral_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None,
                                  eta=1.0, s_noise=1.0, noise_sampler=None):
    """Ancestral Euler with CFG++ (Chung et al. 2024)."""
    return _euler_ancestral(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, True)


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None,
                s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """Heun's second-order method (Karras et al. 2022, Alg. 2); Euler for the final step to 0."""
    extra_args, s_in = setup(x, extra_args)
    n = len(sigmas) - 1
    for i in steps(n, disable):
        x, sigma_hat = churn(x, sigmas[i], n, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        report(callback, x, i, sigmas[i], sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in, **extra_args))
        x = x + (d + d_2) / 2 * dt
    return x


@torch.no_grad()
def sample_heunpp2(model, x, sigmas, extra_args=None, callback=None, disable=None,
                   s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """Heun++ (community method, 'sd-webui-samplers-scheduler'): up to three slope evaluations per
    step, weighted by the sigmas they were taken at; Heun for the penultimate and Euler for the last."""
    extra_args, s_in = setup(x, extra_args)
    n = len(sigmas) - 1
    s_end = sigmas[-1]
    for i in steps(n, disable):
        x, sigma_hat = churn(x, sigmas[i], n, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        report(callback, x, i, sigmas[i], sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == s_end:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in, **extra_args))
        if sigmas[i + 2] == s_end:
            w2 = sigmas[i + 1] / (2 * sigmas[0])
            x = x + (d * (1 - w2) + d_2 * w2) * dt
            continue
        x_3 = x_2 + d_2 * (sigmas[i + 2] - sigmas[i + 1])
        d_3 = to_d(x_3, sigmas[i + 2], model(x_3, sigmas[i + 2] * s_in, **extra_args))
        w2 = sigmas[i + 1] / (3 * sigmas[0])
        w3 = sigmas[i + 2] / (3 * sigmas[0])
        x = x + ((1 - w2 - w3) * d + w2 * d_2 + w3 * d_3) * dt
    return x


@torch.no_grad()
def sample_dpm_2(model, x, sigmas, extra_args=None, callback=None, disable=None,
                 s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """DPM-Solver-2 flavoured midpoint method (Karras et al. 2022, 'DPM2'): slope at the geometric
    midpoint sigma; Euler for the final step to 0."""
    extra_args, s_in = setup(x, extra_args)
    n = len(sigmas) - 1
    for i in steps(n, disable):
        x, sigma_hat = churn(x, sigmas[i], n, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        report(callback, x, i, sigmas[i], sigma_hat, denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
            continue
        sigma_mid = log_lerp(sigma_hat, sigmas[i + 1])
        x_2 = x + d * (sigma_mid - sigma_hat)
        d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in, **extra_args))
        x = x + d_2 * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None,
                           eta=1.0, s_noise=1.0, noise_sampler=None):
    """Ancestral DPM2: the midpoint step down to sigma_down, then noise up to sigmas[i+1]."""
    extra_args, s_in = setup(x, extra_args)
    noise_sampler = step_noise(x, extra_args, noise_sampler)
    for i in steps(len(sigmas) - 1, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            # Euler to sigma_down = 0; like k-diffusion and ComfyUI no noise follows, even mid-schedule
            x = x + d * (sigma_down - sigmas[i])
            continue
        sigma_mid = log_lerp(sigmas[i], sigma_down)
        x_2 = x + d * (sigma_mid - sigmas[i])
        d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in, **extra_args))
        x = x + d_2 * (sigma_down - sigmas[i])
        x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _dpmpp_2s_step(model, x, sigma, sigma_down, denoised, s_in, extra_args, shift=None):
    """Second-order single-step DPM-Solver++ (2S) from sigma to sigma_down, midpoint r = 1/2.

    `shift` (CFG++) is added to x before the exponential-integrator moves.
    """
    t, t_next = t_of_sigma(sigma), t_of_sigma(sigma_down)
    h = t_next - t
    s = t + h / 2
    base = x if shift is None else x + shift
    x_2 = (sigma_of_t(s) / sigma_of_t(t)) * base - (-h / 2).expm1() * denoised
    denoised_2 = model(x_2, sigma_of_t(s) * s_in, **extra_args)
    return (sigma_of_t(t_next) / sigma_of_t(t)) * base - (-h).expm1() * denoised_2


def _dpmpp_2s_ancestral(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, cfg_pp):
    extra_args, s_in = setup(x, extra_args)
    if cfg_pp:
        model, extra_args, uncond = capture_uncond(model, extra_args)
    noise_sampler = step_noise(x, extra_args, noise_sampler)
    for i in steps(len(sigmas) - 1, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigma_down == 0 and cfg_pp:
            x = denoised + to_d(x, sigmas[i], uncond[0]) * sigma_down
        elif sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            shift = denoised - uncond[0] if cfg_pp else None
            x = _dpmpp_2s_step(model, x, sigmas[i], sigma_down, denoised, s_in, extra_args, shift=shift)
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None,
                              eta=1.0, s_noise=1.0, noise_sampler=None):
    """Ancestral DPM-Solver++(2S) (Lu et al. 2022, 'DPM-Solver++')."""
    return _dpmpp_2s_ancestral(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, False)


@torch.no_grad()
def sample_dpmpp_2s_ancestral_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None,
                                     eta=1.0, s_noise=1.0, noise_sampler=None):
    """Ancestral DPM-Solver++(2S) with CFG++ (Chung et al. 2024)."""
    return _dpmpp_2s_ancestral(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, True)


def _dpmpp_sde(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, r, cpu):
    extra_args, s_in = setup(x, extra_args)
    if len(sigmas) < 2:
        return x
    noise_sampler = sde_noise(x, sigmas, extra_args, noise_sampler, cpu=cpu)
    fac = 1 / (2 * r)
    for i in steps(len(sigmas) - 1, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = t_of_sigma(sigmas[i]), t_of_sigma(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        # stage 1: stochastic first-order move to the intermediate time s
        sd, su = ancestral_step(sigma_of_t(t), sigma_of_t(s), eta)
        s_ = t_of_sigma(sd)
        x_2 = (sigma_of_t(s_) / sigma_of_t(t)) * x - (t - s_).expm1() * denoised
        x_2 = x_2 + noise_sampler(sigma_of_t(t), sigma_of_t(s)) * s_noise * su
        denoised_2 = model(x_2, sigma_of_t(s) * s_in, **extra_args)
        # stage 2: full step with the blended x0 estimate
        sd, su = ancestral_step(sigma_of_t(t), sigma_of_t(t_next), eta)
        t_next_ = t_of_sigma(sd)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (sigma_of_t(t_next_) / sigma_of_t(t)) * x - (t - t_next_).expm1() * denoised_d
        x = x + noise_sampler(sigma_of_t(t), sigma_of_t(t_next)) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_sde(model, x, sigmas, extra_args=None, callback=None, disable=None,
                     eta=1.0, s_noise=1.0, noise_sampler=None, r=1 / 2):
    """DPM-Solver++ (stochastic, 2 stages per step; Lu et al. 2022) with Brownian-tree noise on CPU."""
    return _dpmpp_sde(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, r, cpu=True)


@torch.no_grad()
def sample_dpmpp_sde_gpu(model, x, sigmas, extra_args=None, callback=None, disable=None,
                         eta=1.0, s_noise=1.0, noise_sampler=None, r=1 / 2):
    """DPM-Solver++ SDE with the Brownian tree built on x's device."""
    return _dpmpp_sde(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, r, cpu=False)


@torch.no_grad()
def sample_ddpm(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2) between the scheduler's sigmas.

    The update runs in the variance-preserving frame x_vp = x / sqrt(1 + sigma^2), where
    abar = 1 / (1 + sigma^2) and eps = (x - x0) / sigma.
    """
    extra_args, s_in = setup(x, extra_args)
    noise_sampler = step_noise(x, extra_args, noise_sampler)
    for i in steps(len(sigmas) - 1, disable):
        sigma, sigma_prev = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        report(callback, x, i, sigma, sigma, denoised)
        eps = (x - denoised) / sigma
        abar = 1 / (sigma ** 2 + 1)
        abar_prev = 1 / (sigma_prev ** 2 + 1)
        alpha = abar / abar_prev
        x_vp = x / (1 + sigma ** 2) ** 0.5
        mean = (x_vp - (1 - alpha) * eps / (1 - abar) ** 0.5) / alpha ** 0.5
        if sigma_prev > 0:
            var = (1 - alpha) * (1 - abar_prev) / (1 - abar)
            mean = mean + var ** 0.5 * noise_sampler(sigma, sigma_prev)
            x = mean * (1 + sigma_prev ** 2) ** 0.5
        else:
            x = mean
    return x


@torch.no_grad()
def sample_lcm(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    """Latent Consistency Model multistep sampling (Luo et al. 2023): jump to x0, re-noise to the
    next sigma with fresh noise."""
    extra_args, s_in = setup(x, extra_args)
    noise_sampler = step_noise(x, extra_args, noise_sampler)
    model_sampling = getattr(model, "model_sampling", None)
    for i in steps(len(sigmas) - 1, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            noise = noise_sampler(sigmas[i], sigmas[i + 1])
            if model_sampling is not None:
                x = model_sampling.noise_scaling(sigmas[i + 1], noise, x)
            else:
                x = x + noise * sigmas[i + 1]
    return x
