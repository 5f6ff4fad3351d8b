"""Loading the image-side networks: CLIP vision towers (CLIP_VISION) and style models (STYLE_MODEL).

A CLIP vision file may put its tower under any prefix (`vision_model.` at the root in transformers'
files, `visual.` in open_clip's, `embedder.model.visual.` inside an SD2.1-unCLIP checkpoint); the tower
is found by its patch embedding, its sizes detected (diffusion/loading/vision_config.py), and the
weights assigned without a copy where they already have the wanted dtype. Keys outside the tower
(a full CLIP's text model, `logit_scale`, transformers' `position_ids` buffer) are ignored.
"""
from __future__ import annotations

import logging

import torch

from diffusion import memory
from diffusion.loading.files import CheckpointError, read_state_dict
from diffusion.loading.vision_config import ClipVisionConfig, StyleAdapterConfig, VisionConfigError
from diffusion.models.clip_vision import ClipVision, ClipVisionModel
from diffusion.models.style_model import StyleAdapter, StyleModel

log = logging.getLogger(__name__)

_HF_ROOT = "vision_model.embeddings.patch_embedding.weight"
_OPEN_CLIP_ROOT = "conv1.weight"
_IGNORED = ("vision_model.embeddings.position_ids",)


def vision_tower_prefix(sd) -> str | None:
    """The prefix the CLIP vision tower's keys share in `sd`, or None when there is none."""
    for key in sd:
        if key.endswith(_HF_ROOT):
            return key[: -len(_HF_ROOT)]
    for key in sd:
        if key.endswith(_OPEN_CLIP_ROOT):
            prefix = key[: -len(_OPEN_CLIP_ROOT)]
            if prefix + "class_embedding" in sd:
                return prefix
    return None


def _build(model_cls, config, sd: dict, dtype_of, where: str):
    """A network of `model_cls(config)` whose weights are `sd` (file layout), checked name by name
    and shape by shape, each cast to `dtype_of(network_key)` only when it differs."""
    with torch.device("meta"):
        model = model_cls(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}  # file layout
    missing = sorted(set(expected) - set(sd))
    if missing:
        raise CheckpointError(where, f"is missing {len(missing)} weights of the detected {config}, "
                                     f"e.g. {missing[:3]}")
    unexpected = sorted(set(sd) - set(expected))
    if unexpected:
        log.info("%s: ignoring %d weights that are not part of the network, e.g. %s", where, len(unexpected),
                 unexpected[:3])
    bad = [(k, tuple(sd[k].shape), s) for k, s in expected.items() if tuple(sd[k].shape) != s]
    if bad:
        k, got, want = bad[0]
        raise CheckpointError(where, f"weight '{k}' has shape {list(got)}, expected {list(want)} "
                                     f"({len(bad)} mismatched)")
    tensors = {k: _as(sd[k], dtype_of(k)) for k in expected}
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.requires_grad_(False).eval()


def _as(t: torch.Tensor, dtype) -> torch.Tensor:
    return t.to(dtype) if t.is_floating_point() and t.dtype != dtype else t


def _is_layer(key: str) -> bool:
    return key.startswith(("vision_model.encoder.layers.", "transformer.resblocks."))


def clip_vision_from_state_dict(sd: dict, where: str = "clip vision", *, dtype=None, activation=None,
                                heads=None, device=None) -> ClipVision:
    """CLIP_VISION from a state dict holding a vision tower under any prefix.

    `dtype`: storage dtype of the transformer layers (default: the text-encoder storage dtype, fp16,
    as ComfyUI); the embeddings, LayerNorms and projection stay float32. `activation` / `heads`
    override what detection assumes (see vision_config).
    """
    prefix = vision_tower_prefix(sd)
    if prefix is None:
        raise CheckpointError(where, "holds no CLIP vision tower (no 'vision_model.embeddings."
                                     "patch_embedding.weight' or open_clip 'conv1.weight' + 'class_embedding')")
    tower = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix) and k[len(prefix):] not in _IGNORED}
    try:
        config = ClipVisionConfig.from_state_dict(tower, activation=activation, heads=heads)
    except VisionConfigError as e:
        raise CheckpointError(where, str(e)) from None
    device = torch.device(device) if device is not None else memory.get_torch_device()
    storage = dtype or memory.text_encoder_dtype(device)[0]
    model = _build(ClipVisionModel, config, tower, lambda k: storage if _is_layer(k) else torch.float32, where)
    return ClipVision(model, load_device=device)


def load_clip_vision(path, **kwargs) -> ClipVision:
    """CLIPVisionLoader: CLIP_VISION from a file (transformers or open_clip layout, any prefix)."""
    sd, _ = read_state_dict(path)
    return clip_vision_from_state_dict(sd, where=path, **kwargs)


def style_model_from_state_dict(sd: dict, where: str = "style model") -> StyleModel:
    try:
        config = StyleAdapterConfig.from_state_dict(sd)
    except VisionConfigError as e:
        raise CheckpointError(where, f"{e} (only T2I-Adapter style models are supported)") from None
    return StyleModel(_build(StyleAdapter, config, sd, lambda k: torch.float32, where))


def load_style_model(path) -> StyleModel:
    """StyleModelLoader: STYLE_MODEL from a T2I-Adapter style file."""
    sd, _ = read_state_dict(path)
    return style_model_from_state_dict(sd, where=path)
