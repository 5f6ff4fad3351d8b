"""Operations on MASK tensors [B,H,W] (0..1; a [H,W] mask is read as a batch of one).

The maths behind the mask nodes of ComfyUI 0.8's `comfy_extras/nodes_mask.py` (MaskComposite,
FeatherMask, GrowMask, ImageColorToMask, …). Functions never modify their inputs.
One deliberate difference, documented in docs/runtime.md: FeatherMask's right and bottom ramps.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from diffusion.image_ops import ImageOpError

MASK_OPERATIONS = ("multiply", "add", "subtract", "and", "or", "xor")
IMAGE_CHANNELS = ("red", "green", "blue", "alpha")


def as_batch(mask: torch.Tensor) -> torch.Tensor:
    """[B,H,W] view of a mask given as [H,W], [B,H,W] or [B,1,H,W]."""
    return mask.reshape(-1, mask.shape[-2], mask.shape[-1])


def to_image(mask: torch.Tensor) -> torch.Tensor:
    """Grey IMAGE [B,H,W,3] with the mask in every channel (MaskToImage)."""
    return as_batch(mask)[..., None].expand(-1, -1, -1, 3).contiguous()


def from_image(image: torch.Tensor, channel: str) -> torch.Tensor:
    """One channel of an IMAGE as a mask (ImageToMask)."""
    if channel not in IMAGE_CHANNELS:
        raise ImageOpError(f"channel must be one of {', '.join(IMAGE_CHANNELS)}, got {channel!r}")
    index = IMAGE_CHANNELS.index(channel)
    if index >= image.shape[-1]:
        raise ImageOpError(f"channel {channel!r} is not in this image: it has {image.shape[-1]} "
                           f"channels (an alpha channel comes only from images with transparency)")
    return image[..., index].clone()


def from_color(image: torch.Tensor, color: int) -> torch.Tensor:
    """1 where the pixel, rounded to 8 bits per channel, is exactly `color` (0xRRGGBB), else 0
    (ImageColorToMask; older ComfyUI wrote 255 instead of 1)."""
    rgb = (torch.clamp(image[..., :3], 0, 1.0) * 255.0).round().to(torch.int64)
    packed = (rgb[..., 0] << 16) + (rgb[..., 1] << 8) + rgb[..., 2]
    return (packed == color).float()


def solid(value: float, width: int, height: int) -> torch.Tensor:
    return torch.full((1, height, width), value, dtype=torch.float32)


def crop(mask: torch.Tensor, x: int, y: int, width: int, height: int) -> torch.Tensor:
    """The region at (x, y), cut to the mask's edges (CropMask)."""
    return as_batch(mask)[:, y:y + height, x:x + width].clone()


def threshold(mask: torch.Tensor, value: float) -> torch.Tensor:
    """1 where the mask is strictly above value (ThresholdMask)."""
    return (mask > value).float()


def _combine(a: torch.Tensor, b: torch.Tensor, operation: str) -> torch.Tensor:
    if operation == "multiply":
        return a * b
    if operation == "add":
        return a + b
    if operation == "subtract":
        return a - b
    # The logic operations treat a value as on when it rounds to 1.
    a, b = a.round().bool(), b.round().bool()
    if operation == "and":
        return (a & b).float()
    if operation == "or":
        return (a | b).float()
    if operation == "xor":
        return (a ^ b).float()
    raise ImageOpError(f"operation must be one of {', '.join(MASK_OPERATIONS)}, got {operation!r}")


def composite(destination: torch.Tensor, source: torch.Tensor, x: int, y: int, operation: str):
    """destination with `source` (top-left at x, y) combined into it by `operation`; what falls
    outside the destination is dropped, the result clamped to 0..1 (MaskComposite)."""
    if operation not in MASK_OPERATIONS:
        raise ImageOpError(f"operation must be one of {', '.join(MASK_OPERATIONS)}, got {operation!r}")
    destination, source = as_batch(destination), as_batch(source)
    bd, bs = destination.shape[0], source.shape[0]
    if bd != bs and 1 not in (bd, bs):
        raise ImageOpError(f"destination and source have batch sizes {bd} and {bs}; they must be "
                           f"equal or one of them 1")
    out = destination.expand(max(bd, bs), -1, -1).clone()
    h = min(source.shape[1], out.shape[1] - y)
    w = min(source.shape[2], out.shape[2] - x)
    if h > 0 and w > 0:
        region = out[:, y:y + h, x:x + w]
        out[:, y:y + h, x:x + w] = _combine(region, source[:, :h, :w], operation)
    return torch.clamp(out, 0.0, 1.0)


def _ramp(length: int, width: int, from_end: bool) -> torch.Tensor:
    """Factors along an axis of `length`: (i+1)/width for the i-th of the first `width` positions
    (counted from the far end when from_end), 1 elsewhere."""
    factors = torch.ones(length)
    width = min(width, length)
    if width > 0:
        ramp = torch.arange(1, width + 1, dtype=torch.float64) / width
        factors[:width] = ramp.float()
        if from_end:
            factors = factors.flip(0)
    return factors


def feather(mask: torch.Tensor, left: int, top: int, right: int, bottom: int) -> torch.Tensor:
    """Fade the mask linearly to its edges over the given widths (FeatherMask): the outermost
    row/column keeps 1/width of its value, the width-th one all of it. Ramps from opposite sides
    multiply where they overlap. ComfyUI 0.8 applies the right and bottom ramps one pixel off
    (its first step scales the opposite edge); here they mirror the left and top ones."""
    out = as_batch(mask).clone()
    _, h, w = out.shape
    # One multiplication per side, in ComfyUI's order, so the float32 rounding is the same.
    out = out * _ramp(w, left, False)[None, None, :]
    out = out * _ramp(w, right, True)[None, None, :]
    out = out * _ramp(h, top, False)[None, :, None]
    out = out * _ramp(h, bottom, True)[None, :, None]
    return out


def _dilate_cross(mask: torch.Tensor) -> torch.Tensor:
    """One greyscale dilation step with the 3x3 cross footprint (tapered corners). Edges are
    replicated, which equals scipy's default 'reflect' border for a 1-pixel reach."""
    padded = F.pad(mask[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    out = padded[:, 1:-1, 1:-1]
    for n in (padded[:, :-2, 1:-1], padded[:, 2:, 1:-1], padded[:, 1:-1, :-2], padded[:, 1:-1, 2:]):
        out = torch.maximum(out, n)
    return out


def _shifted(t: torch.Tensor, offset: int, dim: int) -> torch.Tensor:
    """out[i] = t[i + offset] along dim, −inf where that falls outside."""
    out = torch.full_like(t, float("-inf"))
    n = t.shape[dim]
    if abs(offset) < n:
        src = t.narrow(dim, max(0, offset), n - abs(offset))
        out.narrow(dim, max(0, -offset), n - abs(offset)).copy_(src)
    return out


def _window_max(t: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Max over the in-bounds positions within `radius` along dim, in O(log radius) steps:
    maxima over windows of doubling length w, then two windows of w covering the 2r+1."""
    n, length = t.shape[dim], 2 * radius + 1
    edge = list(t.shape)
    edge[dim] = radius
    border = torch.full(edge, float("-inf"), dtype=t.dtype, device=t.device)
    m, w = torch.cat([border, t, border], dim), 1  # m[j] = max over [j, j + w) of the padded line
    while 2 * w <= length:
        m = torch.maximum(m, _shifted(m, w, dim))
        w *= 2
    # output i (padded index i + radius) covers [i, i + length) of the padded line
    return torch.maximum(m, _shifted(m, length - w, dim)).narrow(dim, 0, n)


def grow(mask: torch.Tensor, expand: int, tapered_corners: bool = True) -> torch.Tensor:
    """Dilate (expand > 0) or erode (expand < 0) by |expand| steps of a 3x3 footprint, a cross with
    tapered corners or the full square (GrowMask; scipy.ndimage.grey_dilation / grey_erosion repeated
    in ComfyUI, whose 'reflect' border means only pixels inside the mask count).

    |expand| square steps reach exactly the (2·|expand|+1)² window, so that case is one separable
    window maximum; the cross reaches a diamond and is stepped."""
    out = as_batch(mask).clone()
    # After H+W steps every pixel has seen the whole mask: further steps change nothing.
    steps = min(abs(expand), out.shape[1] + out.shape[2])
    sign = 1.0 if expand >= 0 else -1.0  # erosion is dilation of the negated mask
    out = out * sign
    if steps and not tapered_corners:
        out = _window_max(_window_max(out, steps, 1), steps, 2)
    else:
        for _ in range(steps):
            out = _dilate_cross(out)
    return out * sign
