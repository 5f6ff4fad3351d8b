"""DPM-Solver (Lu et al. 2022): fixed-budget 'fast' and error-controlled 'adaptive' variants.

Both integrate in t = -log(sigma) with the noise-prediction form of the exponential integrator, from
sigmas[0] down to the smallest non-zero sigma of the schedule (they never step to sigma = 0, as in
ComfyUI). `dpm_fast` spends len(sigmas) - 1 model evaluations; `dpm_adaptive` ignores the step count.
"""

from __future__ import annotations

import math

import torch

from diffusion.sampling.samplers.common import ancestral_step, setup, sigma_of_t, step_noise, t_of_sigma


class _DPMSolver:
    def __init__(self, model, extra_args, s_in, info_callback=None):
        self.model = model
        self.extra_args = extra_args
        self.s_in = s_in
        self.info_callback = info_callback
        self.nfe = 0

    def eps(self, cache: dict, key: str, x, t):
        """Noise prediction at (x, t), memoised per step under `key`."""
        if key not in cache:
            sigma = sigma_of_t(t)
            cache[key] = (x - self.model(x, sigma * self.s_in, **self.extra_args)) / sigma
            self.nfe += 1
        return cache[key]

    def step_1(self, x, t, t_next, cache):
        """DPM-Solver-1 (equivalent to DDIM)."""
        h = t_next - t
        return x - sigma_of_t(t_next) * h.expm1() * self.eps(cache, "eps", x, t)

    def step_2(self, x, t, t_next, cache, r1=1 / 2):
        """DPM-Solver-2: one intermediate evaluation at t + r1 h."""
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - sigma_of_t(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return x - sigma_of_t(t_next) * h.expm1() * eps - sigma_of_t(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)

    def step_3(self, x, t, t_next, cache, r1=1 / 3, r2=2 / 3):
        """DPM-Solver-3: two intermediate evaluations at t + h/3 and t + 2h/3."""
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - sigma_of_t(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = (x - sigma_of_t(s2) * (r2 * h).expm1() * eps
              - sigma_of_t(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps))
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        return x - sigma_of_t(t_next) * h.expm1() * eps - sigma_of_t(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)

    def _noisy_target(self, t, t_next, t_end, eta):
        """With eta > 0, step deterministically to a lower noise level, then add noise back."""
        if not eta:
            return t_next, 0.0
        sd, _ = ancestral_step(sigma_of_t(t), sigma_of_t(t_next), eta)
        t_next_ = torch.minimum(t_end, t_of_sigma(sd))
        return t_next_, (sigma_of_t(t_next) ** 2 - sigma_of_t(t_next_) ** 2) ** 0.5

    def fast(self, x, t_start, t_end, nfe, eta, s_noise, noise_sampler):
        """Uniform steps in t with orders 3,3,...,then 2/1 so the evaluations sum to `nfe`."""
        if eta and not t_end > t_start:  # e.g. one step to 0: sigma_min is sigma_max (k-diffusion raises too)
            raise ValueError("dpm_fast: eta must be 0 when the schedule has a single noise level "
                             "(one step to sigma 0) or rises")
        m = nfe // 3 + 1
        ts = torch.linspace(float(t_start), float(t_end), m + 1, dtype=x.dtype, device=x.device)
        orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
        for i, order in enumerate(orders):
            cache = {}
            t, t_next = ts[i], ts[i + 1]
            t_next_, su = self._noisy_target(t, t_next, t_end, eta)
            if self.info_callback is not None:
                denoised = x - sigma_of_t(t) * self.eps(cache, "eps", x, t)
                self.info_callback({"x": x, "i": i, "sigma": sigma_of_t(t), "sigma_hat": sigma_of_t(t),
                                    "denoised": denoised})
            step = (self.step_1, self.step_2, self.step_3)[order - 1]
            x = step(x, t, t_next_, cache)
            if eta:
                x = x + su * s_noise * noise_sampler(sigma_of_t(t), sigma_of_t(t_next))
        return x

    def adaptive(self, x, t_start, t_end, order, rtol, atol, h_init, pcoeff, icoeff, dcoeff,
                 accept_safety, eta, s_noise, noise_sampler):
        """Embedded pairs (1,2) or (2,3) estimate the local error; a PID controller sets the step."""
        if order not in (2, 3):
            raise ValueError(f"dpm_adaptive: order must be 2 or 3, got {order}")
        forward = t_end > t_start
        if not forward and eta:
            raise ValueError("dpm_adaptive: eta must be 0 when integrating towards more noise")
        pid = _PIDStepSize(abs(h_init) * (1 if forward else -1), pcoeff, icoeff, dcoeff,
                           1.5 if eta else order, accept_safety)
        s = t_start
        x_prev = x
        i = 0
        while (s < t_end - 1e-5) if forward else (s > t_end + 1e-5):
            cache = {}
            t = torch.minimum(t_end, s + pid.h) if forward else torch.maximum(t_end, s + pid.h)
            t_, su = self._noisy_target(s, t, t_end, eta)
            eps = self.eps(cache, "eps", x, s)
            if order == 2:
                x_low = self.step_1(x, s, t_, cache)
                x_high = self.step_2(x, s, t_, cache)
            else:
                x_low = self.step_2(x, s, t_, cache, r1=1 / 3)
                x_high = self.step_3(x, s, t_, cache)
            delta = torch.maximum(torch.as_tensor(atol), rtol * torch.maximum(x_low.abs(), x_prev.abs()))
            error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
            if self.info_callback is not None:
                self.info_callback({"x": x, "i": i, "sigma": sigma_of_t(s), "sigma_hat": sigma_of_t(s),
                                    "denoised": x - sigma_of_t(s) * eps})
            if pid.propose_step(error):
                x_prev = x_low
                x = x_high
                if eta:
                    x = x + su * s_noise * noise_sampler(sigma_of_t(s), sigma_of_t(t))
                s = t
            i += 1
        return x


class _PIDStepSize:
    """PID step-size control on the inverse error (Söderlind 2003), limited by 1 + atan(f - 1)."""

    def __init__(self, h, pcoeff, icoeff, dcoeff, order, accept_safety, eps=1e-8):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.errs = []

    def propose_step(self, error) -> bool:
        inv_error = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv_error] * 3
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


def _range(sigmas):
    """(sigma_min, sigma_max) of a schedule: its last sigma, or the one before a final 0."""
    sigma_min = sigmas[-1] if sigmas[-1] > 0 else sigmas[-2]
    return sigma_min, sigmas[0]


def _solver_over_range(model, x, sigmas, extra_args, callback, eta, noise_sampler):
    """What both range-based samplers start from, as ComfyUI calls them: a solver, the t of the first
    and of the smallest non-zero sigma, and step noise only when eta asks for it."""
    extra_args, s_in = setup(x, extra_args)
    sigma_min, sigma_max = _range(sigmas)
    noise_sampler = step_noise(x, extra_args, noise_sampler) if eta else None
    solver = _DPMSolver(model, extra_args, s_in, info_callback=callback)
    return solver, t_of_sigma(sigma_max), t_of_sigma(sigma_min), noise_sampler


@torch.no_grad()
def sample_dpm_fast(model, x, sigmas, extra_args=None, callback=None, disable=None,
                    eta=0.0, s_noise=1.0, noise_sampler=None):
    """DPM-Solver 'fast' (Lu et al. 2022, sec. 3.4): orders 3/2/1 on uniform log-sigma steps."""
    if len(sigmas) < 2:
        return x
    solver, t_start, t_end, noise_sampler = _solver_over_range(model, x, sigmas, extra_args, callback, eta,
                                                               noise_sampler)
    return solver.fast(x, t_start, t_end, len(sigmas) - 1, eta, s_noise, noise_sampler)


@torch.no_grad()
def sample_dpm_adaptive(model, x, sigmas, extra_args=None, callback=None, disable=None, order=3,
                        rtol=0.05, atol=0.0078, h_init=0.05, pcoeff=0.0, icoeff=1.0, dcoeff=0.0,
                        accept_safety=0.81, eta=0.0, s_noise=1.0, noise_sampler=None):
    """DPM-Solver with adaptive step size (Lu et al. 2022, sec. 3.4 / app. C); only the first and
    smallest non-zero sigma of the schedule are used."""
    if len(sigmas) < 2:
        return x
    solver, t_start, t_end, noise_sampler = _solver_over_range(model, x, sigmas, extra_args, callback, eta,
                                                               noise_sampler)
    return solver.adaptive(x, t_start, t_end, order, rtol, atol, h_init, pcoeff, icoeff, dcoeff, accept_safety,
                           eta, s_noise, noise_sampler)
