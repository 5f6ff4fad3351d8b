"""Model patches against independent formulas: ModelSamplingDiscrete tables and parameterisations,
RescaleCFG, FreeU's Fourier filter and scaling, Perp-Neg, Deep Shrink, ToMe, hypernetworks; and the
UNet's patch points (what patches see, replace patches, bit-identical no-op patches)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffusion import memory
from diffusion.model_patches import downscale, freeu, hypernetwork, perp_neg, sampling, tome
from diffusion.sampling.model_sampling import ModelSampling, discrete_sigma_table
from unet_tiny import tiny_patcher


@pytest.fixture(autouse=True)
def _fresh_memory():
    memory.unload_all_models()
    yield
    memory.unload_all_models()


# -- ModelSamplingDiscrete ------------------------------------------------------------------------------
def _alphas_cumprod():
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    return np.cumprod(1 - betas)


def test_eps_and_v_keep_the_table():
    base = discrete_sigma_table()
    for kind in ("eps", "v_prediction", "x0", "img_to_img"):
        assert torch.equal(sampling.DiscreteSampling(kind).sigmas, base)


def test_lcm_table_is_every_20th_step_and_timesteps_map_back():
    ms = sampling.DiscreteSampling("lcm")
    ac = _alphas_cumprod()
    idx = np.arange(19, 1000, 20)
    expected = np.sqrt((1 - ac[idx]) / ac[idx]).astype(np.float32)
    np.testing.assert_allclose(ms.sigmas.numpy(), expected, rtol=1e-6)
    assert float(ms.timestep(ms.sigmas[0])) == 19 and float(ms.timestep(ms.sigmas[-1])) == 999
    torch.testing.assert_close(ms.sigma(torch.tensor(999.0)), ms.sigmas[-1])
    torch.testing.assert_close(ms.sigma(torch.tensor(39.0)), ms.sigmas[1])


def test_lcm_denoised_formula():
    ms = sampling.DiscreteSampling("lcm")
    sigma = ms.sigmas[10:11]
    x, out = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    t = (10 * 20 + 19) * 10.0
    c_skip = 0.25 / (t * t + 0.25)
    c_out = t / (t * t + 0.25) ** 0.5
    expected = c_out * (x - out * sigma) + c_skip * x
    torch.testing.assert_close(ms.calculate_denoised(sigma, out, x), expected)


def test_zsnr_formula():
    ms = sampling.DiscreteSampling("v_prediction", zsnr=True)
    ac = _alphas_cumprod()
    base = np.sqrt((1 - ac) / ac).astype(np.float32).astype(np.float64)
    s = np.sqrt(1 / (base ** 2 + 1))
    s = (s - s[-1]) * s[0] / (s[0] - s[-1])
    ab = s ** 2
    ab[-1] = 4.8973451890853435e-08
    # float32 like ComfyUI: 1 - alpha_bar near 0 loses digits at the first steps (6e-5 relative)
    np.testing.assert_allclose(ms.sigmas.numpy(), np.sqrt((1 - ab) / ab), rtol=1e-4)
    assert float(ms.sigma_max) > 4000  # zero terminal SNR: the last step is (almost) pure noise
    np.testing.assert_allclose(float(ms.sigma_min), base[0], rtol=1e-4)


def test_x0_and_img_to_img_parameterisations():
    x, out, sigma = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3), torch.tensor([2.0, 3.0])
    x0 = sampling.DiscreteSampling("x0")
    assert torch.equal(x0.calculate_denoised(sigma, out, x), out)
    torch.testing.assert_close(x0.calculate_input(sigma, x), x / (sigma.view(-1, 1, 1, 1) ** 2 + 1) ** 0.5)
    i2i = sampling.DiscreteSampling("img_to_img")
    assert torch.equal(i2i.calculate_input(sigma, x), x)
    with pytest.raises(ValueError, match="sampling must be one of"):
        sampling.DiscreteSampling("edm")


def test_node_puts_the_table_on_a_clone_only():
    from nodes.model_patch_nodes import ModelSamplingDiscrete

    base = tiny_patcher()
    before = base.model_sampling
    (m,) = ModelSamplingDiscrete().execute(base, "v_prediction", True)
    assert base.model_sampling is before and m.model is base.model
    assert m.model_sampling.prediction == "v_prediction" and m.model_sampling.zsnr
    assert m.get_model_object("model_sampling") is m.model_sampling


# -- RescaleCFG -----------------------------------------------------------------------------------------
def test_rescale_cfg_formula():
    g = torch.Generator().manual_seed(0)
    x, c0, u0 = (torch.randn(2, 4, 5, 5, generator=g) for _ in range(3))
    sigma, scale, mult = torch.tensor([1.5, 0.7]), 6.0, 0.7
    fn = sampling.rescale_cfg(mult)
    got = x - fn({"input": x, "sigma": sigma, "cond_scale": scale, "cond": x - c0, "uncond": x - u0})
    # independently: v = (sigma x - x0 ... ) in the v parameterisation with sigma_data 1:
    # x_t = x0 + sigma eps, alpha = 1/sqrt(1+s^2): v = (x/(1+s^2) - x0) * sqrt(1+s^2) / s ... per sample
    s = sigma.view(-1, 1, 1, 1)
    v = lambda x0: (x / (s * s + 1) - x0) * (s * s + 1) ** 0.5 / s  # noqa: E731
    vc, vu = v(c0), v(u0)
    vcfg = vu + scale * (vc - vu)
    std = lambda t: t.reshape(t.shape[0], -1).std(dim=1).view(-1, 1, 1, 1)  # noqa: E731
    vfinal = mult * vcfg * std(vc) / std(vcfg) + (1 - mult) * vcfg
    expected = x / (s * s + 1) - vfinal * s / (s * s + 1) ** 0.5
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # multiplier 0 is plain CFG
    plain = x - sampling.rescale_cfg(0.0)({"input": x, "sigma": sigma, "cond_scale": scale, "cond": x - c0,
                                           "uncond": x - u0})
    torch.testing.assert_close(plain, u0 + scale * (c0 - u0), rtol=1e-4, atol=1e-4)


# -- FreeU ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("h,w", [(8, 8), (6, 10)])
def test_fourier_filter_against_numpy(h, w):
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(1))
    got = freeu.fourier_filter(x, 1, 0.2)
    spec = np.fft.fft2(x.numpy().astype(np.float64))
    # the centred 2x2 block of the shifted spectrum is frequencies {0, -1} on each axis (even sizes)
    for ky in (0, h - 1):
        for kx in (0, w - 1):
            spec[..., ky, kx] *= 0.2
    np.testing.assert_allclose(got.numpy(), np.fft.ifft2(spec).real, rtol=1e-4, atol=1e-5)


def test_freeu_scales_backbone_half_and_filters_skip():
    h = torch.rand(1, 128, 4, 4) + 0.1
    skip = torch.randn(1, 128, 4, 4)
    out_h, out_skip = freeu.freeu_patch(32, 1.5, 1.2, 0.9, 0.2)(h.clone(), skip, {})
    torch.testing.assert_close(out_h[:, :64], h[:, :64] * 1.5)
    assert torch.equal(out_h[:, 64:], h[:, 64:])
    torch.testing.assert_close(out_skip, freeu.fourier_filter(skip, 1, 0.9))
    # v2: factor (b - 1) * normalised channel mean + 1
    v2_h, _ = freeu.freeu_patch(32, 1.5, 1.2, 0.9, 0.2, version=2)(h.clone(), skip, {})
    m = h.mean(1, keepdim=True)
    m = (m - m.min()) / (m.max() - m.min())
    torch.testing.assert_close(v2_h[:, :64], h[:, :64] * (0.5 * m + 1))
    # other widths pass untouched
    other = torch.randn(1, 96, 4, 4)
    assert freeu.freeu_patch(32, 1.5, 1.2, 0.9, 0.2)(other, skip, {})[0] is other


# -- Perp-Neg -------------------------------------------------------------------------------------------
def test_perp_neg_formula():
    g = torch.Generator().manual_seed(3)
    p, n, e = (torch.randn(2, 4, 3, 3, generator=g) for _ in range(3))
    got = perp_neg.perp_neg(p, n, e, 0.8, 5.0)
    pos, neg = (p - e).double(), (n - e).double()
    perp = neg - (pos * neg).sum() / (pos * pos).sum() * pos
    assert abs(float((perp * pos).sum())) < 1e-9  # perpendicular over the whole batch
    torch.testing.assert_close(got.double(), e.double() + 5.0 * (pos - 0.8 * perp), rtol=1e-5, atol=1e-5)


def test_perp_neg_guider_and_patch_agree_on_a_gaussian_model():
    from sampling_fakes import GaussianModel, cond
    from diffusion.sampling.guidance import CFGDenoiser

    x, sigma = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(4)), torch.tensor([2.0])
    model = GaussianModel(s=0.5)
    guided = perp_neg.PerpNegGuider(model, cond(0.9), cond(-0.4), cond(0.1), 4.0, 0.7).denoiser()(x, sigma)
    model.model_options = {"transformer_options": {},
                           "sampler_cfg_function": perp_neg.perp_neg_cfg_function(cond(0.1), 0.7)}
    patched = CFGDenoiser(model, cond(0.9), cond(-0.4), 4.0)(x, sigma)
    x0 = lambda mu: mu + 0.25 / (0.25 + 4.0) * (x - mu)  # noqa: E731
    expected = perp_neg.perp_neg(x0(0.9), x0(-0.4), x0(0.1), 0.7, 4.0)
    torch.testing.assert_close(guided, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(patched, expected, rtol=1e-5, atol=1e-5)


# -- Deep Shrink ----------------------------------------------------------------------------------------
def test_deep_shrink_resizes_in_the_range_and_back():
    ms = ModelSampling()
    shrink, grow = downscale.deep_shrink_patches(ms, 1, 2.0, 0.0, 0.5, "bicubic", "bilinear")
    h = torch.randn(1, 8, 6, 10)
    high = {"block": ("input", 1), "sigmas": torch.tensor([10.0])}
    small = shrink(h, high)
    torch.testing.assert_close(small, F.interpolate(h, size=(3, 5), mode="bicubic", align_corners=False))
    assert shrink(h, {"block": ("input", 1), "sigmas": torch.tensor([0.1])}) is h  # past end_percent
    assert shrink(h, {"block": ("input", 2), "sigmas": torch.tensor([10.0])}) is h
    back, skip = grow(small, h, {})
    torch.testing.assert_close(back, F.interpolate(small, size=(6, 10), mode="bilinear", align_corners=False))
    assert skip is h


def test_deep_shrink_on_the_unet_keeps_the_output_shape():
    from nodes.model_patch_nodes import PatchModelAddDownscale

    base = tiny_patcher()
    (m,) = PatchModelAddDownscale().execute(base, 1, 2.0, 0.0, 1.0, True, "bicubic", "bicubic")
    x, ctx = torch.randn(1, 4, 16, 16), torch.randn(1, 77, 16)
    sigma = torch.tensor([3.0])
    plain = base.apply_model(x, sigma, ctx)
    shrunk = m.apply_model(x, sigma, ctx)
    assert shrunk.shape == plain.shape and not torch.allclose(shrunk, plain)


# -- ToMe -----------------------------------------------------------------------------------------------
def test_tome_merge_unmerge_round_trip():
    h, w, c = 8, 8, 16
    g = torch.Generator().manual_seed(2)
    cells = torch.randn(1, c, h // 2, w // 2, generator=g)
    x = F.interpolate(cells, scale_factor=2, mode="nearest").flatten(2).transpose(1, 2)  # 2x2 equal tokens
    r = 3 * (h // 2) * (w // 2)  # every source merges into its cell's destination
    merge, unmerge = tome.bipartite_soft_matching_2d(x, w, h, r, generator=g)
    merged = merge(x)
    assert merged.shape == (1, h * w - r, c)
    torch.testing.assert_close(unmerge(merged), x)
    # a partial merge restores the unmerged tokens exactly and merged ones as their destination's mean
    y = torch.randn(2, h * w, c, generator=g)
    merge, unmerge = tome.bipartite_soft_matching_2d(y, w, h, 10, no_rand=True)
    back = unmerge(merge(y))
    assert back.shape == y.shape and int((back == y).all(-1).sum()) >= h * w - 10 - 16


def test_tome_patch_only_merges_full_resolution():
    merge, unmerge = tome.tome_patches(0.5)
    n = torch.randn(1, 64, 8)
    out, ctx, val = merge(n, n, n, {"original_shape": [1, 4, 8, 8]})
    assert out.shape == (1, 32, 8) and ctx is n and unmerge(out, {}).shape == (1, 64, 8)
    low = torch.randn(1, 16, 8)
    assert merge(low, low, low, {"original_shape": [1, 4, 8, 8]})[0] is low


# -- hypernetworks --------------------------------------------------------------------------------------
def _hn_state(width, g, layer_norm=False):
    def mlp():
        sd = {"linear.0.weight": torch.randn(2 * width, width, generator=g) * 0.3,
              "linear.0.bias": torch.randn(2 * width, generator=g) * 0.1}
        if layer_norm:
            sd.update({"linear.1.weight": torch.rand(2 * width, generator=g) + 0.5,
                       "linear.1.bias": torch.randn(2 * width, generator=g) * 0.1})
        n = 2 if layer_norm else 1
        sd.update({f"linear.{n}.weight": torch.randn(width, 2 * width, generator=g) * 0.3,
                   f"linear.{n}.bias": torch.randn(width, generator=g) * 0.1})
        if layer_norm:  # A1111 puts a layer norm after every linear
            sd.update({"linear.3.weight": torch.rand(width, generator=g) + 0.5,
                       "linear.3.bias": torch.randn(width, generator=g) * 0.1})
        return sd
    return [mlp(), mlp()]


def test_hypernetwork_kv_formula(tmp_path):
    g = torch.Generator().manual_seed(7)
    sd = {16: _hn_state(16, g), "activation_func": "relu", "is_layer_norm": False, "name": "x"}
    path = tmp_path / "hn.pt"
    torch.save(sd, path)
    patch = hypernetwork.load_hypernetwork(hypernetwork.read_hypernetwork_file(path), 0.6)
    n, ctx = torch.randn(1, 5, 8), torch.randn(1, 7, 16, generator=g)

    def mlp(p, t):
        hidden = torch.relu(t @ p["linear.0.weight"].T + p["linear.0.bias"])
        return hidden @ p["linear.1.weight"].T + p["linear.1.bias"]  # no activation after the last layer

    q2, k2, v2 = patch(n, ctx, ctx, {})
    assert q2 is n
    torch.testing.assert_close(k2, ctx + 0.6 * mlp(sd[16][0], ctx))
    torch.testing.assert_close(v2, ctx + 0.6 * mlp(sd[16][1], ctx))
    other = torch.randn(1, 7, 24)
    assert patch(n, other, other, {})[1] is other  # widths without a network pass through


def test_hypernetwork_layer_norm_and_bad_files(tmp_path):
    g = torch.Generator().manual_seed(8)
    sd = {8: _hn_state(8, g, layer_norm=True), "activation_func": "tanh", "is_layer_norm": True}
    patch = hypernetwork.load_hypernetwork(sd, 1.0)
    ctx = torch.randn(1, 3, 8, generator=g)
    p = sd[8][0]
    hidden = torch.tanh(ctx @ p["linear.0.weight"].T + p["linear.0.bias"])
    hidden = F.layer_norm(hidden, (16,), p["linear.1.weight"], p["linear.1.bias"])
    # ComfyUI counts the layer norms as layers, so the last linear is activated as well
    out = torch.tanh(hidden @ p["linear.2.weight"].T + p["linear.2.bias"])
    out = F.layer_norm(out, (8,), p["linear.3.weight"], p["linear.3.bias"])
    torch.testing.assert_close(patch(ctx, ctx, ctx, {})[1], ctx + out)
    with pytest.raises(ValueError, match="unsupported activation_func 'gelu2'"):
        hypernetwork.load_hypernetwork({**sd, "activation_func": "gelu2"}, 1.0)
    with pytest.raises(ValueError, match="no per-width networks"):
        hypernetwork.load_hypernetwork({"activation_func": "relu"}, 1.0)


# -- UNet patch points ----------------------------------------------------------------------------------
def _forward(p, transformer_options=None, x=None):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 8, 8, generator=g) if x is None else x
    ctx = torch.randn(2, 3, 16, generator=g)
    opts = dict(p.model_options["transformer_options"])
    opts.update(transformer_options or {})
    with torch.no_grad():
        return p.model(x, torch.tensor([500.0, 500.0]), ctx, transformer_options=opts)


def test_noop_patches_leave_the_output_bit_identical():
    base = tiny_patcher()
    plain = _forward(base)
    p = base.clone()
    seen = []
    p.set_model_attn1_patch(lambda n, c, v, extra: (seen.append(dict(extra)), (n, c, v))[1])
    p.set_model_attn2_patch(lambda n, c, v, extra: (n, c, v))
    p.set_model_attn1_output_patch(lambda out, extra: out)
    p.set_model_input_block_patch(lambda h, o: h)
    p.set_model_input_block_patch_after_skip(lambda h, o: h)
    p.set_model_middle_block_patch(lambda h, o: h)
    p.set_model_output_block_patch(lambda h, s, o: (h, s))
    out = _forward(p, {"cond_or_uncond": [0, 1], "sigmas": torch.tensor([3.0, 3.0])})
    assert torch.equal(out, plain)
    blocks = [(e["block"], e["block_index"], e["transformer_index"]) for e in seen]
    assert blocks == [(("input", 1), 0, 0), (("middle", 0), 0, 1), (("output", 2), 0, 2), (("output", 3), 0, 3)]
    assert seen[0]["original_shape"] == [2, 4, 8, 8] and seen[0]["cond_or_uncond"] == [0, 1]
    assert seen[0]["n_heads"] == 8 and seen[0]["dim_head"] == 4
    assert "patches" not in seen[0]


def test_replace_patch_runs_for_its_block_only():
    from diffusion.models.attention import attention

    base = tiny_patcher()
    plain = _forward(base)
    p = base.clone()
    calls = []

    def replace(q, k, v, extra):
        calls.append(extra["block"])
        return attention(q, k, v, extra["n_heads"]) * 0.0

    p.set_model_attn1_replace(replace, "middle", 0, 0)
    changed = _forward(p)
    assert calls == [("middle", 0)] and not torch.allclose(changed, plain)
    assert "patches_replace" not in base.model_options["transformer_options"]
