"""PLMS (ours; ComfyUI has none) against diffusers' PNDMScheduler(skip_prk_steps=True), the scheduler of
the original Stable Diffusion pipelines: same eps 'network', same timesteps, same start.

diffusers steps the variance-preserving latent x / sqrt(1 + sigma^2) between its timesteps; ours is
handed the sigmas of those timesteps (the table's sigma at each one) and then the final one: sigma 0
with set_alpha_to_one=True, the table's first sigma otherwise (SD's own config). One and two steps cover
the start-up (one step is a plain DDIM step; two use the pseudo improved Euler warm-up), eight the
fourth-order Adams-Bashforth phase.
"""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffusion.sampling.model_sampling import ModelSampling  # noqa: E402
from diffusion.sampling.registry import get_sampler  # noqa: E402
from diffusion.sampling.schedulers import calculate_sigmas  # noqa: E402
from sampling_fakes import denoiser_from_eps_net, eps_net  # noqa: E402

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
          skip_prk_steps=True, steps_offset=1)
MS = ModelSampling()


def _sigma_of_alpha(alpha_cumprod) -> float:
    alpha = float(alpha_cumprod)
    return ((1 - alpha) / alpha) ** 0.5


def _run_diffusers(steps: int, set_alpha_to_one: bool):
    sched = diffusers.PNDMScheduler(**SD, set_alpha_to_one=set_alpha_to_one)
    sched.set_timesteps(steps)
    sigma_of_t = [_sigma_of_alpha(a) for a in sched.alphas_cumprod]
    # the distinct timesteps in order (the warm-up repeats one), then where the last step lands
    distinct = list(dict.fromkeys(int(t) for t in sched.timesteps))
    final = _sigma_of_alpha(sched.final_alpha_cumprod)
    sigmas = torch.tensor([sigma_of_t[t] for t in distinct] + [final], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    x_T = torch.randn(1, 4, 6, 6, generator=gen, dtype=torch.float64) * (1 + float(sigmas[0]) ** 2) ** 0.5
    sample = (x_T / (1 + float(sigmas[0]) ** 2) ** 0.5).float()
    calls = []
    for t in sched.timesteps:
        calls.append(int(t))
        eps = eps_net(sample, sigma_of_t[int(t)])
        sample = sched.step(eps, t, sample).prev_sample
    # back to sigma space at the final sigma
    return x_T.float(), sigmas.float(), sample * (1 + final ** 2) ** 0.5, calls


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
@pytest.mark.parametrize("steps", [1, 2, 3, 8])
def test_plms_matches_diffusers_pndm(steps, set_alpha_to_one):
    x_T, sigmas, theirs, their_calls = _run_diffusers(steps, set_alpha_to_one)
    model = denoiser_from_eps_net(MS)
    calls = []

    def counting(x, sigma, **kw):
        calls.append(float(sigma[0]))
        return model(x, sigma, **kw)

    ours = get_sampler("plms")(counting, x_T.clone(), sigmas)
    assert len(calls) == len(their_calls) == (steps + 1 if steps > 1 else 1)
    scale = float(theirs.abs().max())
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4 * scale), float((ours - theirs).abs().max())


def test_ddim_uniform_gives_the_original_plms_timesteps():
    """The original scripts' PLMS timesteps (1, 1 + 1000/N, ...) are our ddim_uniform schedule."""
    for steps in (1, 2, 10, 50):
        sched = diffusers.PNDMScheduler(**SD)
        sched.set_timesteps(steps)
        distinct = list(dict.fromkeys(int(t) for t in sched.timesteps))
        ours = calculate_sigmas(MS, "ddim_uniform", steps)
        assert torch.equal(ours[:-1], MS.sigmas[distinct]) and ours[-1] == 0


def test_plms_uses_fixed_adams_bashforth_weights():
    """On a slope that is constant per call, each step must move by dt times the AB-weighted slopes:
    a hand-made check of the weights, independent of diffusers."""
    slopes = iter([1.0, 5.0, 2.0, 3.0, -1.0, 4.0])  # call 2 is the warm-up's end-point slope
    sigmas = torch.tensor([10.0, 8.0, 6.0, 4.0, 2.0, 1.0])

    def model(x, sigma, **_):
        return x - sigma.view(-1, 1) * next(slopes)  # to_d(x, sigma, denoised) = the slope

    out = get_sampler("plms")(model, torch.zeros(1, 1), sigmas)
    x = -2.0 * (1.0 + 5.0) / 2  # Heun warm-up from 10 to 8
    x += -2.0 * (3 / 2 * 2.0 - 1 / 2 * 1.0)  # AB2 on slopes [1 (sigma 10), 2 (sigma 8)]
    x += -2.0 * (23 / 12 * 3.0 - 16 / 12 * 2.0 + 5 / 12 * 1.0)
    x += -2.0 * (55 / 24 * -1.0 - 59 / 24 * 3.0 + 37 / 24 * 2.0 - 9 / 24 * 1.0)
    x += -1.0 * (55 / 24 * 4.0 - 59 / 24 * -1.0 + 37 / 24 * 3.0 - 9 / 24 * 2.0)
    assert out.item() == pytest.approx(x, rel=1e-6)
