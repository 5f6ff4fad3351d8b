"""KSampler and KSamplerAdvanced: denoise a LATENT with a MODEL and two CONDITIONINGs.

The numerics (initial noise, sigmas, samplers, CFG, denoise, step slicing) are diffusion/sampling.py's
(COMPAT §10). This module maps the node inputs onto it, reports each step to the engine's progress
hook (which also raises InterruptProcessing when an interrupt was asked for) and attaches a preview
image when the prompt's preview method wants one.
"""
from __future__ import annotations

import torch

from diffusion import previews
from diffusion.sampling import ksampler as sampling
from graph.progress import check_interrupt, current_node, report_progress
from nodes import folder_paths
from nodes.spec import Combo, Float, Int, Link, Out, mappings, node

SEED_MAX = 0xFFFFFFFFFFFFFFFF  # COMPAT §10: seeds 0..2^64-1 are accepted


def _sampler_names() -> list:
    return list(sampling.SAMPLER_NAMES)


def _scheduler_names() -> list:
    return list(sampling.SCHEDULER_NAMES)


def _common_inputs(seed_name: str, seed_tip: str) -> list:
    """Inputs shared by both samplers, in KSampler's order (the editor maps widgets by this order)."""
    return [
        Int(seed_name, 0, min=0, max=SEED_MAX, control_after_generate=True, tooltip=seed_tip),
        Int("steps", 20, min=1, max=10000, tooltip="Number of denoising steps."),
        Float("cfg", 8.0, min=0.0, max=100.0, step=0.1, round=0.01,
              tooltip="Classifier-free guidance scale: how strongly the prompt is followed."),
        Combo("sampler_name", _sampler_names, tooltip="The solver that steps from noise towards the image."),
        Combo("scheduler", _scheduler_names, tooltip="How the noise levels are spaced over the steps."),
        Link("positive", "CONDITIONING", tooltip="What the image should show."),
        Link("negative", "CONDITIONING", tooltip="What the image should not show."),
        Link("latent_image", "LATENT", tooltip="The latent to denoise (empty for text-to-image)."),
    ]


_MODEL = Link("model", "MODEL", tooltip="The diffusion model that predicts the noise.")


def progress_callback(model):
    """callback(step, total, x0) for diffusion.sampling: progress, interrupt check, preview.

    report_progress raises InterruptProcessing when an interrupt was asked for, which ends the
    sampling loop between two steps.
    """
    previewer = _previewer(model)

    def callback(step, total, x0):
        preview = previewer(x0) if previewer is not None else None
        report_progress(step + 1, total, preview)

    return callback


def preview_method() -> str:
    """The running prompt's preview method: extra_data["preview_method"] (the server puts the
    --preview-method default there), "none" when unknown (e.g. "default") or outside a prompt."""
    run = current_node()
    extra = run.extra_data if run is not None else {}
    method = extra.get("preview_method") or "none"
    return method if method in previews.METHODS else "none"


def _previewer(model):
    """A function x0 -> PIL.Image for the running prompt's preview method, or None for no previews."""
    method = preview_method()
    if method == "none":
        return None
    return previews.get_previewer(model.latent_format, method,
                                  vae_approx_dirs=folder_paths.get_folder_paths("vae_approx"))


def common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent,
                    denoise=1.0, disable_noise=False, start_step=None, last_step=None,
                    force_full_denoise=False):
    """Sample `latent` and return a copy of the LATENT dict with the new samples."""
    latent_image = latent["samples"]
    check_interrupt()
    if disable_noise:
        noise = torch.zeros(latent_image.shape, dtype=latent_image.dtype, device="cpu")
    else:
        noise = sampling.prepare_noise(latent_image, seed, latent.get("batch_index"))
    samples = sampling.sample(
        model, noise, positive, negative, cfg, sampler_name, scheduler, steps, latent_image,
        denoise=denoise, start_step=start_step, last_step=last_step, force_full_denoise=force_full_denoise,
        noise_mask=latent.get("noise_mask"), callback=progress_callback(model), seed=seed,
        disable_pbar=True)
    out = latent.copy()  # keeps noise_mask / batch_index for the next stage
    out["samples"] = samples
    return (out,)


@node(category="sampling", display_name="KSampler",
      description="Denoises a latent with the model, steered by the positive and negative prompts.",
      outputs=[Out("LATENT", tooltip="The denoised latent.")],
      inputs=[_MODEL, *_common_inputs("seed", "Seed of the initial noise; the same seed gives the same image."),
              Float("denoise", 1.0, min=0.0, max=1.0, step=0.01,
                    tooltip="How much of the input latent is replaced by noise (1.0 for text-to-image, "
                            "lower for image-to-image).")])
class KSampler:
    def execute(self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                denoise=1.0):
        return common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                               latent_image, denoise=denoise)


@node(category="sampling", display_name="KSampler (Advanced)", outputs=[Out("LATENT")],
      inputs=[_MODEL, Combo("add_noise", ["enable", "disable"]),
              *_common_inputs("noise_seed", "Seed of the added noise."),
              Int("start_at_step", 0, min=0, max=10000), Int("end_at_step", 10000, min=0, max=10000),
              Combo("return_with_leftover_noise", ["disable", "enable"])])
class KSamplerAdvanced:
    def execute(self, model, add_noise, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative,
                latent_image, start_at_step, end_at_step, return_with_leftover_noise):
        return common_ksampler(
            model, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative,
            latent_image, disable_noise=add_noise == "disable",
            start_step=start_at_step, last_step=end_at_step,
            force_full_denoise=return_with_leftover_noise != "enable")


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = mappings(KSampler, KSamplerAdvanced)
