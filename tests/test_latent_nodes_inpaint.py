"""Inpainting and outpainting preparation, and an inpainting run with a normal model + noise mask.

ImagePadForOutpaint's mask is checked against hand-computed values and a per-pixel loop written from
its definition; VAEEncodeForInpaint against what the VAE must be given; the sampling runs go through
the engine on the tiny SD1 checkpoint.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from nodes import latent_nodes as ln
from tests.sdnodes_env import SD1_NAME, CaptureLatent, registry, sd_home, tiny_checkpoint_files  # noqa: F401


# -- ImagePadForOutpaint ----------------------------------------------------------------------------

def _pad(image, left=0, top=0, right=0, bottom=0, feathering=40):
    return ln.ImagePadForOutpaint().execute(image, left, top, right, bottom, feathering)


def test_pad_is_grey_and_mask_is_one_outside():
    image = torch.rand(2, 16, 24, 3)
    padded, mask = _pad(image, left=8, top=16, right=0, bottom=8, feathering=0)
    assert padded.shape == (2, 40, 32, 3) and mask.shape == (1, 40, 32)
    assert torch.equal(padded[:, 16:32, 8:32], image)
    outside = torch.ones(40, 32, dtype=torch.bool)
    outside[16:32, 8:32] = False
    assert torch.all(padded[:, outside] == 0.5)
    assert torch.all(mask[0, outside] == 1) and torch.all(mask[0, ~outside] == 0)


def test_feather_values_by_hand():
    image = torch.zeros(1, 10, 10, 3)
    _, mask = _pad(image, left=8, feathering=3)
    inner = mask[0, :, 8:]
    # distance j from the padded left side: ((3 - j) / 3)^2 = 1, 4/9, 1/9, then 0
    want_row = torch.tensor([1, 4 / 9, 1 / 9] + [0] * 7)
    assert torch.equal(inner, want_row.expand(10, 10))
    _, mask = _pad(image, right=8, feathering=3)
    # from the right the distance is counted from 1 at the last column: 4/9, 1/9, then 0
    assert torch.equal(mask[0, 0, :10], torch.tensor([0] * 8 + [1 / 9, 4 / 9]))


def _feather_loop(h, w, top, bottom, left, right, f):
    """Straight from the definition: quadratic ramp by the distance to the nearest padded side."""
    out = np.zeros((h, w), dtype=np.float32)
    if f <= 0 or 2 * f >= h or 2 * f >= w:
        return out
    for i in range(h):
        for j in range(w):
            d = min(i if top else h, h - i if bottom else h, j if left else w, w - j if right else w)
            if d < f:
                out[i, j] = ((f - d) / f) ** 2
    return out


@pytest.mark.parametrize("sides,feathering", [((8, 8, 8, 8), 5), ((0, 16, 8, 0), 7), ((8, 0, 0, 0), 20),
                                               ((8, 8, 8, 8), 12), ((0, 0, 0, 0), 4)])
def test_feather_matches_the_definition(sides, feathering):
    left, top, right, bottom = sides
    h, w = 23, 30
    _, mask = _pad(torch.rand(1, h, w, 4), left, top, right, bottom, feathering)
    inner = mask[0, top:top + h, left:left + w].numpy()
    want = _feather_loop(h, w, top > 0, bottom > 0, left > 0, right > 0, feathering)
    assert np.array_equal(inner, want)


# -- VAEEncodeForInpaint ---------------------------------------------------------------------------

class RecordingVAE:
    """Stands in for a VAE: records what it is asked to encode."""

    downscale_ratio = 8

    def __init__(self):
        self.seen = None

    def encode(self, image):
        self.seen = image.clone()
        b, h, w, _ = image.shape
        return torch.zeros(b, 4, h // 8, w // 8)

    def decode(self, samples):  # the engine's VAE check looks for decode
        raise NotImplementedError


def test_encode_for_inpaint_greys_masked_pixels_and_grows_the_mask():
    pixels = torch.rand(1, 35, 42, 3)  # centre-cropped to 32x40 from offsets (1, 1)
    mask = torch.zeros(1, 35, 42)
    mask[0, 10:12, 20:23] = 1
    vae = RecordingVAE()
    (latent,) = ln.VAEEncodeForInpaint().execute(pixels, vae, mask, 4)
    assert latent["samples"].shape == (1, 4, 4, 5)
    cropped_mask = mask[:, 1:33, 1:41]
    want = pixels[:, 1:33, 1:41].clone()
    want[cropped_mask.bool()] = 0.5
    assert torch.equal(vae.seen, want)
    # the cropped hole is rows 9..10, cols 19..21; a 4-px box window [i-2, i+1] grows it 1 px up/left
    # and 2 px down/right
    grown = torch.zeros(32, 40)
    grown[8:13, 18:24] = 1
    assert latent["noise_mask"].shape == (1, 1, 32, 40)
    assert torch.equal(latent["noise_mask"][0, 0], grown)
    (flat,) = ln.VAEEncodeForInpaint().execute(pixels, vae, mask, 0)
    assert torch.equal(flat["noise_mask"][0], cropped_mask)


def test_set_latent_noise_mask_reshapes():
    (out,) = ln.SetLatentNoiseMask().execute({"samples": torch.zeros(1, 4, 8, 8), "batch_index": [1]},
                                             torch.ones(64, 64))
    assert out["noise_mask"].shape == (1, 1, 64, 64) and out["batch_index"] == [1]


# -- runs ------------------------------------------------------------------------------------------

def _write_rgba(home, hole):
    """A random 64x64 image whose alpha is 0 in `hole` (LoadImage's mask = 1 - alpha)."""
    rng = np.random.default_rng(5)
    rgba = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[hole[0], hole[1], 3] = 0
    Image.fromarray(rgba, "RGBA").save(home / "input" / "hole.png")
    return "hole.png"


def _base(seed=2) -> dict:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD1_NAME}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "10": {"class_type": "LoadImage", "inputs": {"image": "hole.png"}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "seed": seed, "steps": 3, "cfg": 5.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0], "latent_image": None,
            "denoise": 1.0}},
        "cap_out": {"class_type": "SDNodesCaptureLatent", "inputs": {"samples": ["3", 0], "label": "out"}},
    }


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "euler_ancestral"])
def test_inpainting_with_noise_mask_keeps_unmasked_latents(registry, sd_home, sampler):  # noqa: F811
    from graph.runner import Runner

    _write_rgba(sd_home, (slice(16, 40), slice(24, 48)))  # 8-px aligned: latent rows 2..4, cols 3..5
    prompt = _base()
    prompt["3"]["inputs"]["sampler_name"] = sampler
    prompt["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    prompt["12"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["11", 0], "mask": ["10", 1]}}
    prompt["3"]["inputs"]["latent_image"] = ["12", 0]
    prompt["cap_in"] = {"class_type": "SDNodesCaptureLatent", "inputs": {"samples": ["11", 0], "label": "in"}}
    Runner(registry).run(prompt)
    source, out = CaptureLatent.seen["in"]["samples"], CaptureLatent.seen["out"]["samples"]
    keep = torch.ones(8, 8, dtype=torch.bool)
    keep[2:5, 3:6] = False
    assert (out - source)[..., keep].abs().max() < 1e-6
    assert (out - source)[..., ~keep].abs().min() > 1e-3  # the hole is repainted everywhere


def test_outpainting_pipeline_keeps_the_original_area(registry, sd_home):  # noqa: F811
    from graph.runner import Runner

    _write_rgba(sd_home, (slice(0, 0), slice(0, 0)))
    prompt = _base(seed=9)
    prompt["13"] = {"class_type": "ImagePadForOutpaint", "inputs": {
        "image": ["10", 0], "left": 0, "top": 0, "right": 32, "bottom": 0, "feathering": 0}}
    prompt["14"] = {"class_type": "VAEEncodeForInpaint", "inputs": {
        "pixels": ["13", 0], "vae": ["4", 2], "mask": ["13", 1], "grow_mask_by": 8}}
    prompt["3"]["inputs"]["latent_image"] = ["14", 0]
    prompt["cap_in"] = {"class_type": "SDNodesCaptureLatent", "inputs": {"samples": ["14", 0], "label": "in"}}
    Runner(registry).run(prompt)
    latent_in = CaptureLatent.seen["in"]
    noise_mask = latent_in["noise_mask"]
    assert noise_mask.shape == (1, 1, 64, 96)
    # an 8-px box window [i-4, i+3] grows the new area (cols 64..95) 3 px into the image
    assert torch.all(noise_mask[..., :61] == 0) and torch.all(noise_mask[..., 61:] == 1)
    out = CaptureLatent.seen["out"]["samples"]
    assert out.shape == (1, 4, 8, 12)
    latent_mask = F.interpolate(noise_mask, size=(8, 12), mode="bilinear")[0, 0]
    keep = latent_mask == 0
    assert keep.sum() == 8 * 8  # latent columns 0..7 sample pixels up to 60
    assert (out - latent_in["samples"])[..., keep].abs().max() < 1e-6
