"""Run a resampling network over overlapping tiles and blend the seams.

Used by tiled VAE decode (latent tiles, output 8x larger) and encode (pixel tiles, output 8x smaller):
peak memory then depends on the tile, not the image. Each tile's output is weighted by a ramp that
rises linearly across the overlap on every side that touches another tile, and the sum is divided by
the summed weights, so seams cross-fade and a function without global context (pure convolutions) is
reproduced exactly.
"""

from __future__ import annotations

from typing import Callable

import torch


def tile_params(tile: int, overlap: int, ratio: int, what: str = "tile", align: int = 1) -> tuple[int, int]:
    """Convert a tile and overlap in pixels to input units (pixels / ratio), aligned to `align`.

    The overlap is capped at a quarter of the tile (as the tiled VAE nodes do) so tiles always advance.
    """
    if tile <= 0:
        raise ValueError(f"{what} size must be positive, got {tile}")
    if overlap < 0:
        raise ValueError(f"{what} overlap must be >= 0, got {overlap}")
    if tile < overlap * 4:
        overlap = tile // 4
    t = max(align, (tile // ratio) // align * align)
    o = min(overlap // ratio, t // 4) // align * align
    return t, o


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering [0, length) with tiles of `tile` advancing by tile - overlap."""
    if tile >= length:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)  # last tile flush with the edge
    return starts


def _ramp(size: int, ramp: int, left: bool, right: bool) -> torch.Tensor:
    w = torch.ones(size)
    if ramp > 0:
        rise = torch.arange(1, ramp + 1, dtype=torch.float32) / (ramp + 1)
        if left:
            w[:ramp] = torch.minimum(w[:ramp], rise)
        if right:
            w[size - ramp:] = torch.minimum(w[size - ramp:], rise.flip(0))
    return w


def tiled_map(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], tile: int, overlap: int,
              up: int, down: int, out_channels: int,
              progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Apply `fn` ([1,C,th,tw] -> [1,out_channels,th*up/down,tw*up/down]) tile by tile over x [B,C,H,W].

    `tile`/`overlap` are in x's units and must be multiples of `down`; so must H and W.
    Returns float32 on CPU. `progress(done, total)` is called after each tile.
    """
    b, _, h, w = x.shape
    if h % down or w % down or tile % down:
        raise ValueError(f"tiled_map: size {h}x{w} and tile {tile} must be multiples of {down}")
    th, tw = min(tile, h), min(tile, w)
    rows, cols = tile_starts(h, th, overlap), tile_starts(w, tw, overlap)
    ramp = overlap * up // down
    out = torch.zeros(b, out_channels, h * up // down, w * up // down)
    weight = torch.zeros(1, 1, out.shape[2], out.shape[3])
    total, done = b * len(rows) * len(cols), 0
    for i in range(b):
        for y in rows:
            wy = _ramp(th * up // down, ramp, y > 0, y + th < h)
            for x0 in cols:
                wx = _ramp(tw * up // down, ramp, x0 > 0, x0 + tw < w)
                y_out = fn(x[i:i + 1, :, y:y + th, x0:x0 + tw]).float().cpu()
                mask = wy[:, None] * wx[None, :]
                oy, ox = y * up // down, x0 * up // down
                sl = (slice(None), slice(oy, oy + mask.shape[0]), slice(ox, ox + mask.shape[1]))
                out[i][sl] += y_out[0] * mask
                if i == 0:
                    weight[0][sl] += mask
                done += 1
                if progress is not None:
                    progress(done, total)
    return out / weight
