"""Tensor operations behind the latent nodes: resizing (incl. bislerp), compositing, blending.

Every function takes [B, C, H, W] float tensors (a LATENT's "samples", or an IMAGE moved to
channels-first) and returns a new tensor; inputs are never modified, because the engine's cache
shares node outputs. Positions and sizes are in the tensor's own units unless a `multiplier` says
how many input units make one element (8 pixels per latent element for the latent nodes).

The semantics are ComfyUI's (`comfy/utils.py:common_upscale`, `bislerp`, `nodes.py:LatentComposite`,
`comfy_extras/nodes_mask.py:composite`, `comfy_extras/nodes_latent.py`), so workflows give the same
latents; where ComfyUI's code has a batch-shape bug the docstring says what we do instead.
"""
from __future__ import annotations

import torch

from diffusion import resample
from diffusion.resample import _check_4d, repeat_to_batch

UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")
CROP_METHODS = ("disabled", "center")
LATENT_RATIO = 8  # pixels per latent element for the SD latent nodes' pixel-valued widgets


def resize(samples: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    """Resize [B, C, H, W] to height x width with one of UPSCALE_METHODS (the latent nodes' choice);
    crop="center" first cuts the input to the target aspect ratio."""
    _check_4d(samples, "resize")
    if method not in UPSCALE_METHODS:
        raise ValueError(f"unknown upscale method {method!r}; expected one of {list(UPSCALE_METHODS)}")
    if crop not in CROP_METHODS:
        raise ValueError(f"unknown crop {crop!r}; expected one of {list(CROP_METHODS)}")
    return resample.resize(samples, width, height, method, crop)


def upscale_size(latent_shape, width: int, height: int, minimum: int = 64) -> tuple[int, int] | None:
    """LatentUpscale's target in pixels: (width, height), or None for 0x0 (keep the latent as is).

    A 0 side follows the other one at the latent's aspect ratio; each side is at least `minimum`.
    """
    h, w = latent_shape[-2], latent_shape[-1]
    if width == 0 and height == 0:
        return None
    if width == 0:
        height = max(minimum, height)
        width = max(minimum, round(w * height / h))
    elif height == 0:
        width = max(minimum, width)
        height = max(minimum, round(h * width / w))
    else:
        width, height = max(minimum, width), max(minimum, height)
    return width, height


def reshape_like(target_shape, samples: torch.Tensor, repeat_batch: bool = True) -> torch.Tensor:
    """`samples` brought to the spatial size of `target_shape` (bilinear, centre crop) and, with
    repeat_batch, cut or cycled to its batch size: how two latents of different shapes are paired."""
    if samples.shape[1] != target_shape[1]:
        raise ValueError(f"latents have different channel counts: {tuple(samples.shape)} vs "
                         f"{tuple(target_shape)} (were they made by different model families?)")
    if samples.shape[1:] != tuple(target_shape[1:]):
        samples = resize(samples, target_shape[-1], target_shape[-2], "bilinear", "center")
    return repeat_to_batch(samples, target_shape[0]) if repeat_batch else samples


def _feather_weights(h: int, w: int, feather: int, top: bool, bottom: bool, left: bool,
                     right: bool) -> torch.Tensor:
    """[h, w] weights: the k-th row/column from each feathered edge is scaled by (k+1)/feather.

    The factors are applied in ComfyUI's order (by distance k, then top, bottom, left, right), each
    rounded to float32 first, so corner products come out bit-identical to its LatentComposite.
    (ComfyUI's loop wraps around to negative indices when feather exceeds the block; we stop at the
    block's far edge instead.)
    """
    weight = torch.ones(h, w)
    for k in range(min(feather, max(h, w))):
        factor = (1.0 / feather) * (k + 1)
        if top and k < h:
            weight[k, :] *= factor
        if bottom and k < h:
            weight[h - 1 - k, :] *= factor
        if left and k < w:
            weight[:, k] *= factor
        if right and k < w:
            weight[:, w - 1 - k] *= factor
    return weight


def _match_batch(source: torch.Tensor, destination: torch.Tensor, what: str) -> torch.Tensor:
    if source.shape[0] in (1, destination.shape[0]):
        return source.expand(destination.shape[0], *source.shape[1:])
    raise ValueError(f"{what}: cannot pair a batch of {source.shape[0]} with a batch of "
                     f"{destination.shape[0]}; use batches of equal size or a single item")


def composite_feathered(destination: torch.Tensor, source: torch.Tensor, x: int, y: int,
                        feather: int = 0) -> torch.Tensor:
    """Paste `source` into `destination` at (x, y) (element units), LatentComposite-style.

    With `feather` > 0 the pasted block fades in over `feather` rows/columns along each edge that
    lies inside the destination (an edge on the destination's border stays hard): weight (k+1)/feather
    for the k-th row from that edge, the product where two edges meet.
    """
    _check_4d(destination, "LatentComposite samples_to")
    _check_4d(source, "LatentComposite samples_from")
    if destination.shape[1] != source.shape[1]:
        raise ValueError(f"LatentComposite: channel counts differ ({destination.shape[1]} vs {source.shape[1]})")
    out = destination.clone()
    h_to, w_to = destination.shape[-2:]
    if x >= w_to or y >= h_to:
        return out  # nothing of the source lands inside the destination
    block = source[:, :, :h_to - y, :w_to - x]
    block = _match_batch(block, destination, "LatentComposite")
    h, w = block.shape[-2:]
    region = out[:, :, y:y + h, x:x + w]
    if feather <= 0:
        out[:, :, y:y + h, x:x + w] = block
        return out
    weight = _feather_weights(h, w, feather, y != 0, y + h < h_to, x != 0, x + w < w_to).to(block.dtype)
    out[:, :, y:y + h, x:x + w] = block * weight + region * (1.0 - weight)
    return out


def crop(samples: torch.Tensor, x: int, y: int, width: int, height: int) -> torch.Tensor:
    """LatentCrop in element units: the window starts at most 8 elements (64 px) before the far edge,
    so a crop never comes out smaller than that; the window is cut at the border."""
    _check_4d(samples, "LatentCrop")
    h, w = samples.shape[-2:]
    x = max(0, min(x, w - 8))
    y = max(0, min(y, h - 8))
    return samples[:, :, y:y + height, x:x + width].clone()


def blend(samples1: torch.Tensor, samples2: torch.Tensor, factor: float) -> torch.Tensor:
    """samples1·factor + samples2·(1 − factor); samples2 is first brought to samples1's size
    (bicubic, centre crop) and batch, as LatentBlend does."""
    _check_4d(samples1, "LatentBlend samples1")
    _check_4d(samples2, "LatentBlend samples2")
    if samples2.shape[-2:] != samples1.shape[-2:]:
        samples2 = resize(samples2, samples1.shape[-1], samples1.shape[-2], "bicubic", "center")
    samples2 = repeat_to_batch(samples2, samples1.shape[0])
    return samples1 * factor + samples2 * (1.0 - factor)


def interpolate_normalized(samples1: torch.Tensor, samples2: torch.Tensor, ratio: float) -> torch.Tensor:
    """LatentInterpolate: per pixel, the channel vectors' directions are mixed by `ratio` (weight of
    samples1) and renormalised, and their lengths interpolated linearly.

    ComfyUI divides [B,C,H,W] by a [B,H,W] norm, which lines the batch up with the channels; that is
    right only for batch 1. We keep the channel axis, so batch 1 is identical and larger batches work.
    """
    samples2 = reshape_like(samples1.shape, samples2)
    n1 = torch.linalg.vector_norm(samples1, dim=1, keepdim=True)
    n2 = torch.linalg.vector_norm(samples2, dim=1, keepdim=True)
    mixed = torch.nan_to_num(samples1 / n1) * ratio + torch.nan_to_num(samples2 / n2) * (1.0 - ratio)
    direction = torch.nan_to_num(mixed / torch.linalg.vector_norm(mixed, dim=1, keepdim=True))
    return direction * (n1 * ratio + n2 * (1.0 - ratio))
