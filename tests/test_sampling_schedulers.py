"""Schedulers against COMPAT §10's observed reference sigmas, and the denoise / steps rules."""

import pytest
import torch

from diffusion.sampling.model_sampling import ModelSampling
from diffusion.sampling.ksampler import SCHEDULER_NAMES, calculate_sigmas, sampling_sigmas

# COMPAT §10, 10 steps, SD1 (observed from ComfyUI 0.8), 4 decimals
REFERENCE = {
    "simple": "14.6146 8.3028 5.0878 3.3211 2.2765 1.6129 1.1606 0.8299 0.5693 0.3417 0",
    "normal": "14.6146 7.8399 4.6092 2.9183 1.9502 1.3449 0.9324 0.6250 0.3687 0.0292 0",
    "karras": "14.6146 9.1029 5.4784 3.1686 1.7494 0.9141 0.4469 0.2014 0.0819 0.0292 0",
    "exponential": "14.6146 7.3249 3.6712 1.8400 0.9222 0.4622 0.2317 0.1161 0.0582 0.0292 0",
    "sgm_uniform": "14.6146 8.3072 5.0924 3.3251 2.2797 1.6156 1.1629 0.8319 0.5712 0.3437 0",
    "ddim_uniform": "8.3907 5.1344 3.3478 2.2929 1.6237 1.1682 0.8357 0.5741 0.3462 0.0413 0",
    "beta": "14.6146 11.5428 7.3718 4.3728 2.6152 1.6183 1.0273 0.6549 0.3955 0.1991 0",
}

MS = ModelSampling()


def _values(text):
    return torch.tensor([float(v) for v in text.split()])


def test_names_in_compat_order():
    assert SCHEDULER_NAMES == ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta",
                               "normal", "linear_quadratic", "kl_optimal"]


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reference_sigmas(name):
    got = calculate_sigmas(MS, name, 10)
    assert got.dtype == torch.float32
    # the reference is printed to 4 decimals, so allow half a unit of the last place
    assert torch.allclose(got, _values(REFERENCE[name]), atol=5.01e-5, rtol=0), got


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
@pytest.mark.parametrize("steps", [1, 3, 25])
def test_every_schedule_is_decreasing_and_ends_at_zero(name, steps):
    sig = calculate_sigmas(MS, name, steps)
    assert sig[-1] == 0 and torch.isfinite(sig).all()
    assert (sig[:-1] > sig[1:]).all()
    assert len(sig) == steps + 1 or name == "beta"


def test_kl_optimal_formula():
    # uniform steps in atan(sigma) between sigma_max and sigma_min
    sig = calculate_sigmas(MS, "kl_optimal", 10)[:-1].double()
    angles = sig.atan()
    assert torch.allclose(angles[:-1] - angles[1:], (angles[0] - angles[-1]).expand(9) / 9, atol=1e-6)
    assert float(sig[0]) == pytest.approx(float(MS.sigma_max), rel=1e-6)
    assert float(sig[-1]) == pytest.approx(float(MS.sigma_min), rel=1e-5)


def test_linear_quadratic_shape():
    # progress u = 1 - sigma/sigma_max: linear to 0.025 over the first half, then a quadratic that joins
    # with the same slope and reaches 1 at the end
    n = 10
    sig = calculate_sigmas(MS, "linear_quadratic", n).double()
    u = 1 - sig / float(MS.sigma_max)
    lin = n // 2
    assert torch.allclose(u[:lin + 1], torch.arange(lin + 1, dtype=torch.float64) * 0.025 / lin, atol=1e-6)
    assert float(u[-1]) == pytest.approx(1.0)
    second_diff = u[lin + 2:] - 2 * u[lin + 1:-1] + u[lin:-2]
    assert torch.allclose(second_diff, second_diff[0].expand_as(second_diff), atol=1e-5)


def test_partial_denoise_takes_tail_of_longer_schedule():
    got = sampling_sigmas(MS, "normal", 10, "euler", denoise=0.5)
    ref = _values("1.4806 1.2458 1.0481 0.8784 0.7297 0.5964 0.4736 0.3555 0.2322 0.0292 0")
    assert torch.allclose(got, ref, atol=5.01e-5, rtol=0)
    assert torch.equal(got, calculate_sigmas(MS, "normal", 20)[-11:])


def test_denoise_edges():
    assert torch.equal(sampling_sigmas(MS, "karras", 7, "euler", denoise=None), calculate_sigmas(MS, "karras", 7))
    assert torch.equal(sampling_sigmas(MS, "karras", 7, "euler", denoise=0.99995), calculate_sigmas(MS, "karras", 7))
    assert len(sampling_sigmas(MS, "karras", 7, "euler", denoise=0.0)) == 0


@pytest.mark.parametrize("sampler", ["dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"])
def test_penultimate_sigma_dropped(sampler):
    full = calculate_sigmas(MS, "karras", 11)
    got = sampling_sigmas(MS, "karras", 10, sampler)
    assert len(got) == 11
    assert torch.equal(got, torch.cat([full[:-2], full[-1:]]))


def test_start_and_end_steps():
    full = calculate_sigmas(MS, "normal", 10)
    assert torch.equal(sampling_sigmas(MS, "normal", 10, "euler", last_step=4), full[:5])
    forced = sampling_sigmas(MS, "normal", 10, "euler", last_step=4, force_full_denoise=True)
    assert torch.equal(forced[:-1], full[:4]) and forced[-1] == 0
    assert full[4] != 0  # forcing must not have written into the cached full schedule
    assert torch.equal(sampling_sigmas(MS, "normal", 10, "euler", start_step=3), full[3:])
    assert torch.equal(sampling_sigmas(MS, "normal", 10, "euler", start_step=3, last_step=6), full[3:7])
    assert len(sampling_sigmas(MS, "normal", 10, "euler", start_step=10)) == 0
    # end beyond the schedule leaves it whole
    assert torch.equal(sampling_sigmas(MS, "normal", 10, "euler", last_step=10000), full)


def test_unknown_scheduler_named():
    with pytest.raises(ValueError, match="unknown scheduler 'fancy'"):
        calculate_sigmas(MS, "fancy", 10)
