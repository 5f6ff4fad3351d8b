"""Top-level sampling: KSampler / KSamplerAdvanced semantics on top of the sampler functions.

`sample(...)` takes a LATENT's unscaled samples and initial noise (see noise.prepare_noise) and
returns the denoised latent, unscaled, on CPU in float32 (COMPAT §10). It is the custom-sampling
path with fixed parts, as in ComfyUI: KSampler's sigmas, a CFGGuider and the named SAMPLER, run by
guiders.Guider.sample (SamplerCustom runs the same code with its own parts).
"""

from __future__ import annotations

import torch

from diffusion.sampling.guiders import CFGGuider, fix_empty_latent_channels
from diffusion.sampling.noise import prepare_noise
from diffusion.sampling.registry import DISCARD_PENULTIMATE_SIGMA, SAMPLER_NAMES, sampler_object
from diffusion.sampling.schedulers import SCHEDULER_NAMES, calculate_sigmas as schedule

__all__ = ["SAMPLER_NAMES", "SCHEDULER_NAMES", "prepare_noise", "calculate_sigmas", "sampling_sigmas",
           "fix_empty_latent_channels", "run_sampler", "sample"]


def calculate_sigmas(model_sampling, scheduler: str, steps: int) -> torch.Tensor:
    """The scheduler's sigmas for `steps` steps (float32, ending in 0)."""
    return schedule(model_sampling, scheduler, steps)


def _sigmas_for_sampler(model_sampling, scheduler, steps, sampler_name):
    if sampler_name in DISCARD_PENULTIMATE_SIGMA:
        # these second-order methods would waste their last step on a tiny sigma: plan one more step
        # and drop the penultimate sigma instead
        sigmas = schedule(model_sampling, scheduler, steps + 1)
        return torch.cat([sigmas[:-2], sigmas[-1:]])
    return schedule(model_sampling, scheduler, steps)


def sampling_sigmas(model_sampling, scheduler: str, steps: int, sampler_name: str, denoise=1.0,
                    start_step=None, last_step=None, force_full_denoise=False) -> torch.Tensor:
    """The sigmas KSampler(Advanced) actually runs: denoise tail, then end / start slicing."""
    if denoise is None or denoise > 0.9999:
        sigmas = _sigmas_for_sampler(model_sampling, scheduler, steps, sampler_name)
    elif denoise <= 0.0:
        return torch.zeros(0)
    else:
        # partial denoise: a longer schedule of which only the last steps+1 sigmas are used
        sigmas = _sigmas_for_sampler(model_sampling, scheduler, int(steps / denoise), sampler_name)
        sigmas = sigmas[-(steps + 1):]
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[:last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step < len(sigmas) - 1:
            sigmas = sigmas[start_step:]
        else:
            return torch.zeros(0)
    return sigmas


def run_sampler(model, noise, positive, negative, cfg, sampler_name, sigmas, latent_image, noise_mask=None,
                callback=None, seed=None, disable_pbar=True, model_options=None, sampler_options=None):
    """Sample along given sigmas with CFG (SamplerCustom); latent and noise unscaled, CPU or device."""
    guider = CFGGuider(model, positive, negative, cfg, model_options=model_options)
    return guider.sample(noise, latent_image, sampler_object(sampler_name, sampler_options), sigmas,
                         denoise_mask=noise_mask, callback=callback, disable_pbar=disable_pbar, seed=seed)


def sample(model, noise, positive, negative, cfg, sampler_name, scheduler, steps, latent_image, denoise=1.0,
           start_step=None, last_step=None, force_full_denoise=False, noise_mask=None, callback=None,
           seed=None, disable_pbar=True, model_options=None):
    """KSampler: denoise `latent_image` (unscaled LATENT samples) starting from `noise`.

    `callback(step, total, x0)` runs after each step with the 0-based step index, the number of
    steps and the current x0 prediction (sampler space, scaled latent). Returns CPU float32.
    """
    if sampler_name not in SAMPLER_NAMES:
        raise ValueError(f"unknown sampler {sampler_name!r}; expected one of {SAMPLER_NAMES}")
    if scheduler not in SCHEDULER_NAMES:
        raise ValueError(f"unknown scheduler {scheduler!r}; expected one of {SCHEDULER_NAMES}")
    sigmas = sampling_sigmas(model.model_sampling, scheduler, int(steps), sampler_name, denoise,
                             start_step, last_step, force_full_denoise)
    return run_sampler(model, noise, positive, negative, cfg, sampler_name, sigmas, latent_image,
                       noise_mask=noise_mask, callback=callback, seed=seed, disable_pbar=disable_pbar,
                       model_options=model_options)
