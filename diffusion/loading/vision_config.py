"""Sizes of the image-side networks, detected from weights, and their file key maps.

- `ClipVisionConfig`: a CLIP vision tower (OpenAI ViT-L/14, LAION ViT-H/14 and ViT-bigG/14 as
  released; scaled-down ones too). Files come in transformers' names ("hf": `vision_model.*`,
  `visual_projection.weight`; the clip_vision files ComfyUI users download) or in open_clip's
  ("open_clip": `conv1.weight`, `class_embedding`, `positional_embedding`, `ln_pre`,
  `transformer.resblocks.N.*`, `ln_post`, `proj`; what unCLIP checkpoints embed under
  `embedder.model.visual.`). The network (diffusion/models/clip_vision.py) carries transformers'
  names; `clip_vision_key_map` maps the open_clip layout onto them, in_proj split into q/k/v views
  and the projection transposed, through `diffusion.loading.keymaps` as for the text towers.
- `StyleAdapterConfig`: the T2I-Adapter style model (`style_embedding`, `transformer_layes.N.*`,
  `ln_pre`, `ln_post`, `proj`), whose blocks are open_clip blocks.

What the weights cannot say, and how we decide it:
- attention heads: every released vision tower uses 16 heads (64, 80 and 104 channels each), the
  style adapter 8; callers may override;
- activation: OpenAI's ViT-L uses quick_gelu, the LAION towers exact gelu. As ComfyUI, a tower of
  fewer than 30 layers is treated as ViT-L (quick_gelu), a deeper one as H / bigG (gelu). The style
  adapter uses quick_gelu.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from diffusion.loading.keymaps import FileWeight, open_clip_blocks

VISION_HEADS = 16
STYLE_HEADS = 8
DEEP_TOWER_LAYERS = 30  # at and above: LAION ViT-H / bigG (gelu); below: OpenAI ViT-L (quick_gelu)

_HF_LAYER = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.")
_OPEN_CLIP_LAYER = re.compile(r"^transformer\.resblocks\.(\d+)\.")
_STYLE_LAYER = re.compile(r"^transformer_layes\.(\d+)\.")


class VisionConfigError(ValueError):
    """Weights that are not a CLIP vision tower or style adapter we can build."""


def _layer_count(sd, pattern: re.Pattern, what: str) -> int:
    ids = {int(m.group(1)) for k in sd for m in [pattern.match(k)] if m}
    if not ids:
        raise VisionConfigError(f"{what} has no transformer layers")
    n = max(ids) + 1
    if ids != set(range(n)):
        raise VisionConfigError(f"{what} is missing layers {sorted(set(range(n)) - ids)}")
    return n


def _shape(sd, key: str, what: str) -> tuple:
    if key not in sd:
        raise VisionConfigError(f"{what}: expected weight '{key}' is missing")
    return tuple(sd[key].shape)


@dataclass(frozen=True)
class ClipVisionConfig:
    layout: str  # "hf" | "open_clip": the file's key layout
    width: int
    layers: int
    heads: int
    mlp_width: int  # not always 4 x width (bigG: 1664 -> 8192)
    patch_size: int
    image_size: int
    projection_dim: int
    activation: str  # "quick_gelu" | "gelu"
    eps: float = 1e-5
    causal = False  # read by diffusion.models.clip's attention (class attribute, not a field)

    def __post_init__(self):
        if self.width % self.heads:
            raise VisionConfigError(f"CLIP vision width {self.width} is not divisible by {self.heads} heads")

    @property
    def positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1

    @classmethod
    def from_state_dict(cls, sd, activation: str | None = None, heads: int | None = None) -> "ClipVisionConfig":
        """Sizes of a vision tower whose keys start at the tower (`vision_model.*` or `conv1.weight`...)."""
        layout = detect_vision_layout(sd)
        what = f"CLIP vision tower ({layout} layout)"
        if layout == "hf":
            patch = _shape(sd, "vision_model.embeddings.patch_embedding.weight", what)
            positions = _shape(sd, "vision_model.embeddings.position_embedding.weight", what)[0]
            projection = _shape(sd, "visual_projection.weight", what)[0]
            layers = _layer_count(sd, _HF_LAYER, what)
            mlp = _shape(sd, "vision_model.encoder.layers.0.mlp.fc1.weight", what)[0]
        else:
            patch = _shape(sd, "conv1.weight", what)
            positions = _shape(sd, "positional_embedding", what)[0]
            projection = _shape(sd, "proj", what)[1]
            layers = _layer_count(sd, _OPEN_CLIP_LAYER, what)
            mlp = _shape(sd, "transformer.resblocks.0.mlp.c_fc.weight", what)[0]
        width, channels, patch_size = patch[0], patch[1], patch[2]
        if channels != 3:
            raise VisionConfigError(f"{what}: patch embedding takes {channels} channels, expected 3 (RGB)")
        side = round((positions - 1) ** 0.5)
        if side * side != positions - 1:
            raise VisionConfigError(f"{what}: {positions} positions are not a square grid plus the class token")
        if activation is None:
            activation = "gelu" if layers >= DEEP_TOWER_LAYERS else "quick_gelu"
        return cls(layout=layout, width=width, layers=layers, heads=heads or VISION_HEADS, mlp_width=mlp,
                   patch_size=patch_size, image_size=side * patch_size, projection_dim=projection,
                   activation=activation)


def detect_vision_layout(sd) -> str:
    """"hf" or "open_clip" for a vision-tower state dict with its prefix stripped."""
    if "vision_model.embeddings.patch_embedding.weight" in sd:
        return "hf"
    if "conv1.weight" in sd and "class_embedding" in sd:
        return "open_clip"
    sample = ", ".join(sorted(sd)[:3]) or "no keys"
    raise VisionConfigError(f"not a CLIP vision tower: no patch embedding found (keys start: {sample})")


def clip_vision_key_map(config: ClipVisionConfig) -> dict[str, FileWeight]:
    """File key -> network weights for a tower whose file has `config.layout` (empty for "hf")."""
    if config.layout == "hf":
        return {}
    emb = "vision_model.embeddings."
    out = {"class_embedding": FileWeight((emb + "class_embedding",)),
           "positional_embedding": FileWeight((emb + "position_embedding.weight",)),
           "proj": FileWeight(("visual_projection.weight",), transposed=True),
           "conv1.weight": FileWeight((emb + "patch_embedding.weight",))}
    for part in ("weight", "bias"):
        out[f"ln_pre.{part}"] = FileWeight((f"vision_model.pre_layrnorm.{part}",))
    out.update(open_clip_blocks(config.layers, "transformer.resblocks.", "vision_model.encoder.layers."))
    for part in ("weight", "bias"):
        out[f"ln_post.{part}"] = FileWeight((f"vision_model.post_layernorm.{part}",))
    return out


@dataclass(frozen=True)
class StyleAdapterConfig:
    """The T2I-Adapter style model: `tokens` learned queries run with the image's hidden states through
    `layers` open_clip blocks; their outputs, normed and projected to `context_dim`, are the tokens."""

    width: int
    layers: int
    tokens: int
    context_dim: int
    heads: int = STYLE_HEADS
    activation: str = "quick_gelu"
    eps: float = 1e-5
    layout = "open_clip"  # its blocks stack q, k, v (class attributes read by diffusion.models.clip)
    causal = False

    @property
    def mlp_width(self) -> int:
        return 4 * self.width

    @classmethod
    def from_state_dict(cls, sd, heads: int | None = None) -> "StyleAdapterConfig":
        what = "style model"
        if "style_embedding" not in sd:
            raise VisionConfigError(f"{what}: no 'style_embedding' weight; not a T2I style adapter")
        _, tokens, width = _shape(sd, "style_embedding", what)
        proj = _shape(sd, "proj", what)
        if proj[0] != width:
            raise VisionConfigError(f"{what}: proj {list(proj)} does not start at the width {width}")
        return cls(width=width, layers=_layer_count(sd, _STYLE_LAYER, what), tokens=tokens,
                   context_dim=proj[1], heads=heads or STYLE_HEADS)


def style_adapter_key_map(config: StyleAdapterConfig) -> dict[str, FileWeight]:
    """File key -> network weights of the style adapter (its blocks become transformers-named layers)."""
    return open_clip_blocks(config.layers, "transformer_layes.", "encoder.layers.")
