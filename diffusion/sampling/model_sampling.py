"""Discrete-time noise schedule of SD1/SD2/SDXL and the eps / v parameterisations.

The model is trained on 1000 discrete timesteps of a "scaled linear" beta schedule. Samplers work in
sigma space (k-diffusion, Karras et al. 2022): x = x0 + sigma * eps. This module maps between the two
and converts raw network output into a denoised x0 estimate.
"""

from __future__ import annotations

import math

import torch

PREDICTIONS = ("eps", "v_prediction")


def _expand_like(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample sigma [B] so it broadcasts against x [B, ...]."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        return sigma
    return sigma.reshape(sigma.shape[:1] + (1,) * (x.ndim - 1))


def discrete_sigma_table(linear_start: float = 0.00085, linear_end: float = 0.012,
                         timesteps: int = 1000) -> torch.Tensor:
    """sigma_t = sqrt((1 - abar_t) / abar_t) for the scaled-linear beta schedule, float32 [timesteps].

    Computed in float64 and stored in float32 so the values are the ones SD checkpoints were sampled
    with in the reference implementation (COMPAT §10).
    """
    betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return ((1.0 - alphas_cumprod) / alphas_cumprod).sqrt().to(torch.float32)


class ModelSampling:
    """Sigma table and prediction-type arithmetic for a discrete-timestep SD model."""

    sigma_data = 1.0

    def __init__(self, prediction: str = "eps", linear_start: float = 0.00085,
                 linear_end: float = 0.012, timesteps: int = 1000):
        if prediction not in PREDICTIONS:
            raise ValueError(f"ModelSampling: prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if timesteps < 2:
            raise ValueError(f"ModelSampling: timesteps must be >= 2, got {timesteps}")
        self.prediction = prediction
        self.linear_start = linear_start
        self.linear_end = linear_end
        self.num_timesteps = timesteps
        self.sigmas = discrete_sigma_table(linear_start, linear_end, timesteps)
        self.log_sigmas = self.sigmas.log()

    def __repr__(self) -> str:
        return (f"ModelSampling(prediction={self.prediction!r}, linear_start={self.linear_start}, "
                f"linear_end={self.linear_end}, timesteps={self.num_timesteps})")

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    # -- timestep <-> sigma ------------------------------------------------------------------------
    def timestep(self, sigma) -> torch.Tensor:
        """Index (as float) of the table entry whose log-sigma is nearest to log(sigma)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        log_sigmas = self.log_sigmas.to(sigma.device)
        dists = sigma.log().reshape(-1, 1) - log_sigmas.reshape(1, -1)
        return dists.abs().argmin(dim=1).reshape(sigma.shape).to(sigma.dtype)

    def sigma(self, t) -> torch.Tensor:
        """Sigma at a (fractional) timestep: exp of the linear interpolation of log-sigma."""
        t = torch.as_tensor(t, dtype=torch.float32)
        log_sigmas = self.log_sigmas.to(t.device)
        t = t.clamp(0, self.num_timesteps - 1)
        low = t.floor().long()
        high = t.ceil().long()
        w = t.frac()
        return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()

    def percent_to_sigma(self, percent: float) -> float:
        """Sampling progress 0..1 -> sigma; 0 is 'before the first step', 1 is 'fully denoised'."""
        if percent <= 0.0:
            return 999999999.9  # above any real sigma, so a range starting at 0% is always active
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor((1.0 - percent) * (self.num_timesteps - 1))))

    # -- parameterisation --------------------------------------------------------------------------
    def calculate_input(self, sigma, x: torch.Tensor) -> torch.Tensor:
        """c_in: scale x_sigma so the network sees unit variance (both eps and v models)."""
        sigma = _expand_like(sigma, x)
        return x / (sigma ** 2 + self.sigma_data ** 2) ** 0.5

    def calculate_denoised(self, sigma, model_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Turn the network's eps or v output into an x0 estimate."""
        sigma = _expand_like(sigma, model_output)
        if self.prediction == "eps":
            return x - model_output * sigma
        sd = self.sigma_data
        norm = (sigma ** 2 + sd ** 2)
        return x * sd ** 2 / norm - model_output * sigma * sd / norm ** 0.5

    def noise_scaling(self, sigma, noise: torch.Tensor, latent_image: torch.Tensor,
                      max_denoise: bool = False) -> torch.Tensor:
        """x_T from a clean latent: full denoise starts from a variance-preserving-sized sample."""
        sigma = _expand_like(sigma, noise)
        if max_denoise:
            noise = noise * (1.0 + sigma ** 2) ** 0.5
        else:
            noise = noise * sigma
        return noise + latent_image

    def inverse_noise_scaling(self, sigma, x: torch.Tensor) -> torch.Tensor:
        return x

    def is_max_denoise(self, sigma) -> bool:
        """True when sampling starts at (or above) the top of the table: 'full denoise'."""
        s0 = float(sigma)
        smax = float(self.sigma_max)
        return s0 > smax or math.isclose(s0, smax, rel_tol=1e-5)
