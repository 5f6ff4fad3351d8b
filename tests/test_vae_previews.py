"""Preview images: latent2rgb against the linear formula, TAESD previews, method selection and fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from diffusion import previews
from diffusion.models import latent_formats
from tests.vae_keymap import diffusers_taesd_part_to_original, tiny_diffusers_taesd


def reference_rgb(x: torch.Tensor, fmt) -> np.ndarray:
    """Independent float64 recomputation: rgb[c] = sum_k x[k] * F[k][c] + bias[c], then (v+1)/2 to bytes."""
    f = np.array(fmt.latent_rgb_factors, dtype=np.float64)
    bias = np.array(fmt.latent_rgb_factors_bias or [0.0, 0.0, 0.0])
    rgb = np.einsum("khw,kc->hwc", x.double().numpy(), f) + bias
    return np.round(np.clip((rgb + 1) / 2, 0, 1) * 255)


@pytest.mark.parametrize("fmt", [latent_formats.SD15(), latent_formats.SDXL()])
def test_latent2rgb_matches_formula_and_latent_size(fmt):
    torch.manual_seed(0)
    x0 = torch.randn(2, 4, 9, 13)
    img = previews.get_previewer(fmt, "latent2rgb")(x0)
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (13, 9)
    diff = np.abs(np.asarray(img, dtype=np.float64) - reference_rgb(x0[0], fmt))
    assert diff.max() <= 1  # rounding of values within float32 error of a .5 boundary


def test_sdxl_bias_is_applied():
    fmt = latent_formats.SDXL()
    img = previews.Latent2RGBPreviewer(fmt)(torch.zeros(1, 4, 2, 2))
    expected = np.round((np.array(fmt.latent_rgb_factors_bias) + 1) / 2 * 255)
    assert np.array_equal(np.asarray(img)[0, 0], expected)


def test_methods_and_fallbacks(tmp_path):
    fmt = latent_formats.SD15()
    assert previews.get_previewer(fmt, "none") is None
    assert isinstance(previews.get_previewer(fmt, "auto"), previews.Latent2RGBPreviewer)
    # taesd without the decoder file falls back to latent2rgb
    assert isinstance(previews.get_previewer(fmt, "taesd", vae_approx_dirs=[str(tmp_path)]),
                      previews.Latent2RGBPreviewer)
    # an unusable decoder file also falls back rather than stopping the sampler
    (tmp_path / "taesd_decoder.safetensors").write_bytes(b"not a safetensors file")
    assert isinstance(previews.get_previewer(fmt, "taesd", vae_approx_dirs=[str(tmp_path)]),
                      previews.Latent2RGBPreviewer)
    # a format without latent2rgb factors has no preview unless TAESD is present
    assert previews.get_previewer(latent_formats.SD3(), "latent2rgb") is None
    with pytest.raises(ValueError, match="unknown preview method 'fast'"):
        previews.get_previewer(fmt, "fast")


def test_taesd_preview_full_resolution(tmp_path):
    ref = tiny_diffusers_taesd(seed=7)
    save_file(diffusers_taesd_part_to_original(ref.state_dict(), "decoder"),
              str(tmp_path / "taesdxl_decoder.safetensors"))
    fmt = latent_formats.SDXL()
    previewer = previews.get_previewer(fmt, "taesd", vae_approx_dirs=[str(tmp_path)], device="cpu")
    assert isinstance(previewer, previews.TAESDPreviewer)
    torch.manual_seed(8)
    x0 = torch.randn(2, 4, 5, 6)
    img = previewer(x0)
    assert img.size == (48, 40) and img.mode == "RGB"
    with torch.no_grad():
        expected = ((ref.decoder(x0[:1])[0] + 1) / 2).clamp(0, 1).permute(1, 2, 0).double().numpy() * 255
    assert np.abs(np.asarray(img, dtype=np.float64) - expected).max() <= 0.51
    # the default search folders are configurable (the app passes its vae_approx folders)
    saved = previews.get_vae_approx_dirs()
    previews.set_vae_approx_dirs([str(tmp_path)])
    try:
        assert isinstance(previews.get_previewer(fmt, "taesd", device="cpu"), previews.TAESDPreviewer)
        assert isinstance(previews.get_previewer(latent_formats.SD15(), "taesd", device="cpu"),
                          previews.Latent2RGBPreviewer)  # SD1 needs taesd_decoder, not taesdxl
    finally:
        previews.set_vae_approx_dirs(saved)
