"""The model runtime as a library: load a checkpoint, encode a prompt, sample, decode.

    import diffusion
    model, clip, vae, arch = diffusion.load_checkpoint("models/checkpoints/model.safetensors")
    positive, negative = diffusion.encode_prompt(clip, "a red fox"), diffusion.encode_prompt(clip, "")
    latent = diffusion.sample(model, positive, negative, seed=1, width=512, height=512)
    images = diffusion.decode(vae, latent)  # IMAGE [B, H, W, 3] float32 0..1

The same calls the core nodes make, with KSampler's defaults. Importing this package loads nothing:
each function imports what it needs on first use, so code that only names `diffusion.*` modules (or
the engine, which never imports this package) does not pay for torch.

Subpackages: models/ (the networks), loading/ (files, architectures, key maps, configs), text/
(tokenizer, prompt weights, the CLIP object), sampling/ (samplers, schedulers, noise, guidance,
`ksampler.sample`); memory.py and model_patcher.py sit beside them. docs/runtime.md has the map.
"""
from __future__ import annotations


def load_checkpoint(path, **options):
    """(MODEL, CLIP, VAE, arch) of a single-file checkpoint; see diffusion.loading.checkpoint."""
    from diffusion.loading.checkpoint import load_checkpoint as load

    return load(path, **options)


def encode_prompt(clip, text: str) -> list:
    """CONDITIONING of one prompt, as CLIPTextEncode makes it: [[cond, {"pooled_output": pooled}]]."""
    cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


def sample(model, positive, negative, *, seed: int, width: int = 512, height: int = 512, batch_size: int = 1,
           steps: int = 20, cfg: float = 8.0, sampler_name: str = "euler", scheduler: str = "normal"):
    """Text-to-image latents (unscaled, CPU float32): EmptyLatentImage then KSampler."""
    from diffusion.models.latent_formats import empty_latent
    from diffusion.sampling import ksampler
    from diffusion.sampling.noise import prepare_noise

    latent = empty_latent(batch_size, width, height)
    return ksampler.sample(model, prepare_noise(latent, seed), positive, negative, cfg, sampler_name, scheduler,
                           steps, latent, seed=seed)


def decode(vae, latent):
    """IMAGE [B, H, W, 3] float32 0..1 from unscaled latents."""
    return vae.decode(latent)
