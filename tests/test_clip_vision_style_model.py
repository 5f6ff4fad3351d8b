"""The T2I style adapter against a reference module written here in the original's form
(torch.nn.MultiheadAttention blocks, quick_gelu, LayerNorms in float32), and StyleModelApply."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from diffusion.loading.files import CheckpointError
from diffusion.loading.vision import style_model_from_state_dict
from diffusion.models.clip_vision import ClipVisionOutput
from nodes.vision_nodes import StyleModelApply


class _Block(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, width * 4))
        self.mlp.add_module("c_proj", nn.Linear(width * 4, width))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x):  # x: [L, N, D]
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        h = self.mlp.c_fc(self.ln_2(x))
        return x + self.mlp.c_proj(h * torch.sigmoid(1.702 * h))


class ReferenceStyleAdapter(nn.Module):
    def __init__(self, width=64, context_dim=32, heads=8, layers=2, tokens=3):
        super().__init__()
        self.transformer_layes = nn.Sequential(*[_Block(width, heads) for _ in range(layers)])
        self.tokens = tokens
        self.style_embedding = nn.Parameter(torch.randn(1, tokens, width) * width ** -0.5)
        self.ln_post = nn.LayerNorm(width)
        self.ln_pre = nn.LayerNorm(width)
        self.proj = nn.Parameter(width ** -0.5 * torch.randn(width, context_dim))

    def forward(self, x):
        x = torch.cat([x, self.style_embedding.expand(x.shape[0], -1, -1)], dim=1)
        x = self.ln_pre(x).permute(1, 0, 2)
        x = self.transformer_layes(x).permute(1, 0, 2)
        return self.ln_post(x[:, -self.tokens:, :]) @ self.proj


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    ref = ReferenceStyleAdapter().eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return ref


def test_tokens_equal_reference(reference):
    sd = {k: v.detach().clone() for k, v in reference.state_dict().items()}
    model = style_model_from_state_dict(sd)
    cfg = model.model.config
    assert (cfg.width, cfg.layers, cfg.tokens, cfg.context_dim) == (64, 2, 3, 32)
    hidden = torch.randn(2, 17, 64)
    with torch.no_grad():
        want = reference(hidden)
    got = model.get_cond(ClipVisionOutput(last_hidden_state=hidden))
    assert got.shape == (2, 3, 32)
    assert float((got - want).abs().max() / want.abs().max()) <= 1e-4
    saved = model.model.state_dict()
    assert set(saved) == set(sd) and all(torch.equal(saved[k], sd[k]) for k in sd)


def test_style_model_apply(reference):
    model = style_model_from_state_dict({k: v.detach().clone() for k, v in reference.state_dict().items()})
    hidden = torch.randn(2, 17, 64)
    out = ClipVisionOutput(last_hidden_state=hidden)
    tokens = model.get_cond(out).flatten(0, 1)[None]  # both images' tokens, one after another
    text = torch.randn(1, 77, 32)
    cond = [[text, {"pooled_output": torch.zeros(1, 8)}]]
    (mult,) = StyleModelApply().execute(cond, model, out, 0.5, "multiply")
    assert mult[0][0].shape == (1, 83, 32)
    assert torch.equal(mult[0][0][:, :77], text) and torch.allclose(mult[0][0][:, 77:], tokens * 0.5)
    assert "attention_mask" not in mult[0][1] and cond[0][0].shape == (1, 77, 32)
    (bias,) = StyleModelApply().execute(cond, model, out, 0.5, "attn_bias")
    assert torch.allclose(bias[0][0][:, 77:], tokens)
    mask = bias[0][1]["attention_mask"]
    assert mask.shape == (1, 84, 84) and mask.dtype == torch.float16
    assert torch.allclose(mask[0, :77, 77:83].float(), torch.full((77, 6), float(torch.log(torch.tensor(0.5)))),
                          atol=1e-3)
    assert float(mask[:, :, :77].abs().max()) == 0 and float(mask[:, :, 83:].abs().max()) == 0


def test_not_a_style_model():
    with pytest.raises(CheckpointError, match="T2I-Adapter style"):
        style_model_from_state_dict({"redux_down.weight": torch.zeros(2, 2)})
