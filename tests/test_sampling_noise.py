"""Initial noise recipe (COMPAT §10) and the step-noise samplers."""

import pytest
import torch

from diffusion.sampling.noise import BrownianTreeNoiseSampler, brownian_noise_sampler, default_noise_sampler, prepare_noise


def test_seed0_reference_values():
    noise = prepare_noise(torch.zeros(1, 4, 2, 2), 0)
    # COMPAT §10 observed: seed 0, shape [1,4,2,2]
    ref = torch.tensor([-1.1258398, -1.1523602, -0.2505786, -0.4338788, 0.8487104, 0.6920092])
    assert noise.dtype == torch.float32 and noise.device.type == "cpu"
    assert torch.allclose(noise.flatten()[:6], ref, atol=1e-7, rtol=0)


def test_huge_seed_wraps_like_torch():
    a = prepare_noise(torch.zeros(1, 4, 2, 2), 2 ** 64 - 1)
    b = prepare_noise(torch.zeros(1, 4, 2, 2), -1)
    assert torch.equal(a, b)


def test_batch_index_draws_sequentially():
    latent = torch.zeros(3, 4, 3, 3)  # 36 elements per sample: not a multiple of 16
    got = prepare_noise(latent, 42, batch_index=[2, 0, 2])
    gen = torch.manual_seed(42)
    draws = [torch.randn([1, 4, 3, 3], generator=gen) for _ in range(3)]
    assert torch.equal(got, torch.cat([draws[2], draws[0], draws[2]]))


def test_batch_index_equals_batched_draw_when_16_aligned():
    latent = torch.zeros(3, 4, 2, 2)  # 16 elements per sample
    assert torch.equal(prepare_noise(latent, 7, batch_index=[0, 1, 2]), prepare_noise(latent, 7))


def test_batch_index_length_checked():
    with pytest.raises(ValueError, match="batch_index"):
        prepare_noise(torch.zeros(2, 4, 2, 2), 0, batch_index=[0])


def test_ancestral_noise_uses_seed_plus_one_on_cpu():
    x = torch.zeros(2, 4, 5, 5)
    ns = default_noise_sampler(x, seed=10)
    gen = torch.Generator().manual_seed(11)
    first, second = ns(1.0, 0.5), ns(0.5, 0.1)
    assert torch.equal(first, torch.randn(x.shape, generator=gen))
    assert torch.equal(second, torch.randn(x.shape, generator=gen))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_ancestral_noise_uses_seed_on_cuda():
    x = torch.zeros(1, 4, 5, 5, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(10)
    assert torch.equal(default_noise_sampler(x, seed=10)(1.0, 0.5), torch.randn(x.shape, generator=gen, device="cuda"))


def test_brownian_tree_is_reproducible_and_consistent():
    x = torch.zeros(1, 4, 16, 16)
    sigmas = torch.tensor([10.0, 4.0, 1.0, 0.2, 0.0])
    a = brownian_noise_sampler(x, sigmas, seed=3)
    b = brownian_noise_sampler(x, sigmas, seed=3)
    c = brownian_noise_sampler(x, sigmas, seed=4)
    n_a = a(sigmas[0], sigmas[1])
    assert torch.equal(n_a, b(sigmas[0], sigmas[1]))
    assert not torch.allclose(n_a, c(sigmas[0], sigmas[1]))
    # normalised increments are standard normal
    assert abs(float(n_a.std()) - 1) < 0.1 and abs(float(n_a.mean())) < 0.1
    # increments over adjacent intervals add up: W(10)-W(1) = (W(10)-W(4)) + (W(4)-W(1))
    w = lambda s0, s1: a(torch.tensor(s0), torch.tensor(s1)) * abs(s1 - s0) ** 0.5  # noqa: E731
    assert torch.allclose(w(10.0, 1.0), w(10.0, 4.0) + w(4.0, 1.0), atol=1e-4)


def test_brownian_tree_cpu_flag_on_cpu_matches():
    x = torch.zeros(1, 2, 4, 4)
    a = BrownianTreeNoiseSampler(x, 0.1, 10.0, seed=5, cpu=True)
    b = BrownianTreeNoiseSampler(x, 0.1, 10.0, seed=5, cpu=False)
    assert torch.equal(a(torch.tensor(5.0), torch.tensor(2.0)), b(torch.tensor(5.0), torch.tensor(2.0)))


def test_ancestral_noise_for_largest_seed_wraps():
    x = torch.zeros(1, 4, 2, 2)
    got = default_noise_sampler(x, seed=2 ** 64 - 1)(1.0, 0.5)
    assert torch.equal(got, torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))
