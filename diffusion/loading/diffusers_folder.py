"""Load a diffusers pipeline folder (SD1, SD2, SDXL, SDXL refiner) as MODEL, CLIP and VAE.

The folder holds `model_index.json` and one sub-folder per component: `unet/` and `vae/`
(`diffusion_pytorch_model[.fp16].safetensors` + `config.json`), `text_encoder/` and `text_encoder_2/`
(`model[.fp16].safetensors` + `config.json`), `scheduler/scheduler_config.json`. Pickled `.bin`
weights are read only with `torch.load(weights_only=True)` (diffusion/loading/files.py).

The UNet and VAE are renamed to the original single-file layout (diffusion/loading/diffusers_layout.py)
and built by the same code as a checkpoint's, so they behave exactly like the same weights loaded from
one file. What the folder says and a single file does not is used: the head layout from
`unet/config.json`, the prediction type from the scheduler config.

Text encoders are in transformers' layout already. Which folder feeds which tower follows diffusers:
`text_encoder` is SD1's CLIP-L, SD2's OpenCLIP-H or SDXL's CLIP-L; `text_encoder_2` is SDXL's bigG (the
refiner has only that one). diffusers' SD2 text encoder is OpenCLIP-H without its last layer (SD2 reads
the penultimate layer, so the conversion dropped the rest). ComfyUI loads it into the full 24-layer
tower, so its default (penultimate layer through the final norm) is this encoder's last layer, normed.
We keep the layer numbering of the full tower (`CLIP.missing_layers`): the default conditioning and
CLIPSetLastLayer(-2 or lower) equal the single file's; asking for the absent last layer is an error.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from diffusion.loading.checkpoint import LoadedCheckpoint, _make_model, _make_vae
from diffusion.loading.config import ClipTextConfig
from diffusion.loading.diffusers_layout import LayoutError, unet_head_metadata, unet_to_original, vae_to_original
from diffusion.loading.files import CheckpointError, read_state_dict
from diffusion.loading.keymaps import normalize_text_model_keys
from diffusion.loading.text_encoders import build_clip
from diffusion.text.encoder import TOWERS, TextEncoderError

INDEX = "model_index.json"
# Preference order within a component folder (fp16 variants first, as ComfyUI picks them).
MODEL_FILES = ("diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors",
               "diffusion_pytorch_model.fp16.bin", "diffusion_pytorch_model.bin")
TEXT_ENCODER_FILES = ("model.fp16.safetensors", "model.safetensors", "pytorch_model.fp16.bin", "pytorch_model.bin")
# Which pipeline folder holds each tower of an architecture (TOWERS keys: "l", "h", "g").
TOWER_FOLDERS = {"sd1": {"l": "text_encoder"}, "sd2": {"h": "text_encoder"},
                 "sdxl": {"l": "text_encoder", "g": "text_encoder_2"}, "sdxl_refiner": {"g": "text_encoder_2"}}
OPENCLIP_H_WIDTH, OPENCLIP_H_LAYERS = 1024, 24


def is_pipeline_folder(path) -> bool:
    return os.path.isfile(os.path.join(path, INDEX))


def pipeline_folders(roots) -> list[str]:
    """Folders under `roots` holding a model_index.json, relative to their root ("." for a root itself),
    sorted; the first root wins for a name found under several."""
    found: dict[str, None] = {}
    for root in roots:
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            if INDEX in filenames:
                found.setdefault(os.path.relpath(dirpath, root), None)
    return sorted(found)


def _component_file(folder: Path, component: str, names) -> Path:
    sub = folder / component
    for name in names:
        if (sub / name).is_file():
            return sub / name
    if not sub.is_dir():
        raise CheckpointError(folder, f"diffusers pipeline has no '{component}/' folder")
    raise CheckpointError(sub, f"holds none of the weight files {', '.join(names)}")


def _json(path: Path) -> dict:
    """A component's JSON config; {} when absent (the weights alone are enough to load)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(path, f"is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(path, "is not a JSON object")
    return data


def _prediction(folder: Path) -> str:
    """The scheduler's `prediction_type` ("epsilon" / "v_prediction"); "auto" when absent."""
    config = _json(folder / "scheduler" / "scheduler_config.json")
    value = str(config.get("prediction_type", "")).lower()
    if value.startswith("v"):
        return "v_prediction"
    if value in ("epsilon", "eps"):
        return "eps"
    return "auto"


def _converted(path: Path, sd: dict, convert) -> dict:
    try:
        return convert(sd)
    except LayoutError as e:
        raise CheckpointError(path, str(e)) from None


def _text_tower(folder: Path, component: str):
    """(state dict at the text model, heads from config.json or None) of one text encoder folder."""
    path = _component_file(folder, component, TEXT_ENCODER_FILES)
    sd, _ = read_state_dict(path)
    sd = normalize_text_model_keys(sd)
    if "text_model.embeddings.token_embedding.weight" not in sd:
        raise CheckpointError(path, "is not a transformers CLIP text model (no "
                                    "'text_model.embeddings.token_embedding.weight')")
    heads = _json(folder / component / "config.json").get("num_attention_heads")
    return sd, (int(heads) if heads else None)


def _missing_sd2_layers(sd: dict) -> int:
    """Top layers diffusers' SD2 encoder lacks: the released OpenCLIP-H has 24; a scaled-down one
    follows diffusers' conversion, which drops exactly the last layer."""
    cfg = ClipTextConfig.from_state_dict(sd, "gelu", heads=1)
    if cfg.width == OPENCLIP_H_WIDTH:
        return max(0, OPENCLIP_H_LAYERS - cfg.layers)
    return 1


def load_clip_from_folder(folder: Path, arch: str, embedding_dirs=()):
    towers, heads = {}, {}
    for key, component in TOWER_FOLDERS[arch].items():
        towers[key], heads[key] = _text_tower(folder, component)
    missing = {"h": _missing_sd2_layers(towers["h"])} if arch == "sd2" else None
    try:
        return build_clip(arch, towers, embedding_dirs, None, None, None, where=f"{folder} ({arch})",
                          heads=heads, missing_layers=missing)
    except TextEncoderError as e:
        raise CheckpointError(folder, f"text encoders unusable: {e}") from None


def load_diffusers(folder, embedding_dirs=(), prediction: str = "auto", settings=None,
                   output_vae: bool = True, output_clip: bool = True) -> LoadedCheckpoint:
    """MODEL, CLIP and VAE of a diffusers pipeline folder; errors name the folder and the missing part."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(folder, "diffusers pipeline folder not found")
    if not is_pipeline_folder(folder):
        raise CheckpointError(folder, f"has no {INDEX}; not a diffusers pipeline folder")
    unet_path = _component_file(folder, "unet", MODEL_FILES)
    diffusers_unet, _ = read_state_dict(unet_path)
    metadata = unet_head_metadata(_json(folder / "unet" / "config.json"), diffusers_unet)
    unet_sd = _converted(unet_path, diffusers_unet, unet_to_original)
    if prediction == "auto":
        prediction = _prediction(folder)
    model = _make_model(unet_sd, metadata, unet_path, None, prediction, settings)
    clip = load_clip_from_folder(folder, model.arch, embedding_dirs) if output_clip else None
    vae = None
    if output_vae:
        vae_path = _component_file(folder, "vae", MODEL_FILES)
        vae = _make_vae(_converted(vae_path, read_state_dict(vae_path)[0], vae_to_original), vae_path)
    return LoadedCheckpoint(model, clip, vae, model.arch)
