"""Resizing and pasting channels-first batches [B, C, H, W]: what the image, mask and latent
operations share (ComfyUI's `comfy/utils.py:common_upscale`, `bislerp`, `repeat_to_batch_size` and
`comfy_extras/nodes_mask.py:composite`). Callers check the method names they offer (latents offer
bislerp, images lanczos); functions never modify their inputs.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


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


def _to_uint8(array: np.ndarray) -> np.ndarray:
    # Truncation, not rounding: ComfyUI converts this way before handing pixels to Pillow.
    return np.clip(255.0 * array, 0, 255).astype(np.uint8)


def lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Pillow's Lanczos filter per image, through 8-bit pixels as ComfyUI does: 1 channel as "L",
    3 as "RGB", 4 as "RGBA" (Pillow filters RGBA with premultiplied alpha); any other channel count
    channel by channel as "L"."""
    out = []
    for sample in samples.detach().cpu().float():
        channels = sample.shape[0]
        if channels in (1, 3, 4):
            array = _to_uint8(sample[0].numpy() if channels == 1 else sample.movedim(0, -1).numpy())
            resized = np.asarray(Image.fromarray(array).resize((width, height), Image.Resampling.LANCZOS))
            value = torch.from_numpy(resized.astype(np.float32) / 255.0)
            out.append(value[None] if value.ndim == 2 else value.movedim(-1, 0))
        else:
            planes = [np.asarray(Image.fromarray(_to_uint8(c.numpy())).resize(
                (width, height), Image.Resampling.LANCZOS)) for c in sample]
            out.append(torch.from_numpy(np.stack(planes).astype(np.float32) / 255.0))
    return torch.stack(out).to(samples.device, samples.dtype)


def resize(samples: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    """Resize [B, C, H, W] to height x width: torch's nearest-exact / bilinear / area / bicubic,
    bislerp, or Pillow's lanczos; crop="center" first cuts the input to the target aspect ratio."""
    _check_4d(samples, "resize")
    if width < 1 or height < 1:
        raise ValueError(f"resize target must be at least 1x1, got {width}x{height}")
    source = crop_to_aspect(samples, width, height) if crop == "center" else samples
    if method == "bislerp":
        return bislerp(source, width, height)
    if method == "lanczos":
        return lanczos(source, width, height)
    return F.interpolate(source, size=(height, width), mode=method)


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
