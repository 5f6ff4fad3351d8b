"""CLIP text transformers as stored in Stable Diffusion checkpoints, and their sizes.

Two parameter layouts of the same pre-LayerNorm causal transformer occur in the files we load:

- "hf" (transformers' CLIPTextModel names): the OpenAI CLIP ViT-L/14 text model of SD1
  (`cond_stage_model.transformer.`) and SDXL (`conditioner.embedders.0.transformer.`), keys
  `text_model.embeddings.token_embedding.weight`, `text_model.encoder.layers.N.self_attn.q_proj.weight`,
  `text_model.final_layer_norm.weight`, optionally `text_projection.weight` ([proj, width], a Linear).
- "open_clip" (open_clip's names): the OpenCLIP ViT-H/14 text model of SD2 (`cond_stage_model.model.`)
  and ViT-bigG/14 of SDXL (`conditioner.embedders.1.model.`, refiner `conditioner.embedders.0.model.`),
  keys `token_embedding.weight`, `positional_embedding`, `transformer.resblocks.N.attn.in_proj_weight`
  (q, k, v stacked), `ln_final.weight`, `text_projection` ([width, proj], used as `x @ P`).

Each layout has its own module tree whose `state_dict()` keys are exactly the file's keys below the
prefix, so weights load with `load_state_dict(strict=True)` and a model built here can be saved back in
the original layout. The forward pass is shared.

Sizes come from keys and shapes (`diffusion.loading.config.ClipTextConfig`, which also says how
heads and activation are decided).

Weights may be stored in a lower precision than the computation (ComfyUI keeps text encoders in fp16
and computes in fp32 on CPU): every layer casts its weights to the dtype of its input.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.loading.config import ClipTextConfig
from diffusion.models.attention import attention

# --- layers whose weights are cast to the input's dtype (storage dtype may differ from compute) ----

class CastLinear(nn.Linear):
    def forward(self, x):
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


class CastLayerNorm(nn.LayerNorm):
    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


def _activation(name: str):
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    return F.gelu  # exact (erf) gelu, as open_clip's nn.GELU and transformers' "gelu"


def _causal_self_attention(q, k, v, heads: int):
    n = q.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    return attention(q, k, v, heads, mask=causal)


# --- "hf" layout -------------------------------------------------------------------------------------

class _HFAttention(nn.Module):
    def __init__(self, cfg: ClipTextConfig):
        super().__init__()
        self.heads = cfg.heads
        self.q_proj = CastLinear(cfg.width, cfg.width)
        self.k_proj = CastLinear(cfg.width, cfg.width)
        self.v_proj = CastLinear(cfg.width, cfg.width)
        self.out_proj = CastLinear(cfg.width, cfg.width)

    def forward(self, x):
        out = _causal_self_attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads)
        return self.out_proj(out)


class _HFMLP(nn.Module):
    def __init__(self, cfg: ClipTextConfig):
        super().__init__()
        self.fc1 = CastLinear(cfg.width, cfg.mlp_width)
        self.fc2 = CastLinear(cfg.mlp_width, cfg.width)
        self.act = _activation(cfg.activation)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _HFLayer(nn.Module):
    def __init__(self, cfg: ClipTextConfig):
        super().__init__()
        self.layer_norm1 = CastLayerNorm(cfg.width, eps=cfg.eps)
        self.self_attn = _HFAttention(cfg)
        self.layer_norm2 = CastLayerNorm(cfg.width, eps=cfg.eps)
        self.mlp = _HFMLP(cfg)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class _HFEmbeddings(nn.Module):
    def __init__(self, cfg: ClipTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.position_embedding = nn.Embedding(cfg.context_length, cfg.width)


class _HFEncoder(nn.Module):
    def __init__(self, cfg: ClipTextConfig):
        super().__init__()
        self.layers = nn.ModuleList(_HFLayer(cfg) for _ in range(cfg.layers))


class _HFTextTransformer(nn.Module):
    def __init__(self, cfg: ClipTextConfig):
        super().__init__()
        self.embeddings = _HFEmbeddings(cfg)
        self.encoder = _HFEncoder(cfg)
        self.final_layer_norm = CastLayerNorm(cfg.width, eps=cfg.eps)


# --- "open_clip" layout ------------------------------------------------------------------------------

class _OpenClipAttention(nn.Module):
    def __init__(self, cfg: ClipTextConfig):
        super().__init__()
        self.heads = cfg.heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * cfg.width, cfg.width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * cfg.width))
        self.out_proj = CastLinear(cfg.width, cfg.width)

    def forward(self, x):
        qkv = F.linear(x, self.in_proj_weight.to(x.dtype), self.in_proj_bias.to(x.dtype))
        q, k, v = qkv.chunk(3, dim=-1)
        return self.out_proj(_causal_self_attention(q, k, v, self.heads))


class _OpenClipMLP(nn.Module):
    def __init__(self, cfg: ClipTextConfig):
        super().__init__()
        self.c_fc = CastLinear(cfg.width, cfg.mlp_width)
        self.c_proj = CastLinear(cfg.mlp_width, cfg.width)
        self.act = _activation(cfg.activation)

    def forward(self, x):
        return self.c_proj(self.act(self.c_fc(x)))


class _OpenClipBlock(nn.Module):
    def __init__(self, cfg: ClipTextConfig):
        super().__init__()
        self.ln_1 = CastLayerNorm(cfg.width, eps=cfg.eps)
        self.attn = _OpenClipAttention(cfg)
        self.ln_2 = CastLayerNorm(cfg.width, eps=cfg.eps)
        self.mlp = _OpenClipMLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class _OpenClipTransformer(nn.Module):
    def __init__(self, cfg: ClipTextConfig):
        super().__init__()
        self.resblocks = nn.ModuleList(_OpenClipBlock(cfg) for _ in range(cfg.layers))


# --- the model ----------------------------------------------------------------------------------------

class ClipTextOutput(NamedTuple):
    last_hidden: torch.Tensor  # [B, N, width], after the final LayerNorm
    hidden: torch.Tensor | None  # [B, N, width], raw output of the requested layer (no final norm)
    pooled: torch.Tensor  # [B, width], final-normed state at each row's EOS position
    projected: torch.Tensor  # [B, proj], pooled through text_projection (identity when the file has none)


class ClipTextModel(nn.Module):
    """A CLIP text transformer in the parameter layout of `config.layout`."""

    def __init__(self, config: ClipTextConfig):
        super().__init__()
        self.config = config
        if config.layout == "hf":
            self.text_model = _HFTextTransformer(config)
            if config.projection_dim is not None:
                self.text_projection = CastLinear(config.width, config.projection_dim, bias=False)
        else:
            self.token_embedding = nn.Embedding(config.vocab_size, config.width)
            self.positional_embedding = nn.Parameter(torch.empty(config.context_length, config.width))
            self.transformer = _OpenClipTransformer(config)
            self.ln_final = CastLayerNorm(config.width, eps=config.eps)
            if config.projection_dim is not None:
                self.text_projection = nn.Parameter(torch.empty(config.width, config.projection_dim))

    # Accessors hiding the layout, so the forward pass is written once.
    @property
    def token_embedding_weight(self) -> torch.Tensor:
        if self.config.layout == "hf":
            return self.text_model.embeddings.token_embedding.weight
        return self.token_embedding.weight

    def _positions(self) -> torch.Tensor:
        if self.config.layout == "hf":
            return self.text_model.embeddings.position_embedding.weight
        return self.positional_embedding

    def _blocks(self) -> nn.ModuleList:
        return self.text_model.encoder.layers if self.config.layout == "hf" else self.transformer.resblocks

    def final_norm(self, x):
        """The final LayerNorm (SD1 applies it to a clip-skip hidden state too)."""
        return self.text_model.final_layer_norm(x) if self.config.layout == "hf" else self.ln_final(x)

    def _project(self, pooled):
        if self.config.projection_dim is None:
            return pooled
        if self.config.layout == "hf":
            return self.text_projection(pooled)
        return pooled @ self.text_projection.to(pooled.dtype)

    def embed_tokens(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Token embeddings [B, N, width] for ids [B, N] (no positions), in `dtype`."""
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size):
            raise ValueError(
                f"token id out of range 0..{self.config.vocab_size - 1}: {int(ids.min())}..{int(ids.max())}"
            )
        return F.embedding(ids, self.token_embedding_weight).to(dtype)

    def forward(self, inputs_embeds: torch.Tensor, eos_index: torch.Tensor, hidden_layer: int | None = None):
        """Run the transformer on token embeddings [B, N, width] (N <= context length).

        `eos_index` [B] is the position pooled for each row. `hidden_layer` (Python indexing over the
        layers, -1 = last) selects which layer's raw output is returned as `hidden`; the same index
        as transformers' `hidden_states[hidden_layer]`, whose entry 0 is the embeddings.
        """
        n = inputs_embeds.shape[1]
        if n > self.config.context_length:
            raise ValueError(f"{n} tokens exceed the CLIP context length {self.config.context_length}")
        x = inputs_embeds + self._positions()[:n].to(inputs_embeds.dtype)
        blocks = self._blocks()
        pick = None
        if hidden_layer is not None:
            if not -len(blocks) <= hidden_layer < len(blocks):
                raise ValueError(f"CLIP layer {hidden_layer} out of range for {len(blocks)} layers")
            pick = hidden_layer % len(blocks)
        hidden = None
        for i, block in enumerate(blocks):
            x = block(x)
            if i == pick:
                hidden = x
        last = self.final_norm(x)
        pooled = last[torch.arange(last.shape[0], device=last.device), eos_index.to(last.device)]
        return ClipTextOutput(last, hidden, pooled, self._project(pooled))
