"""FreeU (Si et al. 2023, "FreeU: Free Lunch in Diffusion U-Net"): on the decoder levels with 4x and
2x model_channels, scale half of the backbone features by b and damp the low frequencies of the skip
connection by s (output_block_patch).

- v1: the first half of the channels times b.
- v2: times (b - 1) * m + 1, m the channel-mean of the features min-max normalised per sample, so
  the boost follows the structure of the image.
The skip filter multiplies the centred 2x2 block of the shifted 2-d spectrum (threshold 1) by s.
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def fourier_filter(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """x with the spectrum's centred (2*threshold)^2 low-frequency block multiplied by `scale`."""
    freq = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    h, w = freq.shape[-2:]
    mask = torch.ones(freq.shape[-2:], device=x.device)
    mask[h // 2 - threshold:h // 2 + threshold, w // 2 - threshold:w // 2 + threshold] = scale
    freq = torch.fft.ifftshift(freq * mask, dim=(-2, -1))
    return torch.fft.ifftn(freq, dim=(-2, -1)).real.to(x.dtype)


def _filter_skip(skip: torch.Tensor, scale: float, cpu_only: set) -> torch.Tensor:
    # some backends lack torch.fft; there the filter runs on the CPU (remembered per device)
    if skip.device not in cpu_only:
        try:
            return fourier_filter(skip, 1, scale)
        except (RuntimeError, TypeError) as e:
            log.warning("FreeU: torch.fft is not available on %s (%s); filtering on the CPU", skip.device, e)
            cpu_only.add(skip.device)
    return fourier_filter(skip.cpu(), 1, scale).to(skip.device)


def freeu_patch(model_channels: int, b1: float, b2: float, s1: float, s2: float, version: int = 1):
    """An output_block_patch fn(h, skip, options) -> (h, skip)."""
    scales = {model_channels * 4: (float(b1), float(s1)), model_channels * 2: (float(b2), float(s2))}
    cpu_only: set = set()

    def patch(h, skip, transformer_options):
        scale = scales.get(int(h.shape[1]))
        if scale is None:
            return h, skip
        b, s = scale
        half = h.shape[1] // 2
        if version == 1:
            factor = b
        else:
            mean = h.mean(1, keepdim=True)
            flat = mean.reshape(mean.shape[0], -1)
            lo = flat.min(dim=-1).values.reshape(-1, 1, 1, 1)
            hi = flat.max(dim=-1).values.reshape(-1, 1, 1, 1)
            factor = (b - 1.0) * ((mean - lo) / (hi - lo)) + 1.0
        h = torch.cat([h[:, :half] * factor, h[:, half:]], dim=1)
        return h, _filter_skip(skip, s, cpu_only)

    return patch
