"""The T2I-Adapter style model (STYLE_MODEL): extra conditioning tokens from an image.

`tokens` learned embeddings are appended to a CLIP vision tower's `last_hidden_state` (ViT-L/14:
257 states of width 1024), the sequence runs through a few open_clip residual attention blocks
(quick_gelu, no mask; the text tower's layers, diffusion/models/clip.py), and the outputs at the
learned positions, LayerNormed and multiplied by `proj` [width, context_dim], are the new tokens
that StyleModelApply appends to a prompt's conditioning. File keys (`style_embedding`,
`transformer_layes.N.attn.in_proj_weight`, `ln_pre`, `ln_post`, `proj`) load and save through
`diffusion.loading.vision_config.style_adapter_key_map`. Runs in float32 on the CPU, as ComfyUI.
"""
from __future__ import annotations

import torch
from torch import nn

from diffusion.loading.keymaps import use_file_layout
from diffusion.loading.vision_config import StyleAdapterConfig, style_adapter_key_map
from diffusion.models.clip import CastLayerNorm, _Encoder


class StyleAdapter(nn.Module):
    def __init__(self, config: StyleAdapterConfig):
        super().__init__()
        self.config = config
        self.style_embedding = nn.Parameter(torch.empty(1, config.tokens, config.width))
        self.ln_pre = CastLayerNorm(config.width, eps=config.eps)
        self.encoder = _Encoder(config)
        self.ln_post = CastLayerNorm(config.width, eps=config.eps)
        self.proj = nn.Parameter(torch.empty(config.width, config.context_dim))
        self.key_map = style_adapter_key_map(config)
        use_file_layout(self)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Style tokens [B, tokens, context_dim] from vision hidden states [B, N, width]."""
        if hidden.ndim != 3 or hidden.shape[-1] != self.config.width:
            raise ValueError(f"style model takes CLIP vision hidden states [batch, tokens, {self.config.width}], "
                             f"got shape {tuple(hidden.shape)}; is the CLIP vision model the one it was "
                             "trained with (ViT-L/14)?")
        queries = self.style_embedding.to(hidden.dtype).expand(hidden.shape[0], -1, -1)
        x = self.ln_pre(torch.cat([hidden, queries], dim=1))
        for layer in self.encoder.layers:
            x = layer(x)
        x = self.ln_post(x[:, -self.config.tokens:, :])
        return x @ self.proj.to(x.dtype)



class StyleModel:
    """STYLE_MODEL: the adapter; `get_cond(clip_vision_output)` gives its tokens [B, tokens, dim]."""

    def __init__(self, model: StyleAdapter):
        self.model = model

    def get_cond(self, clip_vision_output) -> torch.Tensor:
        hidden = clip_vision_output["last_hidden_state"].to("cpu", torch.float32)
        with torch.inference_mode():
            return self.model(hidden)
