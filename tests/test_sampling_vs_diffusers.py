"""Our samplers against diffusers' schedulers: same deterministic 'network', same sigmas, same noise.

Each diffusers scheduler is set up with `set_timesteps`, and its own sigma schedule is handed to our
sampler, so both integrate over identical noise levels. The network (`eps_net`) is a fixed smooth
function of the c_in-scaled latent and sigma. Where diffusers takes a generator, ours draws from an
identically seeded one (our ancestral noise uses seed + 1 on CPU). Final latents must agree within
1e-3 relative.
"""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffusion.sampling.model_sampling import ModelSampling  # noqa: E402
from diffusion.sampling.registry import get_sampler  # noqa: E402
from sampling_fakes import denoiser_from_eps_net, eps_net  # noqa: E402

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
SEED = 1234
STEPS = 8
# One and two steps are how turbo/LCM-style workflows run; eight exercises the multistep orders.
STEP_COUNTS = (1, 2, STEPS)
MS = ModelSampling()


def _x_T(sigma0):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(1, 4, 6, 6, generator=gen) * (1 + float(sigma0) ** 2) ** 0.5


def _drive(sched, sample, sigma_at, generator=None, **step_kwargs):
    """Run a diffusers scheduler with eps_net; sigma_at(sched) says which sigma this call is at."""
    if generator is not None:
        step_kwargs["generator"] = generator
    for t in sched.timesteps:
        model_in = sched.scale_model_input(sample, t)
        if sched.step_index is None:
            sched._init_step_index(t)
        eps = eps_net(model_in, sigma_at(sched))
        sample = sched.step(eps, t, sample, **step_kwargs).prev_sample
    return sample


def _ours(name, x, sigmas, **options):
    model = denoiser_from_eps_net(MS)
    return get_sampler(name)(model, x.clone(), sigmas.float(), extra_args={"seed": SEED}, **options)


def _assert_close(ours, theirs):
    scale = float(theirs.abs().max())
    assert torch.isfinite(ours).all()
    assert torch.allclose(ours, theirs, rtol=1e-3, atol=1e-3 * scale), float((ours - theirs).abs().max())


def _current(sched):
    return sched.sigmas[sched.step_index]


def _base(sigmas):
    """The plain schedule behind a second-order scheduler's interleaved sigma list."""
    return torch.unique_consecutive(sigmas)


@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_euler(steps):
    sched = diffusers.EulerDiscreteScheduler(**SD, use_karras_sigmas=True)
    sched.set_timesteps(steps)
    x = _x_T(sched.sigmas[0])
    _assert_close(_ours("euler", x, sched.sigmas), _drive(sched, x, _current))


@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_euler_ancestral(steps):
    sched = diffusers.EulerAncestralDiscreteScheduler(**SD)
    sched.set_timesteps(steps)
    x = _x_T(sched.sigmas[0])
    theirs = _drive(sched, x, _current, generator=torch.Generator().manual_seed(SEED + 1))
    _assert_close(_ours("euler_ancestral", x, sched.sigmas), theirs)


@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_heun(steps):
    sched = diffusers.HeunDiscreteScheduler(**SD, use_karras_sigmas=True)
    sched.set_timesteps(steps)
    x = _x_T(sched.sigmas[0])
    _assert_close(_ours("heun", x, _base(sched.sigmas)), _drive(sched, x, _current))


@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_dpm_2(steps):
    sched = diffusers.KDPM2DiscreteScheduler(**SD, use_karras_sigmas=True)
    sched.set_timesteps(steps)
    x = _x_T(sched.sigmas[0])

    def sigma_at(s):
        return s.sigmas[s.step_index] if s.state_in_first_order else s.sigmas_interpol[s.step_index]

    _assert_close(_ours("dpm_2", x, _base(sched.sigmas)), _drive(sched, x, sigma_at))


@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_dpm_2_ancestral(steps):
    sched = diffusers.KDPM2AncestralDiscreteScheduler(**SD)
    sched.set_timesteps(steps)
    x = _x_T(sched.sigmas[0])

    def sigma_at(s):
        return s.sigmas[s.step_index] if s.state_in_first_order else s.sigmas_interpol[s.step_index - 1]

    theirs = _drive(sched, x, sigma_at, generator=torch.Generator().manual_seed(SEED + 1))
    _assert_close(_ours("dpm_2_ancestral", x, _base(sched.sigmas)), theirs)


@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_lms(steps):
    sched = diffusers.LMSDiscreteScheduler(**SD, use_karras_sigmas=True)
    sched.set_timesteps(steps)
    x = _x_T(sched.sigmas[0])
    _assert_close(_ours("lms", x, sched.sigmas), _drive(sched, x, _current, order=4))


def _vp(x, sigma):
    return x / (1 + float(sigma) ** 2) ** 0.5


def _dpm_current(s):
    return s.sigmas[s.step_index if s.step_index is not None else 0]


@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_dpmpp_2m(steps):
    sched = diffusers.DPMSolverMultistepScheduler(**SD, algorithm_type="dpmsolver++", solver_order=2,
                                                  use_karras_sigmas=True, final_sigmas_type="zero")
    sched.set_timesteps(steps)
    x = _x_T(sched.sigmas[0])
    # diffusers integrates the variance-preserving latent x / sqrt(1 + sigma^2); at sigma = 0 both agree
    _assert_close(_ours("dpmpp_2m", x, sched.sigmas), _drive(sched, _vp(x, sched.sigmas[0]), _dpm_current))


def test_dpmpp_3m_sde_without_noise():
    """eta = 0 turns DPM++ 3M SDE into DPM-Solver++(3M); 16 steps keep diffusers from lowering the
    order before the final (first-order) step."""
    sched = diffusers.DPMSolverMultistepScheduler(**SD, algorithm_type="dpmsolver++", solver_order=3,
                                                  use_karras_sigmas=True, final_sigmas_type="zero")
    sched.set_timesteps(16)
    x = _x_T(sched.sigmas[0])
    theirs = _drive(sched, _vp(x, sched.sigmas[0]), _dpm_current)
    _assert_close(_ours("dpmpp_3m_sde", x, sched.sigmas, eta=0.0), theirs)


@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_dpmpp_2m_sde(steps):
    sched = diffusers.DPMSolverMultistepScheduler(**SD, algorithm_type="sde-dpmsolver++", solver_order=2,
                                                  use_karras_sigmas=True, final_sigmas_type="zero")
    sched.set_timesteps(steps)
    x = _x_T(sched.sigmas[0])
    theirs = _drive(sched, _vp(x, sched.sigmas[0]), _dpm_current, generator=torch.Generator().manual_seed(SEED))
    # diffusers draws plain Gaussian noise per step, so ours is given the same stream instead of the tree
    gen = torch.Generator().manual_seed(SEED)
    ours = _ours("dpmpp_2m_sde", x, sched.sigmas,
                 noise_sampler=lambda s, s_next: torch.randn(x.shape, generator=gen))
    _assert_close(ours, theirs)


@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_dpmpp_2m_sde_heun(steps):
    sched = diffusers.DPMSolverMultistepScheduler(**SD, algorithm_type="sde-dpmsolver++", solver_order=2,
                                                  solver_type="heun", use_karras_sigmas=True,
                                                  final_sigmas_type="zero")
    sched.set_timesteps(steps)
    x = _x_T(sched.sigmas[0])
    theirs = _drive(sched, _vp(x, sched.sigmas[0]), _dpm_current, generator=torch.Generator().manual_seed(SEED))
    gen = torch.Generator().manual_seed(SEED)
    ours = _ours("dpmpp_2m_sde_heun", x, sched.sigmas,
                 noise_sampler=lambda s, s_next: torch.randn(x.shape, generator=gen))
    _assert_close(ours, theirs)


@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_dpmpp_sde_with_brownian_tree(steps):
    """DPM++ SDE: diffusers also draws from a torchsde Brownian tree seeded with the seed over
    [smallest non-zero sigma, largest sigma], so even the noise is the same without any help."""
    sched = diffusers.DPMSolverSDEScheduler(**SD, use_karras_sigmas=True, noise_sampler_seed=SEED)
    sched.set_timesteps(steps)
    x = _x_T(sched.sigmas[0])

    def sigma_at(s):
        return s.sigmas[s.step_index] if s.state_in_first_order else s.mid_point_sigma

    theirs = _drive(sched, x, sigma_at)
    _assert_close(_ours("dpmpp_sde", x, _base(sched.sigmas)), theirs)


@pytest.mark.parametrize("name,variant", [("uni_pc", "bh1"), ("uni_pc_bh2", "bh2")])
@pytest.mark.parametrize("steps", [n for n in STEP_COUNTS if n > 1])  # one step: see below
def test_uni_pc(name, variant, steps):
    """Like ComfyUI, our UniPC stops at sigma = 0.001 instead of 0; diffusers is given the same last
    sigma and its VP latent is converted back to sigma space."""
    sched = diffusers.UniPCMultistepScheduler(**SD, solver_order=3, solver_type=variant, predict_x0=True,
                                              lower_order_final=True, use_karras_sigmas=True,
                                              final_sigmas_type="zero")
    sched.set_timesteps(steps)
    sigmas = sched.sigmas.clone()
    sched.sigmas[-1] = 0.001
    x = _x_T(sigmas[0])
    theirs = _drive(sched, _vp(x, sigmas[0]), _dpm_current) * (1 + 0.001 ** 2) ** 0.5
    _assert_close(_ours(name, x, sigmas), theirs)


@pytest.mark.parametrize("name", ["uni_pc", "uni_pc_bh2"])
@pytest.mark.parametrize("last_sigma", [0.0, 0.4])
def test_uni_pc_one_step_is_comfyui_order_zero_loop(name, last_sigma):
    """ComfyUI's `sample_unipc` solves with order min(3, len(sigmas) - 2): 0 for one step, so its loop
    evaluates the model once and updates nothing. The sample goes into VP scale at sigma[0]
    (x / sqrt(1 + sigma0^2)) and out at the last sigma (0.001 in place of 0), i.e.
    x * sqrt(1 + s_end^2) / sqrt(1 + sigma0^2). diffusers' UniPC takes a real step here, so the
    reference is that published loop, in float64."""
    sigmas = torch.tensor([9.5, last_sigma])
    x = _x_T(sigmas[0])
    calls, reported = [], []
    model = denoiser_from_eps_net(MS)

    def counting(x_in, sigma, **kw):
        calls.append(float(sigma[0]))
        return model(x_in, sigma, **kw)

    out = get_sampler(name)(counting, x.clone(), sigmas.clone(), extra_args={"seed": SEED},
                            callback=lambda info: reported.append(info["i"]))
    s_end = last_sigma or 0.001
    expected = x.double() * ((1 + s_end ** 2) / (1 + 9.5 ** 2)) ** 0.5
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=0)
    assert calls == [9.5] and reported == [0]


def _timestep_sigmas(sched):
    ac = sched.alphas_cumprod.double()
    table = ((1 - ac) / ac).sqrt()
    return torch.cat([table[sched.timesteps.long()], torch.zeros(1, dtype=torch.float64)])


@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_ddim(steps):
    """DDIM (eta 0) is Euler in sigma space: x0 + sigma_prev * eps in both frames."""
    sched = diffusers.DDIMScheduler(**SD, set_alpha_to_one=True, steps_offset=1, timestep_spacing="leading",
                                    clip_sample=False)
    sched.set_timesteps(steps)
    sigmas = _timestep_sigmas(sched)
    x = _x_T(sigmas[0])
    index = {int(t): i for i, t in enumerate(sched.timesteps)}
    theirs = x / (1 + float(sigmas[0]) ** 2) ** 0.5
    for t in sched.timesteps:
        eps = eps_net(theirs, sigmas[index[int(t)]].float())
        theirs = sched.step(eps, t, theirs, eta=0.0).prev_sample
    _assert_close(_ours("ddim", x, sigmas), theirs)


@pytest.mark.parametrize("steps", (1, 2, 4))
def test_lcm(steps):
    """LCM: diffusers' boundary scalings c_skip/c_out are made exactly 0/1 (huge timestep_scaling) so both
    apply the plain consistency step: x0 estimate, then re-noise with fresh noise."""
    sched = diffusers.LCMScheduler(**SD, timestep_scaling=1e8, set_alpha_to_one=True)
    sched.set_timesteps(steps)
    sigmas = _timestep_sigmas(sched)
    x = _x_T(sigmas[0])
    gen = torch.Generator().manual_seed(SEED + 1)
    theirs = x / (1 + float(sigmas[0]) ** 2) ** 0.5
    for i, t in enumerate(sched.timesteps):
        eps = eps_net(theirs, sigmas[i].float())
        theirs = sched.step(eps, t, theirs, generator=gen).prev_sample
    _assert_close(_ours("lcm", x, sigmas), theirs)
