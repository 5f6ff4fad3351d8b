"""CFGDenoiser: batched cond/uncond, cfg=1 shortcut, combining conditionings, hooks, inpaint mask."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from diffusion.sampling.guidance import CFGDenoiser, InpaintDenoiser, prepare_mask
from sampling_fakes import GaussianModel, cond

S = 0.5


def exact(x, sigma, mu):
    """The Gaussian toy's x0 prediction, written out independently of the fake."""
    return mu + S ** 2 / (S ** 2 + sigma ** 2) * (x - mu)


def _x(batch=2):
    return torch.randn(batch, 4, 3, 3, generator=torch.Generator().manual_seed(0))


def test_cond_and_uncond_share_one_forward():
    model = GaussianModel(s=S)
    den = CFGDenoiser(model, cond(1.0), cond(-0.5), cfg=7.0)
    x, sigma = _x(), torch.tensor([2.0, 2.0])
    out = den(x, sigma)
    assert len(model.calls) == 1 and model.calls[0]["batch"] == 4
    c, u = exact(x, 2.0, 1.0), exact(x, 2.0, -0.5)
    assert torch.allclose(out, u + (c - u) * 7.0, atol=1e-5)


def test_cfg_one_skips_uncond():
    model = GaussianModel(s=S)
    den = CFGDenoiser(model, cond(1.0), cond(-0.5), cfg=1.0)
    x = _x()
    out = den(x, torch.tensor([2.0, 2.0]))
    assert len(model.calls) == 1 and model.calls[0]["batch"] == 2
    assert torch.allclose(out, exact(x, 2.0, 1.0), atol=1e-6)
    # ... unless a sampler asks for the unconditional prediction (CFG++ samplers do)
    den(x, torch.tensor([2.0, 2.0]), model_options={"disable_cfg1_optimization": True})
    assert model.calls[-1]["batch"] == 4


def test_different_token_lengths_are_padded_to_common_multiple():
    model = GaussianModel(s=S)
    den = CFGDenoiser(model, cond(1.0, tokens=154), cond(-0.5, tokens=77), cfg=3.0)
    x = _x()
    out = den(x, torch.tensor([1.0, 1.0]))
    assert len(model.calls) == 1 and model.calls[0]["tokens"] == 154
    c, u = exact(x, 1.0, 1.0), exact(x, 1.0, -0.5)
    assert torch.allclose(out, u + (c - u) * 3.0, atol=1e-5)


def test_repeating_context_leaves_cross_attention_unchanged():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, n, 8, generator=gen) for n in (5, 77, 77))
    ref = F.scaled_dot_product_attention(q, k, v)
    rep = F.scaled_dot_product_attention(q, k.repeat(1, 1, 2, 1), v.repeat(1, 1, 2, 1))
    assert torch.allclose(ref, rep, atol=1e-6)


def test_lengths_too_far_apart_use_separate_forwards():
    model = GaussianModel(s=S)
    den = CFGDenoiser(model, cond(1.0, tokens=77 * 5), cond(-0.5, tokens=77), cfg=3.0)
    x = _x()
    out = den(x, torch.tensor([1.0, 1.0]))
    assert sorted(c["tokens"] for c in model.calls) == [77, 385]
    c, u = exact(x, 1.0, 1.0), exact(x, 1.0, -0.5)
    assert torch.allclose(out, u + (c - u) * 3.0, atol=1e-5)


def test_multiple_conds_average_by_strength():
    model = GaussianModel(s=S)
    positive = cond(0.0, strength=1.0) + cond(2.0, strength=3.0)
    den = CFGDenoiser(model, positive, cond(0.0), cfg=1.0)
    x = _x()
    out = den(x, torch.tensor([1.5, 1.5]))
    assert len(model.calls) == 1 and model.calls[0]["batch"] == 4
    expect = (1.0 * exact(x, 1.5, 0.0) + 3.0 * exact(x, 1.5, 2.0)) / 4.0
    assert torch.allclose(out, expect, atol=1e-5)


def test_timestep_range_limits_a_cond():
    model = GaussianModel(s=S)
    ms = model.model_sampling
    positive = cond(0.0) + cond(2.0, start_percent=0.5, end_percent=1.0)
    den = CFGDenoiser(model, positive, None, cfg=5.0)
    x = _x()
    boundary = ms.percent_to_sigma(0.5)
    high, low = boundary * 1.5, boundary * 0.5
    assert torch.allclose(den(x, torch.tensor([high, high])), exact(x, high, 0.0), atol=1e-5)
    both = (exact(x, low, 0.0) + exact(x, low, 2.0)) / 2
    assert torch.allclose(den(x, torch.tensor([low, low])), both, atol=1e-5)


def test_adm_from_model_hook_is_batched():
    model = GaussianModel(s=S)
    model.encode_adm = lambda options, batch: options["pooled_output"].repeat(batch, 1)
    positive = cond(1.0, pooled_output=torch.ones(1, 3))
    negative = cond(0.0, pooled_output=torch.zeros(1, 3))
    CFGDenoiser(model, positive, negative, cfg=2.0)(_x(), torch.tensor([1.0, 1.0]))
    y = model.calls[0]["y"]
    assert y.shape == (4, 3)
    assert torch.equal(y, torch.tensor([[1.0] * 3] * 2 + [[0.0] * 3] * 2))


def test_sampler_cfg_function_replaces_mix_and_post_cfg_sees_preds():
    model = GaussianModel(s=S)
    seen = {}

    def cfg_fn(args):
        seen["scale"] = args["cond_scale"]
        return args["uncond"]  # guided "x - x0" := the uncond one, so the result is the uncond x0

    def post(args):
        seen["post"] = (args["cond_denoised"], args["uncond_denoised"])
        return args["denoised"] * 2

    model.model_options = {"sampler_cfg_function": cfg_fn, "sampler_post_cfg_function": [post]}
    x = _x()
    out = CFGDenoiser(model, cond(1.0), cond(-0.5), cfg=4.0)(x, torch.tensor([1.0, 1.0]))
    u = exact(x, 1.0, -0.5)
    assert seen["scale"] == 4.0
    assert torch.allclose(out, 2 * u, atol=1e-5)
    assert torch.allclose(seen["post"][0], exact(x, 1.0, 1.0), atol=1e-5)


def test_bad_conditioning_named():
    with pytest.raises(TypeError, match="negative: CONDITIONING item 0"):
        CFGDenoiser(GaussianModel(), cond(1.0), [[torch.zeros(1, 77, 8), "oops"]], cfg=2.0)


def test_inpaint_keeps_unmasked_region():
    model = GaussianModel(s=S)
    latent = torch.full((1, 4, 3, 3), 0.3)
    noise = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(1, 4, 3, 3)
    mask[..., 1:, :] = 1
    den = InpaintDenoiser(CFGDenoiser(model, cond(1.0), None, cfg=1.0), latent, noise, mask)
    x = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(3))
    sigma = torch.tensor([2.0])
    out = den(x, sigma)
    # model input: masked area from x, the rest is the latent re-noised with the initial noise
    seen = model.calls[0]["x"]
    assert torch.allclose(seen[..., 1:, :], x[..., 1:, :])
    assert torch.allclose(seen[..., :1, :], (latent + 2.0 * noise)[..., :1, :])
    assert torch.allclose(out[..., :1, :], latent[..., :1, :])
    assert torch.allclose(out[..., 1:, :], exact(seen, 2.0, 1.0)[..., 1:, :], atol=1e-6)


def test_prepare_mask_resizes_and_broadcasts():
    mask = torch.zeros(16, 16)
    mask[:, 8:] = 1
    m = prepare_mask(mask, (3, 4, 2, 2), "cpu")
    assert m.shape == (3, 4, 2, 2)
    assert torch.equal(m[..., 0], torch.zeros(3, 4, 2)) and torch.equal(m[..., 1], torch.ones(3, 4, 2))
    assert math.isclose(float(prepare_mask(torch.full((1, 1, 8, 8), 0.25), (1, 4, 1, 1), "cpu").mean()), 0.25)


def test_gpu_forwards_are_split_when_memory_is_short(monkeypatch):
    """On CUDA, cond and uncond share a forward only while the estimated activations fit."""
    from diffusion import memory

    model = GaussianModel(s=S)
    model.memory_required = lambda shape: 100 * shape[0]
    den = CFGDenoiser(model, cond(1.0) + cond(2.0), cond(-0.5), cfg=2.0)
    x = _x()
    on_gpu = SimpleNamespace(device=torch.device("cuda"), shape=x.shape)
    monkeypatch.setattr(memory, "get_free_memory", lambda device=None: 500)
    assert den._copies_per_forward(on_gpu) == 2  # 450 usable bytes / 200 per copy of a batch of 2
    assert den._copies_per_forward(x) > 100  # CPU: no limit
    monkeypatch.setattr(den, "_copies_per_forward", lambda x: 2)
    out = den(x, torch.tensor([1.0, 1.0]))
    assert [c["batch"] for c in model.calls] == [4, 2]
    c = (exact(x, 1.0, 1.0) + exact(x, 1.0, 2.0)) / 2
    u = exact(x, 1.0, -0.5)
    assert torch.allclose(out, u + (c - u) * 2.0, atol=1e-5)
