"""Sampler registry: every ComfyUI name, in the combo order of COMPAT §10."""

import inspect

import pytest

from diffusion.sampling.registry import SAMPLER_NAMES, get_sampler

# COMPAT §10, copied from the spec text
COMPAT_ORDER = (
    "euler, euler_cfg_pp, euler_ancestral, euler_ancestral_cfg_pp, heun, heunpp2, exp_heun_2_x0, "
    "exp_heun_2_x0_sde, dpm_2, dpm_2_ancestral, lms, dpm_fast, dpm_adaptive, dpmpp_2s_ancestral, "
    "dpmpp_2s_ancestral_cfg_pp, dpmpp_sde, dpmpp_sde_gpu, dpmpp_2m, dpmpp_2m_cfg_pp, dpmpp_2m_sde, "
    "dpmpp_2m_sde_gpu, dpmpp_2m_sde_heun, dpmpp_2m_sde_heun_gpu, dpmpp_3m_sde, dpmpp_3m_sde_gpu, ddpm, lcm, "
    "ipndm, ipndm_v, deis, res_multistep, res_multistep_cfg_pp, res_multistep_ancestral, "
    "res_multistep_ancestral_cfg_pp, gradient_estimation, gradient_estimation_cfg_pp, er_sde, seeds_2, "
    "seeds_3, sa_solver, sa_solver_pece, ddim, uni_pc, uni_pc_bh2"
).split(", ")


# Ours beyond ComfyUI's list; they come after it, so ComfyUI's combo order stays a prefix of ours.
OUR_EXTRAS = ["plms"]


def test_all_44_names_in_compat_order_then_ours():
    assert len(COMPAT_ORDER) == 44
    assert SAMPLER_NAMES[:44] == COMPAT_ORDER
    assert SAMPLER_NAMES[44:] == OUR_EXTRAS


@pytest.mark.parametrize("name", COMPAT_ORDER + OUR_EXTRAS)
def test_common_signature(name):
    params = list(inspect.signature(get_sampler(name)).parameters)
    assert params[:6] == ["model", "x", "sigmas", "extra_args", "callback", "disable"]


def test_unknown_sampler_named():
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        get_sampler("nope")


@pytest.mark.parametrize("name", COMPAT_ORDER + OUR_EXTRAS)
def test_short_schedules_run(name):
    """One sigma (no step), one step to 0, one step to a non-zero sigma: finite results."""
    import torch

    from diffusion.sampling.model_sampling import ModelSampling
    from sampling_fakes import denoiser_from_eps_net

    model = denoiser_from_eps_net(ModelSampling())
    x = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    for sigmas in ([3.0], [3.0, 0.0], [3.0, 1.0]):
        out = get_sampler(name)(model, x.clone(), torch.tensor(sigmas), extra_args={"seed": 1})
        assert out.shape == x.shape and torch.isfinite(out).all(), sigmas
    assert torch.equal(get_sampler(name)(model, x.clone(), torch.tensor([3.0]), extra_args={"seed": 1}), x)


@pytest.mark.parametrize("plain", ["euler", "euler_ancestral", "dpmpp_2s_ancestral", "dpmpp_2m", "res_multistep",
                                   "res_multistep_ancestral", "gradient_estimation"])
def test_cfg_pp_without_guidance_equals_plain_sampler(plain):
    """A model without CFG hooks has uncond == output, and CFG++ reduces to its base method."""
    import torch

    from diffusion.sampling.model_sampling import ModelSampling
    from sampling_fakes import denoiser_from_eps_net

    model = denoiser_from_eps_net(ModelSampling())
    x = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(0)) * 4
    sigmas = torch.tensor([4.0, 2.0, 1.0, 0.3, 0.0])
    a = get_sampler(plain + "_cfg_pp")(model, x, sigmas, extra_args={"seed": 2})
    b = get_sampler(plain)(model, x, sigmas, extra_args={"seed": 2})
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
