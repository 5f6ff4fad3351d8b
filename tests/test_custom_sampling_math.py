"""Custom-sampling schedules, sigma edits and guiders without a UNet: against k-diffusion's
get_sigmas_*, ComfyUI's formulas written out here, and hand-written guidance mixes."""
from __future__ import annotations

import math

import pytest
import torch

from diffusion.sampling.model_sampling import ModelSampling
from kdiffusion_ref import require
from sampling_fakes import GaussianModel, cond

MS = ModelSampling()


class _Model:
    """What the scheduler nodes read of a MODEL."""
    model_sampling = MS


@pytest.mark.parametrize("steps", [1, 2, 7, 20])
def test_karras_exponential_polyexponential_vp_match_k_diffusion(steps):
    from nodes import custom_sampling as cs

    k = require()
    lo, hi = 0.0291675, 14.614642
    pairs = [
        (cs.KarrasScheduler().execute(steps, hi, lo, 7.0), k.get_sigmas_karras(steps, lo, hi, 7.0)),
        (cs.KarrasScheduler().execute(steps, 80.0, 0.002, 3.5), k.get_sigmas_karras(steps, 0.002, 80.0, 3.5)),
        (cs.ExponentialScheduler().execute(steps, hi, lo), k.get_sigmas_exponential(steps, lo, hi)),
        (cs.PolyexponentialScheduler().execute(steps, hi, lo, 1.0), k.get_sigmas_polyexponential(steps, lo, hi, 1.0)),
        (cs.PolyexponentialScheduler().execute(steps, hi, lo, 2.5), k.get_sigmas_polyexponential(steps, lo, hi, 2.5)),
    ]
    for (ours,), theirs in pairs:
        assert ours.dtype == torch.float32 and ours.ndim == 1 and ours[-1] == 0
        torch.testing.assert_close(ours, theirs.float(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("steps", [1, 2, 20])
def test_vp_schedule_formula(steps):
    """Song et al.'s VP sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1), t from 1 to eps_s; computed
    with expm1 as ComfyUI does (k-diffusion 0.1.1's exp - 1 loses ~1e-4 relative at the small end)."""
    from nodes.custom_sampling import VPScheduler

    (ours,) = VPScheduler().execute(steps, 19.9, 0.1, 0.001)
    ts = [1.0] if steps == 1 else [1 + (0.001 - 1) * i / (steps - 1) for i in range(steps)]
    expected = [math.sqrt(math.expm1(19.9 * t * t / 2 + 0.1 * t)) for t in ts] + [0.0]
    torch.testing.assert_close(ours, torch.tensor(expected), rtol=1e-5, atol=0)
    torch.testing.assert_close(ours, require().get_sigmas_vp(steps, 19.9, 0.1, 0.001).float(), rtol=1e-3, atol=0)


def test_laplace_schedule_formula():
    """Tiankai et al.: log sigma at the Laplace(mu, beta) quantiles, clamped, no final 0 (ComfyUI)."""
    from nodes.custom_sampling import LaplaceScheduler

    (ours,) = LaplaceScheduler().execute(5, 14.614642, 0.0291675, 0.2, 0.7)
    expected = []
    for i in range(5):
        x = i / 4
        lam = 0.2 - 0.7 * math.copysign(1, 0.5 - x) * math.log(1 - 2 * abs(0.5 - x) + 1e-5) if x != 0.5 else 0.2
        expected.append(min(max(math.exp(lam), 0.0291675), 14.614642))
    torch.testing.assert_close(ours, torch.tensor(expected), rtol=1e-5, atol=0)
    assert len(ours) == 5 and ours[0] == pytest.approx(14.614642) and ours[-1] == pytest.approx(0.0291675)


@pytest.mark.parametrize("steps,denoise,timesteps", [
    (1, 1.0, [999]), (4, 1.0, [999, 899, 799, 699]), (10, 1.0, list(range(999, 0, -100))),
    (2, 0.5, [499, 399]), (3, 0.3, [299, 199, 99]), (3, 0.25, [199, 99]), (5, 0.15, [99])])
def test_sd_turbo_scheduler_uses_every_hundredth_timestep(steps, denoise, timesteps):
    from nodes.custom_sampling import SDTurboScheduler

    (ours,) = SDTurboScheduler().execute(_Model(), steps, denoise)
    # ComfyUI reads sigma(t) as exp(log_sigmas[t]): the table entry up to that round trip
    table = MS.sigmas[timesteps]
    assert torch.equal(ours, torch.cat([table.log().exp(), torch.zeros(1)]))
    torch.testing.assert_close(ours[:-1], table, rtol=1e-6, atol=0)


@pytest.mark.parametrize("scheduler", ["normal", "karras", "simple", "beta"])
@pytest.mark.parametrize("denoise", [1.0, 0.6, 0.0])
def test_basic_scheduler_is_ksamplers_schedule(scheduler, denoise):
    from diffusion.sampling.ksampler import sampling_sigmas
    from nodes.custom_sampling import BasicScheduler

    (ours,) = BasicScheduler().execute(_Model(), scheduler, 6, denoise)
    assert torch.equal(ours, sampling_sigmas(MS, scheduler, 6, "euler", denoise))


def test_beta_sampling_scheduler_alpha_beta():
    from diffusion.sampling.schedulers import calculate_sigmas
    from nodes.custom_sampling import BetaSamplingScheduler

    (default,) = BetaSamplingScheduler().execute(_Model(), 10, 0.6, 0.6)
    assert torch.equal(default, calculate_sigmas(MS, "beta", 10))
    (skewed,) = BetaSamplingScheduler().execute(_Model(), 10, 2.0, 0.5)
    assert not torch.equal(skewed, default) and skewed[-1] == 0 and (skewed[:-1].diff() < 0).all()


def test_sigma_edits():
    from nodes import custom_sampling as cs

    s = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.0])
    high, low = cs.SplitSigmas().execute(s, 1)
    assert high.tolist() == [10.0, 5.0] and low.tolist() == [5.0, 2.0, 1.0, 0.0]
    high, low = cs.SplitSigmas().execute(s, 99)
    assert torch.equal(high, s) and low.tolist() == []
    high, low = cs.SplitSigmasDenoise().execute(s, 0.5)  # 4 steps * 0.5 = 2 low steps
    assert high.tolist() == [10.0, 5.0, 2.0] and low.tolist() == [2.0, 1.0, 0.0]
    (flipped,) = cs.FlipSigmas().execute(s)
    assert flipped.tolist() == pytest.approx([0.0001, 1.0, 2.0, 5.0, 10.0]) and s[0] == 10.0
    (first,) = cs.SetFirstSigma().execute(s, 136.0)
    assert first.tolist() == [136.0, 5.0, 2.0, 1.0, 0.0] and s[0] == 10.0
    with pytest.raises(ValueError, match="SetFirstSigma: input 'sigmas' is empty"):
        cs.SetFirstSigma().execute(torch.zeros(0), 1.0)
    (manual,) = cs.ManualSigmas().execute("14.6, 7.3,3 .5 1e-2, 0")
    assert manual.tolist() == pytest.approx([14.6, 7.3, 3.0, 0.5, 0.01, 0.0])
    (pct,) = cs.SamplingPercentToSigma().execute(_Model(), 0.5, False)
    assert pct == pytest.approx(MS.percent_to_sigma(0.5))
    assert cs.SamplingPercentToSigma().execute(_Model(), 0.0, True)[0] == pytest.approx(float(MS.sigma_max))
    assert cs.SamplingPercentToSigma().execute(_Model(), 1.0, True)[0] == pytest.approx(float(MS.sigma_min))


def test_sampler_nodes_carry_their_options():
    from nodes import custom_sampling as cs

    (s,) = cs.SamplerDPMPP_2M_SDE().execute("heun", 0.5, 0.8, "cpu")
    assert (s.name, s.options) == ("dpmpp_2m_sde", {"eta": 0.5, "s_noise": 0.8, "solver_type": "heun"})
    assert cs.SamplerDPMPP_SDE().execute(1.0, 1.0, 0.3, "gpu")[0].name == "dpmpp_sde_gpu"
    assert cs.SamplerLMS().execute(3)[0].options == {"order": 3}
    assert cs.KSamplerSelect().execute("ddim")[0].random_inpaint_noise is True
    assert cs.KSamplerSelect().execute("plms")[0].random_inpaint_noise is False


def test_sampler_options_reach_the_sampler_function():
    """SamplerEulerAncestral(eta=0) is deterministic Euler."""
    from nodes import custom_sampling as cs
    from sampling_fakes import denoiser_from_eps_net

    model = denoiser_from_eps_net(MS)
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * 10
    sigmas = torch.tensor([10.0, 4.0, 1.0, 0.0])
    (eta0,) = cs.SamplerEulerAncestral().execute(0.0, 1.0)
    euler = cs.KSamplerSelect().execute("euler")[0]
    a = eta0.sample(model, x.clone(), sigmas, extra_args={"seed": 1})
    b = euler.sample(model, x.clone(), sigmas, extra_args={"seed": 1})
    torch.testing.assert_close(a, b)
    (eta1,) = cs.SamplerEulerAncestral().execute(1.0, 1.0)
    assert not torch.allclose(eta1.sample(model, x.clone(), sigmas, extra_args={"seed": 1}), b)


# --- guiders -----------------------------------------------------------------------------------------

def _x0(model, value, x, sigma):
    """The GaussianModel's x0 for a conditioning whose context averages to `value`."""
    s2 = model.s ** 2
    return value + s2 / (s2 + sigma ** 2) * (x - value)


@pytest.mark.parametrize("style", ["regular", "nested"])
@pytest.mark.parametrize("cfg_conds,cfg_cond2_negative", [(3.0, 5.0), (1.0, 4.0), (2.5, 1.0), (1.0, 1.0)])
def test_dual_cfg_guider_against_hand_written_mix(style, cfg_conds, cfg_cond2_negative):
    from nodes.custom_sampling import DualCFGGuider

    model = GaussianModel(s=0.5)
    (guider,) = DualCFGGuider().execute(model, cond(0.9), cond(0.4), cond(-0.3), cfg_conds, cfg_cond2_negative, style)
    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0)) * 2
    sigma = 1.7
    out = guider.denoiser()(x, torch.full((2,), sigma))
    pos, mid, neg = (_x0(model, v, x, sigma) for v in (0.9, 0.4, -0.3))
    if style == "regular":
        expected = neg + (mid - neg) * cfg_cond2_negative + (pos - mid) * cfg_conds
    else:
        expected = neg + cfg_cond2_negative * (mid + (pos - mid) * cfg_conds - neg)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_dual_cfg_marks_cond2_as_negative_and_applies_cfg_hooks_once():
    """cond2 is a negative prompt for the model's extra inputs (ComfyUI); a post-CFG hook of the MODEL
    runs on the guided mix only, not on the plain cond1 prediction."""
    from diffusion.sampling.guiders import DualCFGGuider

    model = GaussianModel(s=0.5)
    hooks = []
    model.model_options["sampler_post_cfg_function"] = [lambda args: hooks.append(args) or args["denoised"]]
    seen = []
    model.encode_adm = lambda options, batch: seen.append(options["prompt_type"])
    guider = DualCFGGuider(model, cond(0.9), cond(0.4), cond(-0.3), 2.0, 3.0)
    guider.denoiser()(torch.zeros(1, 4, 2, 2), torch.tensor([1.0]))
    assert sorted(seen) == ["negative", "negative", "positive"]
    assert len(hooks) == 1


def test_add_noise_formula():
    from diffusion.sampling.noise import RandomNoise
    from nodes.custom_sampling import AddNoise

    model = GaussianModel(scale_factor=0.5)
    latent = {"samples": torch.ones(1, 4, 2, 2), "batch_index": [0]}
    sigmas = torch.tensor([6.0, 2.5, 1.0])
    (out,) = AddNoise().execute(model, RandomNoise(5), sigmas, latent)
    noise = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(out["samples"], (1.0 * 0.5 + noise * 5.0) / 0.5)
    assert out["batch_index"] == [0]
    assert AddNoise().execute(model, RandomNoise(5), torch.zeros(0), latent)[0] is latent
