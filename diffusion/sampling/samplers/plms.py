"""PLMS: pseudo linear multistep (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on
Manifolds"), the sampler of the original Stable Diffusion scripts and diffusers' PNDMScheduler with
skip_prk_steps=True. ComfyUI has no such sampler; it comes after ComfyUI's names in the registry.

In sigma space PNDM's "transfer" step (its DDIM-like update x_t -> x_t') is exactly the Euler step
x + (sigma_next - sigma) * eps, so PLMS is an Adams-Bashforth method on the eps slope with fixed
(uniform-step) weights, up to fourth order. Its first step is a pseudo improved Euler (Heun) step whose
second slope is not kept in the history: N steps cost N + 1 model calls (a single step costs one).

Sigmas: any decreasing schedule works; the original timesteps are DDIM's uniform spacing from index 1
(1, 1 + 1000/N, ...), which is the `ddim_uniform` scheduler. Unlike ComfyUI's multistep samplers the
last step is a multistep step too, also to sigma 0 (diffusers' PNDMScheduler with set_alpha_to_one=True);
diffusers' Stable Diffusion config (set_alpha_to_one=False) ends at the table's first sigma instead,
i.e. the same sigmas with a last value of sigma(t=0) in place of 0.
"""

from __future__ import annotations

import torch

from diffusion.sampling.samplers.common import ADAMS_BASHFORTH_WEIGHTS, report, setup, steps, to_d


@torch.no_grad()
def sample_plms(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Pseudo linear multistep: a Heun warm-up step, then Adams-Bashforth of order 2, 3, 4 on eps."""
    extra_args, s_in = setup(x, extra_args)
    n = len(sigmas) - 1
    history = []  # eps slopes at the sigmas visited, oldest first (at most four)
    for i in steps(n, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        history = (history + [d])[-4:]
        dt = sigmas[i + 1] - sigmas[i]
        if i == 0 and n > 1 and sigmas[1] > 0:
            # warm-up without history: average the slopes at both ends of an Euler trial step
            x_trial = x + d * dt
            d_end = to_d(x_trial, sigmas[1], model(x_trial, sigmas[1] * s_in, **extra_args))
            x = x + (d + d_end) / 2 * dt
        else:
            weights = ADAMS_BASHFORTH_WEIGHTS[len(history)]
            x = x + dt * sum(w * h for w, h in zip(weights, reversed(history)))
    return x
