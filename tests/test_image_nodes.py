"""Image nodes (nodes/image_ops.py) against independent references: Pillow, hand formulas written
here, and numpy filters. Tiny tensors; no models."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion.image_ops import ImageOpError, bayer_matrix
from nodes.image_ops import (GetImageSize, ImageBatch, ImageBatchGrid, ImageBlend, ImageBlur,
                             ImageCompositeMasked, ImageCrop, ImageFlip, ImageFromBatch, ImageQuantize,
                             ImageRotate, ImageScale, ImageScaleBy, ImageScaleToTotalPixels,
                             ImageSharpen, ImageStitch, RepeatImageBatch)


def rand_image(b=1, h=6, w=8, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, h, w, c, generator=g)


def uint8_image(b=1, h=6, w=8, c=3, seed=0):
    """Pixels on the 8-bit grid, so 8-bit conversions in Pillow round-trip exactly."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, h, w, c), generator=g).float() / 255.0


# -- scaling ----------------------------------------------------------------------------------

def test_scale_zero_side_keeps_the_aspect_ratio_and_zero_zero_passes_through():
    img = rand_image(h=20, w=30)
    (out,) = ImageScale().execute(img, "bilinear", 0, 10, "disabled")
    assert out.shape == (1, 10, 15, 3)  # 30 * 10 / 20
    (out,) = ImageScale().execute(img, "bilinear", 12, 0, "disabled")
    assert out.shape == (1, 8, 12, 3)
    (out,) = ImageScale().execute(img, "bilinear", 0, 0, "disabled")
    assert out is img


def test_scale_methods_against_hand_formulas_for_an_exact_halving():
    img = rand_image(b=2, h=8, w=12)
    blocks = img.reshape(2, 4, 2, 6, 2, 3)
    mean2x2 = blocks.mean(dim=(2, 4))
    for method in ("area", "bilinear"):  # both average each 2x2 block at exactly half size
        (out,) = ImageScale().execute(img, method, 6, 4, "disabled")
        assert torch.allclose(out, mean2x2, atol=1e-6), method
    (out,) = ImageScale().execute(img, "nearest-exact", 6, 4, "disabled")
    # nearest-exact samples pixel floor((i + 0.5) * 2) = 2i + 1
    assert torch.equal(out, img[:, 1::2, 1::2])


def test_bicubic_upscale_keeps_a_flat_image_flat_and_hits_the_samples_at_odd_scale():
    flat = torch.full((1, 4, 4, 3), 0.25)
    (out,) = ImageScale().execute(flat, "bicubic", 9, 7, "disabled")
    assert out.shape == (1, 7, 9, 3) and torch.allclose(out, flat[:, :1, :1].expand_as(out), atol=1e-6)
    img = rand_image(h=4, w=4)
    (out,) = ImageScale().execute(img, "bicubic", 12, 12, "disabled")
    # at 3x with half-pixel centres, output pixel 3i+1 sits exactly on input pixel i
    assert torch.allclose(out[:, 1::3, 1::3], img, atol=1e-5)


def test_center_crop_cuts_the_centred_region_with_the_target_aspect():
    img = rand_image(h=10, w=20)
    # target 1:1 from 2:1 -> keep the middle 10 columns (x = round((20 - 10) / 2) = 5)
    (out,) = ImageScale().execute(img, "nearest-exact", 10, 10, "center")
    assert torch.equal(out, img[:, :, 5:15])
    tall = rand_image(h=20, w=10)
    (out,) = ImageScale().execute(tall, "nearest-exact", 10, 5, "center")
    # target 2:1 from 1:2 -> rows from y = round((20 - 20 * (0.5 / 2)) / 2) = 8, 20 - 16 = 4 of them,
    # then nearest-exact 4 -> 5 rows picks floor((i + 0.5) * 4 / 5) = 0, 1, 2, 2, 3
    assert torch.equal(out, tall[:, 8:12][:, [0, 1, 2, 2, 3]])


@pytest.mark.parametrize("channels,mode", [(3, "RGB"), (1, "L")])
def test_lanczos_equals_pillow_directly(channels, mode):
    img = uint8_image(b=2, h=9, w=13, c=3)
    if channels == 1:
        # a one-channel batch goes through resize() channel-first as "L" images
        from diffusion.image_ops import resize
        samples = img[..., :1].movedim(-1, 1)
        out = resize(samples, 20, 7, "lanczos").movedim(1, -1)
    else:
        (out,) = ImageScale().execute(img, "lanczos", 20, 7, "disabled")
    assert out.shape == (2, 7, 20, channels)
    for b in range(2):
        pixels = (img[b, ..., :channels] * 255).round().to(torch.uint8).numpy()
        pil = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode=mode)
        expected = np.asarray(pil.resize((20, 7), Image.Resampling.LANCZOS)).astype(np.float32) / 255
        assert np.array_equal(out[b].numpy().reshape(expected.shape), expected)


def test_lanczos_on_two_channels_resizes_each_channel_as_L():
    from diffusion.image_ops import resize
    img = uint8_image(h=5, w=6, c=2)
    out = resize(img.movedim(-1, 1), 9, 4, "lanczos")
    for c in range(2):
        pil = Image.fromarray((img[0, ..., c] * 255).round().to(torch.uint8).numpy(), mode="L")
        expected = np.asarray(pil.resize((9, 4), Image.Resampling.LANCZOS)).astype(np.float32) / 255
        assert np.array_equal(out[0, c].numpy(), expected)


def test_scale_by_and_total_pixels_sizes():
    img = rand_image(h=50, w=100)
    assert ImageScaleBy().execute(img, "area", 0.25)[0].shape == (1, 12, 25, 3)  # round(12.5) = 12
    assert ImageScaleBy().execute(img, "bilinear", 1.5)[0].shape == (1, 75, 150, 3)
    # 0.01 MP = 10485.76 px; scale = sqrt(10485.76 / 5000) -> 144.8 x 72.4
    assert ImageScaleToTotalPixels().execute(img, "bilinear", 0.01, 1)[0].shape == (1, 72, 145, 3)
    assert ImageScaleToTotalPixels().execute(img, "bilinear", 0.01, 8)[0].shape == (1, 72, 144, 3)


def test_a_scale_to_nothing_is_an_error_naming_the_node():
    with pytest.raises(ImageOpError, match=r"ImageScaleBy: the target size 0x0"):
        ImageScaleBy().execute(rand_image(h=4, w=4), "bilinear", 0.01)


# -- batches, crop, flips ----------------------------------------------------------------------

def test_image_batch_resizes_image2_to_image1_and_adds_alpha():
    a, b = rand_image(h=4, w=6), rand_image(b=2, h=8, w=12, seed=1)
    (out,) = ImageBatch().execute(a, b)
    assert out.shape == (3, 4, 6, 3)
    assert torch.equal(out[:1], a)
    assert torch.allclose(out[1:], b.reshape(2, 4, 2, 6, 2, 3).mean(dim=(2, 4)), atol=1e-6)
    rgba = rand_image(h=4, w=6, c=4, seed=2)
    (out,) = ImageBatch().execute(rgba, a)
    assert out.shape == (2, 4, 6, 4) and torch.equal(out[1, ..., 3], torch.ones(4, 6))


def test_crop_clamps_its_corner_and_extent():
    img = rand_image(h=6, w=8)
    assert torch.equal(ImageCrop().execute(img, 3, 2, 1, 4)[0], img[:, 4:6, 1:4])
    # corner clamped to the last pixel; region clamped to the edge
    assert torch.equal(ImageCrop().execute(img, 512, 512, 100, 100)[0], img[:, 5:6, 7:8])


def test_repeat_from_batch_and_size():
    img = rand_image(b=3)
    (rep,) = RepeatImageBatch().execute(img, 2)
    assert rep.shape[0] == 6 and torch.equal(rep[3:], img)
    assert torch.equal(ImageFromBatch().execute(img, 1, 5)[0], img[1:])
    assert torch.equal(ImageFromBatch().execute(img, 9, 1)[0], img[2:])
    assert GetImageSize().execute(rand_image(b=2, h=5, w=7)) == (7, 5, 2)


def test_flip_and_rotate_follow_numpy():
    img = rand_image(b=2, h=3, w=5)
    arr = img.numpy()
    assert np.array_equal(ImageFlip().execute(img, "x-axis: vertically")[0].numpy(), arr[:, ::-1])
    assert np.array_equal(ImageFlip().execute(img, "y-axis: horizontally")[0].numpy(), arr[:, :, ::-1])
    for k, name in enumerate(["none", "90 degrees", "180 degrees", "270 degrees"]):
        # clockwise quarter turns
        expected = np.rot90(arr, k=-k, axes=(1, 2))
        assert np.array_equal(ImageRotate().execute(img, name)[0].numpy(), expected), name


# -- blending and compositing -------------------------------------------------------------------

def _blend_reference(a: float, b: float, mode: str) -> float:
    if mode == "normal":
        return b
    if mode == "multiply":
        return a * b
    if mode == "screen":
        return 1 - (1 - a) * (1 - b)
    if mode == "overlay":
        return 2 * a * b if a <= 0.5 else 1 - 2 * (1 - a) * (1 - b)
    if mode == "soft_light":  # W3C Compositing Level 1
        if b <= 0.5:
            return a - (1 - 2 * b) * a * (1 - a)
        d = ((16 * a - 12) * a + 4) * a if a <= 0.25 else math.sqrt(a)
        return a + (2 * b - 1) * (d - a)
    if mode == "difference":
        return a - b
    raise AssertionError(mode)


@pytest.mark.parametrize("mode", ["normal", "multiply", "screen", "overlay", "soft_light", "difference"])
def test_blend_modes_by_formula(mode):
    values = [0.0, 0.1, 0.25, 0.3, 0.5, 0.7, 0.9, 1.0]
    a = torch.tensor(values).reshape(1, 1, -1, 1).expand(1, len(values), len(values), 3).contiguous()
    b = a.transpose(1, 2).contiguous()
    factor = 0.7
    (out,) = ImageBlend().execute(a, b, factor, mode)
    for i, bv in enumerate(values):
        for j, av in enumerate(values):
            expected = min(1.0, max(0.0, av * (1 - factor) + _blend_reference(av, bv, mode) * factor))
            assert out[0, i, j, 0].item() == pytest.approx(expected, abs=1e-6), (av, bv)


def test_blend_resizes_image2_and_broadcasts_a_single_image():
    a = rand_image(b=2, h=4, w=4)
    b = torch.full((1, 8, 8, 3), 0.5)
    (out,) = ImageBlend().execute(a, b, 1.0, "normal")
    assert out.shape == a.shape and torch.allclose(out, torch.full_like(a, 0.5), atol=1e-6)
    with pytest.raises(ImageOpError, match="ImageBlend: image1 and image2 have batch sizes 2 and 3"):
        ImageBlend().execute(a, rand_image(b=3, h=4, w=4), 0.5, "normal")


def test_composite_masked_by_hand():
    dst, src = rand_image(h=6, w=8), rand_image(h=3, w=4, seed=1)
    mask = torch.tensor([[1.0, 0.5, 0.0, 1.0]] * 3)
    (out,) = ImageCompositeMasked().execute(dst, src, 6, 4, False, mask)
    expected = dst.clone()
    for i in range(3):
        for j in range(4):
            y, x = 4 + i, 6 + j
            if y < 6 and x < 8:  # what falls outside the destination is dropped
                m = mask[i, j]
                expected[0, y, x] = m * src[0, i, j] + (1 - m) * dst[0, y, x]
    assert torch.allclose(out, expected, atol=1e-6)
    assert not torch.equal(out, dst)
    (whole,) = ImageCompositeMasked().execute(dst, src, 0, 0, True)
    assert whole.shape == dst.shape


# -- filters ------------------------------------------------------------------------------------

def _separable_gaussian_blur(image: np.ndarray, radius: int, sigma: float) -> np.ndarray:
    """Reference: ComfyUI's kernel exp(-(x²+y²)/2σ²) on a [-1, 1] grid factorises into two 1-D
    passes; borders reflect (numpy's 'reflect' = torch's 'reflect')."""
    t = np.linspace(-1, 1, 2 * radius + 1)
    k = np.exp(-(t * t) / (2 * sigma * sigma))
    k /= k.sum()
    padded = np.pad(image, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="reflect")
    h, w = image.shape[1:3]
    rows = sum(k[i] * padded[:, i:i + h] for i in range(len(k)))
    return sum(k[j] * rows[:, :, j:j + w] for j in range(len(k)))


@pytest.mark.parametrize("radius,sigma", [(1, 1.0), (3, 0.5), (4, 2.5)])
def test_blur_is_a_separable_gaussian(radius, sigma):
    img = rand_image(b=2, h=9, w=11)
    (out,) = ImageBlur().execute(img, radius, sigma)
    assert np.allclose(out.numpy(), _separable_gaussian_blur(img.numpy().astype(np.float64), radius, sigma),
                       atol=1e-6)


def test_sharpen_is_unsharp_masking():
    img = rand_image(h=9, w=9)
    radius, sigma, alpha = 2, 1.5, 0.3
    (out,) = ImageSharpen().execute(img, radius, sigma, alpha)
    x = img.numpy().astype(np.float64)
    # kernel (1 + 10a)·δ − 10a·G  =>  x + 10a (x − blur(x)), clamped
    expected = np.clip(x + 10 * alpha * (x - _separable_gaussian_blur(x, radius, sigma)), 0, 1)
    assert np.allclose(out.numpy(), expected, atol=1e-5)
    assert torch.allclose(ImageSharpen().execute(img, radius, sigma, 0.0)[0], img, atol=1e-6)


def test_a_radius_larger_than_the_image_is_an_error_naming_node_and_input():
    with pytest.raises(ImageOpError, match=r"ImageBlur: blur_radius 5 needs an image larger than 5"):
        ImageBlur().execute(rand_image(h=4, w=8), 5, 1.0)


# -- palette -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dither", ["none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16"])
def test_quantize_keeps_at_most_the_palette(dither):
    img = rand_image(b=2, h=16, w=16)
    (out,) = ImageQuantize().execute(img, 5, dither)
    assert out.shape == img.shape
    for b in range(2):
        assert len(out[b].reshape(-1, 3).unique(dim=0)) <= 5


def test_quantize_without_dither_equals_pillow():
    img = uint8_image(h=12, w=10)
    (out,) = ImageQuantize().execute(img, 6, "none")
    pil = Image.fromarray((img[0] * 255).round().to(torch.uint8).numpy(), mode="RGB")
    expected = pil.quantize(palette=pil.quantize(colors=6), dither=Image.Dither.NONE).convert("RGB")
    assert np.array_equal((out[0] * 255).round().to(torch.uint8).numpy(), np.asarray(expected))


def test_bayer_matrices_are_the_classic_ordered_dither_patterns():
    classic2 = np.array([[0, 2], [3, 1]])
    classic4 = np.array([[0, 8, 2, 10], [12, 4, 14, 6], [3, 11, 1, 9], [15, 7, 13, 5]])
    # centred on zero, in units of one step: (index - (n² - 1) / 2) / n²
    assert np.allclose(bayer_matrix(2), (classic2 - 1.5) / 4)
    assert np.allclose(bayer_matrix(4), (classic4 - 7.5) / 16)
    assert sorted(bayer_matrix(16).ravel() * 256 + 127.5) == list(range(256))


# -- layout --------------------------------------------------------------------------------------

def test_stitch_sizes_order_and_matching():
    a, b = rand_image(h=20, w=30), rand_image(h=10, w=20, seed=1)
    (out,) = ImageStitch().execute(a, "right", True, 0, "white", b)
    assert out.shape == (1, 20, 30 + 40, 3)  # b scaled to a's height: 20 x int(20 * 2)
    assert torch.equal(out[:, :, :30], a)
    # the matched image is Lanczos through Pillow
    pil = Image.fromarray((b[0] * 255).to(torch.uint8).numpy()).resize((40, 20), Image.Resampling.LANCZOS)
    assert np.array_equal((out[0, :, 30:] * 255).round().to(torch.uint8).numpy(), np.asarray(pil))
    (out,) = ImageStitch().execute(a, "up", True, 3, "red", b)
    assert out.shape == (1, 15 + 4 + 20, 30, 3)  # int(30 / 2) rows of b, spacing 3 -> 4
    assert torch.equal(out[0, 15:19], torch.tensor([1.0, 0, 0]).expand(4, 30, 3))
    assert torch.equal(out[:, 19:], a)
    (out,) = ImageStitch().execute(a, "left", False, 2, "white", b)
    assert out.shape == (1, 20, 20 + 2 + 30, 3)
    assert torch.equal(out[:, 5:15, :20], b)  # centred: 5 rows of padding above and below
    assert torch.equal(out[:, :5, :20], torch.ones(1, 5, 20, 3))
    assert ImageStitch().execute(a, "down", True, 0, "white")[0] is a


def test_stitch_evens_out_batches_and_channels():
    a, b = rand_image(b=3, h=4, w=4), rand_image(b=1, h=4, w=4, c=4, seed=1)
    (out,) = ImageStitch().execute(a, "down", False, 0, "black", b)
    assert out.shape == (3, 8, 4, 4)
    assert torch.equal(out[2, 4:], b[0]) and torch.equal(out[:, :4, :, 3], torch.ones(3, 4, 4))


def test_batch_grid_places_tiles_row_by_row_with_gaps():
    imgs = torch.stack([torch.full((2, 3, 3), float(i) / 10) for i in range(5)])
    (grid,) = ImageBatchGrid().execute(imgs, 2, 1, 0x00FF00)
    assert grid.shape == (1, 3 * 2 + 2, 2 * 3 + 1, 3)
    green = torch.tensor([0.0, 1.0, 0.0])
    for i in range(5):
        top, left = (i // 2) * 3, (i % 2) * 4
        assert torch.equal(grid[0, top:top + 2, left:left + 3], imgs[i])
    assert torch.equal(grid[0, 2, 0], green) and torch.equal(grid[0, 0, 3], green)
    assert torch.equal(grid[0, 6:, 4:], green.expand(2, 3, 3))  # the empty last cell
    (row,) = ImageBatchGrid().execute(imgs[:2], 4, 0, 0)
    assert row.shape == (1, 2, 6, 3)


# -- through the engine ---------------------------------------------------------------------------

def test_a_graph_of_image_nodes_runs(tmp_path):
    import nodes
    from graph.executor import Executor
    from graph.validate import validate_prompt
    from tests.sdnodes_env import temporary_base

    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 12, "batch_size": 3, "color": 0x336699}},
        "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "lanczos",
                                                     "width": 8, "height": 0, "crop": "disabled"}},
        "3": {"class_type": "ImageBlur", "inputs": {"image": ["2", 0], "blur_radius": 2, "sigma": 1.0}},
        "4": {"class_type": "ImageBatchGrid", "inputs": {"images": ["3", 0], "columns": 2, "gap": 2,
                                                         "gap_color": 0}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
    }
    with temporary_base(tmp_path):
        reg = nodes.load_registry()
        checked = validate_prompt(prompt, reg)
        assert checked.ok, checked.node_errors
        result = Executor(reg).execute(prompt, "p", {}, checked.outputs)
        assert result.status_str == "success", result.error
        (entry,) = result.outputs["5"]["images"]
        saved = np.asarray(Image.open(tmp_path / "temp" / entry["filename"]))
    assert saved.shape == (6 * 2 + 2, 8 * 2 + 2, 3)  # 16x12 -> 8x6, 2x2 grid, gap 2
    # 8-bit conversions truncate (as ComfyUI's do), so a colour may come back one step lower
    assert np.abs(saved[0, 0].astype(int) - (0x33, 0x66, 0x99)).max() <= 1
    assert tuple(saved[6, 0]) == (0, 0, 0)
