"""Conditioning nodes of ComfyUI's core list: combine, average, concat, areas, masks, strength,
timestep ranges, zero-out, and InpaintModelConditioning.

Most of them only copy a CONDITIONING list with new option keys; the sampler's guidance reads the
keys (diffusion/sampling/guidance.py, conditioning_areas.py): 'area' (h, w, y, x) in latent units
or ("percentage", h, w, y, x), 'strength', 'mask' + 'mask_strength' + 'set_area_to_bounds',
'start_percent' / 'end_percent', and for inpainting UNets 'concat_latent_image' / 'concat_mask'
(diffusion/models/inpaint.py).
"""
from __future__ import annotations

import logging

import torch

from diffusion.models.inpaint import masked_pixels
from nodes.spec import MAX_RESOLUTION, Boolean, Combo, Float, Int, Link, Out, mappings, node

log = logging.getLogger(__name__)

LATENT_RATIO = 8  # ConditioningSetArea's pixel sizes become latent units (as ComfyUI, for every model)


def set_values(conditioning, **values) -> list:
    """A copy of the CONDITIONING list with `values` set in every entry's options (tensors shared)."""
    return [[t, {**options, **values}] for t, options in conditioning]


def _first(conditioning, node_name: str, name: str):
    if not conditioning:
        raise ValueError(f"{node_name}: {name} is an empty CONDITIONING list")
    if len(conditioning) > 1:
        log.warning("%s: %s holds %d conditionings; only the first one is used", node_name, name,
                    len(conditioning))
    return conditioning[0]


def _cond(name: str):
    return Link(name, "CONDITIONING")


def _strength():
    return Float("strength", 1.0, min=0.0, max=10.0, step=0.01)


@node(category="conditioning", display_name="Conditioning (Combine)", outputs=[Out("CONDITIONING")],
      inputs=[_cond("conditioning_1"), _cond("conditioning_2")])
class ConditioningCombine:
    """Both lists' conditionings act together; the sampler averages their predictions."""

    def execute(self, conditioning_1, conditioning_2):
        return (list(conditioning_1) + list(conditioning_2),)


# ComfyUI registers this display name under "ConditioningAverage " (trailing space), so the editor
# shows the class name; we do the same for equal /object_info.
@node(category="conditioning", outputs=[Out("CONDITIONING")],
      inputs=[_cond("conditioning_to"), _cond("conditioning_from"),
              Float("conditioning_to_strength", 1.0, min=0.0, max=1.0, step=0.01)])
class ConditioningAverage:
    """Each `to` embedding blended with the first `from` one: to * s + from * (1 - s); `from` is cut
    or zero-padded to the token count of `to`."""

    def execute(self, conditioning_to, conditioning_from, conditioning_to_strength):
        cond_from, options_from = _first(conditioning_from, "ConditioningAverage", "conditioning_from")
        pooled_from = options_from.get("pooled_output")
        s = conditioning_to_strength
        out = []
        for t1, options in conditioning_to:
            if t1.shape[2] != cond_from.shape[2]:
                raise ValueError(f"ConditioningAverage: embedding widths differ ({t1.shape[2]} vs "
                                 f"{cond_from.shape[2]}); both must come from the same text encoder")
            t0 = cond_from[:, :t1.shape[1]]
            if t0.shape[1] < t1.shape[1]:
                pad = torch.zeros((t0.shape[0], t1.shape[1] - t0.shape[1], t1.shape[2]), dtype=t0.dtype)
                t0 = torch.cat([t0, pad], dim=1)
            options = dict(options)
            pooled_to = options.get("pooled_output", pooled_from)
            if pooled_from is not None and pooled_to is not None:
                options["pooled_output"] = torch.mul(pooled_to, s) + torch.mul(pooled_from, 1.0 - s)
            elif pooled_from is not None:
                options["pooled_output"] = pooled_from
            out.append([torch.mul(t1, s) + torch.mul(t0, 1.0 - s), options])
        return (out,)


@node(category="conditioning", display_name="Conditioning (Concat)", outputs=[Out("CONDITIONING")],
      inputs=[_cond("conditioning_to"), _cond("conditioning_from")])
class ConditioningConcat:
    """The first `from` embedding appended to each `to` embedding along the tokens."""

    def execute(self, conditioning_to, conditioning_from):
        cond_from = _first(conditioning_from, "ConditioningConcat", "conditioning_from")[0]
        out = []
        for t1, options in conditioning_to:
            if t1.shape[2] != cond_from.shape[2]:
                raise ValueError(f"ConditioningConcat: embedding widths differ ({t1.shape[2]} vs "
                                 f"{cond_from.shape[2]}); both must come from the same text encoder")
            out.append([torch.cat((t1, cond_from.to(t1)), dim=1), dict(options)])
        return (out,)


def _px(name: str, default: int, minimum: int):
    return Int(name, default, min=minimum, max=MAX_RESOLUTION, step=8)


@node(category="conditioning", display_name="Conditioning (Set Area)", outputs=[Out("CONDITIONING")],
      inputs=[_cond("conditioning"), _px("width", 64, 64), _px("height", 64, 64), _px("x", 0, 0),
              _px("y", 0, 0), _strength()])
class ConditioningSetArea:
    """The conditioning acts only on a rectangle of the image (pixels, stored in latent units)."""

    def execute(self, conditioning, width, height, x, y, strength):
        area = (height // LATENT_RATIO, width // LATENT_RATIO, y // LATENT_RATIO, x // LATENT_RATIO)
        return (set_values(conditioning, area=area, strength=strength, set_area_to_bounds=False),)


def _fraction(name: str, default: float):
    return Float(name, default, min=0, max=1.0, step=0.01)


@node(category="conditioning", display_name="Conditioning (Set Area with Percentage)",
      outputs=[Out("CONDITIONING")],
      inputs=[_cond("conditioning"), _fraction("width", 1.0), _fraction("height", 1.0), _fraction("x", 0),
              _fraction("y", 0), _strength()])
class ConditioningSetAreaPercentage:
    """The area as fractions of the image; resolved to latent units when sampling starts."""

    def execute(self, conditioning, width, height, x, y, strength):
        return (set_values(conditioning, area=("percentage", height, width, y, x), strength=strength,
                           set_area_to_bounds=False),)


@node(category="conditioning", outputs=[Out("CONDITIONING")], inputs=[_cond("conditioning"), _strength()])
class ConditioningSetAreaStrength:
    def execute(self, conditioning, strength):
        return (set_values(conditioning, strength=strength),)


@node(category="conditioning", display_name="Conditioning (Set Mask)", outputs=[Out("CONDITIONING")],
      inputs=[_cond("conditioning"), Link("mask", "MASK"), _strength(),
              Combo("set_cond_area", ["default", "mask bounds"])])
class ConditioningSetMask:
    """The conditioning acts where the mask is, weighted by it; "mask bounds" runs the model only on
    the mask's bounding box (faster, and the prompt sees a smaller image)."""

    def execute(self, conditioning, mask, strength, set_cond_area):
        if mask.ndim < 3:
            mask = mask.unsqueeze(0)
        return (set_values(conditioning, mask=mask, set_area_to_bounds=set_cond_area != "default",
                           mask_strength=strength),)


@node(category="advanced/conditioning", outputs=[Out("CONDITIONING")], inputs=[_cond("conditioning")])
class ConditioningZeroOut:
    """All-zero embeddings (and pooled output) of the same shapes: an 'empty' prompt for models
    trained with zeroed negatives."""

    def execute(self, conditioning):
        out = []
        for t, options in conditioning:
            options = dict(options)
            for key in ("pooled_output", "conditioning_lyrics"):
                if options.get(key) is not None:
                    options[key] = torch.zeros_like(options[key])
            out.append([torch.zeros_like(t), options])
        return (out,)


def _percent(name: str, default: float):
    return Float(name, default, min=0.0, max=1.0, step=0.001)


@node(category="advanced/conditioning", outputs=[Out("CONDITIONING")],
      inputs=[_cond("conditioning"), _percent("start", 0.0), _percent("end", 1.0)])
class ConditioningSetTimestepRange:
    """The conditioning acts only between `start` and `end` of the sampling (0 = first step)."""

    def execute(self, conditioning, start, end):
        return (set_values(conditioning, start_percent=start, end_percent=end),)


@node(category="conditioning/inpaint",
      outputs=[Out("CONDITIONING", "positive"), Out("CONDITIONING", "negative"), Out("LATENT", "latent")],
      inputs=[_cond("positive"), _cond("negative"), Link("vae", "VAE"), Link("pixels", "IMAGE"),
              Link("mask", "MASK"),
              Boolean("noise_mask", True, tooltip="Also put the mask on the latent, so sampling changes only "
                                                  "the masked part. Helps some models and breaks others.")])
class InpaintModelConditioning:
    """For inpainting models: both conditionings carry the image with the masked part grey (as a
    latent) and the mask; the latent is the whole original image."""

    def execute(self, positive, negative, vae, pixels, mask, noise_mask):
        grey, mask = masked_pixels(pixels, mask)
        concat_latent = vae.encode(grey)
        latent = {"samples": vae.encode(pixels)}
        if noise_mask:
            latent["noise_mask"] = mask
        extra = {"concat_latent_image": concat_latent, "concat_mask": mask}
        return set_values(positive, **extra), set_values(negative, **extra), latent


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = mappings(
    ConditioningCombine, ConditioningAverage, ConditioningConcat, ConditioningSetArea,
    ConditioningSetAreaPercentage, ConditioningSetAreaStrength, ConditioningSetMask, ConditioningZeroOut,
    ConditioningSetTimestepRange, InpaintModelConditioning)
