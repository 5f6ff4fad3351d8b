"""Batch bookkeeping of LATENT dicts: slicing, repeating, joining, and which noise each item gets.

A LATENT is {"samples": [B,C,H,W], "noise_mask"?: [B or 1, 1, H', W'], "batch_index"?: [int] * B}
(COMPAT §1.6). `batch_index` names, per item, the position whose noise it gets in a sequential
per-item draw (diffusion/sampling/noise.py: prepare_noise), so an item taken out of a batch, or
repeated, is sampled with exactly the noise it had in the whole batch. A noise mask with fewer items
than the samples is cycled over them at sampling time.

Each function returns a new dict (a shallow copy: other keys are kept) and never modifies its input.
The semantics are ComfyUI's (nodes.py: LatentFromBatch, RepeatLatentBatch; comfy_extras/
nodes_latent.py: LatentBatch, LatentBatchSeedBehavior); where they differ the docstring says so.
"""
from __future__ import annotations

import torch

from diffusion.latent_ops import reshape_like, resize
from diffusion.resample import repeat_to_batch


def _per_item_masks(latent: dict) -> torch.Tensor | None:
    """The noise mask with one entry per sample ([B,1,H,W]), or None without a mask."""
    mask = latent.get("noise_mask")
    if mask is None:
        return None
    mask = mask.reshape(-1, 1, *mask.shape[-2:])
    return repeat_to_batch(mask, latent["samples"].shape[0])


def from_batch(latent: dict, start: int, length: int) -> dict:
    """Items start..start+length-1, clamped to the batch; sets batch_index so they keep their noise."""
    samples = latent["samples"]
    count = samples.shape[0]
    start = min(count - 1, max(0, start))
    length = min(count - start, max(1, length))
    out = dict(latent)
    out["samples"] = samples[start:start + length].clone()
    mask = latent.get("noise_mask")
    if mask is not None:
        # one mask for the whole batch stays one mask; per-item masks follow their items
        out["noise_mask"] = mask.clone() if mask.shape[0] == 1 else _per_item_masks(latent)[start:start + length].clone()
    indices = latent.get("batch_index")
    out["batch_index"] = (list(range(start, start + length)) if indices is None
                          else list(indices[start:start + length]))
    return out


def repeat_batch(latent: dict, amount: int) -> dict:
    """The batch `amount` times over. An existing batch_index is extended with fresh positions after
    it (each copy gets new noise); without one, every item gets its position's noise as usual.

    Per-item masks are repeated with their items. (ComfyUI repeats the mask batch as given, so a mask
    batch shorter than the samples ends up paired with the wrong copies; we pair them first.)
    """
    if amount < 1:
        raise ValueError(f"RepeatLatentBatch amount must be >= 1, got {amount}")
    samples = latent["samples"]
    out = dict(latent)
    out["samples"] = samples.repeat((amount, 1, 1, 1))
    mask = latent.get("noise_mask")
    if mask is not None and mask.shape[0] > 1:
        out["noise_mask"] = _per_item_masks(latent).repeat((amount, 1, 1, 1))
    indices = latent.get("batch_index")
    if indices is not None:
        offset = max(indices) - min(indices) + 1
        out["batch_index"] = list(indices) + [i + k * offset for k in range(1, amount) for i in indices]
    return out


def concat(latent1: dict, latent2: dict) -> dict:
    """latent2's items after latent1's; latent2 is resized to latent1's size (bilinear, centre crop)
    when they differ. batch_index keeps each side's (0..n-1 where absent), so every item keeps the
    noise it would have had alone.

    Noise masks: where either side has one, the result has one per item (ones where a side had none).
    ComfyUI keeps only latent1's mask, which then cycles over latent2's items too.
    """
    s1, s2 = latent1["samples"], latent2["samples"]
    out = dict(latent1)
    out["samples"] = torch.cat((s1, reshape_like(s1.shape, s2, repeat_batch=False)), dim=0)
    out["batch_index"] = (list(latent1.get("batch_index", range(s1.shape[0])))
                          + list(latent2.get("batch_index", range(s2.shape[0]))))
    if "noise_mask" in latent1 or "noise_mask" in latent2:
        masks = []
        for latent, crop in ((latent1, "disabled"), (latent2, "center")):
            mask = _per_item_masks(latent)
            if mask is None:
                mask = torch.ones(latent["samples"].shape[0], 1, *s1.shape[-2:])
            masks.append(resize(mask.float(), s1.shape[-1], s1.shape[-2], "bilinear", crop))
        out["noise_mask"] = torch.cat(masks, dim=0)
    return out


SEED_BEHAVIORS = ("random", "fixed")


def seed_behavior(latent: dict, behavior: str) -> dict:
    """"fixed": every item gets the first item's noise; "random": drop batch_index (each item its own)."""
    if behavior not in SEED_BEHAVIORS:
        raise ValueError(f"unknown seed_behavior {behavior!r}; expected one of {list(SEED_BEHAVIORS)}")
    out = dict(latent)
    if behavior == "random":
        out.pop("batch_index", None)
    else:
        first = latent.get("batch_index", [0])[0]
        out["batch_index"] = [first] * latent["samples"].shape[0]
    return out
