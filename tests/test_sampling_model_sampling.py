"""ModelSampling: the SD discrete sigma table and the eps / v parameterisations."""

import math

import pytest
import torch

from diffusion.sampling.model_sampling import ModelSampling


def test_sigma_table_extremes_match_compat():
    ms = ModelSampling()
    assert ms.sigmas.dtype == torch.float32 and ms.sigmas.shape == (1000,)
    # COMPAT §10: sigma_min = 0.0291672, sigma_max = 14.6146412
    assert float(ms.sigma_min) == pytest.approx(0.0291672, abs=1e-6)
    assert float(ms.sigma_max) == pytest.approx(14.6146412, abs=1e-5)


def test_sigma_table_matches_diffusers_scaled_linear():
    from diffusers import DDPMScheduler
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    ac = sched.alphas_cumprod.double()
    ref = ((1 - ac) / ac).sqrt().float()
    # diffusers builds betas in float32, we in float64: they agree to float32 round-off (~1e-5)
    assert torch.allclose(ModelSampling().sigmas, ref, rtol=5e-5, atol=0)


def test_timestep_and_sigma_roundtrip():
    ms = ModelSampling()
    t = torch.tensor([0.0, 1.0, 500.0, 999.0])
    assert torch.equal(ms.timestep(ms.sigma(t)), t)
    # halfway between two entries interpolates log-sigma
    mid = ms.sigma(torch.tensor(10.5))
    expect = math.exp(0.5 * (math.log(float(ms.sigmas[10])) + math.log(float(ms.sigmas[11]))))
    assert float(mid) == pytest.approx(expect, rel=1e-6)


def test_percent_to_sigma_edges():
    ms = ModelSampling()
    assert ms.percent_to_sigma(0.0) > 1e8
    assert ms.percent_to_sigma(1.0) == 0.0
    assert ms.percent_to_sigma(0.5) == pytest.approx(float(ms.sigma(torch.tensor(499.5))), rel=1e-6)


def test_eps_and_v_denoise_recover_x0():
    torch.manual_seed(0)
    x0 = torch.randn(2, 4, 3, 3)
    eps = torch.randn(2, 4, 3, 3)
    sigma = torch.tensor([0.5, 7.0])
    s = sigma.view(2, 1, 1, 1)
    x = x0 + s * eps
    eps_model = ModelSampling("eps")
    assert torch.allclose(eps_model.calculate_denoised(sigma, eps, x), x0, atol=1e-5)
    # v = alpha*eps - sigma_vp*x0 in the variance-preserving frame, alpha = 1/sqrt(1+s^2)
    alpha = 1 / (1 + s ** 2).sqrt()
    v = alpha * eps - s * alpha * x0
    v_model = ModelSampling("v_prediction")
    assert torch.allclose(v_model.calculate_denoised(sigma, v, x), x0, atol=1e-5)
    assert torch.allclose(eps_model.calculate_input(sigma, x), x * alpha)


def test_noise_scaling_full_vs_partial():
    ms = ModelSampling()
    noise = torch.ones(1, 1, 1, 1)
    lat = torch.full((1, 1, 1, 1), 2.0)
    assert float(ms.noise_scaling(torch.tensor(3.0), noise, lat)) == pytest.approx(5.0)
    assert float(ms.noise_scaling(torch.tensor(3.0), noise, lat, max_denoise=True)) == pytest.approx(
        2.0 + math.sqrt(10.0))
    assert ms.is_max_denoise(ms.sigma_max) and not ms.is_max_denoise(torch.tensor(14.0))


def test_bad_prediction_named():
    with pytest.raises(ValueError, match="prediction"):
        ModelSampling("flow")
