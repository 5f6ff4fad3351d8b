"""Key maps: from the names weights carry in files to the names our networks use.

The UNet and the VAE keep the original single-file names below their checkpoint prefix, so for them
the mapping is stripping a prefix and dropping keys the networks do not use. The CLIP text network
carries transformers' names; `clip_key_map` says how open_clip's file layout maps onto it (the idea of
mlx-examples' `model_io.py`), and `file_to_network` / `network_to_file` apply that map both ways, so
a model saves back under the keys its file had.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from diffusion.loading.config import ClipTextConfig, VAEConfig, VAEError

log = logging.getLogger(__name__)

# Keys some VAE files carry that are not part of the network (training leftovers).
_VAE_IGNORED_PREFIXES = ("loss.", "model_ema.")
_VAE_ATTN_WEIGHTS = ("q", "k", "v", "proj_out")
# Keys real checkpoints carry that the networks do not use: HF's position_ids buffer (positions are
# always 0..N-1) and open_clip's contrastive logit_scale.
IGNORED_KEYS = ("text_model.embeddings.position_ids", "embeddings.position_ids", "logit_scale")


def vae_weights(sd: dict, cfg: VAEConfig, expected: dict[str, torch.Size]) -> dict:
    """Check names and shapes against the network; reshape linear attention weights to 1x1 convs.

    Some SD2/SDXL VAE files store the mid-block attention projections as [C, C] (linear) instead of
    [C, C, 1, 1]; both are the same numbers.
    """
    out, unexpected = {}, []
    for key, tensor in sd.items():
        if key.startswith(_VAE_IGNORED_PREFIXES):
            continue
        if key not in expected:
            unexpected.append(key)
            continue
        parts = key.split(".")
        if (len(parts) >= 4 and parts[-3] == "attn_1" and parts[-2] in _VAE_ATTN_WEIGHTS
                and parts[-1] == "weight" and tensor.ndim == 2):
            tensor = tensor.reshape(*tensor.shape, 1, 1)
        if tuple(tensor.shape) != tuple(expected[key]):
            raise VAEError(f"VAE weight '{key}' has shape {list(tensor.shape)}, expected "
                           f"{list(expected[key])} for the detected config {cfg}")
        out[key] = tensor
    missing = [k for k in expected if k not in out]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise VAEError(f"VAE state dict is missing key '{missing[0]}'{more}")
    if unexpected:
        log.warning("VAE state dict: ignoring %d unexpected keys, e.g. '%s'", len(unexpected), unexpected[0])
    return out


def normalize_text_model_keys(sd) -> dict:
    """Drop `IGNORED_KEYS` and put HF-layout keys under `text_model.` where a file lacks that level
    (old SD1 conversions store `cond_stage_model.transformer.embeddings.*`; ComfyUI renames them too)."""
    sd = {k: v for k, v in sd.items() if k not in IGNORED_KEYS}
    if "embeddings.token_embedding.weight" in sd and "text_model.embeddings.token_embedding.weight" not in sd:
        sd = {(k if k.startswith("text_projection") else "text_model." + k): v for k, v in sd.items()}
    return sd


# --- CLIP text models: file layouts onto the one network (diffusion.models.clip) -------------------

@dataclass(frozen=True)
class FileWeight:
    """How one weight of a text-encoder file is made of the network's weights: `parts` stacked on
    rows (open_clip's in_proj holds q, k and v), transposed if `transposed` (open_clip multiplies
    `x @ text_projection`; a Linear stores the transpose)."""

    parts: tuple[str, ...]
    transposed: bool = False


# open_clip block names -> transformers layer names, both below the layer's prefix
_OPEN_CLIP_BLOCK = (("ln_1", "layer_norm1"), ("attn.out_proj", "self_attn.out_proj"), ("ln_2", "layer_norm2"),
                    ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"))


def clip_key_map(config: ClipTextConfig) -> dict[str, FileWeight]:
    """File key -> `FileWeight` for a text model whose file has `config.layout`.

    Empty for "hf": the network's names are that layout's. For "open_clip" the keys come in the
    order open_clip's modules list them, so a saved file keeps its original order.
    """
    if config.layout == "hf":
        return {}
    out = {"positional_embedding": FileWeight(("text_model.embeddings.position_embedding.weight",))}
    if config.projection_dim is not None:
        out["text_projection"] = FileWeight(("text_projection.weight",), transposed=True)
    out["token_embedding.weight"] = FileWeight(("text_model.embeddings.token_embedding.weight",))
    out.update(open_clip_blocks(config.layers, "transformer.resblocks.", "text_model.encoder.layers."))
    for part in ("weight", "bias"):
        out[f"ln_final.{part}"] = FileWeight((f"text_model.final_layer_norm.{part}",))
    return out


def open_clip_blocks(layers: int, src_root: str, dst_root: str) -> dict[str, FileWeight]:
    """Key map of `layers` open_clip residual attention blocks (`{src_root}N.ln_1.weight`,
    `attn.in_proj_weight`, ...) onto transformers' layers (`{dst_root}N.layer_norm1.weight`, ...):
    the text and vision towers and the T2I style adapter share this block."""
    out = {}
    for i in range(layers):
        src, dst = f"{src_root}{i}.", f"{dst_root}{i}."
        for old, new in _OPEN_CLIP_BLOCK:
            for part in ("weight", "bias"):
                out[f"{src}{old}.{part}"] = FileWeight((f"{dst}{new}.{part}",))
            if old == "ln_1":  # in_proj sits between ln_1 and out_proj in open_clip's order
                for part in ("weight", "bias"):
                    out[f"{src}attn.in_proj_{part}"] = FileWeight(
                        tuple(f"{dst}self_attn.{p}_proj.{part}" for p in "qkv"))
    return out


def file_to_network(sd: dict, key_map: dict[str, FileWeight], prefix: str = "") -> None:
    """Rename, in place, the file weights under `prefix` to network weights: stacked ones become row
    slices and transposed ones transposed views, so nothing is copied."""
    for file_key, fw in key_map.items():
        tensor = sd.pop(prefix + file_key, None)
        if tensor is None:
            continue
        if fw.transposed:
            tensor = tensor.t()
        for part, piece in zip(fw.parts, tensor.chunk(len(fw.parts)) if len(fw.parts) > 1 else (tensor,)):
            sd[prefix + part] = piece


def network_to_file(sd: dict, key_map: dict[str, FileWeight], prefix: str = "") -> None:
    """The inverse of `file_to_network`, in place, in the key map's (the file's) order."""
    for file_key, fw in key_map.items():
        if prefix + fw.parts[0] not in sd:
            continue
        tensor = stack_rows([sd.pop(prefix + part) for part in fw.parts])
        sd[prefix + file_key] = tensor.t() if fw.transposed else tensor


def stack_rows(parts: list[torch.Tensor]) -> torch.Tensor:
    """`torch.cat(parts)`, but a view without a copy when the parts are consecutive row slices of one
    tensor, which is how `file_to_network` leaves a stacked weight until a patch or a device move
    replaces a part."""
    first = parts[0]
    if len(parts) == 1:
        return first
    offset = first.storage_offset()
    for p in parts:
        if (p.device.type == "meta" or p.device != first.device or p.dtype != first.dtype
                or not p.is_contiguous() or p.shape[1:] != first.shape[1:] or p.storage_offset() != offset
                or p.untyped_storage().data_ptr() != first.untyped_storage().data_ptr()):
            return torch.cat(parts)
        offset += p.numel()
    return first.as_strided((sum(p.shape[0] for p in parts), *first.shape[1:]), first.stride())


def use_file_layout(module) -> None:
    """Make `module.state_dict()` and `load_state_dict()` speak the file layout of `module.key_map`
    (a `FileWeight` map): saving renames network weights to file keys, loading the other way."""
    module._register_state_dict_hook(_to_file_layout)
    module._register_load_state_dict_pre_hook(_from_file_layout, with_module=True)


def _to_file_layout(module, sd: dict, prefix: str, _metadata) -> None:
    network_to_file(sd, module.key_map, prefix)


def _from_file_layout(module, sd: dict, prefix: str, *_args) -> None:
    file_to_network(sd, module.key_map, prefix)
