"""What inpainting UNets take besides the noisy latent: the mask and the masked image's latent.

SD1 / SD2 (and SDXL) inpainting checkpoints have a UNet whose first convolution reads 9 channels
instead of 4: the noisy latent, then the mask (1 channel, 1 = repaint), then the VAE latent of the
image with the masked part painted grey (4 channels). They are told apart from normal models by that
width alone (`input_blocks.0.0.weight`), as ComfyUI does.

Where the extra channels come from (ComfyUI model_base.BaseModel.concat_cond):
- a conditioning from InpaintModelConditioning carries 'concat_latent_image' (unscaled VAE latent,
  scaled here like any latent going into the model) and 'concat_mask';
- without 'concat_mask', the latent's noise_mask (the sampler's denoise mask) is the mask, and the
  latent being sampled is the image when there is no 'concat_latent_image';
- with no mask at all the model is told "repaint everything": mask ones and the latent of a
  mid-grey image (the constants below, SD1/SD2's VAE).
The mask is rounded to 0/1 and both are resized (centre crop to the aspect, bilinear) to the latent.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from diffusion import resample

# The scaled latent of an all-zero (mid-grey in -1..1) image under the SD1/SD2 VAE, per channel.
GREY_LATENT = (0.8223, -0.6876, 0.6364, 0.1380)


def concat_channels(model) -> int:
    """How many channels the UNet reads beyond the latent: 0 for a normal model, latent + 1 for an
    inpainting model. Any other layout is refused (we could not say what to feed it)."""
    config = getattr(model, "config", None)
    in_channels = getattr(config, "in_channels", None)
    latent_channels = getattr(getattr(model, "latent_format", None), "latent_channels", in_channels)
    if in_channels is None or in_channels == latent_channels:
        return 0
    if in_channels == 2 * latent_channels + 1:
        return in_channels - latent_channels
    raise ValueError(f"the UNet reads {in_channels} input channels for a {latent_channels}-channel latent; "
                     f"only inpainting models ({2 * latent_channels + 1} channels: latent, mask, masked "
                     f"image) are supported")


def masked_pixels(pixels: torch.Tensor, mask: torch.Tensor, ratio: int = 8,
                  where: str = "InpaintModelConditioning") -> tuple[torch.Tensor, torch.Tensor]:
    """(IMAGE with the masked part mid-grey, mask [B,1,H,W] at the image's size), both centre-cropped
    to multiples of `ratio`. The mask keeps its soft values; it is rounded only for the grey-out."""
    if not torch.is_tensor(pixels) or pixels.ndim != 4:
        raise ValueError(f"{where}: pixels must be an IMAGE [B,H,W,C], got {getattr(pixels, 'shape', pixels)!r}")
    if not torch.is_tensor(mask) or mask.ndim not in (2, 3):
        raise ValueError(f"{where}: mask must be a MASK [B,H,W], got {getattr(mask, 'shape', mask)!r}")
    _, h, w, _ = pixels.shape
    mask = F.interpolate(mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float(), size=(h, w),
                         mode="bilinear")
    hc, wc = h // ratio * ratio, w // ratio * ratio
    if hc == 0 or wc == 0:
        raise ValueError(f"{where}: the image must be at least {ratio}x{ratio} pixels, got {w}x{h}")
    top, left = (h % ratio) // 2, (w % ratio) // 2
    pixels = pixels[:, top:top + hc, left:left + wc].clone().float()
    mask = mask[:, :, top:top + hc, left:left + wc]
    keep = (1.0 - mask.round()).squeeze(1)
    for c in range(min(3, pixels.shape[-1])):
        pixels[..., c] = (pixels[..., c] - 0.5) * keep + 0.5
    return pixels, mask


def resize_to_batch(t: torch.Tensor, batch: int) -> torch.Tensor:
    """A batch of `batch` items picked evenly from `t` (repeated when shorter, sampled when longer)."""
    n = t.shape[0]
    if n == batch:
        return t
    if batch <= 1:
        return t[:batch]
    if batch < n:
        scale = (n - 1) / (batch - 1)
        index = [min(round(i * scale), n - 1) for i in range(batch)]
    else:
        scale = n / batch
        index = [min(int((i + 0.5) * scale), n - 1) for i in range(batch)]
    return t[index]


def _fit(t: torch.Tensor, hw) -> torch.Tensor:
    """[B,C,h,w] centre-cropped to the aspect of `hw`, then resized bilinearly to it."""
    if tuple(t.shape[-2:]) == tuple(hw):
        return t
    return resample.resize(t, hw[1], hw[0], "bilinear", "center")


def concat_inputs(options: dict, noise_shape, latent_format, latent_image=None, denoise_mask=None,
                  device="cpu", where: str = "conditioning") -> torch.Tensor:
    """The extra UNet input [B, 1 + C, H, W] (mask, masked-image latent) for one conditioning.

    `latent_image` is the latent being sampled, already scaled (process_in), or None; `denoise_mask`
    the sampler's mask ([B,C,H,W] or any MASK shape) or None.
    """
    batch, channels = noise_shape[0], noise_shape[1]
    hw = tuple(noise_shape[2:])
    mask = options.get("concat_mask", denoise_mask)
    if mask is None:
        grey = torch.tensor(GREY_LATENT[:channels], dtype=torch.float32, device=device)
        if grey.numel() != channels:
            raise ValueError(f"{where}: no grey latent is known for {channels}-channel latents; "
                             "give the inpainting model a mask (InpaintModelConditioning)")
        image = grey.view(1, -1, 1, 1).expand(batch, channels, *hw)
        return torch.cat([torch.ones((batch, 1) + hw, device=device), image], dim=1)
    image = options.get("concat_latent_image")
    if image is not None:
        image = latent_format.process_in(image.to(device, torch.float32))
    elif latent_image is not None:
        image = latent_image.to(device, torch.float32)
    else:
        raise ValueError(f"{where}: 'concat_mask' is set but there is no 'concat_latent_image'")
    if image.ndim != 4 or image.shape[1] != channels:
        raise ValueError(f"{where}: 'concat_latent_image' of shape {tuple(image.shape)} does not match "
                         f"the {channels}-channel latent being sampled")
    image = resize_to_batch(_fit(image, hw), batch)
    mask = mask.to(device, torch.float32)
    if mask.ndim == len(noise_shape):
        mask = mask[:, :1]
    mask = mask.reshape((-1, 1) + tuple(mask.shape[-2:]))
    mask = resize_to_batch(_fit(mask, hw).round(), batch)
    return torch.cat([mask, image], dim=1)
