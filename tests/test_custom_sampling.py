"""Custom sampling nodes on the tiny SD1 checkpoint: the parts (NOISE, GUIDER, SAMPLER, SIGMAS) put
together as KSampler puts them give KSampler's latent bit for bit; other combinations against what they
must equal (two split passes = one pass, no noise = sampling the latent itself)."""
from __future__ import annotations

import pytest
import torch

from tests.sdnodes_env import one_torch_thread, registry, sd_home, tiny_checkpoint_files  # noqa: F401

STEPS, CFG, SEED = 4, 5.0, 7


@pytest.fixture(scope="module")
def sd1(tiny_checkpoint_files):  # noqa: F811
    """(MODEL, positive, negative) of the tiny SD1 checkpoint; one torch thread while the module runs."""
    from diffusion.loading.checkpoint import load_checkpoint
    from nodes.sd_conditioning import CLIPTextEncode

    with one_torch_thread():
        ckpt = load_checkpoint(tiny_checkpoint_files["sd1"])
        positive = CLIPTextEncode().execute(ckpt.clip, "a red apple")[0]
        negative = CLIPTextEncode().execute(ckpt.clip, "blurry")[0]
        yield ckpt.model, positive, negative


def _empty(batch=1):
    from nodes.sd_latent import EmptyLatentImage

    return EmptyLatentImage().execute(64, 64, batch)[0]


def _ksampler(model, positive, negative, latent, sampler="euler", scheduler="normal", denoise=1.0):
    from nodes.sd_sampling import KSampler

    return KSampler().execute(model, SEED, STEPS, CFG, sampler, scheduler, positive, negative, latent,
                              denoise=denoise)[0]["samples"]


def _sigmas(model, scheduler="normal", steps=STEPS, denoise=1.0):
    from nodes.custom_sampling import BasicScheduler

    return BasicScheduler().execute(model, scheduler, steps, denoise)[0]


def _select(name):
    from nodes.custom_sampling import KSamplerSelect

    return KSamplerSelect().execute(name)[0]


@pytest.mark.parametrize("sampler,scheduler", [("euler", "normal"), ("euler_ancestral", "karras"),
                                               ("dpmpp_2m_sde", "simple")])
def test_sampler_custom_equals_ksampler_bit_for_bit(sd1, sampler, scheduler):
    from nodes.custom_sampling import SamplerCustom

    model, positive, negative = sd1
    expected = _ksampler(model, positive, negative, _empty(), sampler, scheduler)
    out, denoised = SamplerCustom().execute(model, True, SEED, CFG, positive, negative, _select(sampler),
                                            _sigmas(model, scheduler), _empty())
    assert torch.equal(out["samples"], expected)
    assert out["samples"].dtype == torch.float32 and out["samples"].device.type == "cpu"
    # the last step goes to sigma 0, where these samplers land on their x0 prediction
    torch.testing.assert_close(denoised["samples"], expected, rtol=1e-5, atol=1e-4)


def test_sampler_custom_advanced_with_random_noise_and_cfg_guider_equals_ksampler(sd1):
    from nodes.custom_sampling import CFGGuider, RandomNoise, SamplerCustomAdvanced

    model, positive, negative = sd1
    latent = {"samples": torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3)), "batch_index": [4, 1]}
    expected = _ksampler(model, positive, negative, latent, denoise=0.6)
    guider = CFGGuider().execute(model, positive, negative, CFG)[0]
    noise = RandomNoise().execute(SEED)[0]
    out, _ = SamplerCustomAdvanced().execute(noise, guider, _select("euler"), _sigmas(model, denoise=0.6), latent)
    assert torch.equal(out["samples"], expected)
    assert out["batch_index"] == [4, 1]


def test_denoised_output_is_the_last_steps_x0_prediction(sd1):
    """denoised_output = the x0 the sampler reported at its last step, unscaled (ComfyUI's x0_output)."""
    from diffusion.sampling.guiders import CFGGuider as Guider
    from nodes.custom_sampling import SamplerCustom

    model, positive, negative = sd1
    sigmas = _sigmas(model)
    seen = []
    Guider(model, positive, negative, CFG).sample(
        torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(SEED)), torch.zeros(1, 4, 8, 8),
        _select("euler"), sigmas, callback=lambda step, total, x0: seen.append((step, total, x0)), seed=SEED)
    assert [(s, t) for s, t, _ in seen] == [(i, STEPS) for i in range(STEPS)]
    _, denoised = SamplerCustom().execute(model, True, SEED, CFG, positive, negative, _select("euler"), sigmas,
                                          _empty())
    torch.testing.assert_close(denoised["samples"], seen[-1][2] / model.latent_format.scale_factor,
                               rtol=1e-6, atol=1e-6)


def test_disable_noise_samples_the_latent_itself(sd1):
    """No noise: x starts at the (scaled) input latent. With euler, one step to 0 is the x0 prediction
    at sigma[0] of the clean latent, which the guider computes directly."""
    from diffusion.sampling.guiders import CFGGuider as Guider
    from nodes.custom_sampling import DisableNoise, SamplerCustom, SamplerCustomAdvanced

    model, positive, negative = sd1
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))}
    sigmas = torch.tensor([2.0, 0.0])
    guider = Guider(model, positive, negative, CFG)
    out, _ = SamplerCustomAdvanced().execute(DisableNoise().execute()[0], guider, _select("euler"), sigmas, latent)
    scaled = latent["samples"] * model.latent_format.scale_factor
    x0 = guider.denoiser()(scaled, torch.tensor([2.0]))
    torch.testing.assert_close(out["samples"], x0 / model.latent_format.scale_factor, rtol=1e-5, atol=1e-5)
    # SamplerCustom's add_noise=False is the same
    same, _ = SamplerCustom().execute(model, False, 123, CFG, positive, negative, _select("euler"), sigmas, latent)
    assert torch.equal(same["samples"], out["samples"])


def test_split_sigmas_two_passes_equal_one_pass(sd1):
    """SplitSigmas at step k, then the high part with noise and the low part without: the same latent
    as one pass (the first pass leaves its noise in, the second adds none)."""
    from nodes.custom_sampling import SamplerCustom, SplitSigmas

    model, positive, negative = sd1
    sigmas = _sigmas(model, "karras", steps=6)
    one, _ = SamplerCustom().execute(model, True, SEED, CFG, positive, negative, _select("euler"), sigmas, _empty())
    high, low = SplitSigmas().execute(sigmas, 2)
    assert torch.equal(torch.cat([high, low[1:]]), sigmas)
    first, _ = SamplerCustom().execute(model, True, SEED, CFG, positive, negative, _select("euler"), high, _empty())
    second, _ = SamplerCustom().execute(model, False, SEED, CFG, positive, negative, _select("euler"), low, first)
    torch.testing.assert_close(second["samples"], one["samples"], rtol=1e-5, atol=1e-5)


def test_basic_guider_equals_cfg_one(sd1):
    from nodes.custom_sampling import BasicGuider, CFGGuider, RandomNoise, SamplerCustomAdvanced

    model, positive, negative = sd1
    sigmas, noise = _sigmas(model), RandomNoise().execute(SEED)[0]
    basic = BasicGuider().execute(model, positive)[0]
    cfg_one = CFGGuider().execute(model, positive, negative, 1.0)[0]
    a, _ = SamplerCustomAdvanced().execute(noise, basic, _select("euler"), sigmas, _empty())
    b, _ = SamplerCustomAdvanced().execute(noise, cfg_one, _select("euler"), sigmas, _empty())
    assert torch.equal(a["samples"], b["samples"])


def test_sdturbo_workflow_runs_through_the_engine(sd_home, registry):  # noqa: F811
    """SDXL-Turbo style: SDTurboScheduler + SamplerCustom, one step, API format through the executor."""
    from graph.executor import Executor
    from tests.sdnodes_env import SD1_NAME, CaptureLatent

    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD1_NAME}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "10": {"class_type": "SDTurboScheduler", "inputs": {"model": ["4", 0], "steps": 1, "denoise": 1.0}},
        "11": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler_ancestral"}},
        "12": {"class_type": "SamplerCustom", "inputs": {
            "model": ["4", 0], "add_noise": True, "noise_seed": 3, "cfg": 1.0, "positive": ["6", 0],
            "negative": ["7", 0], "sampler": ["11", 0], "sigmas": ["10", 0], "latent_image": ["5", 0]}},
        "13": {"class_type": "SDNodesCaptureLatent", "inputs": {"samples": ["12", 0], "label": "turbo"}},
        "14": {"class_type": "SDNodesCaptureLatent", "inputs": {"samples": ["12", 1], "label": "turbo_x0"}},
    }
    result = Executor(registry).execute(prompt, "p", outputs=["13", "14"])
    assert result.error is None, result.error
    out, x0 = CaptureLatent.seen["turbo"]["samples"], CaptureLatent.seen["turbo_x0"]["samples"]
    # one step to 0 lands on the x0 prediction itself
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()
    torch.testing.assert_close(out, x0, rtol=1e-5, atol=1e-5)


def test_wrong_values_are_named(sd_home, registry):  # noqa: F811
    from graph.executor import Executor

    prompt = {
        "1": {"class_type": "KarrasScheduler", "inputs": {"steps": 3, "sigma_max": 14.6, "sigma_min": 0.03,
                                                          "rho": 0.0}},
        "2": {"class_type": "SplitSigmas", "inputs": {"sigmas": ["1", 0], "step": 1}},
        "3": {"class_type": "SDNodesCaptureLatent", "inputs": {"samples": ["2", 0], "label": "x"}},
    }
    result = Executor(registry).execute(prompt, "p", outputs=["3"])
    assert "KarrasScheduler: input 'rho' must be greater than 0, got 0.0" in result.error["exception_message"]
