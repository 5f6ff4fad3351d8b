"""The "pixel_space" VAE: an identity autoencoder for models that work on pixels (VAELoader's choice)."""
from __future__ import annotations

import torch


class PixelSpaceVAE:
    """Latents are the image itself mapped to -1..1, channels first; the interface of `diffusion.models.vae.VAE`."""

    downscale_ratio = 1
    latent_channels = 3

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        return ((samples.float() + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1).contiguous()

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return (image[..., :3].float() * 2.0 - 1.0).movedim(-1, 1).contiguous()

    def decode_tiled(self, samples, tile=512, overlap=64, progress=None):
        return self.decode(samples)  # per-pixel: tiling changes nothing

    def encode_tiled(self, image, tile=512, overlap=64, progress=None):
        return self.encode(image)
