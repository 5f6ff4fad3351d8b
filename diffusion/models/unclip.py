"""unCLIP image conditioning: CLIP image embeddings noised to a chosen level, as the ADM input.

SD2.1-unCLIP UNets take `y` = [noised image embedding, timestep embedding of the noise level]; SDXL
"revision" feeds the noised embedding in place of the pooled text embedding. Both follow ComfyUI
(`model_base.unclip_adm`, `CLIPEmbeddingNoiseAugmentation`), which we read to learn:

- the noise level is round(999 * noise_augmentation) on a 1000-step squaredcos_cap_v2 (cosine)
  schedule, computed in float64 and stored in float32;
- z = sqrt(alphas_cumprod[t]) * x + sqrt(1 - alphas_cumprod[t]) * noise, with data mean 0 and std 1
  (ComfyUI loads no CLIP statistics, so the normalisation is the identity); even level 0 adds a
  little noise (sqrt(1 - alphas_cumprod[0]) is about 0.006);
- the noise is drawn from a generator seeded with the sampler's seed - 10, afresh for each image
  embedding (so every embedding gets the same noise);
- the result, [z, timestep_embedding(t)], is multiplied by the conditioning's strength; several
  embeddings (a batch of images, or several unCLIPConditioning nodes) are summed and the sum's
  embedding half is noised again at the "merge" level (0.05 for SD2.1-unCLIP, 0 for SDXL), its noise
  continuing the same generator (ComfyUI draws it from the global generator it just reseeded).
"""
from __future__ import annotations

import math

import torch

from diffusion.models.unet import timestep_embedding

MAX_NOISE_LEVEL = 1000
SEED_OFFSET = -10  # ComfyUI: kwargs["seed"] - 10


def cosine_alphas_cumprod(timesteps: int = 1000, max_beta: float = 0.999) -> torch.Tensor:
    """alphas_cumprod of the squaredcos_cap_v2 schedule (float64)."""
    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = torch.tensor([min(1 - alpha_bar((i + 1) / timesteps) / alpha_bar(i / timesteps), max_beta)
                          for i in range(timesteps)], dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


class NoiseAugmentor:
    """CLIP-embedding noise augmentation at integer noise levels 0..999."""

    def __init__(self, timestep_dim: int, timesteps: int = 1000):
        self.timestep_dim = timestep_dim
        self.max_noise_level = MAX_NOISE_LEVEL
        ac = cosine_alphas_cumprod(timesteps)
        self.sqrt_alphas_cumprod = ac.sqrt().float()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - ac).sqrt().float()

    def level(self, noise_augmentation: float) -> int:
        return round((self.max_noise_level - 1) * float(noise_augmentation))

    def __call__(self, x: torch.Tensor, level: int, generator: torch.Generator):
        """(noised x [1, D], embedding of the level [1, timestep_dim]) for an embedding x [D] or [1, D]."""
        x = x.reshape(1, -1).float()
        noise = torch.randn(x.shape, dtype=x.dtype, generator=generator).to(x.device)
        z = self.sqrt_alphas_cumprod[level] * x + self.sqrt_one_minus_alphas_cumprod[level] * noise
        t = torch.tensor([level], device=x.device)
        return z, timestep_embedding(t, self.timestep_dim).to(x.device)


def _image_embeds(entry: dict, where: str) -> torch.Tensor:
    output = entry.get("clip_vision_output")
    embeds = None if output is None else getattr(output, "image_embeds", None)
    if embeds is None and isinstance(output, dict):
        embeds = output.get("image_embeds")
    if not torch.is_tensor(embeds):
        raise ValueError(f"{where}: unclip_conditioning entry has no CLIP_VISION_OUTPUT with image_embeds")
    return embeds.reshape(-1, embeds.shape[-1])


def unclip_adm(unclip_conditioning: list, augmentor: NoiseAugmentor, merge_augmentation: float,
               seed, where: str = "unCLIP conditioning") -> torch.Tensor:
    """[1, 2 * D]: the strength-weighted, noise-augmented image embeddings plus level embedding."""
    seed = (0 if seed is None else int(seed)) + SEED_OFFSET
    outs = []
    generator = None
    for entry in unclip_conditioning:
        embeds = _image_embeds(entry, where)
        if embeds.shape[-1] != augmentor.timestep_dim:
            raise ValueError(f"{where}: image embeddings of width {embeds.shape[-1]} do not fit this model "
                             f"(it takes {augmentor.timestep_dim}); use the CLIP vision model it was trained with")
        strength = float(entry.get("strength", 1.0))
        level = augmentor.level(entry.get("noise_augmentation", 0.0))
        for embed in embeds:
            generator = torch.Generator().manual_seed(seed)
            z, level_emb = augmentor(embed, level, generator)
            outs.append(torch.cat([z, level_emb], dim=1) * strength)
    if not outs:
        raise ValueError(f"{where}: unclip_conditioning is empty")
    if len(outs) == 1:
        return outs[0]
    total = torch.stack(outs).sum(0)
    z, level_emb = augmentor(total[:, :augmentor.timestep_dim], augmentor.level(merge_augmentation), generator)
    return torch.cat([z, level_emb], dim=1)
