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

import math

import torch
import torch.nn.functional as F

UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")
CROP_METHODS = ("disabled", "center")
LATENT_RATIO = 8  # pixels per latent element for the SD latent nodes' pixel-valued widgets


def _check_4d(samples: torch.Tensor, what: str) -> None:
    if not isinstance(samples, torch.Tensor) or samples.ndim != 4:
        raise ValueError(f"{what} expects a [B,C,H,W] tensor, got "
                         f"{getattr(samples, 'shape', type(samples).__name__)}")


def repeat_to_batch(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """Cut or cycle the batch (dim 0) to `batch` items, as ComfyUI pairs batches of different sizes."""
    if tensor.shape[0] > batch:
        return tensor[:batch]
    if tensor.shape[0] < batch:
        reps = math.ceil(batch / tensor.shape[0])
        return tensor.repeat((reps,) + (1,) * (tensor.ndim - 1))[:batch]
    return tensor


def crop_to_aspect(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Centre-crop so the aspect ratio is width:height (what crop="center" does before resizing)."""
    old_h, old_w = samples.shape[-2], samples.shape[-1]
    old_aspect, new_aspect = old_w / old_h, width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return samples[..., y:old_h - y, x:old_w - x]


def _slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of row vectors a, b ([N, C]) by t ([N, 1]).

    The directions are slerped and the length is interpolated linearly (so it is not a true slerp of
    the vectors; it keeps the latent's per-pixel magnitude smooth). Nearly equal directions give `a`,
    opposite ones a linear blend; zero vectors have direction 0.
    """
    norm_a = a.norm(dim=-1, keepdim=True)
    norm_b = b.norm(dim=-1, keepdim=True)
    dir_a = torch.where(norm_a == 0, torch.zeros_like(a), a / norm_a)
    dir_b = torch.where(norm_b == 0, torch.zeros_like(b), b / norm_b)
    dot = (dir_a * dir_b).sum(-1, keepdim=True)
    omega = torch.acos(dot)
    sin_omega = torch.sin(omega)
    out = (torch.sin((1.0 - t) * omega) / sin_omega) * dir_a + (torch.sin(t * omega) / sin_omega) * dir_b
    out = out * (norm_a * (1.0 - t) + norm_b * t)
    out = torch.where(dot > 1 - 1e-5, a, out)
    return torch.where(dot < 1e-5 - 1, a * (1.0 - t) + b * t, out)


def _sample_positions(old: int, new: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where output i of a bilinear resize old->new reads: (left index, right index, fraction).

    The positions come from bilinearly resizing the index ramp itself, so they are exactly the ones
    torch's bilinear mode uses (half-pixel centres, clamped at the borders).
    """
    ramp = torch.arange(old, dtype=torch.float32, device=device).reshape(1, 1, 1, -1)
    pos = F.interpolate(ramp, size=(1, new), mode="bilinear").reshape(-1)
    right_ramp = ramp + 1
    right_ramp[..., -1] -= 1  # the last pixel has no right neighbour: it pairs with itself
    right = F.interpolate(right_ramp, size=(1, new), mode="bilinear").reshape(-1).to(torch.int64)
    return pos.to(torch.int64), right, pos - pos.floor()


def _bislerp_last_dim(samples: torch.Tensor, new: int) -> torch.Tensor:
    """Resize the last dimension of [B, C, H, W] by slerping channel vectors of neighbours."""
    n, c, h, w = samples.shape
    left, right, frac = _sample_positions(w, new, samples.device)
    a = samples[..., left].permute(0, 2, 3, 1).reshape(-1, c)
    b = samples[..., right].permute(0, 2, 3, 1).reshape(-1, c)
    t = frac.reshape(1, 1, new).expand(n, h, new).reshape(-1, 1)
    return _slerp(a, b, t).reshape(n, h, new, c).permute(0, 3, 1, 2)


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize [B, C, H, W] to height x width, width first, then height, slerping each pixel's channel
    vector between its two bilinear neighbours (ComfyUI's "bislerp"). Computes in float32."""
    _check_4d(samples, "bislerp")
    dtype = samples.dtype
    out = _bislerp_last_dim(samples.float(), width)
    out = _bislerp_last_dim(out.transpose(-1, -2), height).transpose(-1, -2)
    return out.contiguous().to(dtype)


def resize(samples: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    """Resize [B, C, H, W] to height x width with one of UPSCALE_METHODS; crop="center" first cuts the
    input to the target aspect ratio (ComfyUI's common_upscale, without lanczos)."""
    _check_4d(samples, "resize")
    if method not in UPSCALE_METHODS:
        raise ValueError(f"unknown upscale method {method!r}; expected one of {list(UPSCALE_METHODS)}")
    if crop not in CROP_METHODS:
        raise ValueError(f"unknown crop {crop!r}; expected one of {list(CROP_METHODS)}")
    if width < 1 or height < 1:
        raise ValueError(f"resize target must be at least 1x1, got {width}x{height}")
    source = crop_to_aspect(samples, width, height) if crop == "center" else samples
    if method == "bislerp":
        return bislerp(source, width, height)
    return F.interpolate(source, size=(height, width), mode=method)


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


def composite_masked(destination: torch.Tensor, source: torch.Tensor, x: int, y: int,
                     mask: torch.Tensor | None = None, multiplier: int = 1,
                     resize_source: bool = False) -> torch.Tensor:
    """Blend `source` over `destination` with its top-left at (x, y) given in units of 1/multiplier
    element (pixels for latents: multiplier 8), weighted by `mask` (any resolution, resized to the
    source; 1 = source). Parts falling outside the destination are dropped; the source batch is cut
    or cycled to the destination's (ComfyUI's nodes_mask composite)."""
    _check_4d(destination, "composite destination")
    _check_4d(source, "composite source")
    source = source.to(destination.device, destination.dtype)
    if resize_source:
        source = F.interpolate(source, size=tuple(destination.shape[-2:]), mode="bilinear")
    source = repeat_to_batch(source, destination.shape[0])
    sh, sw = source.shape[-2:]
    dh, dw = destination.shape[-2:]
    left, top = math.floor(x / multiplier), math.floor(y / multiplier)
    if mask is None:
        weight = torch.ones_like(source[:, :1])
    else:
        if mask.ndim < 2:
            raise ValueError(f"composite mask must be [H,W] or [B,H,W], got shape {tuple(mask.shape)}")
        weight = mask.to(destination.device, destination.dtype).reshape(-1, 1, *mask.shape[-2:])
        weight = repeat_to_batch(F.interpolate(weight, size=(sh, sw), mode="bilinear"), source.shape[0])
    out = destination.clone()
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + sw, dw), min(top + sh, dh)
    if x1 <= x0 or y1 <= y0:
        return out
    src = (slice(None), slice(None), slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
    w = weight[src]
    out[:, :, y0:y1, x0:x1] = source[src] * w + destination[:, :, y0:y1, x0:x1] * (1.0 - w)
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
