"""TAESD: the tiny distilled autoencoder (madebyollin/taesd) used for previews and as a fast VAE.

Its released files (`models/vae_approx/taesd_decoder.safetensors`, `taesdxl_decoder...`, encoders
likewise) hold one `nn.Sequential` each, so keys are layer indices: `1.weight`, `3.conv.0.weight`,
`3.skip.weight`... The layer order is fixed; the width (64 in the releases) and the number of latent
channels (4 for SD1/SDXL, 16 for SD3/Flux variants) are read from the weights.

TAESD works in the diffusion model's latent space (VAE latents after `process_in`); the decoder gives
images roughly in 0..1 and the encoder takes images in 0..1.
"""

from __future__ import annotations

import torch
from torch import nn

from diffusion import memory
from diffusion.models import latent_formats, tiling
from diffusion.loading.config import TAESDConfig, TAESDError
from diffusion.models.vae import check_latent, image_to_pixels, pixels_to_image

ENCODER_BLOCKS = (1, 3, 3, 3)  # blocks per resolution, full res first
DECODER_BLOCKS = (3, 3, 3, 1)  # blocks per resolution, latent res first
VARIANT_FORMATS = {"taesd": latent_formats.SD15, "taesdxl": latent_formats.SDXL,
                   "taesd3": latent_formats.SD3, "taef1": latent_formats.Flux}


def _conv(cin: int, cout: int, **kw) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, **kw)


class Clamp(nn.Module):
    """Soft clamp of the incoming latents to about +-3."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Sequential(_conv(cin, cout), nn.ReLU(), _conv(cout, cout), nn.ReLU(), _conv(cout, cout))
        self.skip = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


def build_encoder(cfg: TAESDConfig) -> nn.Sequential:
    """Image 0..1 [B,3,H,W] -> latents [B,C,H/8,W/8]."""
    w = cfg.width
    layers: list[nn.Module] = [_conv(3, w)]
    for i, n in enumerate(ENCODER_BLOCKS):
        if i > 0:
            layers.append(_conv(w, w, stride=2, bias=False))
        layers.extend(Block(w, w) for _ in range(n))
    layers.append(_conv(w, cfg.latent_channels))
    return nn.Sequential(*layers)


def build_decoder(cfg: TAESDConfig) -> nn.Sequential:
    """Latents [B,C,h,w] -> image ~0..1 [B,3,8h,8w]."""
    w = cfg.width
    layers: list[nn.Module] = [Clamp(), _conv(cfg.latent_channels, w), nn.ReLU()]
    for i, n in enumerate(DECODER_BLOCKS):
        if i > 0:
            layers.extend([nn.Upsample(scale_factor=2), _conv(w, w, bias=False)])
        layers.extend(Block(w, w) for _ in range(n))
    layers.append(_conv(w, 3))
    return nn.Sequential(*layers)


class TAESDVAE:
    """TAESD as a VAE (VAELoader's taesd/taesdxl/... entries): the `VAE` interface of docs/contracts.md.

    Samples are unscaled VAE space like any VAE's; they are mapped to the model space TAESD works in
    with the variant's latent format.
    """

    downscale_ratio = 8

    def __init__(self, encoder: nn.Sequential | None, decoder: nn.Sequential | None,
                 latent_format: latent_formats.LatentFormat, device=None):
        if encoder is None and decoder is None:
            raise TAESDError("TAESDVAE needs an encoder, a decoder or both")
        self.encoder, self.decoder = encoder, decoder
        self.latent_format = latent_format
        self.latent_channels = latent_format.latent_channels
        self.device = torch.device(device) if device is not None else memory.get_torch_device()
        for net in (encoder, decoder):
            if net is not None:
                net.to(self.device)

    def _decode_raw(self, samples: torch.Tensor) -> torch.Tensor:
        if self.decoder is None:
            raise TAESDError("this TAESD VAE has no decoder")
        with torch.inference_mode():
            x = self.latent_format.process_in(samples.float()).to(self.device)
            return self.decoder(x).float().cpu() * 2 - 1  # in -1..1 so tiling blends like the VAE's

    def _encode_raw(self, x: torch.Tensor) -> torch.Tensor:
        if self.encoder is None:
            raise TAESDError("this TAESD VAE has no encoder")
        with torch.inference_mode():
            z = self.encoder(((x + 1) / 2).to(self.device)).float().cpu()
        return self.latent_format.process_out(z)

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        return pixels_to_image(self._decode_raw(check_latent(samples, self.latent_channels, "TAESD decode")))

    def decode_tiled(self, samples: torch.Tensor, tile: int = 512, overlap: int = 64, progress=None):
        samples = check_latent(samples, self.latent_channels, "TAESD decode")
        t, o = tiling.tile_params(tile, overlap, self.downscale_ratio, what="TAESD decode tile")
        return pixels_to_image(tiling.tiled_map(samples, self._decode_raw, t, o, up=8, down=1, out_channels=3,
                                          progress=progress))

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self._encode_raw(image_to_pixels(image, 8, 3, "TAESD encode"))

    def encode_tiled(self, image: torch.Tensor, tile: int = 512, overlap: int = 64, progress=None):
        x = image_to_pixels(image, 8, 3, "TAESD encode")
        t, o = tiling.tile_params(tile, overlap, 1, what="TAESD encode tile", align=8)
        return tiling.tiled_map(x, self._encode_raw, t, o, up=1, down=8, out_channels=self.latent_channels,
                                progress=progress)
