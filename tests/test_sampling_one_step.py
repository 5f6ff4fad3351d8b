"""One step straight to sigma 0, every sampler: what ComfyUI's samplers compute is the model's x0
prediction at sigma[0] (each one ends a step to 0 with the denoised prediction, or with an Euler /
first-order exponential step, which lands on it exactly). The exceptions are stated and checked
elsewhere: UniPC (order 0 at one step: test_sampling_vs_diffusers.py) and the DPM-Solver samplers
that take only the schedule's range (test_sampling_vs_kdiffusion.py)."""
import pytest
import torch

from diffusion.sampling import registry as samplers
from diffusion.sampling.model_sampling import ModelSampling
from diffusion.sampling.schedulers import calculate_sigmas
from sampling_fakes import denoiser_from_eps_net

ELSEWHERE = {"uni_pc", "uni_pc_bh2", "dpm_fast", "dpm_adaptive"}
MS = ModelSampling()


@pytest.mark.parametrize("name", [n for n in samplers.SAMPLER_NAMES if n not in ELSEWHERE])
@pytest.mark.parametrize("scheduler", ["normal", "karras", "simple"])
def test_one_step_to_zero_is_the_denoised_prediction(name, scheduler):
    sigmas = calculate_sigmas(MS, scheduler, 1).double()
    assert len(sigmas) == 2 and sigmas[-1] == 0
    x = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * sigmas[0]
    model = denoiser_from_eps_net(MS)
    calls = []

    def counting(x_in, sigma, **kw):
        calls.append(float(sigma[0]))
        return model(x_in, sigma, **kw)

    out = samplers.get_sampler(name)(counting, x.clone(), sigmas.clone(), extra_args={"seed": 5})
    expected = model(x, sigmas[0] * x.new_ones([2]))
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9 * float(expected.abs().max()))
    assert calls[0] == float(sigmas[0]) and all(c == float(sigmas[0]) for c in calls)
