"""ModelSamplingDiscrete's sigma tables and parameterisations, and RescaleCFG.

Predictions (ComfyUI's model_sampling mix-ins): eps and v_prediction as the base class; "x0": the
network outputs the clean latent; "img_to_img": x0 output and the noisy latent fed in unscaled
(Lotus-style models); "lcm": eps output turned into x0 through the LCM boundary condition
(c_skip, c_out with sigma_data 0.5 and timestep scaling 10) on the 50-step distilled table.
`zsnr` rescales the table to zero terminal SNR (Lin et al. 2023, "Common Diffusion Noise Schedules
and Sample Steps are Flawed"), the last alpha_bar pinned to 4.8973451890853435e-08 as ComfyUI does.
"""
from __future__ import annotations

import torch

from diffusion.sampling.model_sampling import ModelSampling, _expand_like

SAMPLINGS = ("eps", "v_prediction", "lcm", "x0", "img_to_img")
LCM_ORIGINAL_STEPS = 50
LCM_SIGMA_DATA = 0.5
LCM_TIMESTEP_SCALING = 10.0
ZSNR_LAST_ALPHA_BAR = 4.8973451890853435e-08


def rescale_zero_terminal_snr_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alpha_bar) so the last step has zero signal and the first keeps its value."""
    alphas_bar_sqrt = (1.0 / (sigmas * sigmas + 1.0)).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt ** 2
    alphas_bar[-1] = ZSNR_LAST_ALPHA_BAR  # zero would be an infinite sigma
    return ((1.0 - alphas_bar) / alphas_bar) ** 0.5


class DiscreteSampling(ModelSampling):
    """A ModelSampling with any of SAMPLINGS and an optional zero-terminal-SNR table."""

    def __init__(self, sampling: str = "eps", zsnr: bool = False, linear_start: float = 0.00085,
                 linear_end: float = 0.012, timesteps: int = 1000):
        if sampling not in SAMPLINGS:
            raise ValueError(f"ModelSamplingDiscrete: sampling must be one of {', '.join(SAMPLINGS)}, "
                             f"got {sampling!r}")
        super().__init__("v_prediction" if sampling == "v_prediction" else "eps", linear_start, linear_end,
                         timesteps)
        self.prediction = sampling
        self.zsnr = bool(zsnr)
        self.skip_steps = 1
        if sampling == "lcm":
            # the 50 timesteps the LCM was distilled on: every 20th of 1000, ending at the last
            self.skip_steps = timesteps // LCM_ORIGINAL_STEPS
            self.set_sigmas(self.sigmas.flip(0)[::self.skip_steps][:LCM_ORIGINAL_STEPS].flip(0).clone())
        if zsnr:
            self.set_sigmas(rescale_zero_terminal_snr_sigmas(self.sigmas))

    def set_sigmas(self, sigmas: torch.Tensor) -> None:
        self.sigmas = sigmas.to(torch.float32)
        self.log_sigmas = self.sigmas.log()

    def __repr__(self) -> str:
        return f"DiscreteSampling(sampling={self.prediction!r}, zsnr={self.zsnr})"

    # -- timestep <-> sigma on the distilled table: table index i is timestep i*skip + skip-1
    def timestep(self, sigma) -> torch.Tensor:
        index = super().timestep(sigma)
        return index if self.skip_steps == 1 else index * self.skip_steps + (self.skip_steps - 1)

    def sigma(self, t) -> torch.Tensor:
        if self.skip_steps == 1:
            return super().sigma(t)
        t = torch.as_tensor(t, dtype=torch.float32)
        t = ((t - (self.skip_steps - 1)) / self.skip_steps).clamp(0, len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigmas = self.log_sigmas.to(t.device)
        return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()

    # -- parameterisations
    def calculate_input(self, sigma, x: torch.Tensor) -> torch.Tensor:
        if self.prediction == "img_to_img":
            return x
        return super().calculate_input(sigma, x)

    def calculate_denoised(self, sigma, model_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.prediction in ("x0", "img_to_img"):
            return model_output
        if self.prediction != "lcm":
            return super().calculate_denoised(sigma, model_output, x)
        sigma_t = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        t = _expand_like(self.timestep(sigma_t.cpu()).to(x.device), x) * LCM_TIMESTEP_SCALING
        sig = _expand_like(sigma_t, x)
        x0 = x - model_output * sig
        c_skip = LCM_SIGMA_DATA ** 2 / (t ** 2 + LCM_SIGMA_DATA ** 2)
        c_out = t / (t ** 2 + LCM_SIGMA_DATA ** 2) ** 0.5
        return c_out * x0 + c_skip * x


def model_sampling_for(base: ModelSampling, sampling: str, zsnr: bool) -> DiscreteSampling:
    """A new table with the base model's beta schedule (what the node puts on the clone)."""
    return DiscreteSampling(sampling, zsnr, getattr(base, "linear_start", 0.00085),
                            getattr(base, "linear_end", 0.012), getattr(base, "num_timesteps", 1000))


def rescale_cfg(multiplier: float):
    """A sampler_cfg_function for RescaleCFG (Lin et al. 2023, section 3.4): CFG in v space, its
    per-sample std rescaled to the positive prediction's, blended by `multiplier`. Works on the
    hook convention's x - x0 values and returns the guided x - x0."""
    multiplier = float(multiplier)

    def rescale(args):
        x_orig, sigma = args["input"], args["sigma"]
        sigma = _expand_like(sigma, x_orig)
        scale = args["cond_scale"]
        x = x_orig / (sigma * sigma + 1.0)
        root = (sigma ** 2 + 1.0) ** 0.5
        cond = (x - (x_orig - args["cond"])) * root / sigma  # v predictions
        uncond = (x - (x_orig - args["uncond"])) * root / sigma
        v_cfg = uncond + scale * (cond - uncond)
        std_pos = torch.std(cond, dim=tuple(range(1, cond.ndim)), keepdim=True)
        std_cfg = torch.std(v_cfg, dim=tuple(range(1, cond.ndim)), keepdim=True)
        v_final = multiplier * (v_cfg * (std_pos / std_cfg)) + (1.0 - multiplier) * v_cfg
        return x_orig - (x - v_final * sigma / root)

    return rescale
