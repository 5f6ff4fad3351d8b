"""Guidance with areas, masks, strengths and timestep ranges (regional prompting as ComfyUI does it).

The toy model (tests/sampling_fakes.GaussianModel) predicts x0 elementwise from its conditioning's
mean, so the prediction for a crop is the crop of the whole-latent prediction, and every expected
value below is written from the weighting rule itself, independently of the code under test:
x0 = sum_k w_k * pred_k / sum_k w_k per pixel, with an area's weight = strength * ramp_y * ramp_x,
ramps rising (t+1)/r over the first / last r = min(8, size // 4) rows of edges inside the latent.
"""
import pytest
import torch

from diffusion.sampling.conditioning_areas import Region, resolve_region
from diffusion.sampling.guidance import CFGDenoiser
from sampling_fakes import GaussianModel, cond

S = 0.5
SIGMA = 1.7
H = W = 24


def exact(x, sigma, mu):
    return mu + S ** 2 / (S ** 2 + sigma ** 2) * (x - mu)


def ramp(size, offset, total):
    """Independent feather profile along one axis of an area: a vector of `size` weights."""
    r = min(8, size // 4)
    w = torch.ones(size, dtype=torch.float64)
    for i in range(size):
        if offset > 0 and i < r:
            w[i] *= (i + 1) / r
        if offset + size < total and i >= size - r:
            w[i] *= (size - i) / r
    return w


def area_weight(h, w, y, x, strength=1.0):
    """The weight of an area conditioning on the whole H x W latent (0 outside)."""
    full = torch.zeros(H, W, dtype=torch.float64)
    full[y:y + h, x:x + w] = strength * ramp(h, y, H)[:, None] * ramp(w, x, W)[None, :]
    return full


def _x():
    return torch.randn(1, 4, H, W, generator=torch.Generator().manual_seed(0)) * 2


def _run(positive, negative, cfg=1.0, x=None):
    model = GaussianModel(s=S)
    x = _x() if x is None else x
    out = CFGDenoiser(model, positive, negative, cfg=cfg)(x, torch.tensor([SIGMA]))
    return out, model, x


def test_area_changes_nothing_outside_it_and_strength_zero_changes_nothing():
    base = cond(0.0)
    area = {"area": (8, 12, 4, 6), "strength": 1.0}
    plain, _, x = _run(base, cond(-1.0), cfg=4.0)
    with_area, _, _ = _run(base + cond(3.0, **area), cond(-1.0), cfg=4.0)
    outside = torch.ones(H, W, dtype=torch.bool)
    outside[4:12, 6:18] = False
    assert torch.equal(with_area[..., outside], plain[..., outside])
    assert (with_area[..., ~outside] - plain[..., ~outside]).abs().max() > 0.1
    zero, _, _ = _run(base + cond(3.0, **{**area, "strength": 0.0}), cond(-1.0), cfg=4.0)
    assert torch.allclose(zero, plain, atol=1e-6, rtol=0)


def test_overlapping_areas_are_weighted_by_their_feathered_strengths():
    areas = [(0.0, None, 1.0), (2.0, (12, 16, 0, 0), 1.0), (-1.5, (16, 12, 8, 12), 2.5)]
    positive = []
    for mu, a, strength in areas:
        options = {"strength": strength} if a is None else {"area": a, "strength": strength}
        positive += cond(mu, **options)
    out, _, x = _run(positive, None)
    num = torch.zeros(1, 4, H, W, dtype=torch.float64)
    den = torch.zeros(H, W, dtype=torch.float64)
    for mu, a, strength in areas:
        wgt = torch.full((H, W), strength, dtype=torch.float64) if a is None else area_weight(*a, strength)
        num += wgt * exact(x.double(), SIGMA, mu)
        den += wgt
    assert torch.allclose(out.double(), num / den, atol=1e-5, rtol=0)


def test_area_alone_leaves_uncovered_pixels_zero_and_feathers_inner_edges():
    out, _, x = _run(cond(2.0, area=(16, 16, 8, 4)), None)
    weight = area_weight(16, 16, 8, 4)
    covered = weight > 0
    assert torch.equal(out[..., ~covered], torch.zeros_like(out[..., ~covered]))
    # the weight cancels for a single conditioning: where it acts, it is the plain prediction
    assert torch.allclose(out[..., covered], exact(x, SIGMA, 2.0)[..., covered], atol=1e-5)


def test_percentage_area_and_mask_bounds_resolve_to_latent_units():
    r = resolve_region({"area": ("percentage", 0.5, 0.25, 0.5, 0.1)}, (24, 40), "cpu", "t")
    assert r.area == (12, 10, 12, 4)  # round(h*H), round(w*W), round(y*H), round(x*W)
    mask = torch.zeros(1, 96, 96)
    mask[0, 40:44, 8:80] = 1  # at 4x the latent size
    r = resolve_region({"mask": mask, "set_area_to_bounds": True}, (24, 24), "cpu", "t")
    assert r.mask.shape == (1, 24, 24)
    # bilinear 4x downscale: latent pixel i reads source pixels 4i+1 and 4i+2, so rows 40..43 leave
    # only row 10 and columns 8..79 columns 2..19; the 1-row box is widened to the 8-pixel minimum
    assert r.area == (8, 18, 10, 2)
    empty = resolve_region({"mask": torch.zeros(8, 8), "set_area_to_bounds": True}, (24, 24), "cpu", "t")
    assert empty.area == (8, 8, 0, 0)


def test_mask_of_ones_equals_no_mask():
    plain, _, x = _run(cond(0.5) + cond(-1.0, strength=2.0), cond(0.1), cfg=3.0)
    masked = cond(0.5) + cond(-1.0, strength=2.0, mask=torch.ones(1, 64, 64))
    assert torch.equal(_run(masked, cond(0.1), cfg=3.0, x=x)[0], plain)
    # "mask bounds" makes it an area (the whole latent), which gives the negative side an area twin:
    # the negative prediction is then averaged with itself, equal up to rounding
    bounded = cond(0.5) + cond(-1.0, strength=2.0, mask=torch.ones(1, 64, 64), set_area_to_bounds=True)
    assert torch.allclose(_run(bounded, cond(0.1), cfg=3.0, x=x)[0], plain, atol=1e-6, rtol=0)


def test_mask_weights_with_mask_strength_times_strength():
    mask = torch.zeros(1, H, W)
    mask[0, :, W // 2:] = 1.0
    mask[0, :, W // 3:W // 2] = 0.25
    positive = cond(0.0) + cond(2.0, mask=mask, mask_strength=3.0, strength=0.5)
    out, _, x = _run(positive, None)
    w = (mask * 3.0 * 0.5)[:, None]
    expect = (exact(x, SIGMA, 0.0) + w * exact(x, SIGMA, 2.0)) / (1 + w)
    assert torch.allclose(out, expect, atol=1e-5)


def test_uncond_area_gets_a_positive_twin_with_the_positive_prompt():
    """An area on the negative side gets a positive twin (same area, positive model inputs), so
    guidance there compares like with like; the twin leaves the positive prediction as it was."""
    a = (8, 8, 8, 8)
    out, model, x = _run(cond(1.0), cond(0.0) + cond(-2.0, area=a), cfg=5.0)
    c = exact(x, SIGMA, 1.0)
    wgt = area_weight(*a)
    u = (exact(x.double(), SIGMA, 0.0) + wgt * exact(x.double(), SIGMA, -2.0)) / (1 + wgt)
    assert torch.allclose(out.double(), u + (c.double() - u) * 5.0, atol=1e-4, rtol=0)
    # the positive twin ran with the positive prompt on the 8x8 crop
    crops = [call for call in model.calls if call["x"].shape[-1] == 8]
    assert crops and crops[0]["batch"] == 2  # twin and negative area share one forward


def test_timestep_range_excludes_a_cond_outside_its_sigmas():
    model = GaussianModel(s=S)
    ms = model.model_sampling
    positive = cond(0.0) + cond(3.0, area=(8, 8, 0, 0), start_percent=0.0, end_percent=0.4)
    den = CFGDenoiser(model, positive, None, cfg=1.0)
    x = _x()
    late = ms.percent_to_sigma(0.7)  # past end_percent: the area conditioning is off
    assert torch.equal(den(x, torch.tensor([late])), exact(x, late, 0.0))
    early = ms.percent_to_sigma(0.1)
    assert not torch.allclose(den(x, torch.tensor([early])), exact(x, early, 0.0))


def test_equal_shapes_share_one_forward():
    positive = cond(0.0) + cond(1.0, area=(8, 8, 0, 0)) + cond(2.0, area=(8, 8, 16, 16))
    _, model, _ = _run(positive, cond(-1.0), cfg=2.0)
    # whole-latent pos + neg in one call; both areas and their negative twins in another
    assert sorted(call["batch"] for call in model.calls) == [2, 4]


def test_area_outside_the_latent_is_a_clear_error():
    with pytest.raises(ValueError, match="starts outside the 24x24 latent"):
        _run(cond(0.0) + cond(1.0, area=(8, 8, 30, 0)), None)


def test_region_defaults():
    r = resolve_region({}, (8, 8), "cpu", "t")
    assert r == Region()
