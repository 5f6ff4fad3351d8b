"""Top-level sampling: KSampler / KSamplerAdvanced semantics on top of the sampler functions.

`sample(...)` takes a LATENT's unscaled samples and initial noise (see noise.prepare_noise) and
returns the denoised latent, unscaled, on CPU in float32 (COMPAT §10).
"""

from __future__ import annotations

import torch

from diffusion import memory
from diffusion.sampling.guidance import CFGDenoiser, InpaintDenoiser, prepare_mask
from diffusion.sampling.noise import prepare_noise
from diffusion.sampling.registry import DISCARD_PENULTIMATE_SIGMA, SAMPLER_NAMES, get_sampler
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


def fix_empty_latent_channels(model, latent: torch.Tensor) -> torch.Tensor:
    """An all-zero (empty) latent takes the model's channel count; anything else is left alone.

    Call before prepare_noise so the noise has the sampled shape.
    """
    channels = getattr(model.latent_format, "latent_channels", latent.shape[1])
    if latent.shape[1] != channels and torch.count_nonzero(latent) == 0:
        return torch.zeros((latent.shape[0], channels) + tuple(latent.shape[2:]), dtype=latent.dtype)
    return latent


def _device_of(model) -> torch.device:
    device = getattr(model, "load_device", None)
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run_sampler(model, noise, positive, negative, cfg, sampler_name, sigmas, latent_image, noise_mask=None,
                callback=None, seed=None, disable_pbar=True, model_options=None, sampler_options=None):
    """Sample along given sigmas (SamplerCustom-style); latent and noise unscaled, CPU or device."""
    latent_image = fix_empty_latent_channels(model, latent_image)
    if latent_image.shape != noise.shape:
        raise ValueError(f"sample: noise shape {tuple(noise.shape)} differs from latent shape "
                         f"{tuple(latent_image.shape)}")
    sampler = get_sampler(sampler_name)
    if len(sigmas) == 0:
        return latent_image.detach().to("cpu", torch.float32).clone()
    # a single sigma runs no step but still returns the noised latent (KSamplerAdvanced "add noise only")
    device = _device_of(model)
    ms = model.model_sampling
    latent = latent_image.to(device, torch.float32)
    if torch.count_nonzero(latent) > 0:  # an empty latent is not scaled (COMPAT §1.6)
        latent = model.latent_format.process_in(latent)
    noise = noise.to(device, torch.float32)
    sigmas = sigmas.to(device, torch.float32)

    denoiser = CFGDenoiser(model, positive, negative, cfg, model_options=model_options)
    wrapped = denoiser
    if noise_mask is not None:
        inpaint_noise = noise
        if sampler_name == "ddim":
            # DDIM keeps the masked-out area re-noised with independent noise (seed + 1)
            generator = torch.manual_seed(((41 if seed is None else int(seed)) + 1) % 2 ** 64)
            inpaint_noise = torch.randn(noise.shape, generator=generator).to(device)
        mask = prepare_mask(noise_mask, latent.shape, device)
        wrapped = InpaintDenoiser(denoiser, latent, inpaint_noise, mask)

    x = ms.noise_scaling(sigmas[0], noise, latent, max_denoise=ms.is_max_denoise(sigmas[0]))
    total = len(sigmas) - 1

    def on_step(info):
        if callback is not None:
            callback(info["i"], total, info["denoised"])

    extra_args = {"seed": seed}
    if device.type == "cpu":
        memory.tune_cpu_allocator()
    try:
        samples = sampler(wrapped, x, sigmas, extra_args=extra_args, callback=on_step, disable=disable_pbar,
                          **(sampler_options or {}))
    finally:
        if device.type == "cpu":
            memory.release_cpu_memory()
    samples = ms.inverse_noise_scaling(sigmas[-1], samples)
    samples = model.latent_format.process_out(samples)
    return samples.to("cpu", torch.float32)


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
