"""TAESD: the tiny distilled autoencoder (madebyollin/taesd) used for previews and as a fast VAE.

Its released files (`models/vae_approx/taesd_decoder.safetensors`, `taesdxl_decoder...`, encoders
likewise) hold one `nn.Sequential` each, so keys are layer indices: `1.weight`, `3.conv.0.weight`,
`3.skip.weight`... The layer order is fixed; the width (64 in the releases) and the number of latent
channels (4 for SD1/SDXL, 16 for SD3/Flux variants) are read from the weights.

TAESD works in the diffusion model's latent space (VAE latents after `process_in`); the decoder gives
images roughly in 0..1 and the encoder takes images in 0..1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from diffusion import latent_formats, memory, tiling
from diffusion.vae import VAEError, check_latent, image_to_pixels, pixels_to_image

ENCODER_BLOCKS = (1, 3, 3, 3)  # blocks per resolution, full res first
DECODER_BLOCKS = (3, 3, 3, 1)  # blocks per resolution, latent res first
VARIANT_FORMATS = {"taesd": latent_formats.SD15, "taesdxl": latent_formats.SDXL,
                   "taesd3": latent_formats.SD3, "taef1": latent_formats.Flux}


class TAESDError(VAEError):
    """A TAESD state dict that does not fit the architecture."""


@dataclass(frozen=True)
class TAESDConfig:
    latent_channels: int = 4
    width: int = 64


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


def detect_config(sd: dict, part: str) -> TAESDConfig:
    """Width and latent channels of an encoder or decoder state dict."""
    if part == "decoder":
        key = "1.weight"
        if key not in sd:
            raise TAESDError(f"TAESD decoder state dict is missing key '{key}'")
        return TAESDConfig(latent_channels=sd[key].shape[1], width=sd[key].shape[0])
    if part == "encoder":
        first, last = "0.weight", f"{1 + sum(ENCODER_BLOCKS) + len(ENCODER_BLOCKS) - 1}.weight"
        for key in (first, last):
            if key not in sd:
                raise TAESDError(f"TAESD encoder state dict is missing key '{key}'")
        return TAESDConfig(latent_channels=sd[last].shape[0], width=sd[first].shape[0])
    raise ValueError(f"part must be 'encoder' or 'decoder', got {part!r}")


def load_part(sd: dict, part: str) -> nn.Sequential:
    """Build the encoder or decoder from its state dict, checking every name and shape."""
    cfg = detect_config(sd, part)
    with torch.device("meta"):
        net = build_encoder(cfg) if part == "encoder" else build_decoder(cfg)
    expected = net.state_dict()
    for key, ref in expected.items():
        if key not in sd:
            raise TAESDError(f"TAESD {part} state dict is missing key '{key}'")
        if tuple(sd[key].shape) != tuple(ref.shape):
            raise TAESDError(f"TAESD {part} weight '{key}' has shape {list(sd[key].shape)}, expected "
                             f"{list(ref.shape)} for {cfg}")
    extra = sorted(set(sd) - set(expected))
    if extra:
        raise TAESDError(f"TAESD {part} state dict has unexpected key '{extra[0]}' "
                         f"(is this the {'decoder' if part == 'encoder' else 'encoder'} file?)")
    net.load_state_dict({k: sd[k] for k in expected}, assign=True)
    return net.float().eval().requires_grad_(False)


def load_file(path, part: str) -> nn.Sequential:
    from diffusion.checkpoint import read_state_dict  # the project's safe file reader

    sd, _ = read_state_dict(path)
    try:
        return load_part(sd, part)
    except TAESDError as e:
        raise TAESDError(f"{path}: {e}") from e


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


def load_taesd_vae(encoder_path, decoder_path, variant: str = "taesd", device=None) -> TAESDVAE:
    """VAELoader entry: both halves of a TAESD variant (taesd, taesdxl, taesd3, taef1)."""
    if variant not in VARIANT_FORMATS:
        raise ValueError(f"unknown TAESD variant {variant!r}; choose one of {', '.join(VARIANT_FORMATS)}")
    fmt = VARIANT_FORMATS[variant]()
    enc = load_file(encoder_path, "encoder") if encoder_path else None
    dec = load_file(decoder_path, "decoder") if decoder_path else None
    for name, net, idx in (("encoder", enc, -1), ("decoder", dec, 1)):
        channels = None if net is None else (net[idx].out_channels if name == "encoder" else net[idx].in_channels)
        if channels is not None and channels != fmt.latent_channels:
            raise TAESDError(f"{variant} {name} has {channels} latent channels, expected {fmt.latent_channels}")
    return TAESDVAE(enc, dec, fmt, device=device)
