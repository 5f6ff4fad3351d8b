"""The .latent file (ComfyUI's SaveLatent / LoadLatent): a safetensors file holding one LATENT.

Keys: "latent_tensor" (the samples, [B,C,H,W]) and "latent_format_version_0" (an empty tensor that
marks the samples as unscaled VAE space). Files written before that marker existed hold latents
multiplied by SD1's scale factor 0.18215; loading divides them by it, as ComfyUI does. Metadata (all
strings): "prompt" (the API prompt as JSON, "" when unknown) and one JSON entry per extra_pnginfo key
(usually "workflow").
"""
from __future__ import annotations

import torch

from diffusion.loading.files import CheckpointError, read_safetensors

SAMPLES_KEY = "latent_tensor"
VERSION_0_KEY = "latent_format_version_0"
LEGACY_SCALE = 0.18215  # the scale of the pre-version files (SD1's)


def save_latent(path, samples: torch.Tensor, metadata: dict[str, str] | None = None) -> None:
    """Write `samples` as a version-0 (unscaled) .latent file."""
    from safetensors.torch import save_file  # only saving needs the writer

    tensors = {SAMPLES_KEY: samples.detach().to("cpu").contiguous(), VERSION_0_KEY: torch.tensor([])}
    save_file(tensors, str(path), metadata=metadata)


def load_latent(path) -> torch.Tensor:
    """The samples of a .latent file as float32 in unscaled VAE space (a copy, not a file view)."""
    tensors, _ = read_safetensors(path)
    if SAMPLES_KEY not in tensors:
        raise CheckpointError(path, f"not a latent file: it has no {SAMPLES_KEY!r} tensor "
                                    f"(keys: {', '.join(sorted(tensors)) or 'none'})")
    samples = tensors[SAMPLES_KEY].to(torch.float32, copy=True)
    if samples.ndim != 4:
        raise CheckpointError(path, f"{SAMPLES_KEY!r} has shape {list(samples.shape)}, expected [B,C,H,W]")
    if VERSION_0_KEY not in tensors:
        samples = samples * (1.0 / LEGACY_SCALE)
    return samples
