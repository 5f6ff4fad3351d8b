"""VAEEncodeForInpaint's preparation: crop, grey-out of masked pixels, grown noise mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffusion.loading.config import VAEError
from diffusion.models.vae import inpaint_inputs


def dilate_reference(m: torch.Tensor, g: int) -> torch.Tensor:
    """Box dilation by max-pooling: window [i - g//2, i - g//2 + g - 1] around each pixel."""
    before = g // 2
    padded = F.pad(m, (before, g - 1 - before, before, g - 1 - before))
    return F.max_pool2d(padded, g, stride=1)


def test_masked_pixels_become_grey_and_others_stay():
    torch.manual_seed(0)
    pixels = torch.rand(2, 16, 24, 3)
    mask = torch.zeros(16, 24)
    mask[4:9, 10:15] = 1
    grey, noise_mask = inpaint_inputs(pixels, mask, grow_mask_by=0)
    assert grey.shape == pixels.shape and noise_mask.shape == (1, 1, 16, 24)
    assert torch.all(grey[:, 4:9, 10:15] == 0.5)
    outside = noise_mask[0, 0] == 0
    assert torch.equal(grey[:, outside], pixels[:, outside])
    assert torch.equal(noise_mask[0, 0], mask)


@pytest.mark.parametrize("grow", [1, 4, 6, 7])
def test_noise_mask_grows_by_a_box(grow):
    mask = torch.zeros(1, 32, 40)
    mask[0, 10, 12] = 1
    mask[0, 20:23, 30:33] = 1
    _, noise_mask = inpaint_inputs(torch.rand(1, 32, 40, 3), mask, grow_mask_by=grow)
    assert torch.equal(noise_mask, dilate_reference(mask[:, None], grow))
    assert noise_mask.sum() > mask.sum() or grow == 1


def test_crop_and_mask_resize():
    pixels = torch.rand(1, 21, 27, 4)  # crops to 16x24 from offsets (2, 1)
    mask = torch.zeros(1, 7, 9)  # low-resolution mask, upsampled to 21x27 first
    mask[0, 3:, :] = 1
    grey, noise_mask = inpaint_inputs(pixels, mask, grow_mask_by=0)
    assert grey.shape == (1, 16, 24, 4) and noise_mask.shape == (1, 1, 16, 24)
    assert torch.equal(grey[0, 0], pixels[0, 2, 1:25])  # top row unmasked, offsets applied
    assert torch.all(grey[0, -1, :, :3] == 0.5)  # bottom rows masked
    assert torch.equal(grey[..., 3], pixels[:, 2:18, 1:25, 3])  # alpha untouched


def test_bad_inputs():
    with pytest.raises(VAEError, match="MASK"):
        inpaint_inputs(torch.rand(1, 8, 8, 3), torch.zeros(1, 1, 1, 8, 8))
    with pytest.raises(VAEError, match="grow_mask_by must be >= 0"):
        inpaint_inputs(torch.rand(1, 8, 8, 3), torch.zeros(8, 8), grow_mask_by=-1)
