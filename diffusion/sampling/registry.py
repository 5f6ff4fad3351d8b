"""Every sampler by its ComfyUI name: one explicit table over the families in samplers/.

Each `sample_<name>(model, x, sigmas, extra_args=None, callback=None, disable=None, **options)`
integrates from sigmas[0] to sigmas[-1] and returns the final x (k-diffusion's signature).
"""

from __future__ import annotations

from diffusion.sampling.samplers import dpm_solver, exponential, multistep, sa_solver, single_step, uni_pc

# Every name ComfyUI offers, in its combo order (COMPAT §10). SAMPLER_NAMES keeps the implemented ones.
COMPAT_SAMPLER_NAMES = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
    "exp_heun_2_x0", "exp_heun_2_x0_sde", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive",
    "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m",
    "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis", "res_multistep",
    "res_multistep_cfg_pp", "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp",
    "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2", "seeds_3", "sa_solver",
    "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
]

# Samplers whose schedule is computed for steps+1 and loses its penultimate sigma (COMPAT §10).
DISCARD_PENULTIMATE_SIGMA = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"})

SAMPLERS = {
    "euler": single_step.sample_euler,
    "euler_cfg_pp": single_step.sample_euler_cfg_pp,
    "euler_ancestral": single_step.sample_euler_ancestral,
    "euler_ancestral_cfg_pp": single_step.sample_euler_ancestral_cfg_pp,
    "heun": single_step.sample_heun,
    "heunpp2": single_step.sample_heunpp2,
    "exp_heun_2_x0": exponential.sample_exp_heun_2_x0,
    "exp_heun_2_x0_sde": exponential.sample_exp_heun_2_x0_sde,
    "dpm_2": single_step.sample_dpm_2,
    "dpm_2_ancestral": single_step.sample_dpm_2_ancestral,
    "lms": multistep.sample_lms,
    "dpm_fast": dpm_solver.sample_dpm_fast,
    "dpm_adaptive": dpm_solver.sample_dpm_adaptive,
    "dpmpp_2s_ancestral": single_step.sample_dpmpp_2s_ancestral,
    "dpmpp_2s_ancestral_cfg_pp": single_step.sample_dpmpp_2s_ancestral_cfg_pp,
    "dpmpp_sde": single_step.sample_dpmpp_sde,
    "dpmpp_sde_gpu": single_step.sample_dpmpp_sde_gpu,
    "dpmpp_2m": multistep.sample_dpmpp_2m,
    "dpmpp_2m_cfg_pp": multistep.sample_dpmpp_2m_cfg_pp,
    "dpmpp_2m_sde": multistep.sample_dpmpp_2m_sde,
    "dpmpp_2m_sde_gpu": multistep.sample_dpmpp_2m_sde_gpu,
    "dpmpp_2m_sde_heun": multistep.sample_dpmpp_2m_sde_heun,
    "dpmpp_2m_sde_heun_gpu": multistep.sample_dpmpp_2m_sde_heun_gpu,
    "dpmpp_3m_sde": multistep.sample_dpmpp_3m_sde,
    "dpmpp_3m_sde_gpu": multistep.sample_dpmpp_3m_sde_gpu,
    "ddpm": single_step.sample_ddpm,
    "lcm": single_step.sample_lcm,
    "ipndm": multistep.sample_ipndm,
    "ipndm_v": multistep.sample_ipndm_v,
    "deis": multistep.sample_deis,
    "res_multistep": exponential.sample_res_multistep,
    "res_multistep_cfg_pp": exponential.sample_res_multistep_cfg_pp,
    "res_multistep_ancestral": exponential.sample_res_multistep_ancestral,
    "res_multistep_ancestral_cfg_pp": exponential.sample_res_multistep_ancestral_cfg_pp,
    "gradient_estimation": exponential.sample_gradient_estimation,
    "gradient_estimation_cfg_pp": exponential.sample_gradient_estimation_cfg_pp,
    "er_sde": exponential.sample_er_sde,
    "seeds_2": exponential.sample_seeds_2,
    "seeds_3": exponential.sample_seeds_3,
    "sa_solver": sa_solver.sample_sa_solver,
    "sa_solver_pece": sa_solver.sample_sa_solver_pece,
    "uni_pc": uni_pc.sample_uni_pc,
    "uni_pc_bh2": uni_pc.sample_uni_pc_bh2,
    # DDIM is Euler on the same schedule; only its inpaint noise differs (see ksampler.py).
    "ddim": single_step.sample_euler,
}
SAMPLER_NAMES = [name for name in COMPAT_SAMPLER_NAMES if name in SAMPLERS]


def get_sampler(name: str):
    """The sampler function for a ComfyUI sampler name."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; expected one of {SAMPLER_NAMES}") from None
