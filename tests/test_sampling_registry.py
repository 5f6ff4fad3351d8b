"""Sampler registry: every ComfyUI name, in the combo order of COMPAT §10."""

import inspect

import pytest

from diffusion.samplers import SAMPLER_NAMES, get_sampler

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


def test_all_44_names_in_compat_order():
    assert len(COMPAT_ORDER) == 44
    assert SAMPLER_NAMES == COMPAT_ORDER


@pytest.mark.parametrize("name", COMPAT_ORDER)
def test_common_signature(name):
    params = list(inspect.signature(get_sampler(name)).parameters)
    assert params[:6] == ["model", "x", "sigmas", "extra_args", "callback", "disable"]


def test_unknown_sampler_named():
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        get_sampler("nope")
