"""Kohya's "Deep Shrink" (PatchModelAddDownscale): early in sampling, shrink the features after one
input block by `downscale_factor` so the deep layers see a smaller image (less repetition at high
resolutions), and resize back to the skip connection's size in the decoder.
"""
from __future__ import annotations

from diffusion.resample import resize

METHODS = ("bicubic", "nearest-exact", "bilinear", "area", "bislerp")


def deep_shrink_patches(model_sampling, block_number: int, downscale_factor: float, start_percent: float,
                        end_percent: float, downscale_method: str, upscale_method: str):
    """(input-block patch fn(h, options) -> h, output_block_patch fn(h, skip, options) -> (h, skip))."""
    for name, method in (("downscale_method", downscale_method), ("upscale_method", upscale_method)):
        if method not in METHODS:
            raise ValueError(f"PatchModelAddDownscale: {name} must be one of {', '.join(METHODS)}, got {method!r}")
    sigma_start = float(model_sampling.percent_to_sigma(start_percent))
    sigma_end = float(model_sampling.percent_to_sigma(end_percent))
    shrink = 1.0 / float(downscale_factor)

    def input_patch(h, transformer_options):
        if transformer_options["block"][1] != block_number:
            return h
        sigma = float(transformer_options["sigmas"][0])
        if sigma_end <= sigma <= sigma_start:
            h = resize(h, round(h.shape[-1] * shrink), round(h.shape[-2] * shrink), downscale_method)
        return h

    def output_patch(h, skip, transformer_options):
        if h.shape[2] != skip.shape[2]:
            h = resize(h, skip.shape[-1], skip.shape[-2], upscale_method)
        return h, skip

    return input_patch, output_patch
