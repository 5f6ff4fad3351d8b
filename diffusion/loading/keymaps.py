"""Key maps: from the names weights carry in files to the names our networks use.

The networks keep the original single-file layouts' names wherever they can (UNet and VAE below their
checkpoint prefix, CLIP text models in their transformers or open_clip names), so most of the mapping
is stripping a prefix and dropping keys the networks do not use.
"""
from __future__ import annotations

import logging

import torch

from diffusion.loading.config import VAEConfig, VAEError

log = logging.getLogger(__name__)

# Keys some VAE files carry that are not part of the network (training leftovers).
_VAE_IGNORED_PREFIXES = ("loss.", "model_ema.")
_VAE_ATTN_WEIGHTS = ("q", "k", "v", "proj_out")
# Keys real checkpoints carry that the networks do not use: HF's position_ids buffer (positions are
# always 0..N-1) and open_clip's contrastive logit_scale.
IGNORED_KEYS = ("text_model.embeddings.position_ids", "embeddings.position_ids", "logit_scale")


def vae_weights(sd: dict, cfg: VAEConfig, expected: dict[str, torch.Size]) -> dict:
    """Check names and shapes against the network; reshape linear attention weights to 1x1 convs.

    Some SD2/SDXL VAE files store the mid-block attention projections as [C, C] (linear) instead of
    [C, C, 1, 1]; both are the same numbers.
    """
    out, unexpected = {}, []
    for key, tensor in sd.items():
        if key.startswith(_VAE_IGNORED_PREFIXES):
            continue
        if key not in expected:
            unexpected.append(key)
            continue
        parts = key.split(".")
        if (len(parts) >= 4 and parts[-3] == "attn_1" and parts[-2] in _VAE_ATTN_WEIGHTS
                and parts[-1] == "weight" and tensor.ndim == 2):
            tensor = tensor.reshape(*tensor.shape, 1, 1)
        if tuple(tensor.shape) != tuple(expected[key]):
            raise VAEError(f"VAE weight '{key}' has shape {list(tensor.shape)}, expected "
                           f"{list(expected[key])} for the detected config {cfg}")
        out[key] = tensor
    missing = [k for k in expected if k not in out]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise VAEError(f"VAE state dict is missing key '{missing[0]}'{more}")
    if unexpected:
        log.warning("VAE state dict: ignoring %d unexpected keys, e.g. '%s'", len(unexpected), unexpected[0])
    return out


def normalize_text_model_keys(sd) -> dict:
    """Drop `IGNORED_KEYS` and put HF-layout keys under `text_model.` where a file lacks that level
    (old SD1 conversions store `cond_stage_model.transformer.embeddings.*`; ComfyUI renames them too)."""
    sd = {k: v for k, v in sd.items() if k not in IGNORED_KEYS}
    if "embeddings.token_embedding.weight" in sd and "text_model.embeddings.token_embedding.weight" not in sd:
        sd = {(k if k.startswith("text_projection") else "text_model." + k): v for k, v in sd.items()}
    return sd
