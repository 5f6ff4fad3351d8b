"""Per-step preview images of a latent being sampled (COMPAT §10 "Progress/preview per step").

`get_previewer(latent_format, method)` returns a function x0 -> PIL.Image, or None for no previews.
x0 is what the sampler callback hands over: the denoised estimate in the model's (scaled) latent
space, [B, C, h, w]; batch item 0 is shown.

Methods: "none"; "latent2rgb" (a fixed linear map per latent channel, image at latent resolution);
"taesd" (the tiny decoder from models/vae_approx, full resolution; falls back to latent2rgb when the
file is absent or unusable); "auto" = latent2rgb.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Iterable

import torch
from PIL import Image

from diffusion.loading import taesd
from diffusion.models.latent_formats import LatentFormat

log = logging.getLogger(__name__)

METHODS = ("none", "auto", "latent2rgb", "taesd")
TAESD_SUFFIXES = (".safetensors", ".sft", ".pth", ".pt", ".bin", ".ckpt")
_default_dirs: list[str] = [str(Path(__file__).resolve().parent.parent / "models" / "vae_approx")]
_decoders: dict[tuple[str, float], torch.nn.Module] = {}  # (path, mtime) -> loaded decoder

Previewer = Callable[[torch.Tensor], Image.Image]


def set_vae_approx_dirs(dirs: Iterable[str]) -> None:
    """Where TAESD decoders are looked up by default (the app passes its `vae_approx` folders)."""
    _default_dirs[:] = [str(d) for d in dirs]


def get_vae_approx_dirs() -> list[str]:
    return list(_default_dirs)


def _to_pil(rgb: torch.Tensor) -> Image.Image:
    """[h, w, 3] in 0..1 -> 8-bit RGB image."""
    data = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return Image.fromarray(data, mode="RGB")


def latent_to_rgb(x0: torch.Tensor, latent_format: LatentFormat) -> torch.Tensor:
    """Model-space latent [C,h,w] -> approximate RGB [h,w,3] in 0..1 by the format's linear map."""
    if latent_format.latent_rgb_factors is None:
        raise ValueError(f"{latent_format!r} has no latent_rgb_factors for a latent2rgb preview")
    factors = torch.tensor(latent_format.latent_rgb_factors, dtype=torch.float32, device=x0.device)
    if x0.ndim != 3 or x0.shape[0] != factors.shape[0]:
        raise ValueError(f"latent2rgb preview expects a latent [{factors.shape[0]},h,w], got {list(x0.shape)}")
    rgb = x0.float().permute(1, 2, 0) @ factors
    if latent_format.latent_rgb_factors_bias is not None:
        rgb = rgb + torch.tensor(latent_format.latent_rgb_factors_bias, dtype=torch.float32, device=x0.device)
    return ((rgb + 1) / 2).clamp(0, 1)


class Latent2RGBPreviewer:
    def __init__(self, latent_format: LatentFormat):
        self.latent_format = latent_format

    def __call__(self, x0: torch.Tensor) -> Image.Image:
        return _to_pil(latent_to_rgb(x0[0], self.latent_format))


class TAESDPreviewer:
    def __init__(self, decoder: torch.nn.Module):
        self.decoder = decoder

    def __call__(self, x0: torch.Tensor) -> Image.Image:
        param = next(self.decoder.parameters())
        with torch.inference_mode():
            rgb = self.decoder(x0[:1].to(param.device, param.dtype))[0]
        return _to_pil(rgb.float().permute(1, 2, 0))


def find_taesd_decoder(name: str, dirs: Iterable[str]) -> str | None:
    """First file `<name><suffix>` in dirs (e.g. taesd_decoder.safetensors), or None."""
    for d in dirs:
        for suffix in TAESD_SUFFIXES:
            path = os.path.join(d, name + suffix)
            if os.path.isfile(path):
                return path
    return None


def _load_decoder(path: str, device) -> torch.nn.Module:
    key = (path, os.path.getmtime(path))
    if key not in _decoders:
        _decoders[key] = taesd.load_file(path, "decoder")
    return _decoders[key].to(device)


def get_previewer(latent_format: LatentFormat, method: str, vae_approx_dirs: Iterable[str] | None = None,
                  device=None) -> Previewer | None:
    """The preview function for `method`, or None when previews are off or impossible for this format."""
    if method not in METHODS:
        raise ValueError(f"unknown preview method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "none":
        return None
    if method == "taesd" and latent_format.taesd_decoder_name:
        dirs = list(vae_approx_dirs) if vae_approx_dirs is not None else list(_default_dirs)
        path = find_taesd_decoder(latent_format.taesd_decoder_name, dirs)
        if path is None:
            log.info("no %s in %s; previewing with latent2rgb", latent_format.taesd_decoder_name, dirs)
        else:
            try:
                if device is None:
                    from diffusion import memory
                    device = memory.get_torch_device()
                return TAESDPreviewer(_load_decoder(path, device))
            except Exception as e:  # a bad preview file must not stop sampling
                log.warning("could not load TAESD decoder %s (%s); previewing with latent2rgb", path, e)
    if latent_format.latent_rgb_factors is None:
        return None
    return Latent2RGBPreviewer(latent_format)
