"""Latent resize, composite, transform and arithmetic nodes against independent references.

References are written here from the definitions (torch's interpolate where a method is exactly
that, a per-pixel float64 slerp for bislerp, hand-computed blends for compositing), not from our code.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffusion import latent_ops, resample
from nodes import latent_nodes as ln


def _latent(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


# -- bislerp ---------------------------------------------------------------------------------------

def _slerp_ref(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Slerp of the directions, linear interpolation of the lengths (float64)."""
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    da = a / na if na > 0 else np.zeros_like(a)
    db = b / nb if nb > 0 else np.zeros_like(b)
    dot = float(np.dot(da, db))
    if dot > 1 - 1e-5:
        return a
    if dot < 1e-5 - 1:
        return a * (1 - t) + b * t
    omega = math.acos(dot)
    direction = (math.sin((1 - t) * omega) * da + math.sin(t * omega) * db) / math.sin(omega)
    return direction * (na * (1 - t) + nb * t)


def _source_position(i: int, old: int, new: int) -> tuple[int, int, float]:
    """Half-pixel-centre sampling position of output i, clamped to the input (bilinear's rule)."""
    c = min(max((i + 0.5) * old / new - 0.5, 0.0), old - 1.0)
    left = math.floor(c)
    return left, min(left + 1, old - 1), c - left


def _slerp_last_axis(a: np.ndarray, new: int) -> np.ndarray:
    """Resize the last axis of [N, C, H, W] by slerping each pixel's channel vector."""
    n, c, h, w = a.shape
    out = np.zeros((n, c, h, new))
    for j in range(new):
        j0, j1, t = _source_position(j, w, new)
        for b in range(n):
            for i in range(h):
                out[b, :, i, j] = _slerp_ref(a[b, :, i, j0], a[b, :, i, j1], t)
    return out


def _bislerp_ref(x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Width first, then height (the second pass on the transposed result)."""
    mid = _slerp_last_axis(x.double().numpy(), width)
    out = _slerp_last_axis(mid.swapaxes(2, 3), height).swapaxes(2, 3)
    return torch.from_numpy(np.ascontiguousarray(out)).float()


@pytest.mark.parametrize("size", [(6, 5, 9, 7), (4, 4, 7, 10), (8, 6, 5, 3)])
def test_bislerp_matches_an_independent_slerp(size):
    h, w, new_h, new_w = size
    x = _latent(2, 4, h, w)
    x[0, :, 1, 1] = 0  # a zero vector: direction 0
    x[1, :, 2, 2] = -x[1, :, 2, 3]  # opposite neighbours: linear blend
    got = resample.bislerp(x, new_w, new_h)
    assert got.shape == (2, 4, new_h, new_w) and got.dtype == torch.float32
    torch.testing.assert_close(got, _bislerp_ref(x, new_w, new_h), atol=1e-5, rtol=1e-5)


def test_bislerp_keeps_vector_lengths_between_neighbours():
    # slerp keeps the length interpolated: a constant-length field stays constant-length
    x = F.normalize(_latent(1, 4, 5, 5), dim=1) * 3.0
    out = resample.bislerp(x, 13, 11)
    torch.testing.assert_close(out.norm(dim=1), torch.full((1, 11, 13), 3.0), atol=1e-5, rtol=0)


# -- LatentUpscale / LatentUpscaleBy ---------------------------------------------------------------

@pytest.mark.parametrize("method", ["nearest-exact", "bilinear", "area", "bicubic"])
def test_upscale_methods_are_torch_interpolate(method):
    x = _latent(2, 4, 6, 8)
    (out,) = ln.LatentUpscale().execute({"samples": x}, method, 96, 72, "disabled")
    assert torch.equal(out["samples"], F.interpolate(x, size=(9, 12), mode=method))
    (by,) = ln.LatentUpscaleBy().execute({"samples": x}, method, 1.5)
    assert torch.equal(by["samples"], F.interpolate(x, size=(9, 12), mode=method))


def test_upscale_bislerp_node_uses_bislerp():
    x = _latent(1, 4, 6, 8)
    (out,) = ln.LatentUpscale().execute({"samples": x}, "bislerp", 96, 72, "disabled")
    torch.testing.assert_close(out["samples"], _bislerp_ref(x, 12, 9), atol=1e-5, rtol=1e-5)


def test_zero_side_keeps_aspect_and_sides_are_at_least_64px():
    x = _latent(1, 4, 6, 8)  # 64x48 px
    (out,) = ln.LatentUpscale().execute({"samples": x}, "bilinear", 0, 96, "disabled")
    assert out["samples"].shape[-2:] == (12, 16)  # 96 high -> round(64*96/48)=128 wide
    (out,) = ln.LatentUpscale().execute({"samples": x}, "bilinear", 256, 0, "disabled")
    assert out["samples"].shape[-2:] == (24, 32)
    (out,) = ln.LatentUpscale().execute({"samples": x}, "bilinear", 16, 8, "disabled")
    assert out["samples"].shape[-2:] == (8, 8)  # both clamp to 64 px
    latent = {"samples": x, "batch_index": [3]}
    (same,) = ln.LatentUpscale().execute(latent, "bilinear", 0, 0, "disabled")
    assert same is latent  # 0x0: unchanged


def test_center_crop_cuts_to_target_aspect_first():
    x = _latent(1, 4, 4, 8)
    (out,) = ln.LatentUpscale().execute({"samples": x}, "nearest-exact", 64, 64, "center")
    assert torch.equal(out["samples"], F.interpolate(x[:, :, :, 2:6], size=(8, 8), mode="nearest-exact"))
    y = _latent(1, 4, 9, 4)
    cropped = resample.crop_to_aspect(y, 4, 3)  # 9 high -> 3 high, round((9 - 3) / 2) = 3 off each side
    assert torch.equal(cropped, y[:, :, 3:6, :])


def test_upscale_keeps_other_latent_keys_and_does_not_touch_input():
    x = _latent(1, 4, 4, 4)
    before = x.clone()
    mask = torch.ones(1, 1, 32, 32)
    (out,) = ln.LatentUpscaleBy().execute({"samples": x, "noise_mask": mask, "batch_index": [2]}, "bicubic", 2.0)
    assert out["noise_mask"] is mask and out["batch_index"] == [2]
    assert torch.equal(x, before)


def test_bad_method_and_tiny_scale_are_clear_errors():
    with pytest.raises(ValueError, match="unknown upscale method 'lanczos'"):
        latent_ops.resize(_latent(1, 4, 4, 4), 8, 8, "lanczos")
    with pytest.raises(ValueError, match="LatentUpscaleBy: scale_by 0.01"):
        ln.LatentUpscaleBy().execute({"samples": _latent(1, 4, 4, 4)}, "bilinear", 0.01)


# -- LatentComposite (feather) ---------------------------------------------------------------------

def test_composite_feather_matches_a_hand_computed_blend():
    to = torch.full((1, 4, 8, 8), 2.0)
    src = torch.ones(1, 4, 4, 4)
    (out,) = ln.LatentComposite().execute({"samples": to}, {"samples": src}, 16, 16, 16)  # x=y=2, feather 2
    # all four edges lie inside: rows and columns weigh 1/2, 1, 1, 1/2; corners multiply
    w = torch.tensor([[.25, .5, .5, .25], [.5, 1, 1, .5], [.5, 1, 1, .5], [.25, .5, .5, .25]])
    want = to.clone()
    want[:, :, 2:6, 2:6] = 1.0 * w + 2.0 * (1 - w)
    assert torch.equal(out["samples"], want)
    assert torch.equal(to, torch.full((1, 4, 8, 8), 2.0))


def test_composite_edges_on_the_border_stay_hard_and_overhang_is_cut():
    to = torch.zeros(1, 1, 6, 6)
    src = torch.ones(1, 1, 5, 6)
    (out,) = ln.LatentComposite().execute({"samples": to}, {"samples": src}, 0, 24, 24)  # x=0, y=3, feather 3
    # left/right edges lie on the border and the bottom is cut off there; only the top edge (y=3) is
    # inside: the 3 remaining rows weigh 1/3, 2/3, 1
    rows = torch.tensor([1 / 3, 2 / 3, 1.0])
    want = torch.zeros(1, 1, 6, 6)
    want[0, 0, 3:, :] = rows[:, None]
    torch.testing.assert_close(out["samples"], want, atol=1e-7, rtol=0)
    (plain,) = ln.LatentComposite().execute({"samples": to}, {"samples": src}, 8, 8, 0)
    want = torch.zeros(1, 1, 6, 6)
    want[0, 0, 1:, 1:] = 1
    assert torch.equal(plain["samples"], want)
    # a block inside on the right too: its last columns fade out 1, 2/3, 1/3 towards the edge
    (right,) = ln.LatentComposite().execute({"samples": to}, {"samples": torch.ones(1, 1, 6, 5)}, 0, 0, 24)
    torch.testing.assert_close(right["samples"][0, 0, 0], torch.tensor([1, 1, 1, 2 / 3, 1 / 3, 0]),
                               atol=1e-7, rtol=0)
    (outside,) = ln.LatentComposite().execute({"samples": to}, {"samples": src}, 48, 0, 0)
    assert torch.equal(outside["samples"], to)


def test_composite_batch_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="batch of 2 with a batch of 3"):
        ln.LatentComposite().execute({"samples": torch.zeros(3, 4, 8, 8)}, {"samples": torch.ones(2, 4, 4, 4)}, 0, 0, 0)


# -- LatentCompositeMasked ---------------------------------------------------------------------------

def test_composite_masked_with_pixel_mask():
    dest = torch.zeros(2, 4, 8, 8)
    src = torch.stack([torch.full((4, 4, 4), 1.0), torch.full((4, 4, 4), 3.0)])
    mask = torch.zeros(32, 32)
    mask[:, :16] = 1  # left half of the source, in pixels
    (out,) = ln.LatentCompositeMasked().execute({"samples": dest}, {"samples": src}, 8, 24, False, mask)
    want = torch.zeros(2, 4, 8, 8)
    want[0, :, 3:7, 1:3] = 1.0
    want[1, :, 3:7, 1:3] = 3.0
    assert torch.equal(out["samples"], want)
    # at the right border only the visible columns land
    (edge,) = ln.LatentCompositeMasked().execute({"samples": dest}, {"samples": src}, 48, 0, False)
    want = torch.zeros(2, 4, 8, 8)
    want[0, :, 0:4, 6:8] = 1.0
    want[1, :, 0:4, 6:8] = 3.0
    assert torch.equal(edge["samples"], want)


def test_composite_masked_resize_source_and_partial_mask():
    dest = torch.full((1, 1, 4, 4), 2.0)
    src = torch.ones(1, 1, 2, 2)
    mask = torch.full((1, 4, 4), 0.25)
    (out,) = ln.LatentCompositeMasked().execute({"samples": dest}, {"samples": src}, 0, 0, True, mask)
    assert torch.allclose(out["samples"], torch.full((1, 1, 4, 4), 0.25 * 1 + 0.75 * 2))


# -- transforms --------------------------------------------------------------------------------------

def test_rotate_is_clockwise_quarter_turns():
    x = torch.arange(6.0).reshape(1, 1, 2, 3)  # [[0,1,2],[3,4,5]]
    turns = {r: ln.LatentRotate().execute({"samples": x}, r)[0]["samples"][0, 0].tolist()
             for r in ("none", "90 degrees", "180 degrees", "270 degrees")}
    assert turns["none"] == [[0, 1, 2], [3, 4, 5]]
    assert turns["90 degrees"] == [[3, 0], [4, 1], [5, 2]]  # clockwise: the left column becomes the top row
    assert turns["180 degrees"] == [[5, 4, 3], [2, 1, 0]]
    assert turns["270 degrees"] == [[2, 5], [1, 4], [0, 3]]


def test_flip():
    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    (v,) = ln.LatentFlip().execute({"samples": x}, "x-axis: vertically")
    (h,) = ln.LatentFlip().execute({"samples": x}, "y-axis: horizontally")
    assert v["samples"][0, 0].tolist() == [[3, 4, 5], [0, 1, 2]]
    assert h["samples"][0, 0].tolist() == [[2, 1, 0], [5, 4, 3]]


def test_crop_in_pixels_with_minimum_window():
    x = _latent(1, 4, 16, 16)
    (out,) = ln.LatentCrop().execute({"samples": x}, 64, 96, 16, 8)
    assert torch.equal(out["samples"], x[:, :, 1:13, 2:10])
    # x too far right: the window starts 8 latent pixels (64 px) before the edge
    (out,) = ln.LatentCrop().execute({"samples": x}, 512, 512, 120 * 8, 0)
    assert torch.equal(out["samples"], x[:, :, :, 8:])


# -- blend and arithmetic ----------------------------------------------------------------------------

def test_blend_weights_samples1_by_the_factor():
    a, b = _latent(1, 4, 4, 4, seed=1), _latent(1, 4, 4, 4, seed=2)
    (out,) = ln.LatentBlend().execute({"samples": a}, {"samples": b}, 0.3)
    torch.testing.assert_close(out["samples"], 0.3 * a + 0.7 * b)
    small = _latent(1, 4, 2, 2, seed=3)
    (out,) = ln.LatentBlend().execute({"samples": a}, {"samples": small}, 0.5)
    up = F.interpolate(small, size=(4, 4), mode="bicubic")
    torch.testing.assert_close(out["samples"], 0.5 * a + 0.5 * up)


def test_add_subtract_multiply_and_batch_cycling():
    a, b = _latent(2, 4, 4, 4, seed=1), _latent(1, 4, 4, 4, seed=2)
    (s,) = ln.LatentAdd().execute({"samples": a}, {"samples": b})
    torch.testing.assert_close(s["samples"], a + b.expand(2, -1, -1, -1))
    (d,) = ln.LatentSubtract().execute({"samples": a}, {"samples": b})
    torch.testing.assert_close(d["samples"], a - b.expand(2, -1, -1, -1))
    (m,) = ln.LatentMultiply().execute({"samples": a, "batch_index": [0, 5]}, -2.5)
    assert torch.equal(m["samples"], a * -2.5) and m["batch_index"] == [0, 5]
    with pytest.raises(ValueError, match="different channel counts"):
        ln.LatentAdd().execute({"samples": a}, {"samples": torch.zeros(1, 16, 4, 4)})


def test_interpolate_mixes_directions_and_lengths():
    a, b = _latent(1, 4, 3, 3, seed=1), _latent(1, 4, 3, 3, seed=2)
    r = 0.3
    (out,) = ln.LatentInterpolate().execute({"samples": a}, {"samples": b}, r)
    na, nb = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)
    mixed = a / na * r + b / nb * (1 - r)
    want = mixed / mixed.norm(dim=1, keepdim=True) * (na * r + nb * (1 - r))
    torch.testing.assert_close(out["samples"], want, atol=1e-6, rtol=1e-6)
    # batches work item by item
    a2, b2 = torch.cat([a, b]), torch.cat([b, a])
    (out2,) = ln.LatentInterpolate().execute({"samples": a2}, {"samples": b2}, r)
    torch.testing.assert_close(out2["samples"][:1], want, atol=1e-6, rtol=1e-6)
