"""The UNet's ADM input `y` ("label_emb"), built per conditioning dict at sampling time.

- SDXL base: [pooled, emb(height), emb(width), emb(crop_h), emb(crop_w), emb(target_height),
  emb(target_width)], each emb a 256-wide sinusoid; refiner: the five height, width, crop_h, crop_w,
  aesthetic_score (default 6, 2.5 for negative prompts). With `unclip_conditioning` in the dict
  (SDXL "revision", unCLIPConditioning on an SDXL model) the pooled part is the noised CLIP-G image
  embedding instead of the text's (diffusion/models/unclip.py, merge level 0), as ComfyUI.
- SD2.1-unCLIP: the noised image embedding and its level embedding (merge level 0.05), or zeros for
  a conditioning without `unclip_conditioning` (ComfyUI's convention for the negative prompt).
- SD1 / SD2: no ADM input (None).

The sampler's seed arrives as cond["seed"] (the unCLIP noise depends on it).
"""
from __future__ import annotations

import torch

from diffusion.models.unclip import NoiseAugmentor, unclip_adm
from diffusion.models.unet import timestep_embedding

UNCLIP_MERGE_SD2 = 0.05  # ComfyUI's default "unclip_noise_augment_merge" for SD2.1-unCLIP
UNCLIP_MERGE_SDXL = 0.0

_augmentors: dict[int, NoiseAugmentor] = {}


def augmentor(dim: int) -> NoiseAugmentor:
    if dim not in _augmentors:
        _augmentors[dim] = NoiseAugmentor(dim)
    return _augmentors[dim]


def is_unclip(arch: str, config) -> bool:
    """SD2.1-unCLIP: an SD2 UNet with an ADM input (see UNetConfig.arch)."""
    return arch == "sd2" and config.adm_in_channels is not None


def encode_adm(arch: str, config, cond: dict, batch: int):
    """`y` [batch, adm] for one conditioning dict, or None when the UNet takes none."""
    adm = config.adm_in_channels
    if adm is None:
        return None
    if is_unclip(arch, config):
        if "unclip_conditioning" in cond:
            y = unclip_adm(cond["unclip_conditioning"], augmentor(adm // 2), UNCLIP_MERGE_SD2, cond.get("seed"),
                           where=f"{arch} unCLIP model")
        else:
            y = torch.zeros(1, adm)
        return y.repeat(batch, 1)
    return _sdxl_adm(arch, adm, cond).repeat(batch, 1)


def _sdxl_adm(arch: str, adm: int, cond: dict) -> torch.Tensor:
    width = cond.get("width", 768)
    height = cond.get("height", 768)
    if arch == "sdxl_refiner":
        default_score = 2.5 if cond.get("prompt_type") == "negative" else 6.0
        values = [height, width, cond.get("crop_h", 0), cond.get("crop_w", 0),
                  cond.get("aesthetic_score", default_score)]
    else:
        values = [height, width, cond.get("crop_h", 0), cond.get("crop_w", 0),
                  cond.get("target_height", height), cond.get("target_width", width)]
    pooled = _pooled(arch, cond)
    # the rest of the input is one sinusoid per value (256 wide in the released models)
    per_value, rest = divmod(adm - pooled.shape[1], len(values))
    if rest or per_value <= 0:
        raise ValueError(f"pooled_output width {pooled.shape[1]} does not fit this model's "
                         f"adm input of {adm}")
    emb = timestep_embedding(torch.tensor(values, dtype=torch.float32), per_value).reshape(1, -1)
    return torch.cat([pooled.to(emb.device), emb], dim=1)


def _pooled(arch: str, cond: dict) -> torch.Tensor:
    if "unclip_conditioning" in cond:  # revision: CLIP-G image embeddings as the pooled output
        width = _embed_width(cond["unclip_conditioning"])
        y = unclip_adm(cond["unclip_conditioning"], augmentor(width), UNCLIP_MERGE_SDXL, cond.get("seed"),
                       where=f"{arch} model (revision)")
        return y[:, :width]
    pooled = cond.get("pooled_output")
    if pooled is None:
        raise ValueError(f"{arch} model needs 'pooled_output' in the conditioning "
                         "(use an SDXL text encoder)")
    return pooled.reshape(pooled.shape[0], -1)[:1].float()


def _embed_width(unclip_conditioning) -> int:
    try:
        return int(unclip_conditioning[0]["clip_vision_output"]["image_embeds"].shape[-1])
    except (IndexError, KeyError, TypeError, AttributeError):
        raise ValueError("unclip_conditioning must be a list of {'clip_vision_output', 'strength', "
                         "'noise_augmentation'} entries (from unCLIPConditioning)") from None
