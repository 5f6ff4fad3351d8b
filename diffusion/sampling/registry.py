"""Every sampler by its ComfyUI name: one explicit table over the families in samplers/.

Each `sample_<name>(model, x, sigmas, extra_args=None, callback=None, disable=None, **options)`
integrates from sigmas[0] to sigmas[-1] and returns the final x (k-diffusion's signature).
`Sampler` is the SAMPLER value the custom-sampling nodes pass around: a function plus its options.
"""

from __future__ import annotations

from diffusion.sampling.samplers import dpm_solver, exponential, multistep, plms, sa_solver, single_step, uni_pc

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

# Ours, offered after ComfyUI's names so its combo order stays a prefix of ours.
EXTRA_SAMPLER_NAMES = ["plms"]

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
    "plms": plms.sample_plms,
}
SAMPLER_NAMES = [name for name in COMPAT_SAMPLER_NAMES + EXTRA_SAMPLER_NAMES if name in SAMPLERS]

# Samplers that re-noise the kept (unmasked) area of an inpainting latent with their own noise.
RANDOM_INPAINT_NOISE = frozenset({"ddim"})


def get_sampler(name: str):
    """The sampler function for a ComfyUI sampler name."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; expected one of {SAMPLER_NAMES}") from None


class Sampler:
    """A SAMPLER value: a sampler function with fixed options (ComfyUI's KSAMPLER object).

    `random_inpaint_noise`: the unmasked area is re-noised with noise of its own (seed + 1) instead of
    the initial noise, as ComfyUI's DDIM does.
    """

    def __init__(self, name: str, options: dict | None = None, random_inpaint_noise: bool | None = None):
        self.name = name
        self.function = get_sampler(name)
        self.options = dict(options or {})
        self.random_inpaint_noise = name in RANDOM_INPAINT_NOISE if random_inpaint_noise is None \
            else bool(random_inpaint_noise)

    def sample(self, denoiser, x, sigmas, extra_args=None, callback=None, disable=None):
        return self.function(denoiser, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                             **self.options)

    def __repr__(self):
        return f"Sampler({self.name!r}, {self.options!r})"


def sampler_object(name: str, options: dict | None = None) -> Sampler:
    """The SAMPLER for a sampler name (KSamplerSelect), optionally with options (eta, s_noise, ...)."""
    return Sampler(name, options)
