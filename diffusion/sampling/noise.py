"""Random noise for sampling: the initial latent noise and the per-step noise of stochastic samplers.

The recipes are bit-compatible with ComfyUI on CPU (COMPAT §10), so a seed reproduces the same image.
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch

NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def prepare_noise(latent: torch.Tensor, seed: int, batch_index: Sequence[int] | None = None) -> torch.Tensor:
    """Initial noise for `latent` ([B, C, H, W]) drawn on CPU from `torch.manual_seed(seed)`.

    Like ComfyUI this reseeds torch's global CPU generator. With `batch_index` every latent of the
    batch gets the draw it would have had at that position in a larger batch: draws of one sample each
    are taken for 0..max(batch_index) in order and the listed ones are returned (repeats allowed).
    """
    generator = torch.manual_seed(int(seed))
    shape = tuple(latent.shape)
    dtype = latent.dtype if latent.dtype.is_floating_point else torch.float32
    if batch_index is None:
        return torch.randn(shape, dtype=dtype, generator=generator, device="cpu")
    indices = [int(i) for i in batch_index]
    if not indices or min(indices) < 0:
        raise ValueError(f"prepare_noise: batch_index must be a non-empty list of indices >= 0, got {batch_index!r}")
    if len(indices) != shape[0]:
        raise ValueError(f"prepare_noise: batch_index has {len(indices)} entries but the latent batch is {shape[0]}")
    wanted = set(indices)
    draws = {}
    for i in range(max(indices) + 1):
        draw = torch.randn((1,) + shape[1:], dtype=dtype, generator=generator, device="cpu")
        if i in wanted:
            draws[i] = draw
    return torch.cat([draws[i] for i in indices], dim=0)


def default_noise_sampler(x: torch.Tensor, seed: int | None = None) -> NoiseSampler:
    """Fresh standard normal noise shaped like x per call (ancestral / SDE samplers).

    Seeded with seed + 1 on CPU - the initial noise already used `seed` on the CPU generator, and
    reusing it would correlate the step noise with x_T - and with `seed` on other devices (COMPAT §10).
    """
    generator = None
    if seed is not None:
        generator = torch.Generator(device=x.device)
        seed = int(seed) + 1 if x.device.type == "cpu" else int(seed)
        # torch seeds are 64-bit: the largest UI seed plus one wraps to 0 instead of overflowing
        generator.manual_seed(seed % 2 ** 64)

    def sample(sigma, sigma_next):
        return torch.randn(x.shape, dtype=x.dtype, layout=x.layout, device=x.device, generator=generator)

    return sample


class BrownianTreeNoiseSampler:
    """Noise from one Brownian motion W(sigma) fixed by the seed (torchsde's Brownian tree).

    Calling with (sigma, sigma_next) returns the normalised increment (W(s1) - W(s0)) / sqrt(|s1 - s0|).
    Because the path is fixed, SDE samplers converge as steps grow instead of re-rolling the noise.
    `cpu=True` builds the tree on CPU (device-independent results); the `_gpu` samplers build it on
    x's device.
    """

    def __init__(self, x: torch.Tensor, sigma_min, sigma_max, seed: int | None = None,
                 cpu: bool = True, transform: Callable = lambda s: s):
        import torchsde  # only the SDE samplers need it

        self.transform = transform
        self.cpu = cpu
        self.device, self.dtype = x.device, x.dtype
        t0 = self.transform(torch.as_tensor(sigma_min, dtype=x.dtype, device=x.device))
        t1 = self.transform(torch.as_tensor(sigma_max, dtype=x.dtype, device=x.device))
        self.flip = 1.0
        if t0 > t1:
            t0, t1, self.flip = t1, t0, -1.0
        if seed is None:
            seed = int(torch.randint(0, 2 ** 63 - 1, []).item())
        w0 = torch.zeros_like(x)
        if cpu:
            t0, t1, w0 = t0.cpu(), t1.cpu(), w0.cpu()
        self.tree = torchsde.BrownianTree(t0, w0, t1, entropy=int(seed) % 2 ** 64)

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        t0 = self.transform(torch.as_tensor(sigma, dtype=self.dtype, device=self.device))
        t1 = self.transform(torch.as_tensor(sigma_next, dtype=self.dtype, device=self.device))
        # the tree only answers forward intervals; a decreasing pair is the negated increment
        lo, hi, sign = (t0, t1, self.flip) if t0 < t1 else (t1, t0, -self.flip)
        with warnings.catch_warnings():
            # float round-off can put a query a hair past the tree's end; torchsde clamps and warns
            warnings.filterwarnings("ignore", message="Should have")
            if self.cpu:
                w = self.tree(lo.cpu().float(), hi.cpu().float())
            else:
                w = self.tree(lo, hi)
        return (w * sign).to(device=self.device, dtype=self.dtype) / (t1 - t0).abs().sqrt()


def brownian_noise_sampler(x: torch.Tensor, sigmas: torch.Tensor, seed: int | None, cpu: bool = True,
                           transform: Callable = lambda s: s) -> BrownianTreeNoiseSampler:
    """Brownian tree spanning the non-zero part of a schedule (what the SDE samplers build)."""
    positive = sigmas[sigmas > 0]
    return BrownianTreeNoiseSampler(x, positive.min(), sigmas.max(), seed=seed, cpu=cpu, transform=transform)


class RandomNoise:
    """A NOISE value: the initial noise of `seed`, drawn for a LATENT dict as KSampler draws it
    (prepare_noise, honouring the latent's batch_index)."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def generate_noise(self, latent: dict) -> torch.Tensor:
        return prepare_noise(latent["samples"], self.seed, latent.get("batch_index"))


class DisableNoise:
    """A NOISE value of zeros: sampling starts from the latent itself. Its seed (0) still seeds the
    per-step noise of stochastic samplers, as ComfyUI's DisableNoise does."""

    seed = 0

    def generate_noise(self, latent: dict) -> torch.Tensor:
        samples = latent["samples"]
        dtype = samples.dtype if samples.dtype.is_floating_point else torch.float32
        return torch.zeros(samples.shape, dtype=dtype, device="cpu")
