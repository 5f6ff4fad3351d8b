"""Mask nodes (nodes/mask_nodes.py) against truth tables, hand formulas, max-pool dilation and
scipy.ndimage (what ComfyUI's GrowMask calls)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from diffusion.image_ops import ImageOpError
from nodes import folder_paths
from nodes.mask_nodes import (CropMask, FeatherMask, GrowMask, ImageColorToMask, ImageToMask,
                              InvertMask, LoadImageMask, MaskComposite, MaskPreview, MaskToImage,
                              SolidMask, ThresholdMask)
from tests.sdnodes_env import temporary_base


def rand_mask(b=1, h=7, w=9, seed=0):
    return torch.rand(b, h, w, generator=torch.Generator().manual_seed(seed))


# -- files ---------------------------------------------------------------------------------------

def test_load_image_mask_channels_listing_and_change_detection(tmp_path):
    with temporary_base(tmp_path):
        inp = tmp_path / "input"
        pixels = np.zeros((4, 6, 4), np.uint8)
        pixels[..., 0], pixels[..., 1], pixels[..., 2] = 10, 20, 30
        pixels[..., 3] = np.arange(6, dtype=np.uint8) * 50
        Image.fromarray(pixels, mode="RGBA").save(inp / "a.png")
        Image.new("RGB", (5, 3), (255, 0, 128)).save(inp / "b.png")
        (inp / "notes.txt").write_text("x")
        # every top-level file is listed (LoadImage lists only images)
        assert LoadImageMask.INPUT_TYPES()["required"]["image"][0] == ["a.png", "b.png", "notes.txt"]
        (alpha,) = LoadImageMask().execute("a.png", "alpha")
        assert alpha.shape == (1, 4, 6)
        assert torch.allclose(alpha[0, 0], 1 - torch.arange(6) * 50 / 255)  # alpha is inverted
        (green,) = LoadImageMask().execute("a.png", "green")
        assert torch.allclose(green, torch.full((1, 4, 6), 20 / 255))
        # no alpha: opaque, so the mask is zero at the image's own size
        (opaque,) = LoadImageMask().execute("b.png", "alpha")
        assert opaque.shape == (1, 3, 5) and not opaque.any()
        assert torch.allclose(LoadImageMask().execute("b.png", "blue")[0], torch.full((1, 3, 5), 128 / 255))
        before = LoadImageMask.IS_CHANGED("b.png", "red")
        Image.new("RGB", (5, 3), (0, 0, 0)).save(inp / "b.png")
        assert LoadImageMask.IS_CHANGED("b.png", "red") != before
        assert LoadImageMask.VALIDATE_INPUTS("b.png") is True
        assert "Invalid image file" in LoadImageMask.VALIDATE_INPUTS("missing.png")


def test_load_image_mask_scales_32_bit_integer_images(tmp_path):
    with temporary_base(tmp_path):
        # a mode "I" image (TIFF keeps the mode; Pillow opens 16-bit PNGs as "I;16", unscaled)
        Image.fromarray(np.full((2, 3), 100 * 255, np.int32)).save(tmp_path / "input" / "i.tif")
        (red,) = LoadImageMask().execute("i.tif", "red")
        assert torch.allclose(red, torch.full((1, 2, 3), 100 / 255))


def test_mask_preview_writes_the_mask_as_grey(tmp_path):
    mask = torch.tensor([[[0.0, 1.0], [0.5, 0.25]]])
    with temporary_base(tmp_path):
        (entry,) = MaskPreview().execute(mask)["ui"]["images"]
        assert entry["type"] == "temp"
        saved = np.asarray(Image.open(os.path.join(folder_paths.get_temp_directory(), entry["filename"])))
    assert saved.shape == (2, 2, 3)
    assert np.array_equal(saved[..., 0], np.clip(mask[0].numpy() * 255, 0, 255).astype(np.uint8))


# -- conversions ---------------------------------------------------------------------------------

def test_mask_image_round_trip_and_channels():
    mask = rand_mask(b=2)
    (img,) = MaskToImage().execute(mask)
    assert img.shape == (2, 7, 9, 3) and all(torch.equal(img[..., c], mask) for c in range(3))
    rgba = torch.rand(2, 3, 4, 4)
    for i, name in enumerate(["red", "green", "blue", "alpha"]):
        assert torch.equal(ImageToMask().execute(rgba, name)[0], rgba[..., i])
    with pytest.raises(ImageOpError, match="ImageToMask: channel 'alpha' is not in this image"):
        ImageToMask().execute(rgba[..., :3], "alpha")


def test_color_to_mask_matches_8_bit_colours_exactly():
    img = torch.tensor([[[0x12, 0x34, 0x56], [0x12, 0x34, 0x57], [0, 0, 0], [0x12, 0x34, 0x56]]]) / 255.0
    (mask,) = ImageColorToMask().execute(img[None].float(), 0x123456)
    assert torch.equal(mask, torch.tensor([[[1.0, 0.0, 0.0, 1.0]]]))


def test_solid_invert_crop_threshold():
    assert torch.equal(SolidMask().execute(0.25, 3, 2)[0], torch.full((1, 2, 3), 0.25))
    mask = rand_mask()
    assert torch.allclose(InvertMask().execute(mask)[0], 1 - mask)
    assert torch.equal(CropMask().execute(mask, 2, 1, 3, 100)[0], mask[:, 1:, 2:5])
    assert torch.equal(CropMask().execute(mask[0], 0, 0, 2, 2)[0], mask[:, :2, :2])  # [H,W] input
    t = torch.tensor([[[0.2, 0.5, 0.50001, 0.9]]])
    assert torch.equal(ThresholdMask().execute(t, 0.5)[0], torch.tensor([[[0.0, 0.0, 1.0, 1.0]]]))


# -- MaskComposite --------------------------------------------------------------------------------

@pytest.mark.parametrize("operation,table", [
    ("and", {(0, 0): 0, (0, 1): 0, (1, 0): 0, (1, 1): 1}),
    ("or", {(0, 0): 0, (0, 1): 1, (1, 0): 1, (1, 1): 1}),
    ("xor", {(0, 0): 0, (0, 1): 1, (1, 0): 1, (1, 1): 0}),
])
def test_mask_composite_logic_truth_tables(operation, table):
    # values round to on/off: 0.4 is off, 0.6 is on
    levels = {0: [0.0, 0.4], 1: [0.6, 1.0]}
    for (a, b), expected in table.items():
        for av in levels[a]:
            for bv in levels[b]:
                (out,) = MaskComposite().execute(torch.full((1, 2, 2), av), torch.full((1, 2, 2), bv),
                                                 0, 0, operation)
                assert torch.equal(out, torch.full((1, 2, 2), float(expected))), (av, bv)


@pytest.mark.parametrize("operation,formula", [
    ("multiply", lambda a, b: a * b), ("add", lambda a, b: a + b), ("subtract", lambda a, b: a - b)])
def test_mask_composite_arithmetic_clamped_and_placed(operation, formula):
    dst, src = rand_mask(h=5, w=6), rand_mask(h=3, w=4, seed=1)
    (out,) = MaskComposite().execute(dst, src, 4, 3, operation)
    expected = dst.clone()
    for i in range(3):
        for j in range(4):
            if 3 + i < 5 and 4 + j < 6:  # source pixels outside the destination are dropped
                expected[0, 3 + i, 4 + j] = min(1.0, max(0.0, formula(dst[0, 3 + i, 4 + j], src[0, i, j])))
    assert torch.allclose(out, expected.clamp(0, 1), atol=1e-7)
    assert torch.equal(MaskComposite().execute(dst, src, 100, 0, operation)[0], dst)


def test_mask_composite_broadcasts_a_single_mask_and_rejects_mismatched_batches():
    (out,) = MaskComposite().execute(torch.ones(1, 2, 2), torch.zeros(3, 2, 2), 0, 0, "multiply")
    assert out.shape == (3, 2, 2) and not out.any()
    with pytest.raises(ImageOpError, match="MaskComposite: destination and source have batch sizes 2 and 3"):
        MaskComposite().execute(torch.ones(2, 2, 2), torch.zeros(3, 2, 2), 0, 0, "add")


# -- FeatherMask ----------------------------------------------------------------------------------

def test_feather_ramps_each_side_linearly():
    mask = torch.ones(1, 6, 8)
    (out,) = FeatherMask().execute(mask, 2, 3, 4, 0)
    for y in range(6):
        for x in range(8):
            fx = min(1.0, (x + 1) / 2) * min(1.0, (8 - x) / 4)  # from the left, from the right
            fy = min(1.0, (y + 1) / 3)
            assert out[0, y, x].item() == pytest.approx(fx * fy, abs=1e-6), (y, x)
    # widths beyond the mask are cut to it; ramps from both sides multiply
    (both,) = FeatherMask().execute(torch.ones(1, 1, 3), 10, 0, 10, 0)
    assert torch.allclose(both[0, 0], torch.tensor([1 / 3, 2 / 3 * 2 / 3, 1 / 3]))
    (bottom,) = FeatherMask().execute(torch.ones(2, 4, 1), 0, 0, 0, 2)
    assert torch.allclose(bottom[:, :, 0], torch.tensor([1.0, 1.0, 1.0, 0.5]).expand(2, 4))


# -- GrowMask -------------------------------------------------------------------------------------

def _max_pool_dilation(mask: torch.Tensor, steps: int) -> torch.Tensor:
    """Square-footprint dilation by `steps` pixels = one max pool of size 2·steps+1 (borders
    contribute nothing)."""
    padded = F.pad(mask[:, None], (steps,) * 4, value=-1.0)
    return F.max_pool2d(padded, 2 * steps + 1, stride=1)[:, 0]


def test_grow_square_equals_max_pool_dilation_and_erosion():
    mask = (rand_mask(b=2, h=12, w=15) > 0.85).float() * rand_mask(b=2, h=12, w=15, seed=3)
    for steps in (1, 2, 4, 9, 20):  # 20 reaches past the 12x15 mask
        (grown,) = GrowMask().execute(mask, steps, False)
        assert torch.equal(grown, _max_pool_dilation(mask, steps)), steps
        (shrunk,) = GrowMask().execute(mask, -steps, False)
        assert torch.equal(shrunk, -_max_pool_dilation(-mask, steps)), steps
    assert torch.equal(GrowMask().execute(mask, 0, True)[0], mask)


@pytest.mark.parametrize("expand,tapered", [(3, True), (-2, True), (2, False), (-3, False)])
def test_grow_matches_scipy_grey_morphology(expand, tapered):
    ndimage = pytest.importorskip("scipy.ndimage")
    mask = rand_mask(b=2, h=10, w=11, seed=5)
    c = 0 if tapered else 1
    footprint = np.array([[c, 1, c], [1, 1, 1], [c, 1, c]])
    (out,) = GrowMask().execute(mask, expand, tapered)
    for b in range(2):
        expected = mask[b].numpy()
        for _ in range(abs(expand)):
            op = ndimage.grey_dilation if expand > 0 else ndimage.grey_erosion
            expected = op(expected, footprint=footprint)
        assert np.array_equal(out[b].numpy(), expected)


def test_grow_by_a_huge_amount_is_quick_and_saturates():
    mask = torch.zeros(1, 5, 6)
    mask[0, 2, 3] = 0.7
    (out,) = GrowMask().execute(mask, 16384, True)
    assert torch.equal(out, torch.full((1, 5, 6), 0.7))
