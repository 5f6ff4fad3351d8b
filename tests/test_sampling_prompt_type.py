"""Which side a prompt is on reaches the model's extra inputs (SDXL refiner aesthetic score)."""
import math
import types

import torch

from diffusion.sampling.guidance import resolve_conditioning
from diffusion.model_patcher import ModelPatcher
from diffusion.sampling.model_sampling import ModelSampling


def refiner_patcher(pooled_width=8, per_value=4):
    net = torch.nn.Linear(1, 1)
    net.config = types.SimpleNamespace(adm_in_channels=pooled_width + 5 * per_value)
    return ModelPatcher(net, arch="sdxl_refiner", load_device="cpu", offload_device="cpu")


def score_embedding(score, dim=4):
    # sinusoidal timestep embedding of one value: [cos(v·f), sin(v·f)], f = 10000^(-i/half)
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = torch.tensor([float(score)]) * freqs
    return torch.cat([torch.cos(args), torch.sin(args)])


def test_each_side_is_tagged_and_explicit_values_win():
    ms = ModelSampling()
    cond = [[torch.zeros(1, 77, 8), {"pooled_output": torch.zeros(1, 8)}]]
    neg = resolve_conditioning(cond, ms, "negative")
    pos = resolve_conditioning(cond, ms, "positive")
    assert neg[0].options["prompt_type"] == "negative"
    assert pos[0].options["prompt_type"] == "positive"
    assert "prompt_type" not in cond[0][1]  # the caller's dict is not modified
    explicit = [[torch.zeros(1, 77, 8), {"prompt_type": "positive"}]]
    assert resolve_conditioning(explicit, ms, "negative")[0].options["prompt_type"] == "positive"


def test_refiner_default_aesthetic_score_depends_on_side():
    patcher = refiner_patcher()
    ms = ModelSampling()
    cond = [[torch.zeros(1, 77, 8), {"pooled_output": torch.zeros(1, 8)}]]
    y_neg = patcher.encode_adm(resolve_conditioning(cond, ms, "negative")[0].options, 1)
    y_pos = patcher.encode_adm(resolve_conditioning(cond, ms, "positive")[0].options, 1)
    assert torch.allclose(y_neg[0, -4:], score_embedding(2.5), atol=1e-6)
    assert torch.allclose(y_pos[0, -4:], score_embedding(6.0), atol=1e-6)
