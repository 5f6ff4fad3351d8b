"""Our samplers against k-diffusion 0.1.1.post1 (the library ComfyUI's samplers are a modified copy of).

Every sampler present in both runs on the same deterministic toy denoiser (a fixed nonlinear float64
function of x and sigma), the same sigmas, the same initial x and THE SAME NOISE (each side gets a
fresh noise sampler built from the same seed). Final samples must agree to 1e-6 relative.

Where ComfyUI deliberately departs from upstream k-diffusion, our code follows ComfyUI and the
comparison applies the documented adjustment (the ComfyUI function is named at each one):
- `lms`: ComfyUI's `sample_lms` ends a schedule that reaches 0 with the denoised prediction itself
  (no 4th-order step to sigma = 0; ComfyUI PR #8780). Reference: k-diffusion on sigmas[:-1], then
  one model call.
- `dpm_fast` / `dpm_adaptive`: ComfyUI's `samplers.py:dpm_fast_function` / `dpm_adaptive_function`
  call k-diffusion with (sigma_min = last non-zero sigma, sigma_max = sigmas[0], n = len(sigmas) - 1).
  k-diffusion builds dpm_fast's t grid with torch's default dtype; in ComfyUI everything is float32
  so grid and sigmas share a precision, and here the reference runs under default dtype float64 for
  the same reason (with a float32 grid and float64 t_end, the last step's sqrt(sigma^2 - sigma_^2)
  goes NaN on a negative round-off).
- `euler_ancestral`: ComfyUI's `sample_euler_ancestral` returns the denoised prediction when
  sigma_down == 0 and adds no noise then (upstream still adds sigma_up noise when sigma_next > 0,
  which only happens with eta large enough that sigma_down == 0 before the end).
- Ancestral step noise: ComfyUI seeds `default_noise_sampler` with seed + 1 on CPU (upstream uses
  the global RNG); we hand k-diffusion our seeded sampler, and check separately that it is exactly
  torch.Generator().manual_seed(seed + 1).
- Brownian tree (`BrownianTreeNoiseSampler`, cpu=True in ComfyUI): checked separately to give the
  same noise as k-diffusion's for the same seed and float32 tensors.
- `dpmpp_2m_sde` / `dpmpp_3m_sde` with a FIRST step to sigma 0 (one step): k-diffusion 0.1.1 reads `h`
  after a step that never set it (UnboundLocalError); ComfyUI sets `h_last` inside the branch and
  returns the denoised prediction, which is the reference then.
- `dpm_fast` with eta > 0 on a single noise level (one step to 0): k-diffusion (and so ComfyUI)
  raises ValueError, and so do we.
- churn (`s_churn` of euler/heun/dpm_2): ComfyUI draws churn noise only on steps where gamma > 0,
  upstream draws every step; compared with all steps inside [s_tmin, s_tmax] so both draw alike.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from diffusion.sampling import noise as noise_mod
from diffusion.sampling import registry as samplers
from diffusion.sampling.model_sampling import ModelSampling
from diffusion.sampling.schedulers import calculate_sigmas, get_sigmas_karras

from kdiffusion_ref import require

K = require()

SEED = 1234
RTOL = 1e-6


def toy_denoiser(x, sigma, **_):
    """A fixed smooth nonlinear x0 predictor: shrinks towards a sigma-dependent, x-dependent target."""
    s = sigma.to(x).view(-1, *([1] * (x.ndim - 1)))
    c = 1 / (1 + s ** 2)
    return c * x + (1 - c) * (0.5 * torch.tanh(0.7 * x / (1 + s) ** 0.5) + 0.1 * torch.sin(s)) \
        + 0.05 * torch.cos(x) * s / (1 + s)


def _schedules():
    ms = ModelSampling()
    karras = get_sigmas_karras(8, float(ms.sigma_min), float(ms.sigma_max)).double()
    normal = calculate_sigmas(ms, "normal", 7).double()
    return {
        "karras_to_0": karras,
        "normal_to_0": normal,
        "karras_ends_early": karras[:-1],  # ends at sigma_min > 0 (KSamplerAdvanced leftover noise)
        "normal_ends_early": normal[:5],
        # one and two steps: how turbo / LCM-style workflows sample
        "one_step_to_0": calculate_sigmas(ms, "normal", 1).double(),
        "one_step_ends_early": normal[:2],
        "two_steps_to_0": get_sigmas_karras(2, float(ms.sigma_min), float(ms.sigma_max)).double(),
        "two_steps_ends_early": normal[3:6],
    }


SCHEDULES = _schedules()


def _x0(sigmas):
    g = torch.Generator().manual_seed(7)
    return torch.randn((2, 3, 4, 4), generator=g, dtype=torch.float64) * sigmas[0]


def _ancestral_noise(x):
    return noise_mod.default_noise_sampler(x, seed=SEED)


def _brownian_noise(x, sigmas):
    return noise_mod.brownian_noise_sampler(x, sigmas, SEED, cpu=True)


@contextlib.contextmanager
def default_dtype(dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def assert_agree(ours, ref):
    scale = ref.abs().max().item()
    torch.testing.assert_close(ours, ref, rtol=RTOL, atol=RTOL * scale)


def _run_pair(name, sigmas, noise_kind=None, denoise_last_like_comfy=False, **options):
    """(ours, k-diffusion's) final samples, each with its own fresh but identical noise source."""
    x = _x0(sigmas)

    def noise_for():
        if noise_kind == "ancestral":
            return {"noise_sampler": _ancestral_noise(x)}
        if noise_kind == "brownian":
            return {"noise_sampler": _brownian_noise(x, sigmas)}
        return {}

    ours = samplers.get_sampler(name)(toy_denoiser, x.clone(), sigmas, disable=True, **noise_for(), **options)
    ref_fn = getattr(K, f"sample_{name}")
    if name in ("dpmpp_2m_sde", "dpmpp_3m_sde") and sigmas[1] == 0:  # see the module docstring
        ref = toy_denoiser(x.clone(), sigmas[0] * x.new_ones([x.shape[0]]))
    elif denoise_last_like_comfy and sigmas[-1] == 0:
        ref = ref_fn(toy_denoiser, x.clone(), sigmas[:-1], disable=True, **noise_for(), **options)
        ref = toy_denoiser(ref, sigmas[-2] * ref.new_ones([ref.shape[0]]))
    else:
        ref = ref_fn(toy_denoiser, x.clone(), sigmas, disable=True, **noise_for(), **options)
    return ours, ref


# case -> (sampler name, noise kind, extra options) for samplers whose k-diffusion signature is ours
SAME_SIGNATURE = {
    "euler": ("euler", None, {}),
    "heun": ("heun", None, {}),
    "dpm_2": ("dpm_2", None, {}),
    "dpmpp_2m": ("dpmpp_2m", None, {}),
    "euler_ancestral": ("euler_ancestral", "ancestral", {}),
    "dpm_2_ancestral": ("dpm_2_ancestral", "ancestral", {}),
    "dpmpp_2s_ancestral": ("dpmpp_2s_ancestral", "ancestral", {}),
    "dpmpp_2s_ancestral_eta0.5": ("dpmpp_2s_ancestral", "ancestral", {"eta": 0.5, "s_noise": 0.8}),
    "dpmpp_sde": ("dpmpp_sde", "brownian", {}),
    "dpmpp_sde_r0.3_eta0.5": ("dpmpp_sde", "brownian", {"r": 0.3, "eta": 0.5}),
    "dpmpp_2m_sde": ("dpmpp_2m_sde", "brownian", {}),
    "dpmpp_2m_sde_heun": ("dpmpp_2m_sde", "brownian", {"solver_type": "heun"}),
    "dpmpp_2m_sde_eta0": ("dpmpp_2m_sde", "brownian", {"eta": 0.0}),
    "dpmpp_3m_sde": ("dpmpp_3m_sde", "brownian", {}),
    "dpmpp_3m_sde_eta0.5": ("dpmpp_3m_sde", "brownian", {"eta": 0.5, "s_noise": 1.3}),
}


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("case", sorted(SAME_SIGNATURE))
def test_same_signature_samplers_match_kdiffusion(case, schedule):
    name, noise_kind, options = SAME_SIGNATURE[case]
    ours, ref = _run_pair(name, SCHEDULES[schedule], noise_kind, **options)
    assert_agree(ours, ref)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_dpmpp_2m_sde_heun_registry_name_uses_heun_solver(schedule):
    """ComfyUI's `sample_dpmpp_2m_sde_heun` is 2M SDE with solver_type='heun'."""
    sigmas = SCHEDULES[schedule]
    x = _x0(sigmas)
    ours = samplers.get_sampler("dpmpp_2m_sde_heun")(toy_denoiser, x.clone(), sigmas,
                                                      noise_sampler=_brownian_noise(x, sigmas))
    ref = _run_pair("dpmpp_2m_sde", sigmas, "brownian", solver_type="heun")[1]
    assert_agree(ours, ref)


@pytest.mark.parametrize("name", ["euler", "heun", "dpm_2"])
def test_churn_matches_kdiffusion_when_every_step_churns(name):
    sigmas = SCHEDULES["karras_to_0"]
    x = _x0(sigmas)
    opts = {"s_churn": 1.5, "s_tmin": 0.0, "s_tmax": float("inf"), "s_noise": 1.003}
    torch.manual_seed(99)
    ours = samplers.get_sampler(name)(toy_denoiser, x.clone(), sigmas, **opts)
    torch.manual_seed(99)
    ref = getattr(K, f"sample_{name}")(toy_denoiser, x.clone(), sigmas, disable=True, **opts)
    assert_agree(ours, ref)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_lms_matches_kdiffusion_with_comfy_final_denoise(schedule):
    ours, ref = _run_pair("lms", SCHEDULES[schedule], denoise_last_like_comfy=True)
    assert_agree(ours, ref)


def test_lms_final_step_to_zero_is_the_denoised_prediction():
    """ComfyUI `sample_lms`: a step to sigma = 0 returns the model's x0 prediction."""
    sigmas = SCHEDULES["karras_to_0"]
    x = _x0(sigmas)
    seen = []

    def recording(x_in, sigma, **kw):
        out = toy_denoiser(x_in, sigma, **kw)
        seen.append(out)
        return out

    out = samplers.get_sampler("lms")(recording, x, sigmas)
    torch.testing.assert_close(out, seen[-1], rtol=0, atol=0)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_dpm_fast_matches_kdiffusion_called_like_comfy(schedule, eta):
    sigmas = SCHEDULES[schedule]
    x = _x0(sigmas)
    sigma_min = sigmas[-1] if sigmas[-1] > 0 else sigmas[-2]
    opts = {"eta": eta} if eta else {}
    if eta and sigma_min == sigmas[0]:  # a single noise level: both refuse (module docstring)
        with pytest.raises(ValueError, match="eta must be 0"):
            samplers.get_sampler("dpm_fast")(toy_denoiser, x.clone(), sigmas, noise_sampler=_ancestral_noise(x),
                                             **opts)
        with default_dtype(torch.float64), pytest.raises(ValueError, match="eta must be 0"):
            K.sample_dpm_fast(toy_denoiser, x.clone(), float(sigma_min), float(sigmas[0]), 1, disable=True,
                              noise_sampler=_ancestral_noise(x), **opts)
        return
    ours = samplers.get_sampler("dpm_fast")(toy_denoiser, x.clone(), sigmas, noise_sampler=_ancestral_noise(x),
                                            **opts)
    with default_dtype(torch.float64):
        ref = K.sample_dpm_fast(toy_denoiser, x.clone(), float(sigma_min), float(sigmas[0]), len(sigmas) - 1,
                                disable=True, noise_sampler=_ancestral_noise(x), **opts)
    assert_agree(ours, ref)


@pytest.mark.parametrize("schedule", ["karras_to_0", "normal_ends_early", "one_step_to_0", "two_steps_to_0",
                                      "two_steps_ends_early"])
@pytest.mark.parametrize("order", [2, 3])
def test_dpm_adaptive_matches_kdiffusion_called_like_comfy(schedule, order):
    sigmas = SCHEDULES[schedule]
    x = _x0(sigmas)
    sigma_min = sigmas[-1] if sigmas[-1] > 0 else sigmas[-2]
    ours = samplers.get_sampler("dpm_adaptive")(toy_denoiser, x.clone(), sigmas, order=order)
    with default_dtype(torch.float64):
        ref = K.sample_dpm_adaptive(toy_denoiser, x.clone(), float(sigma_min), float(sigmas[0]), disable=True,
                                    order=order)
    assert_agree(ours, ref)


def test_euler_ancestral_returns_denoised_when_sigma_down_is_zero():
    """ComfyUI `sample_euler_ancestral`: with eta so large that sigma_down == 0, a step is the x0
    prediction itself and draws no noise (upstream k-diffusion would still add sigma_up noise)."""
    sigmas = SCHEDULES["karras_to_0"]
    x = _x0(sigmas)
    expected = x.clone()
    s_in = x.new_ones([x.shape[0]])
    for sigma in sigmas[:-1]:
        expected = toy_denoiser(expected, sigma * s_in)

    def no_noise(*_):
        raise AssertionError("no noise should be drawn when sigma_down == 0")

    out = samplers.get_sampler("euler_ancestral")(toy_denoiser, x.clone(), sigmas, eta=4.0, noise_sampler=no_noise)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_dpm_2_ancestral_large_eta_matches_kdiffusion():
    """With sigma_down == 0 mid-schedule, DPM2 ancestral takes an Euler step and adds no noise
    (k-diffusion and ComfyUI `sample_dpm_2_ancestral` agree here)."""
    ours, ref = _run_pair("dpm_2_ancestral", SCHEDULES["karras_to_0"], "ancestral", eta=4.0)
    assert_agree(ours, ref)


def test_ancestral_noise_is_seed_plus_one_generator_on_cpu():
    """ComfyUI `default_noise_sampler`: a CPU generator seeded with seed + 1, one randn per call."""
    x = torch.zeros((2, 3, 4, 4), dtype=torch.float64)
    ns = noise_mod.default_noise_sampler(x, seed=SEED)
    g = torch.Generator().manual_seed(SEED + 1)
    for _ in range(3):
        torch.testing.assert_close(ns(1.0, 0.5), torch.randn(x.shape, generator=g, dtype=x.dtype), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_2s_ancestral"])
def test_seed_in_extra_args_equals_explicit_seeded_noise(name):
    """What KSampler passes (extra_args['seed']) gives the same run as handing k-diffusion the
    seed + 1 noise sampler."""
    sigmas = SCHEDULES["karras_to_0"]
    x = _x0(sigmas)
    ours = samplers.get_sampler(name)(toy_denoiser, x.clone(), sigmas, extra_args={"seed": SEED})
    ref = getattr(K, f"sample_{name}")(toy_denoiser, x.clone(), sigmas, disable=True,
                                        extra_args={"seed": SEED}, noise_sampler=_ancestral_noise(x))
    assert_agree(ours, ref)


# torchsde warns when a float32 query lands a hair past the tree's end (both trees clamp the same way)
@pytest.mark.filterwarnings("ignore:Should have")
def test_brownian_tree_noise_matches_kdiffusion_for_the_same_seed():
    sigmas = SCHEDULES["karras_to_0"].float()
    x = torch.zeros((2, 3, 4, 4), dtype=torch.float32)
    positive = sigmas[sigmas > 0]
    ours = noise_mod.BrownianTreeNoiseSampler(x, positive.min(), positive.max(), seed=SEED, cpu=True)
    ref = K.BrownianTreeNoiseSampler(x, positive.min(), positive.max(), seed=SEED)
    for a, b in zip(positive[:-1], positive[1:]):
        mid = (a * b) ** 0.5
        for s0, s1 in ((a, b), (a, mid), (mid, b)):
            torch.testing.assert_close(ours(s0, s1), ref(s0, s1), rtol=1e-5, atol=1e-5)


def test_every_kdiffusion_sampler_is_covered():
    """A k-diffusion release with a new sampler should get a comparison here."""
    covered = {"euler", "heun", "dpm_2", "dpmpp_2m", "euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral",
               "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde", "lms", "dpm_fast", "dpm_adaptive"}
    theirs = {n[len("sample_"):] for n in dir(K) if n.startswith("sample_")}
    assert theirs <= covered, theirs - covered
    assert covered <= set(samplers.SAMPLER_NAMES)
