"""Stand-ins for MODEL used by the sampling tests: no UNet, exact or tiny deterministic denoisers."""

from __future__ import annotations

import torch

from diffusion.sampling.model_sampling import ModelSampling


class FakeLatentFormat:
    def __init__(self, scale_factor: float = 0.18215):
        self.scale_factor = scale_factor
        self.latent_channels = 4

    def process_in(self, x):
        return x * self.scale_factor

    def process_out(self, x):
        return x / self.scale_factor


class GaussianModel:
    """MODEL whose x0 prediction is exact for data x0 ~ N(mu, s^2) (elementwise, independent).

    E[x0 | x_sigma] = mu + s^2 / (s^2 + sigma^2) * (x - mu). The mean `mu` of each batch row is read from
    the conditioning (mean of the context tensor), so positive and negative prompts differ. Records
    every apply_model call.
    """

    def __init__(self, s: float = 0.5, scale_factor: float = 1.0, prediction: str = "eps"):
        self.s = s
        self.model_sampling = ModelSampling(prediction)
        self.latent_format = FakeLatentFormat(scale_factor)
        self.load_device = torch.device("cpu")
        self.model_options = {"transformer_options": {}}
        self.calls = []

    def mu_of(self, context: torch.Tensor) -> torch.Tensor:
        return context.mean(dim=(1, 2))

    def apply_model(self, x, sigma, c_crossattn, y=None, transformer_options=None):
        self.calls.append({"batch": x.shape[0], "tokens": c_crossattn.shape[1], "y": y,
                           "sigma": sigma.detach().clone(), "x": x.detach().clone(),
                           "transformer_options": transformer_options})
        mu = self.mu_of(c_crossattn).to(x).view(-1, *([1] * (x.ndim - 1)))
        s2 = self.s ** 2
        sig = sigma.to(x).view(-1, *([1] * (x.ndim - 1)))
        return mu + s2 / (s2 + sig ** 2) * (x - mu)


def cond(value: float, tokens: int = 77, dim: int = 8, **options):
    """A CONDITIONING list with one entry whose context averages to `value`."""
    return [[torch.full((1, tokens, dim), float(value)), dict(options)]]


def ode_endpoint(x_T: torch.Tensor, sigma_T: float, mu: float, s: float) -> torch.Tensor:
    """Exact probability-flow ODE solution at sigma=0 for Gaussian data: (x - mu) scales with
    sqrt(s^2 + sigma^2)."""
    return mu + (x_T - mu) * s / (s ** 2 + sigma_T ** 2) ** 0.5


def eps_net(x_in: torch.Tensor, sigma) -> torch.Tensor:
    """A smooth nonlinear 'network': eps prediction from the c_in-scaled input and sigma.

    Deterministic and shared by our samplers and diffusers' schedulers in the comparisons.
    """
    sigma = torch.as_tensor(sigma, dtype=x_in.dtype).reshape(-1)
    sig = sigma.view(-1, *([1] * (x_in.ndim - 1))) if sigma.numel() > 1 else sigma.reshape(())
    mix = torch.roll(x_in, shifts=1, dims=-1)
    return torch.tanh(0.8 * x_in + 0.3 * mix + 0.1 * torch.log(sig)) * 0.9 + 0.05 * x_in


def denoiser_from_eps_net(model_sampling):
    """k-diffusion denoiser D(x, sigma) = x - sigma * eps_net(c_in * x, sigma)."""

    def model(x, sigma, **_):
        return model_sampling.calculate_denoised(sigma, eps_net(model_sampling.calculate_input(sigma, x), sigma), x)

    return model
