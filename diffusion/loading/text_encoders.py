"""Building the CLIP object from weights: a checkpoint's towers or separate text-encoder files.

A checkpoint names its towers by prefix (`diffusion.text.encoder.TOWERS`); a separate text-encoder
file may carry any prefix and either layout, so the text model is found by its token embedding and
the architecture guessed from its sizes, as ComfyUI's CLIPLoader does.
"""
from __future__ import annotations

import logging

import torch

from diffusion import memory
from diffusion.loading.config import ClipConfigError, ClipTextConfig, detect_layout
from diffusion.loading.keymaps import normalize_text_model_keys
from diffusion.models.clip import ClipTextModel
from diffusion.text.encoder import ARCHES, CLIP, TOWERS, TextEncoderError, default_dtypes

log = logging.getLogger(__name__)

TEXT_ENCODER_KINDS = ("stable_diffusion", "sd1", "sd2", "sdxl", "sdxl_refiner")


def text_model_from_state_dict(sd, activation: str, *, dtype=None, device="cpu", heads=None,
                               where: str = "text encoder") -> ClipTextModel:
    """Build a `ClipTextModel` from weights whose keys start at the text model (prefix stripped).

    The tensors are cast to `dtype` (default: `diffusion.memory.text_encoder_dtype`) and assigned
    without an extra copy where they already have it. `where` names the source in error messages.
    """
    sd = normalize_text_model_keys(sd)
    try:
        config = ClipTextConfig.from_state_dict(sd, activation=activation, heads=heads)
    except (ClipConfigError, KeyError) as exc:
        raise TextEncoderError(f"{where}: {exc}") from exc
    with torch.device("meta"):
        model = ClipTextModel(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing:
        raise TextEncoderError(f"{where}: missing {len(missing)} weights, e.g. {missing[:3]}")
    if unexpected:
        log.warning("%s: ignoring %d unknown weights, e.g. %s", where, len(unexpected), unexpected[:3])
    bad = [(k, tuple(sd[k].shape), s) for k, s in expected.items() if tuple(sd[k].shape) != s]
    if bad:
        k, got, want = bad[0]
        raise TextEncoderError(f"{where}: weight {k} has shape {got}, expected {want} ({len(bad)} mismatched)")
    dtype = dtype or default_dtypes(device)[0]
    tensors = {k: sd[k].to(device=device, dtype=dtype) for k in expected}
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.requires_grad_(False).eval()


def build_clip(arch: str, tower_sds: dict[str, dict], embedding_dirs, dtype, device, compute_dtype, where,
               heads: dict[str, int] | None = None, missing_layers: dict[str, int] | None = None):
    device = torch.device(device) if device is not None else memory.get_torch_device()
    dtype = dtype or default_dtypes(device)[0]
    # Weights start on the CPU (no copy of memory-mapped tensors already in `dtype`); the patcher
    # moves them to `device` when a prompt is encoded, and diffusion.memory may move them back.
    encoders = {
        spec.key: text_model_from_state_dict(
            tower_sds[spec.key], spec.activation, dtype=dtype, device="cpu",
            where=f"{where} ({spec.key!r} text encoder)", heads=(heads or {}).get(spec.key),
        )
        for spec in TOWERS[arch]
    }
    return CLIP(arch, encoders, embedding_dirs, device=device, compute_dtype=compute_dtype,
                missing_layers=missing_layers)


def clip_from_state_dict(sd, arch: str, embedding_dirs=(), *, dtype=None, device=None, compute_dtype=None) -> CLIP:
    """CLIP from a checkpoint's state dict with its ORIGINAL prefixes (`cond_stage_model.`, `conditioner.`).

    `dtype`: storage dtype of the weights, `device`: where they live and run, `compute_dtype`:
    defaults from `diffusion.memory` (fp16 storage; CUDA when present; float32 compute on CPU).
    """
    if arch not in TOWERS:
        raise TextEncoderError(f"unknown architecture {arch!r}; expected one of {ARCHES}")
    tower_sds = {}
    for spec in TOWERS[arch]:
        sub = {k[len(spec.prefix):]: v for k, v in sd.items() if k.startswith(spec.prefix)}
        if not sub:
            raise TextEncoderError(f"{arch} checkpoint has no text encoder weights under {spec.prefix!r}")
        tower_sds[spec.key] = sub
    return build_clip(arch, tower_sds, embedding_dirs, dtype, device, compute_dtype, where=f"{arch} checkpoint")


# --- separate text-encoder files --------------------------------------------------------------------

# Where a text model starts, by the key of its token embedding, most specific first: transformers
# files with the `text_model.` level, those without it (transformers 5 CLIPTextModel, some old SD1
# conversions), then open_clip.
_ROOT_KEYS = ("text_model.embeddings.token_embedding.weight", "embeddings.token_embedding.weight",
              "token_embedding.weight")


def strip_to_text_model(sd, where: str = "text encoder") -> dict:
    """Keys below whatever prefix a text-encoder file uses (``, `clip_l.transformer.`, ...),
    normalised by `normalize_text_model_keys`."""
    for root in _ROOT_KEYS:
        for key in sd:
            if key.endswith(root):
                prefix = key[: -len(root)]
                sub = normalize_text_model_keys({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)})
                try:
                    detect_layout(sub)
                    return sub
                except ClipConfigError:
                    continue
    raise TextEncoderError(f"{where}: no CLIP text model found (no token embedding weights)")


def _config_of(sd) -> ClipTextConfig:
    """Sizes only (activation and heads do not matter to the callers)."""
    return ClipTextConfig.from_state_dict(normalize_text_model_keys(sd), "gelu", heads=1)


def _guess_single_arch(sd) -> str:
    """Which architecture a lone text-encoder file serves under the `stable_diffusion` kind.

    Like ComfyUI: a bigG-sized model (31+ layers) is the SDXL refiner's, an OpenCLIP model (open_clip
    layout, or width 1024) is SD2's, anything else is SD1's CLIP-L.
    """
    cfg = _config_of(sd)
    if cfg.layers >= 31:
        return "sdxl_refiner"
    if cfg.layout == "open_clip" or cfg.width == 1024:
        return "sd2"
    return "sd1"


def clip_from_text_encoder_files(sds: list[dict], kind: str, embedding_dirs=(), *, dtype=None,
                                       device=None, compute_dtype=None, names=None) -> CLIP:
    """CLIP from the state dicts of separate text-encoder files (HF `text_model.*` or open_clip layout,
    any prefix; the weights of `diffusion.loading.checkpoint.load_text_encoders`).

    kind: "stable_diffusion" (one file; SD1 / SD2 / refiner guessed from its sizes), "sd1", "sd2",
    "sdxl_refiner" (one file each) or "sdxl" (two files, CLIP-L and bigG in either order: the wider
    one, else the deeper one, else the second, is bigG).
    """
    names = list(names) if names is not None else [f"text encoder {i + 1}" for i in range(len(sds))]
    if kind not in TEXT_ENCODER_KINDS:
        raise TextEncoderError(f"unknown text encoder type {kind!r}; expected one of {TEXT_ENCODER_KINDS}")
    subs = [strip_to_text_model(sd, where=name) for sd, name in zip(sds, names)]
    wanted = 2 if kind == "sdxl" else 1
    if len(subs) != wanted:
        raise TextEncoderError(f"text encoder type {kind!r} takes {wanted} file(s), got {len(subs)}: {names}")
    if kind == "sdxl":
        def size(i):
            cfg = _config_of(subs[i])
            return cfg.width, cfg.layers, i
        g = max(range(2), key=size)
        tower_sds = {"l": subs[1 - g], "g": subs[g]}
        where = f"{names[1 - g]} + {names[g]}"
        arch = "sdxl"
    else:
        arch = _guess_single_arch(subs[0]) if kind == "stable_diffusion" else kind
        tower_sds = {TOWERS[arch][0].key: subs[0]}
        where = names[0]
    return build_clip(arch, tower_sds, embedding_dirs, dtype, device, compute_dtype, where=where)
