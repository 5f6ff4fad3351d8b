"""VAE on CUDA: half-precision work dtype close to CPU fp32, overflow fallback, memory estimate.

Skipped without a GPU.
"""

from __future__ import annotations

import pytest
import torch

from diffusion.models.vae import VAE
from tests.vae_keymap import diffusers_vae_to_original, tiny_diffusers_vae

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def state_dict():
    ref = tiny_diffusers_vae(seed=20, block_out_channels=(32, 32, 32, 32))
    return diffusers_vae_to_original(ref.state_dict(), 4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_decode_close_to_cpu_fp32(state_dict, dtype):
    cpu = VAE.from_state_dict(state_dict, device="cpu", dtype=torch.float32)
    gpu = VAE.from_state_dict(state_dict, device="cuda", dtype=dtype)
    torch.manual_seed(0)
    z = torch.randn(2, 4, 16, 16)
    out = gpu.decode(z)
    assert out.device.type == "cpu" and out.dtype == torch.float32
    # bf16 keeps 8 mantissa bits: a few 1/256 steps through ~20 layers; fp16 is tighter
    tol = 0.05 if dtype == torch.bfloat16 else 0.01
    assert (out - cpu.decode(z)).abs().mean().item() < tol / 5
    assert (out - cpu.decode(z)).abs().max().item() < tol * 4


def test_fp16_overflow_falls_back_on_cuda(state_dict):
    gpu = VAE.from_state_dict(state_dict, device="cuda", dtype=torch.float16)
    z = torch.randn(1, 4, 8, 8) * 3e4
    out = gpu.decode(z)
    assert torch.isfinite(out).all() and gpu.dtype == torch.float32


def test_memory_estimate_bounds_measured_peak(state_dict):
    gpu = VAE.from_state_dict(state_dict, device="cuda", dtype=torch.float32)
    z = torch.randn(1, 4, 64, 64)
    gpu.decode(z[:, :, :8, :8])  # weights placed before measuring
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    gpu.decode(z)
    peak = torch.cuda.max_memory_allocated() - base
    estimate = gpu.memory_per_sample(512, 512)
    assert peak <= estimate <= 8 * peak  # never under, not absurdly over
