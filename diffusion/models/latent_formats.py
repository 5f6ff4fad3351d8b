"""Latent spaces of the supported model families.

A VAE produces latents in its own ("unscaled") space; the diffusion model was trained on latents
multiplied by `scale_factor` so they have roughly unit variance (COMPAT §1.6). `process_in` maps VAE
space to model space, `process_out` back. The preview data (a linear map from model-space latents to
RGB in -1..1, and the name of the matching TAESD decoder file) lives here too, because it belongs to
the latent space, not to any one network.

The latent-to-RGB factors are the widely published least-squares fits for the SD1 and SDXL VAEs (the
values ComfyUI and A1111 previews use), so previews look the same as there.
"""

from __future__ import annotations

import torch


class LatentFormat:
    scale_factor: float = 1.0
    shift_factor: float = 0.0
    latent_channels: int = 4
    latent_rgb_factors: list[list[float]] | None = None  # [latent_channels][3]
    latent_rgb_factors_bias: list[float] | None = None   # [3]
    taesd_decoder_name: str | None = None

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        """VAE space -> model space."""
        return (latent - self.shift_factor) * self.scale_factor

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        """Model space -> VAE space."""
        return latent / self.scale_factor + self.shift_factor

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SD15(LatentFormat):
    """SD1.x and SD2.x (same KL-f8 VAE)."""

    scale_factor = 0.18215
    latent_rgb_factors = [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ]
    taesd_decoder_name = "taesd_decoder"


class SDXL(LatentFormat):
    """SDXL base and refiner (retrained KL-f8 VAE, different scale)."""

    scale_factor = 0.13025
    latent_rgb_factors = [
        [0.3651, 0.4232, 0.4341],
        [-0.2533, -0.0042, 0.1068],
        [0.1076, 0.1111, -0.0362],
        [-0.3165, -0.2492, -0.2188],
    ]
    latent_rgb_factors_bias = [0.1084, -0.0175, -0.0011]
    taesd_decoder_name = "taesdxl_decoder"


# 16-channel latent spaces: only their TAESD variants (taesd3 / taef1) are usable in this project, as
# VAEs in VAELoader; scale and shift are the values from those models' VAE configurations.
class SD3(LatentFormat):
    scale_factor = 1.5305
    shift_factor = 0.0609
    latent_channels = 16
    taesd_decoder_name = "taesd3_decoder"


class Flux(LatentFormat):
    scale_factor = 0.3611
    shift_factor = 0.1159
    latent_channels = 16
    taesd_decoder_name = "taef1_decoder"


BY_NAME = {"sd15": SD15, "sdxl": SDXL, "sd3": SD3, "flux": Flux}


def empty_latent(batch_size: int, width: int, height: int, latent_format: LatentFormat = SD15()) -> torch.Tensor:
    """All-zero latents for images of width x height pixels (EmptyLatentImage): the latent format
    says the channel count (4 for SD1/SD2/SDXL, whose VAEs downscale by 8)."""
    return torch.zeros([batch_size, latent_format.latent_channels, height // 8, width // 8])
