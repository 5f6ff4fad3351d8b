"""Perp-Neg (Armandpour et al. 2023, "Re-imagine the Negative Prompt Algorithm"): only the part of
the negative direction perpendicular to the positive one is subtracted, both taken relative to an
empty prompt's prediction:

    pos = x0(positive) - x0(empty), neg = x0(negative) - x0(empty)
    perp = neg - (<neg, pos> / |pos|^2) pos          (inner product over the whole batch)
    x0 = x0(empty) + cfg * (pos - neg_scale * perp)

PerpNeg does it as a sampler_cfg_function (one extra forward for the empty prompt); PerpNegGuider as
a GUIDER that evaluates the three prompts in one batched step.
"""
from __future__ import annotations

import math

import torch

from diffusion.sampling.guidance import CFGDenoiser, calc_cond_batch, resolve_conditioning
from diffusion.sampling.guiders import CFGGuider, _with_prompt_type


def perp_neg(pos_x0: torch.Tensor, neg_x0: torch.Tensor, empty_x0: torch.Tensor, neg_scale: float,
             cond_scale: float) -> torch.Tensor:
    pos = pos_x0 - empty_x0
    neg = neg_x0 - empty_x0
    perp = neg - (torch.mul(neg, pos).sum() / torch.norm(pos) ** 2) * pos
    return empty_x0 + cond_scale * (pos - perp * neg_scale)


def perp_neg_cfg_function(empty_conditioning, neg_scale: float):
    """sampler_cfg_function for the PerpNeg node (hook convention: returns the guided x - x0)."""
    neg_scale = float(neg_scale)

    def cfg_function(args):
        x = args["input"]
        (empty,) = calc_cond_batch(args["model"], [empty_conditioning], x, args["sigma"], args["model_options"],
                                   prompt_types=["negative"])
        return x - perp_neg(args["cond_denoised"], args["uncond_denoised"], empty, neg_scale, args["cond_scale"])

    return cfg_function


class PerpNegDenoiser(CFGDenoiser):
    """positive, negative and empty prompt in one batched evaluation, mixed by perp_neg."""

    def __init__(self, model, positive, negative, empty, cfg: float, neg_scale: float, model_options=None):
        super().__init__(model, positive, negative, cfg, model_options)
        self.neg_scale = float(neg_scale)
        self.empty_conditioning = _with_prompt_type(empty, "negative", force=True)
        self.empty = resolve_conditioning(self.empty_conditioning, self.model_sampling, "negative")

    def __call__(self, x, sigma, model_options=None, seed=None, **_ignored):
        options = self._options(model_options)
        evaluate = [True, True, True]
        if not options.get("disable_cfg1_optimization", False) and math.isclose(self.neg_scale, 0.0):
            evaluate[1] = False  # the negative has no weight; without guidance the empty prompt has none either
            evaluate[2] = not math.isclose(self.cfg, 1.0)
        preds = self.predict([self.positive, self.negative, self.empty], x, sigma, options, evaluate)
        pos, neg, empty = (torch.zeros_like(x) if p is None else p for p in preds)
        denoised = perp_neg(pos, neg, empty, self.neg_scale, self.cfg)
        for post in options.get("sampler_post_cfg_function", []):
            denoised = post({"denoised": denoised, "cond": self.positive_conditioning,
                             "uncond": self.negative_conditioning, "cond_scale": self.cfg, "model": self.model,
                             "uncond_denoised": neg, "cond_denoised": pos, "sigma": sigma, "model_options": options,
                             "input": x, "empty_cond": self.empty_conditioning, "empty_cond_denoised": empty})
        return denoised


class PerpNegGuider(CFGGuider):
    """GUIDER for PerpNegDenoiser."""

    def __init__(self, model, positive, negative, empty, cfg: float, neg_scale: float, model_options=None):
        super().__init__(model, positive, negative, cfg, model_options)
        self.empty, self.neg_scale = empty, float(neg_scale)

    def denoiser(self):
        return PerpNegDenoiser(self.model, self.positive, self.negative, self.empty, self.cfg, self.neg_scale,
                               model_options=self.model_options)
