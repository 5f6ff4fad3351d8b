"""Regrouping a list of batches into batches of a chosen size (RebatchLatents, RebatchImages).

ComfyUI's semantics (comfy_extras/nodes_rebatch.py), stated plainly:
- Latents: consecutive LATENTs whose samples have the same spatial size form one run (a size change
  starts a new run); each run's items, in order, are cut into batches of `batch_size`, the last one
  shorter. Every item keeps its `batch_index` (so its noise): the latent's own, else its position
  counted over all the latents before it. Noise masks follow their items (a mask batch shorter than
  the samples is cycled over them; items without a mask get ones), and a batch whose mask is all
  ones carries none.
- Images: every image of every batch, in order, cut into batches of `batch_size`.

Where ComfyUI fails, we do this instead: masks of different resolutions within one run are resized
to the latent's pixel size (bilinear) before they are joined (ComfyUI's resize is dead code and the
join raises), and images of different sizes in one output batch are a clear error.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from diffusion.resample import repeat_to_batch


def _chunks(n: int, size: int):
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def _check_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    return batch_size


def _item_masks(latent: dict) -> torch.Tensor:
    """[B,1,H,W] noise mask with one entry per sample; ones at 8x the latent size without a mask."""
    samples = latent["samples"]
    mask = latent.get("noise_mask")
    if mask is None:
        return torch.ones(samples.shape[0], 1, samples.shape[-2] * 8, samples.shape[-1] * 8)
    return repeat_to_batch(mask.reshape(-1, 1, *mask.shape[-2:]), samples.shape[0])


def _join_masks(masks: list[torch.Tensor], samples: torch.Tensor) -> torch.Tensor:
    if len({tuple(m.shape[-2:]) for m in masks}) > 1:
        size = (samples.shape[-2] * 8, samples.shape[-1] * 8)
        masks = [m if tuple(m.shape[-2:]) == size else F.interpolate(m.float(), size=size, mode="bilinear")
                 for m in masks]
    return torch.cat(masks, dim=0)


def rebatch_latents(latents: list[dict], batch_size: int) -> list[dict]:
    """LATENT dicts regrouped into batches of `batch_size` (see the module docstring)."""
    batch_size = _check_size(batch_size)
    runs: list[list[tuple]] = []  # each: [(samples, masks, indices)] of one spatial size
    seen = 0
    for latent in latents:
        samples = latent["samples"]
        n = samples.shape[0]
        indices = list(latent["batch_index"]) if "batch_index" in latent else list(range(seen, seen + n))
        seen += len(indices)
        if not runs or runs[-1][0][0].shape[-2:] != samples.shape[-2:]:
            runs.append([])
        runs[-1].append((samples, _item_masks(latent), indices))
    out = []
    for run in runs:
        samples = torch.cat([s for s, _, _ in run], dim=0)
        masks = _join_masks([m for _, m, _ in run], samples)
        indices = [i for _, _, ids in run for i in ids]
        for start, end in _chunks(samples.shape[0], batch_size):
            batch = {"samples": samples[start:end], "noise_mask": masks[start:end],
                     "batch_index": indices[start:end]}
            if bool((batch["noise_mask"] == 1).all()):
                del batch["noise_mask"]
            out.append(batch)
    return out


def rebatch_images(images: list[torch.Tensor], batch_size: int) -> list[torch.Tensor]:
    """IMAGE batches [B,H,W,C] regrouped into batches of `batch_size`."""
    batch_size = _check_size(batch_size)
    frames = [image[i:i + 1] for image in images for i in range(image.shape[0])]
    out = []
    for start, end in _chunks(len(frames), batch_size):
        group = frames[start:end]
        sizes = sorted({tuple(f.shape[1:]) for f in group})
        if len(sizes) > 1:
            raise ValueError(f"images {start}..{end - 1} would share a batch but differ in size "
                             f"({' vs '.join('x'.join(map(str, s)) for s in sizes)} as HxWxC); "
                             "scale them to one size first")
        out.append(torch.cat(group, dim=0))
    return out
