"""Upscaling IMAGE batches with a pixel-space network (an UPSCALE_MODEL: spandrel's descriptor).

Memory stays bounded by running the network on overlapping tiles, in ComfyUI's layout
(`comfy.utils.tiled_scale`), so the same model gives the same pixels:
- tiles of `tile` px start every `tile - overlap` px while more than `overlap` px remain; the last
  tile of a row or column may be shorter; an image no larger than one tile runs whole;
- every tile's output is weighted by a ramp (t + 1) / feather over its outer `feather = overlap *
  scale` px on each side, the weighted sum divided by the summed weights: seams cross-fade, and
  away from them the result is the network's own on the whole image (where the network's receptive
  field stays inside the tile);
- on out-of-memory the tile is halved and the image started again, down to `min_tile` (128).
`tiled_scale` takes any function; `upscale_image` adds the device handling and the 0..1 clamp.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

from diffusion import memory

log = logging.getLogger(__name__)

TILE = 512
OVERLAP = 32
MIN_TILE = 128
# Working memory per tile pixel, as ComfyUI estimates it for these networks (bytes per input byte
# of a 512 x 512 tile, times the scale).
_ACTIVATION_FACTOR = 384.0
OUT_OF_MEMORY = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Offsets of the tiles along one side (ComfyUI's: the last tile may be short)."""
    if length <= tile:
        return [0]
    return list(range(0, length - overlap, tile - overlap))


def tile_count(height: int, width: int, tile: int, overlap: int) -> int:
    return len(tile_starts(height, tile, overlap)) * len(tile_starts(width, tile, overlap))


def feather_mask(height: int, width: int, feather: int, device=None) -> torch.Tensor:
    """[height, width] weights: each side's outer `feather` rows/columns scaled by (t + 1) / feather,
    t counted from the edge; a side not longer than `feather` is left at 1. Multiplied in place in
    the same order as ComfyUI, so the weights (and the blended pixels) are the same floats."""
    mask = torch.ones(height, width, device=device)
    for dim, size in ((0, height), (1, width)):
        if feather >= size:
            continue
        for t in range(feather):
            a = (t + 1) / feather
            mask.narrow(dim, t, 1).mul_(a)
            mask.narrow(dim, size - 1 - t, 1).mul_(a)
    return mask


def tiled_scale(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], scale: float, out_channels: int,
                tile: int = TILE, overlap: int = OVERLAP, output_device="cpu",
                progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """fn ([1, C, h, w] -> [1, out_channels, h * scale, w * scale]) over x [B, C, H, W], tile by tile.

    Returns [B, out_channels, round(H * scale), round(W * scale)] on `output_device`;
    `progress(done, total)` after each tile.
    """
    if tile <= overlap:
        raise ValueError(f"tile ({tile}) must be larger than the overlap ({overlap})")
    b, _, h, w = x.shape
    out_h, out_w = round(h * scale), round(w * scale)
    output = torch.empty(b, out_channels, out_h, out_w, device=output_device)
    rows, cols = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    total, done = b * len(rows) * len(cols), 0
    feather = round(overlap * scale)
    for i in range(b):
        sample = x[i:i + 1]
        if h <= tile and w <= tile:
            output[i:i + 1] = fn(sample).to(output_device)
            done += 1
            if progress is not None:
                progress(done, total)
            continue
        acc = torch.zeros(1, out_channels, out_h, out_w, device=output_device)
        weight = torch.zeros(1, 1, out_h, out_w, device=output_device)
        for y in rows:
            for x0 in cols:
                part = fn(sample[:, :, y:y + tile, x0:x0 + tile]).to(output_device)
                mask = feather_mask(part.shape[2], part.shape[3], feather, device=output_device)
                oy, ox = round(y * scale), round(x0 * scale)
                region = (slice(None), slice(None), slice(oy, oy + part.shape[2]), slice(ox, ox + part.shape[3]))
                acc[region] += part * mask
                weight[region] += mask
                done += 1
                if progress is not None:
                    progress(done, total)
        output[i:i + 1] = acc / weight
    return output


def _memory_needed(model, image: torch.Tensor) -> int:
    weights = memory.module_size(model.model)
    work = (512 * 512 * 3) * image.element_size() * max(model.scale, 1.0) * _ACTIVATION_FACTOR
    return int(weights + work + image.nelement() * image.element_size())


def upscale_image(model, image: torch.Tensor, tile: int = TILE, overlap: int = OVERLAP, min_tile: int = MIN_TILE,
                  device=None, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """IMAGE [B, H, W, C] 0..1 -> IMAGE [B, H * s, W * s, C'] float32 on the CPU, clamped to 0..1.

    `model`: spandrel's ImageModelDescriptor (`.scale`, `.input_channels`, `.output_channels`,
    `.model`, `.to()`). It runs on `device` (default: diffusion.memory's) and goes back to the CPU.
    Out of memory halves the tile (progress starts over) until it would fall below `min_tile`; then
    the error is raised.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be an IMAGE batch [B, H, W, C], got shape {tuple(image.shape)}")
    channels = getattr(model, "input_channels", image.shape[-1])
    if image.shape[-1] != channels:
        raise ValueError(f"the upscale model takes {channels}-channel images, got {image.shape[-1]} channels "
                         f"(shape {tuple(image.shape)})")
    device = torch.device(device) if device is not None else memory.get_torch_device()
    memory.free_memory(_memory_needed(model, image), device)
    model.to(device)
    x = image.movedim(-1, -3).to(device)
    try:
        while True:
            try:
                with torch.no_grad():
                    out = tiled_scale(x, model, model.scale, model.output_channels, tile, overlap,
                                      progress=progress)
                break
            except OUT_OF_MEMORY:
                if tile // 2 < min_tile:
                    raise
                tile //= 2
                log.warning("upscale model ran out of memory; retrying with %d px tiles", tile)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    finally:
        model.to("cpu")
    return torch.clamp(out.movedim(-3, -1), min=0.0, max=1.0)
