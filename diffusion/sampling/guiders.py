"""GUIDER values: what the sampler calls for an x0 prediction, and the sampling run around it.

A guider holds a MODEL and its conditionings (ComfyUI's CFGGuider and its subclasses). `sample()` is
the one sampling run every path shares, KSampler included: scale the latent into the model's space,
add the noise for the first sigma, keep an inpainting mask, run the SAMPLER along the sigmas and
scale back. The guidance itself is guidance.CFGDenoiser; the guiders here only combine it.
"""

from __future__ import annotations

import math

import torch

from diffusion import memory
from diffusion.sampling.guidance import CFGDenoiser, InpaintDenoiser, prepare_mask

# MODEL options that mix cond and uncond; a plain (unguided) prediction must not run them
_CFG_HOOKS = ("sampler_cfg_function", "sampler_post_cfg_function")


def fix_empty_latent_channels(model, latent: torch.Tensor) -> torch.Tensor:
    """An all-zero (empty) latent takes the model's channel count; anything else is left alone.

    Call before the noise is drawn so the noise has the sampled shape.
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


def _inpaint_noise(sampler, noise: torch.Tensor, seed) -> torch.Tensor:
    if not getattr(sampler, "random_inpaint_noise", False):
        return noise
    # DDIM keeps the masked-out area re-noised with independent noise (seed + 1, ComfyUI's default 41)
    generator = torch.manual_seed(((41 if seed is None else int(seed)) + 1) % 2 ** 64)
    return torch.randn(noise.shape, generator=generator).to(noise.device)


def add_noise(model, noise: torch.Tensor, latent_image: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """The latent noised to the span of `sigmas` (|first - last|, or the only sigma), unscaled (AddNoise):
    what a sampler starting from there expects after a run without noise."""
    scale = (sigmas[0] - sigmas[-1]).abs() if len(sigmas) > 1 else sigmas[0]
    latent = latent_image.to(torch.float32)
    if torch.count_nonzero(latent) > 0:  # an empty latent is not scaled
        latent = model.latent_format.process_in(latent)
    noisy = model.model_sampling.noise_scaling(scale, noise.to(torch.float32), latent)
    return torch.nan_to_num(model.latent_format.process_out(noisy), nan=0.0, posinf=0.0, neginf=0.0)


class Guider:
    """Base GUIDER: subclasses say how to build the denoiser (x, sigma, **extra_args) -> x0."""

    def __init__(self, model, model_options: dict | None = None):
        self.model = model
        self.model_options = model_options

    @property
    def model_patcher(self):
        """ComfyUI's name for the guider's MODEL (plugins read it)."""
        return self.model

    def denoiser(self):
        raise NotImplementedError

    def sample(self, noise: torch.Tensor, latent_image: torch.Tensor, sampler, sigmas: torch.Tensor,
               denoise_mask=None, callback=None, disable_pbar=True, seed=None) -> torch.Tensor:
        """Denoise `latent_image` (unscaled LATENT samples) from `noise` along `sigmas` with a SAMPLER.

        `callback(step, total, x0)` runs after each step (0-based step, x0 in the sampler's scaled
        space). Returns the unscaled result on CPU in float32; an empty schedule returns the latent.
        """
        model = self.model
        latent_image = fix_empty_latent_channels(model, latent_image)
        if latent_image.shape != noise.shape:
            raise ValueError(f"sample: noise shape {tuple(noise.shape)} differs from latent shape "
                             f"{tuple(latent_image.shape)}")
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

        wrapped = self.denoiser()
        if denoise_mask is not None:
            mask = prepare_mask(denoise_mask, latent.shape, device)
            wrapped = InpaintDenoiser(wrapped, latent, _inpaint_noise(sampler, noise, seed), mask)

        x = ms.noise_scaling(sigmas[0], noise, latent, max_denoise=ms.is_max_denoise(sigmas[0]))
        total = len(sigmas) - 1

        def on_step(info):
            if callback is not None:
                callback(info["i"], total, info["denoised"])

        if device.type == "cpu":
            memory.tune_cpu_allocator()
        try:
            samples = sampler.sample(wrapped, x, sigmas, extra_args={"seed": seed}, callback=on_step,
                                     disable=disable_pbar)
        finally:
            if device.type == "cpu":
                memory.release_cpu_memory()
        samples = ms.inverse_noise_scaling(sigmas[-1], samples)
        samples = model.latent_format.process_out(samples)
        return samples.to("cpu", torch.float32)


class CFGGuider(Guider):
    """Classifier-free guidance between a positive and a negative CONDITIONING (KSampler's guider)."""

    def __init__(self, model, positive, negative, cfg: float, model_options: dict | None = None):
        super().__init__(model, model_options)
        self.positive, self.negative, self.cfg = positive, negative, float(cfg)

    def denoiser(self):
        return CFGDenoiser(self.model, self.positive, self.negative, self.cfg, model_options=self.model_options)


class BasicGuider(CFGGuider):
    """One CONDITIONING, no guidance (for models distilled without CFG, e.g. Flux-style or turbo)."""

    def __init__(self, model, conditioning, model_options: dict | None = None):
        super().__init__(model, conditioning, None, 1.0, model_options)


def _with_prompt_type(conditioning, prompt_type: str, force: bool = False):
    """A copy of a CONDITIONING list whose entries say which side they are on (the SDXL refiner's
    default aesthetic score depends on it). Malformed items are left for the denoiser to report."""
    if not isinstance(conditioning, (list, tuple)):
        return conditioning
    tagged = []
    for item in conditioning:
        if isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[1], dict):
            options = {**item[1], "prompt_type": prompt_type} if force else {"prompt_type": prompt_type, **item[1]}
            item = [item[0], options]
        tagged.append(item)
    return tagged


def _without_cfg_hooks(options: dict | None) -> dict:
    return {k: v for k, v in (options or {}).items() if k not in _CFG_HOOKS}


def _plain_denoiser(model, conditioning, model_options):
    """x0 of one CONDITIONING list, without the MODEL's CFG hooks (they belong to a guided mix)."""
    denoiser = CFGDenoiser(model, conditioning, None, 1.0, model_options=model_options)
    denoiser.model_options = _without_cfg_hooks(denoiser.model_options)
    return denoiser


class DualCFGDenoiser:
    """Two positive prompts against one negative (ComfyUI's DualCFGGuider), styles:

    - regular: cfg(cond2 vs negative, cfg_cond2_negative) + cfg_conds * (x0(cond1) - x0(cond2))
    - nested:  x0(neg) + cfg_cond2_negative * (cfg(cond1 vs cond2, cfg_conds) - x0(neg))

    where cfg(...) is CFGDenoiser's guided mix (the MODEL's CFG hooks apply there only). cond2 counts as
    a negative prompt for the model's extra inputs, as in ComfyUI. Two batched forwards per step.
    """

    def __init__(self, model, cond1, cond2, negative, cfg_conds, cfg_cond2_negative, nested=False,
                 model_options=None):
        self.model_sampling = model.model_sampling
        self.cfg1, self.cfg2, self.nested = float(cfg_conds), float(cfg_cond2_negative), bool(nested)
        middle = _with_prompt_type(cond2, "negative", force=True)
        if self.nested:
            self.guided = CFGDenoiser(model, cond1, middle, self.cfg1, model_options=model_options)
            self.plain = _plain_denoiser(model, _with_prompt_type(negative, "negative"), model_options)
        else:
            self.guided = CFGDenoiser(model, middle, negative, self.cfg2, model_options=model_options)
            self.plain = _plain_denoiser(model, _with_prompt_type(cond1, "positive"), model_options)

    def __call__(self, x, sigma, model_options=None, seed=None, **_ignored):
        plain_options = _without_cfg_hooks(model_options)
        if self.nested:
            text = self.guided(x, sigma, model_options=model_options, seed=seed)
            negative = self.plain(x, sigma, model_options=plain_options, seed=seed)
            return negative + self.cfg2 * (text - negative)
        if (math.isclose(self.cfg1, 1.0) and math.isclose(self.cfg2, 1.0)
                and not (model_options or {}).get("disable_cfg1_optimization", False)):
            # both scales 1: the mix is the cond1 prediction alone (ComfyUI skips the other passes too)
            return self.plain(x, sigma, model_options=plain_options, seed=seed)
        middle = []

        def keep_middle(args):
            middle.append(args["cond_denoised"])
            return args["denoised"]

        options = dict(model_options or {})
        options["sampler_post_cfg_function"] = list(options.get("sampler_post_cfg_function", [])) + [keep_middle]
        guided = self.guided(x, sigma, model_options=options, seed=seed)
        positive = self.plain(x, sigma, model_options=plain_options, seed=seed)
        return guided + (positive - middle[-1]) * self.cfg1


class DualCFGGuider(Guider):
    """GUIDER for DualCFGDenoiser."""

    def __init__(self, model, cond1, cond2, negative, cfg_conds: float, cfg_cond2_negative: float,
                 nested: bool = False, model_options: dict | None = None):
        super().__init__(model, model_options)
        self.conds = (cond1, cond2, negative)
        self.cfg_conds, self.cfg_cond2_negative, self.nested = float(cfg_conds), float(cfg_cond2_negative), nested

    def denoiser(self):
        return DualCFGDenoiser(self.model, *self.conds, self.cfg_conds, self.cfg_cond2_negative, self.nested,
                               model_options=self.model_options)
