"""The CLIP text transformer of Stable Diffusion checkpoints: one network for every file layout.

The network carries transformers' CLIPTextModel names (`text_model.embeddings.token_embedding.weight`,
`text_model.encoder.layers.N.self_attn.q_proj.weight`, `text_model.final_layer_norm.weight`,
`text_projection.weight` as a Linear), which are also the names ComfyUI gives CLIP weights. Files come
in two layouts (`config.layout`):

- "hf": those names. The OpenAI CLIP ViT-L/14 text model of SD1 (`cond_stage_model.transformer.`)
  and SDXL (`conditioner.embedders.0.transformer.`).
- "open_clip": open_clip's names. The OpenCLIP ViT-H/14 text model of SD2 (`cond_stage_model.model.`)
  and ViT-bigG/14 of SDXL (`conditioner.embedders.1.model.`, refiner `conditioner.embedders.0.model.`),
  keys `token_embedding.weight`, `positional_embedding`, `transformer.resblocks.N.attn.in_proj_weight`
  (q, k, v stacked), `ln_final.weight`, `text_projection` ([width, proj], used as `x @ P`).

`state_dict()` and `load_state_dict()` speak the file's layout through the key map of
`diffusion.loading.keymaps.clip_key_map`: loading splits in_proj into row views for q, k and v and
transposes the projection as a view (no copies), saving stacks and transposes back, so a model saves
under the keys its file had. A model from an open_clip file still computes q, k and v as ONE matmul
over the stacked weight, as that layout does: three matmuls may round differently.

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
from diffusion.loading.keymaps import clip_key_map, stack_rows, use_file_layout
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


# --- the network --------------------------------------------------------------------------------

class _Attention(nn.Module):
    def __init__(self, cfg: ClipTextConfig):
        super().__init__()
        self.heads = cfg.heads
        # text towers attend causally; vision towers and the style adapter (cfg.causal False) do not
        self.causal = getattr(cfg, "causal", True)
        # open_clip files stack q, k, v: one matmul over the stacked rows keeps that layout's rounding
        self.fused_qkv = cfg.layout == "open_clip"
        self.q_proj = CastLinear(cfg.width, cfg.width)
        self.k_proj = CastLinear(cfg.width, cfg.width)
        self.v_proj = CastLinear(cfg.width, cfg.width)
        self.out_proj = CastLinear(cfg.width, cfg.width)

    def forward(self, x):
        if self.fused_qkv:
            projections = (self.q_proj, self.k_proj, self.v_proj)
            weight = stack_rows([p.weight for p in projections])
            bias = stack_rows([p.bias for p in projections])
            q, k, v = F.linear(x, weight.to(x.dtype), bias.to(x.dtype)).chunk(3, dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.causal:
            return self.out_proj(_causal_self_attention(q, k, v, self.heads))
        return self.out_proj(attention(q, k, v, self.heads))


class _MLP(nn.Module):
    def __init__(self, cfg: ClipTextConfig):
        super().__init__()
        self.fc1 = CastLinear(cfg.width, cfg.mlp_width)
        self.fc2 = CastLinear(cfg.mlp_width, cfg.width)
        self.act = _activation(cfg.activation)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _Layer(nn.Module):
    def __init__(self, cfg: ClipTextConfig):
        super().__init__()
        self.layer_norm1 = CastLayerNorm(cfg.width, eps=cfg.eps)
        self.self_attn = _Attention(cfg)
        self.layer_norm2 = CastLayerNorm(cfg.width, eps=cfg.eps)
        self.mlp = _MLP(cfg)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class _Embeddings(nn.Module):
    def __init__(self, cfg: ClipTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.position_embedding = nn.Embedding(cfg.context_length, cfg.width)


class _Encoder(nn.Module):
    def __init__(self, cfg: ClipTextConfig):
        super().__init__()
        self.layers = nn.ModuleList(_Layer(cfg) for _ in range(cfg.layers))


class _TextTransformer(nn.Module):
    def __init__(self, cfg: ClipTextConfig):
        super().__init__()
        self.embeddings = _Embeddings(cfg)
        self.encoder = _Encoder(cfg)
        self.final_layer_norm = CastLayerNorm(cfg.width, eps=cfg.eps)


# --- the model ----------------------------------------------------------------------------------------

class ClipTextOutput(NamedTuple):
    last_hidden: torch.Tensor  # [B, N, width], after the final LayerNorm
    hidden: torch.Tensor | None  # [B, N, width], raw output of the requested layer (no final norm)
    pooled: torch.Tensor  # [B, width], final-normed state at each row's EOS position
    projected: torch.Tensor  # [B, proj], pooled through text_projection (identity when the file has none)


class ClipTextModel(nn.Module):
    """A CLIP text transformer; its state dict is in the file layout `config.layout`."""

    def __init__(self, config: ClipTextConfig):
        super().__init__()
        self.config = config
        self.text_model = _TextTransformer(config)
        if config.projection_dim is not None:
            self.text_projection = CastLinear(config.width, config.projection_dim, bias=False)
        # The file layout in and out of state_dict / load_state_dict (the public hook names need torch 2.5).
        self.key_map = clip_key_map(config)
        use_file_layout(self)

    @property
    def token_embedding_weight(self) -> torch.Tensor:
        return self.text_model.embeddings.token_embedding.weight

    def final_norm(self, x):
        """The final LayerNorm (SD1 applies it to a clip-skip hidden state too)."""
        return self.text_model.final_layer_norm(x)

    def _project(self, pooled):
        return pooled if self.config.projection_dim is None else self.text_projection(pooled)

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
        x = inputs_embeds + self.text_model.embeddings.position_embedding.weight[:n].to(inputs_embeds.dtype)
        blocks = self.text_model.encoder.layers
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

