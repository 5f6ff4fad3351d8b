"""Core latent nodes: the empty latent and the VAE between pixels and latents.

EmptyLatentImage, VAEDecode, VAEEncode, VAEDecodeTiled, VAEEncodeTiled (COMPAT §9). Tensors follow
COMPAT §1.6: IMAGE [B,H,W,C] float32 0..1, LATENT {"samples": [B,4,H/8,W/8]} in unscaled VAE space.
The arithmetic (crop to multiples of 8, -1..1 mapping, tiling) lives in diffusion/models/vae.py.
"""
from __future__ import annotations

import torch

from diffusion.models.latent_formats import empty_latent
from nodes.spec import MAX_RESOLUTION, Int, Link, Out, mappings, node


def _rgb(pixels: torch.Tensor) -> torch.Tensor:
    # Some image nodes pass RGBA; the VAE encodes colour only (as ComfyUI's VAEEncode does).
    return pixels[:, :, :, :3]


@node(category="latent", display_name="Empty Latent Image",
      description="A batch of all-zero latents, the starting point of text-to-image sampling.",
      outputs=[Out("LATENT", tooltip="All-zero latents, one per batch item.")],
      inputs=[Int("width", 512, min=16, max=MAX_RESOLUTION, step=8,
                  tooltip="Image width in pixels (the latent is 1/8 of it)."),
              Int("height", 512, min=16, max=MAX_RESOLUTION, step=8,
                  tooltip="Image height in pixels (the latent is 1/8 of it)."),
              Int("batch_size", 1, min=1, max=4096, tooltip="How many latents to make.")])
class EmptyLatentImage:
    def execute(self, width, height, batch_size=1):
        latent = empty_latent(batch_size, width, height)
        return ({"samples": latent},)


@node(category="latent", display_name="VAE Decode",
      description="Turns latents into an IMAGE with the VAE decoder.",
      outputs=[Out("IMAGE", tooltip="Pixels 0..1, eight times the latent size.")],
      inputs=[Link("samples", "LATENT", tooltip="Latents to decode."),
              Link("vae", "VAE", tooltip="The VAE matching the model that made the latents.")])
class VAEDecode:
    def execute(self, samples, vae):
        return (vae.decode(samples["samples"]),)


@node(category="latent", display_name="VAE Encode", outputs=[Out("LATENT")],
      inputs=[Link("pixels", "IMAGE"), Link("vae", "VAE")])
class VAEEncode:
    def execute(self, pixels, vae):
        return ({"samples": vae.encode(_rgb(pixels))},)


def _tile_inputs(tile_step: int) -> list:
    # temporal_* only matter for video VAEs; kept so workflows carrying them validate unchanged.
    return [
        Int("tile_size", 512, min=64, max=4096, step=tile_step),
        Int("overlap", 64, min=0, max=4096, step=32),
        Int("temporal_size", 64, min=8, max=4096, step=4,
            tooltip="Video VAEs only: frames per temporal tile (ignored here)."),
        Int("temporal_overlap", 8, min=4, max=4096, step=4,
            tooltip="Video VAEs only: frames shared by neighbouring temporal tiles (ignored here)."),
    ]


def _clamp_overlap(tile_size: int, overlap: int) -> int:
    # A seam band wider than a quarter tile would leave tiles with no interior; shrink it.
    return tile_size // 4 if tile_size < overlap * 4 else overlap


@node(category="_for_testing", display_name="VAE Decode (Tiled)", outputs=[Out("IMAGE")],
      inputs=[Link("samples", "LATENT"), Link("vae", "VAE"), *_tile_inputs(32)])
class VAEDecodeTiled:
    def execute(self, samples, vae, tile_size, overlap=64, temporal_size=64, temporal_overlap=8):
        return (vae.decode_tiled(samples["samples"], tile=tile_size, overlap=_clamp_overlap(tile_size, overlap)),)


@node(category="_for_testing", display_name="VAE Encode (Tiled)", outputs=[Out("LATENT")],
      inputs=[Link("pixels", "IMAGE"), Link("vae", "VAE"), *_tile_inputs(64)])
class VAEEncodeTiled:
    def execute(self, pixels, vae, tile_size, overlap=64, temporal_size=64, temporal_overlap=8):
        tiled = vae.encode_tiled(_rgb(pixels), tile=tile_size, overlap=_clamp_overlap(tile_size, overlap))
        return ({"samples": tiled},)


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = mappings(
    EmptyLatentImage, VAEDecode, VAEEncode, VAEDecodeTiled, VAEEncodeTiled)
